"""Tests of the synthetic corpus and its tokenizer (gemma_lab/tiny/corpus.py, tables.py, tokenizer_training.py).

What they pin down: the corpus is a pure function of its seed; the held-out split really is held
out (name pairs and templates never seen in training); every IOI answer is one token; and the
tokenizer has Gemma's layout and settings. A tokenizer is trained once per module, with the recipe
of the shipped one (a couple of seconds).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from gemma_lab.tiny import corpus
from gemma_lab.tiny.corpus import (
    HELDOUT_TEMPLATES,
    KIND_WEIGHTS,
    NAMES,
    OBJECTS,
    PLACES,
    SPECIAL_PIECES,
    TRAIN_TEMPLATES,
    corpus_statistics,
    generate_corpus,
    ioi_prompts,
    is_heldout_pair,
    iter_documents,
    repeated_random_tokens,
)
from gemma_lab.tiny.tokenizer_training import train_tokenizer

spm = pytest.importorskip("sentencepiece")

NAME_SET = set(NAMES)
CAPITALISED_WORD = re.compile(r"\b[A-Z][a-z]+\b")


def names_in(text: str) -> set[str]:
    return {word for word in CAPITALISED_WORD.findall(text) if word in NAME_SET}


def literal_pieces(frame: str) -> list[str]:
    """The fixed text of a frame between its {slots}, e.g. 'were commuting to the'."""
    pieces = (piece.strip(" ,.") for piece in re.split(r"\{\w+\}", frame))
    return [piece for piece in pieces if len(piece) >= 10]


@pytest.fixture(scope="module")
def train_docs() -> list[tuple[str, str]]:
    return generate_corpus(seed=0, n_documents=3000, split="train", with_kinds=True)


@pytest.fixture(scope="module")
def heldout_docs() -> list[tuple[str, str]]:
    return generate_corpus(seed=0, n_documents=1000, split="heldout", with_kinds=True)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    # The recipe of the shipped tokenizer: the first 20 000 training documents of seed 0 (~2 s).
    texts = generate_corpus(seed=0, n_documents=20_000)
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def sp(tokenizer_path):
    return spm.SentencePieceProcessor(model_file=str(tokenizer_path))


# ---------------------------------------------------------------------------------------- lists


def test_word_lists_are_unique_and_large_enough():
    assert len(NAMES) >= 150
    for words in (NAMES, PLACES, OBJECTS):
        assert len(set(words)) == len(words), Counter(words).most_common(3)
    assert all(name.isalpha() and name[0].isupper() and name[1:].islower() for name in NAMES)


def test_names_are_not_other_capitalised_words_of_the_corpus():
    other = set(corpus.DAYS) | set(corpus.MONTHS) | set(corpus.CAPITALS.values())
    other |= {word for country in corpus.CAPITALS for word in country.split()}
    assert not NAME_SET & other


def test_templates_have_all_slots_and_never_start_with_a_name():
    assert len(TRAIN_TEMPLATES) >= 8 and len(HELDOUT_TEMPLATES) >= 1
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    for frame in [*TRAIN_TEMPLATES.values(), *HELDOUT_TEMPLATES.values()]:
        for slot in ("{first}", "{second}", "{S}", " {IO}"):
            assert frame.count(slot) == 1, (frame, slot)
        assert frame.endswith(" {IO}.")
        assert not frame.startswith("{")


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_same_documents_and_different_seeds_differ():
    first = generate_corpus(seed=3, n_documents=200)
    assert first == generate_corpus(seed=3, n_documents=200)
    assert first != generate_corpus(seed=4, n_documents=200)
    assert first != generate_corpus(seed=3, n_documents=200, split="heldout")
    assert ioi_prompts(seed=1, n=50) == ioi_prompts(seed=1, n=50)
    assert ioi_prompts(seed=1, n=50) != ioi_prompts(seed=2, n=50)


def test_stream_is_random_access():
    stream = iter_documents(seed=5, start=100)
    assert [next(stream) for _ in range(20)] == generate_corpus(seed=5, n_documents=120)[100:]


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        generate_corpus(n_documents=1, split="test")


def test_repeated_random_tokens():
    ids = repeated_random_tokens(seed=0, index=7, low=8, high=3072, span=50, n_repeats=3)
    assert ids == repeated_random_tokens(seed=0, index=7, low=8, high=3072, span=50, n_repeats=3)
    assert ids[:50] == ids[50:100] == ids[100:] and len(ids) == 150
    assert all(8 <= i < 3072 for i in ids)
    assert ids != repeated_random_tokens(seed=0, index=8, low=8, high=3072, span=50, n_repeats=3)


# ------------------------------------------------------------------------------------- held out


def test_about_one_pair_in_five_is_held_out_and_the_rule_is_symmetric():
    pairs = [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1 :]]
    share = sum(is_heldout_pair(a, b) for a, b in pairs) / len(pairs)
    assert 0.17 < share < 0.23
    assert all(is_heldout_pair(a, b) == is_heldout_pair(b, a) for a, b in pairs[:500])


def test_no_training_document_holds_a_heldout_pair_or_template(train_docs):
    heldout_fragments = [piece for frame in HELDOUT_TEMPLATES.values() for piece in literal_pieces(frame)]
    heldout_fragments = [f for f in heldout_fragments if not any(f in t for t in TRAIN_TEMPLATES.values())]
    assert heldout_fragments
    for _, text in train_docs:
        names = sorted(names_in(text))
        bad = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if is_heldout_pair(a, b)]
        assert not bad, (bad, text)
        assert not any(fragment in text for fragment in heldout_fragments), text


def test_heldout_ioi_documents_use_only_heldout_pairs(heldout_docs):
    for kind, text in heldout_docs:
        if kind == "ioi":
            for sentence_names in re.findall(r"\b([A-Z][a-z]+) and ([A-Z][a-z]+)\b", text):
                assert is_heldout_pair(*sentence_names), text


def test_heldout_ioi_prompts_are_unseen_pairs_and_half_unseen_templates():
    prompts = ioi_prompts(seed=0, n=400, split="heldout")
    assert all(is_heldout_pair(p["io_name"], p["s_name"]) for p in prompts)
    unseen = [p for p in prompts if not p["template_seen"]]
    assert len(unseen) == 200
    assert {p["template"] for p in unseen} == set(HELDOUT_TEMPLATES)
    assert {p["template"] for p in prompts if p["template_seen"]} <= set(TRAIN_TEMPLATES)
    assert Counter(p["order"] for p in prompts) == {"ABBA": 200, "BABA": 200}
    assert len({p["prompt"] for p in prompts}) > 390


def test_training_ioi_prompts_are_training_pairs():
    prompts = ioi_prompts(seed=0, n=200, split="train")
    assert not any(is_heldout_pair(p["io_name"], p["s_name"]) for p in prompts)
    assert all(p["template_seen"] and p["template"] in TRAIN_TEMPLATES for p in prompts)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_ioi_prompt_shape(split):
    for p in ioi_prompts(seed=0, n=100, split=split):
        text, io_name, s_name = p["prompt"], p["io_name"], p["s_name"]
        assert p["answer"] == " " + io_name
        assert not text.endswith(" ") and not text[0].isspace()
        words = CAPITALISED_WORD.findall(text)
        assert words.count(io_name) == 1 and words.count(s_name) == 2, text
        first_name = next(w for w in words if w in (io_name, s_name))
        assert first_name == (io_name if p["order"] == "ABBA" else s_name)
        assert f" {io_name} " in text or f" {io_name}," in text  # introduced after a space


# ----------------------------------------------------------------------------------- statistics


def test_statistics_are_sane(train_docs, sp):
    stats = corpus_statistics(train_docs, tokenizer=sp)
    assert stats["documents"] == len(train_docs)
    assert stats["characters"] == sum(len(text) for _, text in train_docs)
    assert sum(stats["kinds"].values()) == len(train_docs)
    for kind, weight in KIND_WEIGHTS.items():
        assert abs(stats["kind_fractions"][kind] - weight) < 0.04, kind
    assert stats["unique_names"] > 0.95 * len(NAMES)
    assert stats["tokens"] > stats["documents"] * 10
    assert stats["max_tokens"] < 256
    plain = corpus_statistics([text for _, text in train_docs])
    assert "kinds" not in plain and plain["characters"] == stats["characters"]


def test_every_kind_appears_and_chat_is_well_formed(train_docs):
    assert {kind for kind, _ in train_docs} == set(KIND_WEIGHTS)
    turn = r"<start_of_turn>user\n[^<\n]+<end_of_turn>\n<start_of_turn>model\n[^<\n]+<end_of_turn>\n"
    for kind, text in train_docs:
        assert text == text.strip(" ") and "  " not in text
        if kind == "chat":
            assert re.fullmatch(f"({turn})+", text), text
        else:
            assert "<start_of_turn>" not in text


# ------------------------------------------------------------------------------------ tokenizer


def test_special_pieces_have_gemma_ids(sp):
    for expected_id, piece in enumerate(SPECIAL_PIECES):
        assert sp.piece_to_id(piece) == expected_id, piece
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.get_piece_size() == corpus.DEFAULT_VOCAB_SIZE
    assert sp.encode("<start_of_turn>user\nHi<end_of_turn>\n")[:3] == [5, sp.piece_to_id("user"), 7]
    assert sp.encode("<end_of_turn>")[0] == 6


def test_byte_fallback(sp):
    first_byte = len(SPECIAL_PIECES)
    assert [sp.id_to_piece(first_byte + i) for i in (0, 255)] == ["<0x00>", "<0xFF>"]
    text = "Zoë ate 生活 ☃"
    ids = sp.encode(text)
    assert sp.unk_id() not in ids
    assert any(sp.is_byte(i) for i in ids)
    assert sp.decode(ids) == text


def test_digits_are_split(sp):
    pieces = sp.encode("year 2024 and 31", out_type=str)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["2", "0", "2", "4", "3", "1"]


def test_no_dummy_prefix_and_whitespace_kept(sp):
    assert sp.encode(" Mary", out_type=str) == ["▁Mary"]
    assert sp.encode("Mary") != sp.encode(" Mary")
    assert sp.encode("The", out_type=str)[0] != "▁The"
    text = "a  b\n c   d "
    assert sp.decode(sp.encode(text)) == text


def test_model_settings_are_gemma_like(tokenizer_path):
    model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = model_pb2.ModelProto()
    proto.ParseFromString(tokenizer_path.read_bytes())
    assert proto.trainer_spec.model_type == model_pb2.TrainerSpec.BPE
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.split_digits
    assert proto.normalizer_spec.name == "identity"
    assert not proto.normalizer_spec.add_dummy_prefix
    assert not proto.normalizer_spec.remove_extra_whitespaces


def test_every_ioi_name_and_word_is_one_token(sp):
    for p in ioi_prompts(seed=0, n=300, split="heldout") + ioi_prompts(seed=0, n=100, split="train"):
        assert len(sp.encode(p["answer"])) == 1, p["answer"]
        assert len(sp.encode(" " + p["s_name"])) == 1, p["s_name"]
    for word in (*NAMES, *PLACES, *OBJECTS):
        assert len(sp.encode(" " + word)) == 1, word


def test_tokenizer_training_is_byte_identical(tmp_path):
    texts = generate_corpus(seed=1, n_documents=3000)
    first = train_tokenizer(texts, tmp_path / "a").read_bytes()
    second = train_tokenizer(texts, tmp_path / "b").read_bytes()
    assert first == second
