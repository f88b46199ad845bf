"""Gemma's tokenizer: text to token ids and back, id for id the same as Hugging Face's ``GemmaTokenizer``.

Role: read a Gemma tokenizer file (SentencePiece ``tokenizer.model`` or a transformers ``tokenizer.json``),
encode and decode text, show tokens readably, and render the Gemma chat templates. Everything that turns
text into ids lives here; the model only ever sees ids.

Must not import: torch (token ids arrive as lists or tensors, read through ``.tolist()``), the model,
plotting or widgets. It imports only ``sentencepiece``, ``tokenizers``, ``gemma_lab.hub`` (model ids and
"tiny" to folders) and ``gemma_lab.chat_template`` (a checkpoint's own Jinja template, rendered as
transformers renders it).

What Gemma's tokenizer does (details and verified id vectors in ``reference/gemma-architecture.md`` §4):
BPE with byte fallback, no dummy prefix (``"The"`` is not ``"▁The"``), spaces kept (a run of spaces or of
newlines is one token), digits split one by one, and special-token names written in the text (``"<eos>"``)
read as those tokens.
The chat templates: a checkpoint that ships its template (``chat_template.jinja`` or
``tokenizer_config.json``; every instruction-tuned Gemma 4 does) is rendered with that template; otherwise
the Gemma 1/2 and Gemma 3 formats are written out below, following the checkpoints' templates (§4.6).

References: google/sentencepiece (``bpe_model.cc``: user-defined pieces are matched whole and never
merged); transformers ``convert_slow_tokenizer.py`` (``GemmaConverter``: control and user-defined pieces
become added tokens) and ``models/gemma/tokenization_gemma.py`` (decoder: "▁" to space, byte fallback, fuse).
"""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

import sentencepiece
import tokenizers
from sentencepiece import sentencepiece_model_pb2

from gemma_lab import hub
from gemma_lab.chat_template import ChatTemplate, find_chat_template

#: File names looked for in a checkpoint folder, in order of preference.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")

#: ``chat_format`` values: the Gemma 1/2 template and the Gemma 3 one (which folds a system message in).
CHAT_FORMATS = ("gemma", "gemma3")

# Gemma 3 moved the turn tokens down by one (Gemma 1/2: 106/107), which is how its files are recognised.
_GEMMA3_START_OF_TURN_ID = 105
_GEMMA3_VOCAB_SIZE = 262_144

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
# The piece types Hugging Face's converter turns into added tokens, i.e. matched as literal text.
_ADDED_PIECE_TYPES = (_Piece.UNKNOWN, _Piece.CONTROL, _Piece.USER_DEFINED)


def check_encodable(text: str) -> None:
    """Raise a clear ValueError if ``text`` holds code points UTF-8 cannot hold (lone surrogates).

    They come from bytes decoded with ``errors="surrogateescape"`` or from ``"\\ud800"``-style
    escapes; the tokenizers would fail on them with an opaque binding error.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"the text holds {text[error.start]!r} at position {error.start}, a lone surrogate "
                         f"that is not valid Unicode; decode the input as UTF-8 (with errors='replace' if "
                         f"it is not) before tokenizing") from None


class GemmaTokenizer:
    """Gemma's tokenizer (Gemma 1, 2 and 3), backed by SentencePiece or by a tokenizers JSON file."""

    def __init__(
        self,
        backend: sentencepiece.SentencePieceProcessor | tokenizers.Tokenizer,
        source: str | Path = "<memory>",
        chat_format: str | None = None,
        chat_template: ChatTemplate | None = None,
    ):
        self.source = str(source)
        #: The checkpoint's own chat template when its folder ships one (rendered instead of the built-in formats).
        self.chat_template = chat_template
        self._spm = backend if isinstance(backend, sentencepiece.SentencePieceProcessor) else None
        self._json = backend if isinstance(backend, tokenizers.Tokenizer) else None
        if self._spm is None and self._json is None:
            raise TypeError(f"expected a SentencePieceProcessor or tokenizers.Tokenizer, not {type(backend)}")
        if self._spm is not None:
            self._added_text_pattern = _added_text_pattern(self._spm)
            self.vocab_size = self._spm.get_piece_size()
        else:
            # Counts added tokens too: a hub Gemma 3 tokenizer.json adds <image_soft_token> (262145 in all).
            self.vocab_size = self._json.get_vocab_size(with_added_tokens=True)

        self.pad_id = self._special_id("<pad>")
        self.eos_id = self._special_id("<eos>")
        self.bos_id = self._special_id("<bos>")
        self.unk_id = self._special_id("<unk>")
        # Gemma 4 marks turns with <|turn> ... <turn|>; it is chatted with through its own template only.
        self.is_gemma4 = self._optional_id("<|turn>") is not None and self._optional_id("<turn|>") is not None
        # The tokens that open and close a chat turn (generation stops at the closing one).
        turn_pieces = ("<|turn>", "<turn|>") if self.is_gemma4 else ("<start_of_turn>", "<end_of_turn>")
        self.start_of_turn_id, self.end_of_turn_id = (self._optional_id(piece) for piece in turn_pieces)
        # Only these three are dropped by `decode`: they mark sequence boundaries and carry no text.
        self._boundary_ids = {self.pad_id, self.bos_id, self.eos_id}
        if chat_format is None:
            looks_gemma3 = self.start_of_turn_id == _GEMMA3_START_OF_TURN_ID
            looks_gemma3 |= self.vocab_size >= _GEMMA3_VOCAB_SIZE
            chat_format = "gemma3" if looks_gemma3 else "gemma"
        if chat_format not in CHAT_FORMATS:
            raise ValueError(f"chat_format must be one of {CHAT_FORMATS}, got {chat_format!r}")
        self.chat_format = chat_format

    def __repr__(self) -> str:
        fields = f"vocab_size={self.vocab_size}, chat_format={self.chat_format!r}"
        if self.chat_template is not None:
            fields += f", chat_template={self.chat_template.origin!r}"
        return f"GemmaTokenizer({self.source!r}, {fields})"

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry for ``token_id``, e.g. ``"▁the"``, ``"<0xE7>"``, ``"<end_of_turn>"``."""
        token_id = operator.index(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} is outside the vocabulary (0 to {self.vocab_size - 1})")
        if self._spm is not None:
            return self._spm.id_to_piece(token_id)
        return self._json.id_to_token(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of a vocabulary entry; ``KeyError`` if there is no such piece (never ``unk_id``)."""
        if self._spm is not None:
            token_id = self._spm.piece_to_id(piece)
            # SentencePiece answers unk_id for pieces it does not know, so check the answer.
            if self._spm.id_to_piece(token_id) == piece:
                return token_id
        elif (token_id := self._json.token_to_id(piece)) is not None:
            return token_id
        raise KeyError(f"{piece!r} is not a piece of the tokenizer read from {self.source}")

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids for ``text``, with ``<bos>`` first unless ``add_bos=False``; no ``<eos>`` is appended."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes one string, got {type(text).__name__}")
        check_encodable(text)
        ids = [self.bos_id] if add_bos else []
        if self._json is not None:
            return ids + self._json.encode(text, add_special_tokens=False).ids
        # Hugging Face first cuts out its added tokens (special-token names written in the text, as in
        # "Hey<eos>.", and Gemma's user-defined pieces such as runs of literal spaces), then runs BPE on the
        # text between them. SentencePiece alone would spell "<eos>" out and split "  " into two "▁".
        start = 0
        for match in self._added_text_pattern.finditer(text):
            ids += self._spm.encode(text[start : match.start()])
            ids.append(self._spm.piece_to_id(match.group()))
            start = match.end()
        return ids + self._spm.encode(text[start:])

    def decode(self, ids) -> str:
        """Text for token ids (list, tuple, tensor or array); ``<bos>``, ``<eos>`` and ``<pad>`` are dropped.

        Other special tokens (``<start_of_turn>``...) appear by name. Matches Hugging Face's
        ``decode(ids)`` once those three are removed, including invalid byte runs (one "�" per byte).
        """
        text, pending_bytes = [], bytearray()
        for token_id in _as_id_list(ids):
            if token_id in self._boundary_ids:
                continue
            piece = self.id_to_piece(token_id)
            if byte := _BYTE_PIECE.fullmatch(piece):
                pending_bytes.append(int(byte.group(1), 16))
                continue
            text.append(_decode_bytes(pending_bytes))
            pending_bytes.clear()
            text.append(piece.replace("▁", " "))
        text.append(_decode_bytes(pending_bytes))
        return "".join(text)

    def to_str_tokens(self, text_or_ids, add_bos: bool = True) -> list[str]:
        """One readable string per token: "▁" as a space, ``\\n`` and ``\\t`` escaped, bytes as ``<0xE7>``.

        A string is encoded first (with ``<bos>`` unless ``add_bos=False``); ids are shown as given.
        """
        ids = self.encode(text_or_ids, add_bos=add_bos) if isinstance(text_or_ids, str) else text_or_ids
        return [readable_piece(self.id_to_piece(token_id)) for token_id in _as_id_list(ids)]

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **template_kwargs,
    ) -> str | list[int]:
        """Render a conversation the way the instruction-tuned Gemma checkpoints were trained on.

        ``messages`` are ``{"role": "user" | "assistant" | "model" | "system", "content": str}`` dicts.
        With ``tokenize=True`` the ids are returned, starting with exactly one ``<bos>``.

        When the checkpoint ships its own template (``self.chat_template``), that template is rendered
        as transformers renders it, and keywords reach it (``enable_thinking=True`` on Gemma 4,
        ``tools=[...]``). Otherwise the built-in Gemma 1/2/3 formats: roles must alternate
        user/assistant, starting with the user; ``"assistant"`` is written ``model`` and each content is
        stripped of surrounding whitespace. Gemma 1/2 have no system role (ValueError); Gemma 3 folds a
        leading system message into the first user turn as ``"{system}\\n\\n"``.
        """
        if self.chat_template is not None:
            special_tokens = {f"{name}_token": self.id_to_piece(token_id) for name, token_id in
                              (("bos", self.bos_id), ("eos", self.eos_id), ("unk", self.unk_id), ("pad", self.pad_id))}
            text = self.chat_template.render(list(messages), add_generation_prompt=add_generation_prompt,
                                             special_tokens=special_tokens, **template_kwargs)
            # Templates write "<bos>" as text themselves; it encodes to bos_id, so none is added.
            return self.encode(text, add_bos=False) if tokenize else text
        if self.is_gemma4:  # rendering Gemma 3's turns for it would be silently wrong
            raise ValueError(
                f"{self.source} is a Gemma 4 tokenizer (<|turn>/<turn|> turns) and no chat template was found "
                "beside it (chat_template.jinja or tokenizer_config.json); Gemma 4's template differs between "
                "sizes, so only the checkpoint's own one is used: copy the instruction-tuned checkpoint's "
                "chat_template.jinja next to the tokenizer, or write the prompt text yourself")
        if template_kwargs:
            raise TypeError(f"{', '.join(sorted(template_kwargs))}: only a checkpoint's own chat template takes "
                            f"extra keywords, and {self.source} has none beside it (built-in {self.chat_format!r} format)")
        turns = list(messages)
        first_user_prefix = ""
        if self.chat_format == "gemma3" and turns and turns[0]["role"] == "system":
            # The Gemma 3 template takes the system text as it is (unstripped; the first part of a list).
            system = turns[0]["content"]
            first_user_prefix = (system if isinstance(system, str) else system[0]["text"]) + "\n\n"
            turns = turns[1:]
        parts = ["<bos>"]
        for index, message in enumerate(turns):
            role = message["role"]
            if role == "system":
                if self.chat_format == "gemma":
                    raise ValueError("System role not supported by the Gemma 1/2 chat template")
                raise ValueError("a system message may only be the first message")
            expected = "user" if index % 2 == 0 else "assistant"
            if role not in ({"user"} if expected == "user" else {"assistant", "model"}):
                raise ValueError(
                    "Conversation roles must alternate user/assistant/user/assistant/...: "
                    f"message {index} has role {role!r}, expected {expected!r}"
                )
            prefix = first_user_prefix if index == 0 else ""
            speaker = "user" if role == "user" else "model"
            parts.append(f"<start_of_turn>{speaker}\n{prefix}{_message_text(message).strip()}<end_of_turn>\n")
        if add_generation_prompt:
            parts.append("<start_of_turn>model\n")
        text = "".join(parts)
        # The rendered text already starts with a literal "<bos>", which encodes to bos_id.
        return self.encode(text, add_bos=False) if tokenize else text

    def _optional_id(self, piece: str) -> int | None:
        try:
            return self.piece_to_id(piece)
        except KeyError:
            return None

    def _special_id(self, piece: str) -> int:
        token_id = self._optional_id(piece)
        if token_id is None:
            raise ValueError(f"{self.source} has no {piece} piece; is it a Gemma tokenizer?")
        return token_id


def load_tokenizer(path: str | Path, chat_format: str | None = None) -> GemmaTokenizer:
    """Read a Gemma tokenizer from a file or a checkpoint folder; ``"tiny"`` means the bundled model, and
    a model id (``"google/gemma-2-2b"``, a Kaggle handle) its tokenizer files, cached or downloaded.

    A chat template shipped beside the tokenizer (``chat_template.jinja``, or ``tokenizer_config.json``'s
    ``"chat_template"``) is read too and used by ``apply_chat_template``.

    A folder is searched for ``tokenizer.model`` (SentencePiece), then ``tokenizer.json`` (transformers).
    A ``.json`` file is read with the ``tokenizers`` library, any other file with SentencePiece.
    ``chat_format`` ("gemma" or "gemma3") defaults to the model's generation when a ``config.json``
    sits beside the tokenizer (a small vocabulary such as the tiny model's says nothing about it),
    else to what the file looks like.
    """
    path = hub.resolve_model(path, tokenizer_only=True)  # "tiny", a Hub id or a Kaggle handle -> its folder
    if path.is_dir():
        found = [path / name for name in TOKENIZER_FILES if (path / name).is_file()]
        if not found:
            looked_for = " or ".join(TOKENIZER_FILES)
            raise FileNotFoundError(f"{path} contains no tokenizer file (looked for {looked_for})")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file or folder at {path}")
    if chat_format is None:
        chat_format = _chat_format_from_config(path.parent / "config.json")
    chat_template = find_chat_template(path.parent)

    if path.suffix.lower() == ".json":
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust binding raises a bare Exception for any malformed file
            raise ValueError(f"{path} could not be read as a tokenizers JSON file: {error}") from error
    else:
        backend = sentencepiece.SentencePieceProcessor()
        try:
            backend.load(str(path))
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{path} could not be read as a SentencePiece model: {error}") from error
    return GemmaTokenizer(backend, source=path, chat_format=chat_format, chat_template=chat_template)


def _chat_format_from_config(config_path: Path) -> str | None:
    """'gemma3' for a Gemma 3 checkpoint's config.json, 'gemma' for Gemma 1/2, None when unsure."""
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # no readable config: let the tokenizer file decide
    if model_type in ("gemma3", "gemma3_text"):
        return "gemma3"
    return "gemma" if model_type in ("gemma", "gemma2") else None


def readable_piece(piece: str) -> str:
    """A vocabulary piece as it should appear in a plot or a table: "▁" as a space, newlines as ``\\n``."""
    return piece.replace("▁", " ").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _added_text_pattern(processor: sentencepiece.SentencePieceProcessor) -> re.Pattern:
    """A regex matching the pieces Hugging Face treats as literal tokens in text, longest first.

    Longest first makes the match leftmost-longest, as in the ``tokenizers`` library: ``"\\n\\n"`` wins
    over ``"\\n"`` when both are pieces.
    """
    model = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    added = [piece.piece for piece in model.pieces if piece.type in _ADDED_PIECE_TYPES]
    return re.compile("|".join(re.escape(piece) for piece in sorted(added, key=len, reverse=True)))


def _decode_bytes(byte_run: bytearray) -> str:
    # Byte fallback as in Hugging Face's decoder: a run that is not valid UTF-8 becomes one "�" per byte.
    try:
        return byte_run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(byte_run)


def _as_id_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensors and numpy arrays, without importing either
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    try:
        return [operator.index(token_id) for token_id in ids]
    except TypeError as error:
        raise TypeError("expected one flat sequence of token ids (a single sequence, not a batch)") from error


def _message_text(message: dict) -> str:
    """The text of a chat message: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise ValueError(f"only text message parts are supported, got a {part.get('type')!r} part")
        texts.append(part["text"].strip())
    return "".join(texts)
