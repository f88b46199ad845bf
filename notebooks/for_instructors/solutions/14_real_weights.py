"""Solutions to the exercises of notebook 14 (real weights).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch


def weight_memory_gib(cfg, dtype):
    """GiB of memory the weights of a model with config `cfg` take in `dtype`."""
    bytes_per_param = torch.finfo(dtype).bits // 8
    return cfg.n_params() * bytes_per_param / 2**30


def kv_cache_bytes(cfg, n_tokens, dtype):
    """Bytes of the KV cache of one sequence of `n_tokens` tokens, summed over layers."""
    bytes_per_number = torch.finfo(dtype).bits // 8
    per_kept_token = 2 * cfg.n_kv_heads * cfg.d_head * bytes_per_number  # one key and one value
    total = 0
    for layer in range(cfg.n_layers):
        kept = min(n_tokens, cfg.sliding_window) if cfg.is_local(layer) else n_tokens
        total += kept * per_kept_token
    return total
