"""Solutions to the exercises of notebook 05 (the GeGLU MLP and the transformer block).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell,
so a solution uses only what the notebook has imported by then.
"""

import torch.nn.functional as F


def geglu(x, w_gate, w_up, w_down):
    """down(gelu_tanh(gate(x)) * up(x)) with nn.Linear weights ([out, in])."""
    gate = x @ w_gate.T  # [batch, pos, d_mlp]
    up = x @ w_up.T  # [batch, pos, d_mlp]
    neurons = F.gelu(gate, approximate="tanh") * up
    return neurons @ w_down.T  # [batch, pos, d_model]


def transformer_block(resid, attn, mlp, pre_attn_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm):
    """One Gemma 2/3 block: each sublayer reads a normalised stream and adds its normalised output."""
    resid = resid + post_attn_norm(attn(pre_attn_norm(resid)))
    resid = resid + post_mlp_norm(mlp(pre_mlp_norm(resid)))
    return resid
