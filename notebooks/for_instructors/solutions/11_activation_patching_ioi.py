"""Solutions to the exercises of notebook 11 (activation patching on indirect-object identification).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""


def logit_difference(logits, io_ids, s_ids):
    """[batch, pos, vocab], [batch], [batch] -> []: mean of logit(IO) - logit(S) at the last position."""
    last = logits[:, -1].float()  # [batch, vocab]
    io_logits = last.gather(-1, io_ids[:, None])[:, 0]  # [batch]
    s_logits = last.gather(-1, s_ids[:, None])[:, 0]  # [batch]
    return (io_logits - s_logits).mean()


def patch_residual(corrupted, clean, pos):
    """[batch, pos, d_model] x 2 -> the corrupted activation with position `pos` taken from the clean one."""
    patched = corrupted.clone()
    patched[:, pos] = clean[:, pos]
    return patched
