"""Solutions to the exercises of notebook 10 (the logit lens).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch


def logit_lens_for_position(model, resid_stack, pos):
    """[layer, pos, d_model], pos -> [layer, vocab]: next-token probabilities read after each layer."""
    resid = resid_stack[:, pos]  # [layer, d_model]
    logits = model.ln_final(resid) @ model.embed.weight.T  # [layer, vocab]
    cap = model.cfg.final_softcap
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return logits.float().softmax(dim=-1)
