"""Solutions to the exercises of notebook 16 (what changed in Gemma 4).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch


def route_tokens(logits, k, per_expert_scale):
    """(chosen [batch, pos, k] int64, weights [batch, pos, k] fp32) from router logits [batch, pos, expert]."""
    probs = torch.softmax(logits.float(), dim=-1)  # fp32, over all experts
    top = torch.topk(probs, k, dim=-1)  # the k most probable, most probable first
    weights = top.values / top.values.sum(dim=-1, keepdim=True)  # renormalise over the chosen k
    return top.indices, weights * per_expert_scale[top.indices]  # each expert's learned scale


def kv_cache_bytes(cfg, n_tokens, share_kv):
    """Bytes of bf16 keys and values cached after n_tokens tokens of one sequence."""
    total = 0
    for layer in range(cfg.n_layers):
        if share_kv and cfg.is_kv_shared(layer):
            continue  # reads the cache of cfg.kv_source(layer)
        kept = min(n_tokens, cfg.sliding_window) if cfg.is_local(layer) else n_tokens
        total += 2 * 2 * cfg.n_kv_heads_for(layer) * cfg.d_head_for(layer) * kept  # keys and values, 2 bytes each
    return total


def partial_rotary(x, positions, theta, fraction):
    """x [batch, pos, head, d_head] rotated by RoPE on only the first fraction * d_head / 2 pairs."""
    d_head = x.shape[-1]
    n_rotated = int(fraction * d_head // 2)
    inv_freq = torch.zeros(d_head // 2)
    inv_freq[:n_rotated] = theta ** -(torch.arange(0, 2 * n_rotated, 2).float() / d_head)  # a full head's frequencies
    angles = positions.float()[..., None] * inv_freq  # [batch, pos, d_head/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # pair (i, i + d_head/2) shares an angle
    first, second = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat([-second, first], dim=-1) * angles.sin()


def combine_per_layer(table_rows, embedded, projection, norm_weight, eps):
    """[batch, pos, layer, d_per_layer] per-layer inputs from the table rows and the scaled main embedding."""
    d_per_layer, d_model = norm_weight.shape[0], embedded.shape[-1]
    batch, pos, width = table_rows.shape
    token = (table_rows * d_per_layer ** 0.5).reshape(batch, pos, width // d_per_layer, d_per_layer)
    context = (embedded @ projection.T * d_model ** -0.5).reshape(batch, pos, width // d_per_layer, d_per_layer)
    context = context * torch.rsqrt(context.pow(2).mean(dim=-1, keepdim=True) + eps) * norm_weight  # gain w
    return (token + context) * 2 ** -0.5
