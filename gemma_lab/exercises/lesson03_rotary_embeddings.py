"""Exercises of lesson 03, rotary position embeddings (``notebooks/03_rotary_embeddings.ipynb``).

Exercises: rotary_cos_sin, apply_rotary. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab import model as gemma_model
from gemma_lab.exercises._trials import _dtype, _positions, _randn
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number

__all__ = [
    "apply_rotary",
    "rotary_cos_sin",
]

NOTEBOOK = "03_rotary_embeddings"


def rotary_cos_sin(positions: torch.Tensor, d_head: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[batch, pos, d_head]`` (float32) of RoPE's angles, by ``gemma_lab.model.rotary_cos_sin``."""
    return gemma_model.rotary_cos_sin(positions, d_head, theta, 1.0, torch.float32)


def _rotary_cos_sin_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    d_head = 2 if trial == 0 else choice(generator, [4, 8, 16, 32, 64])
    batch, pos = randint(generator, 1, 2), randint(generator, 1, 6)
    positions = torch.arange(pos)[None].repeat(batch, 1) if trial < 2 else _positions(generator, batch, pos)
    theta = choice(generator, [10_000.0, 1_000_000.0, 100.0])
    return positions, d_head, theta


def _angles(positions, d_head, theta, exponent_sign=-1.0, step=2):
    exponents = torch.arange(0, d_head, 2, dtype=torch.float32) / d_head
    if step == 1:
        exponents = torch.arange(0, d_head // 2, dtype=torch.float32) / d_head
    inv_freq = theta ** (exponent_sign * exponents)
    return positions.float()[..., None] * inv_freq


def _rotary_interleaved_frequencies(positions, d_head, theta):
    angles = _angles(positions, d_head, theta).repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


def _rotary_positive_exponent(positions, d_head, theta):
    angles = _angles(positions, d_head, theta, exponent_sign=1.0)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotary_exponent_step_one(positions, d_head, theta):
    angles = _angles(positions, d_head, theta, step=1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotary_swapped(positions, d_head, theta):
    cos, sin = rotary_cos_sin(positions, d_head, theta)
    return sin, cos


def _close_angles(got, expected) -> bool:
    """cos/sin of angles up to a few hundred radians: float32 angles carry ~1e-5 absolute error."""
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        return False
    return all(isinstance(g, torch.Tensor) and g.shape == e.shape and g.dtype == e.dtype
               and torch.allclose(g, e, rtol=0, atol=2e-4) for g, e in zip(got, expected))


exercise(
    "rotary_cos_sin",
    make_inputs=_rotary_cos_sin_inputs,
    reference=rotary_cos_sin,
    mistakes={
        "Did you pair dimension i with i + d_head/2? Repeat the d_head/2 angles as two halves "
        "(torch.cat([angles, angles], -1)), not as neighbours (repeat_interleave).": _rotary_interleaved_frequencies,
        "Is your exponent negative? The frequencies are theta ** (-2i / d_head): they fall from 1 towards 1/theta.":
            _rotary_positive_exponent,
        "Is your exponent 2i / d_head for i = 0 .. d_head/2 - 1? torch.arange(0, d_head, 2) / d_head.":
            _rotary_exponent_step_one,
        "Did you return (cos, sin) in that order?": _rotary_swapped,
    },
    compare=_close_angles,
    notebook=NOTEBOOK,
)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [batch, pos, head, d_head]`` by ``gemma_lab.model.apply_rotary``."""
    return gemma_model.apply_rotary(x, cos, sin)


def _apply_rotary_inputs(generator: torch.Generator) -> tuple:
    dtype = _dtype(generator)
    batch, pos, head = randint(generator, 1, 2), randint(generator, 1, 6), randint(generator, 1, 4)
    d_head = choice(generator, [2, 4, 8, 16])
    positions = _positions(generator, batch, pos, high=50)
    cos, sin = gemma_model.rotary_cos_sin(positions, d_head, choice(generator, [10_000.0, 100.0]), 1.0, dtype)
    return _randn(generator, batch, pos, head, d_head, dtype=dtype), cos, sin


def _apply_rotary_neighbours(x, cos, sin):
    half = x.shape[-1] // 2
    cos, sin = cos[:, :, None, :half], sin[:, :, None, :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2)


def _apply_rotary_wrong_sign(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    return x * cos[:, :, None] + torch.cat([second, -first], dim=-1) * sin[:, :, None]


def _apply_rotary_swapped(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    return x * sin[:, :, None] + torch.cat([-second, first], dim=-1) * cos[:, :, None]


exercise(
    "apply_rotary",
    make_inputs=_apply_rotary_inputs,
    reference=apply_rotary,
    mistakes={
        "Did you rotate pairs (i, i + d_head/2) rather than neighbours (2i, 2i+1)? Gemma uses rotate-half: "
        "split x into two halves.": _apply_rotary_neighbours,
        "Is the sign in rotate_half right? rotate_half(x) = cat(-second_half, first_half), so the first half "
        "becomes x1·cos − x2·sin.": _apply_rotary_wrong_sign,
        "Did you swap cos and sin? x·cos + rotate_half(x)·sin.": _apply_rotary_swapped,
    },
    notebook=NOTEBOOK,
)
