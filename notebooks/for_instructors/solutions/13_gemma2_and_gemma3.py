"""Solutions to the exercises of notebook 13 (Gemma 2 and Gemma 3: what changed and why).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch


def softcap(x, cap):
    """cap * tanh(x / cap): about x near zero, never beyond ±cap. Keeps x's shape and dtype."""
    return cap * torch.tanh(x / cap)


def sliding_window_mask(n_pos, window):
    """[q_pos, k_pos] bool: True where query q may attend to key k on a local layer."""
    q = torch.arange(n_pos)[:, None]  # [q_pos, 1]
    k = torch.arange(n_pos)[None, :]  # [1, k_pos]
    return (k <= q) & (q - k < window)
