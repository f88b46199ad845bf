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


def k_composition_scores(ov, qk):
    """[head_e, d, d], [head_l, d, d] -> [head_l, head_e]: K-composition of each (later, earlier) pair."""
    keys_read = qk.transpose(-1, -2)  # the later head reads its keys through qk.T: x_q @ qk @ x_k.T
    product = ov[None] @ keys_read[:, None]  # [head_l, head_e, d, d]: broadcast every pair
    norm = torch.linalg.matrix_norm  # Frobenius over the last two axes
    return norm(product) / (norm(ov)[None] * norm(keys_read)[:, None])


def ov_copying_score(full_ov):
    """[vocab, vocab] -> []: the fraction of rows whose largest entry is on the diagonal."""
    rows = torch.arange(full_ov.shape[0])
    return (full_ov.argmax(dim=-1) == rows).float().mean()


def scores_by_offset(q, k, offsets, theta, rope_scale=1.0):
    """[n_q, d_head], [n_k, d_head], [offset] -> [offset, n_q, n_k]: rot(q, offset) . k for each offset."""
    d_head = q.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)  # [d_head/2]
    angles = offsets.float()[:, None] / rope_scale * inv_freq  # [offset, d_head/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None, :]  # [offset, 1, d_head]: pair i with i + d_head/2
    first, second = q.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)  # [n_q, d_head]
    rotated = q * angles.cos() + rotated_half * angles.sin()  # [offset, n_q, d_head]
    return rotated @ k.T
