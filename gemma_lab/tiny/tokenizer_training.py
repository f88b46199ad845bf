"""The tiny model's tokenizer: a SentencePiece BPE model laid out like Gemma's, trained on the corpus.

Layout: ``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3, ``<mask>``=4, ``<start_of_turn>``=5,
``<end_of_turn>``=6, ``"\\n"``=7 (``tables.SPECIAL_PIECES``), then the 256 byte pieces, then merges;
see ``corpus.py``'s docstring for why it differs from Gemma's ids 106/107.

Imports the standard library and ``sentencepiece`` (inside ``train_tokenizer``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from gemma_lab.tiny.tables import DEFAULT_VOCAB_SIZE, SPECIAL_PIECES


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train a Gemma-style SentencePiece BPE model on ``texts``; write ``out_dir/tokenizer.model``.

    Ids 0-7 are ``SPECIAL_PIECES`` (``<pad> <eos> <bos> <unk> <mask> <start_of_turn> <end_of_turn>
    \\n``); the turn markers and ``\\n`` are user-defined pieces, so they are read out of plain text,
    and ``\\n`` stays its own token instead of merging into ``.\\n``. Ids 8-263 are the byte pieces
    ``<0x00>``..``<0xFF>``.

    Settings as in Gemma's tokenizer: BPE, byte fallback (no text is ever ``<unk>``), no dummy
    prefix (``"Mary"`` and ``" Mary"`` are different tokens), digits split one per token,
    whitespace kept as written (runs of spaces may be pieces), identity normalisation. One thread
    and no sampling of the input, so the same texts give a byte-identical file.

    The shipped tokenizer is ``train_tokenizer(generate_corpus(seed=0, n_documents=20_000), dir)``:
    under a second, and with it every name in ``NAMES`` is a single piece after a space.
    """
    import sentencepiece as spm  # only this function needs it

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece=SPECIAL_PIECES[0],
        eos_piece=SPECIAL_PIECES[1],
        bos_piece=SPECIAL_PIECES[2],
        unk_piece=SPECIAL_PIECES[3],
        user_defined_symbols=list(SPECIAL_PIECES[4:]),
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        max_sentence_length=16384,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    path = out_dir / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path
