"""Solutions to the exercises of notebook 09 (attention patterns, previous-token and induction heads).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch


def prev_token_score(pattern):
    """[batch, head, q_pos, k_pos] -> [head]: mean attention from each query to the key just before it."""
    q_pos = torch.arange(1, pattern.shape[-2])
    to_previous = pattern[:, :, q_pos, q_pos - 1]  # [batch, head, q_pos - 1]
    return to_previous.mean(dim=(0, 2))


def induction_score(pattern, seq_len):
    """[batch, head, q_pos, k_pos], n -> [head]: mean attention to the token after the earlier copy."""
    n_pos = pattern.shape[-2]
    q_pos = torch.arange(n_pos - seq_len, n_pos)  # the second copy
    to_next_of_earlier = pattern[:, :, q_pos, q_pos - seq_len + 1]  # [batch, head, seq_len]
    return to_next_of_earlier.mean(dim=(0, 2))
