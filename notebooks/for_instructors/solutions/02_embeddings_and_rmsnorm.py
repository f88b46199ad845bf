"""Solutions to the exercises of notebook 02 (embeddings and RMSNorm).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell,
so a solution uses only what the notebook has imported by then.
"""

import math

import torch


def embed(tokens, weight):
    """Rows of `weight [vocab, d_model]` for `tokens [batch, pos]`, times sqrt(d_model): [batch, pos, d_model]."""
    d_model = weight.shape[-1]
    scale = torch.tensor(math.sqrt(d_model)).to(weight.dtype)  # rounded to the weight dtype first
    return weight[tokens] * scale


def rms_norm(x, weight, eps):
    """Gemma's RMSNorm of `x [..., d_model]` with gain offsets `weight [d_model]`."""
    x32 = x.float()
    mean_square = x32.pow(2).mean(dim=-1, keepdim=True)  # [..., 1]
    normalized = x32 / torch.sqrt(mean_square + eps)
    return (normalized * (1.0 + weight.float())).to(x.dtype)
