"""Exercises of lesson 01, tokenization: pieces back to text (``notebooks/01_tokenization.ipynb``).

Exercises: decode_pieces. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import re

import torch

from gemma_lab.exercises.checking import choice, exercise, randint, trial_number

__all__ = [
    "decode_pieces",
]

NOTEBOOK = "01_tokenization"


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_BOUNDARY_PIECES = ("<bos>", "<eos>", "<pad>")


def decode_pieces(pieces: list[str]) -> str:
    """Text from vocabulary pieces, as ``GemmaTokenizer.decode`` does it: "▁" is a space, runs of
    byte pieces ``<0xNN>`` are UTF-8, ``<bos>``/``<eos>``/``<pad>`` vanish, other specials stay by name."""
    text, pending = [], bytearray()
    for piece in pieces:
        if piece in _BOUNDARY_PIECES:
            continue
        if byte := _BYTE_PIECE.fullmatch(piece):
            pending.append(int(byte.group(1), 16))
            continue
        text.append(pending.decode("utf-8", errors="replace"))
        pending.clear()
        text.append(piece.replace("▁", " "))
    text.append(pending.decode("utf-8", errors="replace"))
    return "".join(text)


_WORD_PIECES = ["▁the", "▁cat", "sat", "▁on", "▁mat", ".", "▁Mary", "▁John", ",", "\n", "▁▁", "1", "2",
                "ing", "▁a", "!", "▁"]
_MULTIBYTE = ["é", "ö", "生", "活", "€", "😀", "ß", "Ж"]


def _byte_pieces(character: str) -> list[str]:
    return [f"<0x{b:02X}>" for b in character.encode("utf-8")]


def _decode_pieces_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    if trial == 0:
        return ([],)
    if trial == 1:  # a leading space, then a character spelled in bytes
        return (["<bos>", "▁", "caf"] + _byte_pieces("é") + ["▁ok"],)
    pieces = ["<bos>"] if randint(generator, 0, 3) else []
    pieces.append(choice(generator, ["▁the", "▁Mary", "▁▁"]))  # a leading space: no dummy prefix to strip
    for _ in range(randint(generator, 4, 12)):
        kind = randint(generator, 0, 9)
        if kind < 6:
            pieces.append(choice(generator, _WORD_PIECES))
        elif kind < 9:
            pieces += _byte_pieces(choice(generator, _MULTIBYTE))
        else:
            pieces.append(choice(generator, ["<start_of_turn>", "<end_of_turn>", "<pad>"]))
    pieces += _byte_pieces(choice(generator, _MULTIBYTE))
    if trial % 2 == 0:
        pieces.append("<eos>")
    return (pieces,)


def _decode_pieces_no_space(pieces):
    text, pending = [], bytearray()
    for piece in pieces:
        if piece in _BOUNDARY_PIECES:
            continue
        if byte := _BYTE_PIECE.fullmatch(piece):
            pending.append(int(byte.group(1), 16))
            continue
        text.append(pending.decode("utf-8", errors="replace"))
        pending.clear()
        text.append(piece)
    text.append(pending.decode("utf-8", errors="replace"))
    return "".join(text)


def _decode_pieces_keeps_boundaries(pieces):
    text = []
    for start, piece in enumerate(pieces):
        if piece in _BOUNDARY_PIECES:
            text.append(piece)
        elif not _BYTE_PIECE.fullmatch(piece):
            text.append(decode_pieces([piece]))
        elif start == 0 or not _BYTE_PIECE.fullmatch(pieces[start - 1]):
            run = []
            for later in pieces[start:]:
                if not _BYTE_PIECE.fullmatch(later):
                    break
                run.append(later)
            text.append(decode_pieces(run))
    return "".join(text)


def _decode_pieces_byte_by_byte(pieces):
    return "".join(decode_pieces([piece]) for piece in pieces)


def _decode_pieces_strips_leading_space(pieces):
    return decode_pieces(pieces).lstrip(" ")


def _decode_pieces_drops_all_specials(pieces):
    return decode_pieces([p for p in pieces if not (p.startswith("<") and p.endswith(">") and len(p) > 2)
                          or _BYTE_PIECE.fullmatch(p)])


exercise(
    "decode_pieces",
    make_inputs=_decode_pieces_inputs,
    reference=decode_pieces,
    mistakes={
        "Did you turn '▁' (U+2581, SentencePiece's visible space) back into a space?": _decode_pieces_no_space,
        "Did you drop <bos>, <eos> and <pad>? They mark where a sequence starts and ends and carry no text.":
            _decode_pieces_keeps_boundaries,
        "Did you decode each byte piece on its own? A character such as 'é' is several <0xNN> pieces in a row: "
        "collect the bytes of the run, then decode them together as UTF-8.": _decode_pieces_byte_by_byte,
        "Did you strip the leading space? Gemma adds no dummy prefix, so a leading '▁' is a real space.":
            _decode_pieces_strips_leading_space,
        "Did you drop every special token? Only <bos>, <eos> and <pad> vanish; <start_of_turn> and the "
        "other specials appear by name.": _decode_pieces_drops_all_specials,
    },
    notebook=NOTEBOOK,
)
