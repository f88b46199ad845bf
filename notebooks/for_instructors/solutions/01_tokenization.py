"""Solutions to the exercises of notebook 01 (tokenization).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell,
so a solution uses only what the notebook has imported by then.
"""


def decode_pieces(pieces):
    """Text for a list of vocabulary pieces, the way the tokenizer decodes ids."""
    text = ""
    pending = b""  # bytes of <0xNN> pieces waiting to be decoded together
    for piece in pieces:
        if piece in ("<bos>", "<eos>", "<pad>"):
            continue  # sequence boundaries carry no text
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            pending += bytes([int(piece[3:5], 16)])
            continue
        text += pending.decode("utf-8", errors="replace")
        pending = b""
        text += piece.replace("▁", " ")
    return text + pending.decode("utf-8", errors="replace")
