"""Solutions to the exercises of notebook 04 (attention).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell,
so a solution uses only what the notebook has imported by then.
"""

import torch
from einops import einsum, rearrange


def attention_mask(q_positions, k_positions, window):
    """[batch, q_pos, k_pos], True where the query may attend to the key."""
    q = rearrange(q_positions, "batch q_pos -> batch q_pos 1")
    k = rearrange(k_positions, "batch k_pos -> batch 1 k_pos")
    allowed = k <= q  # causal: the key is not in the query's future
    if window is not None:
        allowed = allowed & (q - k < window)  # the query itself and the window - 1 keys before it
    return allowed


def attention_pattern(q, k, allowed, query_pre_attn_scalar, softcap=None):
    """Attention weights [batch, head, q_pos, k_pos]."""
    scores = einsum(q, k, "batch q_pos head d_head, batch k_pos head d_head -> batch head q_pos k_pos")
    scores = scores * query_pre_attn_scalar**-0.5
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~rearrange(allowed, "batch q_pos k_pos -> batch 1 q_pos k_pos"), float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype)


def grouped_attention(q, k, v, allowed, query_pre_attn_scalar, softcap=None):
    """z [batch, q_pos, head, d_head]: each group of query heads shares one key/value head."""
    q = rearrange(q, "batch q_pos (kv_head group) d_head -> batch q_pos kv_head group d_head", kv_head=k.shape[2])
    scores = einsum(q, k, "batch q_pos kv_head group d_head, batch k_pos kv_head d_head "
                          "-> batch kv_head group q_pos k_pos")
    scores = scores * query_pre_attn_scalar**-0.5
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    masked = ~rearrange(allowed, "batch q_pos k_pos -> batch 1 1 q_pos k_pos")
    pattern = torch.softmax(scores.masked_fill(masked, float("-inf")).float(), dim=-1).to(v.dtype)
    z = einsum(pattern, v, "batch kv_head group q_pos k_pos, batch k_pos kv_head d_head "
                           "-> batch q_pos kv_head group d_head")
    return rearrange(z, "batch q_pos kv_head group d_head -> batch q_pos (kv_head group) d_head")
