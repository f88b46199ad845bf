"""Solutions to the exercises of notebook 03 (rotary position embeddings).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell,
so a solution uses only what the notebook has imported by then.
"""

import torch
from einops import rearrange


def rotary_cos_sin(positions, d_head, theta):
    """cos and sin [batch, pos, d_head] of the angles position * theta ** (-2i / d_head)."""
    i = torch.arange(d_head // 2, dtype=torch.float32)
    inv_freq = theta ** (-2 * i / d_head)  # [d_head/2], from 1 down towards 1/theta
    angles = positions.float()[..., None] * inv_freq  # [batch, pos, d_head/2]
    angles = torch.cat([angles, angles], dim=-1)  # dimensions i and i + d_head/2 share an angle
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate each pair (i, i + d_head/2) of `x [batch, pos, head, d_head]` by its angle."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated_half = torch.cat([-x2, x1], dim=-1)
    cos = rearrange(cos, "batch pos d_head -> batch pos 1 d_head")  # the same angle for every head
    sin = rearrange(sin, "batch pos d_head -> batch pos 1 d_head")
    return x * cos + rotated_half * sin
