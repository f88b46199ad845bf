"""Pieces the exercise modules share: random trial inputs, small models, comparisons.

Imports torch, the model and the config; never widgets or plotting.
"""

from __future__ import annotations

import math

import torch
from einops import einsum, rearrange
from torch import nn

from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.exercises.checking import choice, randint, trial_number
from gemma_lab.model import Gemma, init_weights


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0, dtype: torch.dtype = torch.float32):
    return (torch.randn(shape, generator=generator) * scale).to(dtype)


def _dtype(generator: torch.Generator) -> torch.dtype:
    """float32 on trial 0, bfloat16 on trial 1, either afterwards."""
    trial = trial_number(generator)
    if trial < 2:
        return (torch.float32, torch.bfloat16)[trial]
    return choice(generator, [torch.float32, torch.bfloat16])


def exactly_equal(got, expected) -> bool:
    """Bit-for-bit comparison (shape and dtype included), for results that have one right answer."""
    if isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype
                and torch.equal(got, expected))
    return got == expected


# The small random-weight architectures the model-based trials cycle through: one per generation.
_SMALL_PRESETS = ("test-gemma", "test-gemma2", "test-gemma3")


def _small_model(generator: torch.Generator) -> Gemma:
    """A small random Gemma; trial t uses generation t % 3 + 1, so every generation is tried."""
    name = _SMALL_PRESETS[trial_number(generator) % len(_SMALL_PRESETS)]
    seed = randint(generator, 0, 10_000)
    # std 0.1 rather than init_weights' 0.02: spread-out logits make wrong answers visibly wrong.
    return init_weights(Gemma(PRESETS[name]), seed=seed, std=0.1).eval()


def _random_float(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Normal values in float32 on most trials and bfloat16 on the last ones (dtype must be kept)."""
    dtype = torch.bfloat16 if trial_number(generator) >= 4 else torch.float32
    return torch.randn(shape, generator=generator).to(dtype)


def _positions(generator: torch.Generator, batch: int, pos: int, high: int = 200) -> torch.Tensor:
    start = torch.randint(0, high, (batch, 1), generator=generator)
    return start + torch.arange(pos)


_SOFTMAX_AXIS_HINT = ("Did you take the softmax over the query axis? Each query's weights over the keys sum to 1: "
                      "softmax over k_pos (the last axis of the scores), not q_pos.")
_FUTURE_HINT = ("Is your causal comparison flipped? A query at q may read keys at k <= q (the past and itself); "
                "your mask lets it read k >= q, the future.")
_SCALE_HINT = ("Did you scale by sqrt(d_head) rather than query_pre_attn_scalar? Gemma 2 and 3 multiply the "
               "scores by query_pre_attn_scalar ** -0.5 (Gemma 1: d_head ** -0.5).")


def _grouped(q, k, v, allowed, scale, softcap, kv_layout="(kv_head group)", masked=True, softmax_dim=-1):
    dtype, n_kv_heads = v.dtype, k.shape[2]
    q = rearrange(q.float(), f"batch q_pos {kv_layout} d_head -> batch q_pos kv_head group d_head", kv_head=n_kv_heads)
    scores = einsum(q, k.float(), "batch q_pos kv_head group d_head, batch k_pos kv_head d_head "
                                  "-> batch kv_head group q_pos k_pos") * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if masked:
        scores = scores.masked_fill(~allowed[:, None, None], torch.finfo(scores.dtype).min)
    pattern = scores.softmax(softmax_dim)  # -1: over keys (right); -2 reproduces the slip "over queries"
    z = einsum(pattern, v.float(), "batch kv_head group q_pos k_pos, batch k_pos kv_head d_head "
                                   "-> batch q_pos kv_head group d_head")
    return rearrange(z, f"batch q_pos kv_head group d_head -> batch q_pos {kv_layout} d_head").to(dtype)


def _small_config(generator: torch.Generator, family: int, **changes) -> GemmaConfig:
    n_kv_heads = randint(generator, 1, 2)
    d_head = choice(generator, [4, 8])
    fields = dict(family=family, vocab_size=randint(generator, 20, 60), d_model=choice(generator, [16, 24, 32]),
                  n_layers=1, n_heads=n_kv_heads * randint(generator, 1, 3), n_kv_heads=n_kv_heads, d_head=d_head,
                  d_mlp=choice(generator, [24, 40]), max_seq_len=64, sandwich_norms=family >= 2,
                  qk_norm=family == 3)
    if family >= 2:
        fields["query_pre_attn_scalar"] = choice(generator, [d_head / 2, 2.0 * d_head])
    fields.update(changes)
    return GemmaConfig(**fields)


def _randomise(module: nn.Module, generator: torch.Generator, std: float = 0.3, norm_std: float = 0.4) -> nn.Module:
    """Random matrices and non-zero norm offsets (a zero offset would hide a missing ``1 +``)."""
    with torch.no_grad():
        for param in module.parameters():
            fan_in = param.shape[-1] if param.ndim > 1 else 1
            scale = norm_std if param.ndim == 1 else std * 4 / math.sqrt(fan_in)
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return module
