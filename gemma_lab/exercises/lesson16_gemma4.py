"""Exercises of lesson 16, what changed in Gemma 4 (``notebooks/16_gemma4.ipynb``).

Exercises: route_tokens (the router's top-k, renormalisation and per-expert scale),
kv_cache_bytes (what KV sharing saves), partial_rotary (Gemma 4's proportional RoPE) and
combine_per_layer (how the per-layer embeddings are made). Each reference runs the package's own
code: a ``Router`` module fed the trial's logits through its hook, a ``KVCache`` built on the meta
device, ``rotary_cos_sin``/``apply_rotary``, and a ``PerLayerEmbedding`` module holding the trial's
weights. The usual mistakes are written out as the wrong functions they describe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from gemma_lab import gemma4_parts
from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.exercises._trials import _positions
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number
from gemma_lab.kv_cache import KVCache
from gemma_lab.model import RMSNorm, apply_rotary, rotary_cos_sin

__all__ = [
    "combine_per_layer_inputs",
    "combine_per_layer_reference",
    "kv_cache_bytes_inputs",
    "kv_cache_bytes_reference",
    "partial_rotary_inputs",
    "partial_rotary_reference",
    "route_tokens_inputs",
    "route_tokens_reference",
]

NOTEBOOK = "16_gemma4"


def _gemma4_stub(d_model: int, **fields) -> GemmaConfig:
    """The smallest Gemma 4 config holding the fields a single Gemma 4 module reads."""
    return GemmaConfig(family=4, vocab_size=1, d_model=d_model, n_layers=1, n_heads=1, n_kv_heads=1, d_head=2,
                       d_mlp=1, **fields)


# ---------------------------------------------------------------------------------------------
# The router: softmax -> top-k -> renormalise -> per-expert scale
# ---------------------------------------------------------------------------------------------


def route_tokens_inputs(generator: torch.Generator) -> tuple:
    n_experts = choice(generator, (4, 8, 16, 128))
    k = randint(generator, 1, min(8, n_experts - 1))
    dtype = torch.bfloat16 if trial_number(generator) % 3 == 2 else torch.float32
    logits = (torch.randn(randint(generator, 1, 2), randint(generator, 1, 9), n_experts, generator=generator) * 2)
    per_expert_scale = torch.rand(n_experts, generator=generator) + 0.5
    return logits.to(dtype), k, per_expert_scale


def route_tokens_reference(logits: torch.Tensor, k: int, per_expert_scale: torch.Tensor):
    """``(chosen [batch, pos, k] int64, weights [batch, pos, k] fp32)``: what Gemma 4's ``Router`` does
    with these logits (the module itself runs, the logits put in through its ``hook_logits``)."""
    router = gemma4_parts.Router(_gemma4_stub(8, n_experts=logits.shape[-1], n_experts_active=k, d_expert=1),
                                 RMSNorm)
    with torch.no_grad():
        router.per_expert_scale.copy_(per_expert_scale)
    # Its softmax runs in fp32 whatever the logits' dtype: the same as feeding it the logits widened.
    router.hook_logits.add_hook(lambda _, hook: logits.float())
    return router(torch.ones(*logits.shape[:-1], 8))


def _route_not_renormalised(logits, k, per_expert_scale):
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k, dim=-1)
    return top.indices, top.values * per_expert_scale[top.indices]


def _route_no_expert_scale(logits, k, per_expert_scale):
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k, dim=-1)
    return top.indices, top.values / top.values.sum(dim=-1, keepdim=True)


def _route_scale_by_slot(logits, k, per_expert_scale):
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k, dim=-1)
    return top.indices, top.values / top.values.sum(dim=-1, keepdim=True) * per_expert_scale[:k]


def _route_renormalised_after_scaling(logits, k, per_expert_scale):
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k, dim=-1)
    scaled = top.values * per_expert_scale[top.indices]
    return top.indices, scaled / scaled.sum(dim=-1, keepdim=True)


exercise(
    "route_tokens",
    make_inputs=route_tokens_inputs,
    reference=route_tokens_reference,
    mistakes={
        "Renormalise: the k chosen probabilities are divided by their sum, so that each token's weights "
        "sum to 1 before the per-expert scale.": _route_not_renormalised,
        "Each chosen expert's weight is then multiplied by that expert's learned per_expert_scale.":
            _route_no_expert_scale,
        "per_expert_scale is indexed by expert id (per_expert_scale[chosen]), not by slot in the top-k.":
            _route_scale_by_slot,
        "The per-expert scale comes after the renormalisation: scaled weights no longer sum to 1.":
            _route_renormalised_after_scaling,
    },
    notebook=NOTEBOOK,
)


# ---------------------------------------------------------------------------------------------
# KV cache bytes, with and without KV sharing
# ---------------------------------------------------------------------------------------------

_GEMMA4_PRESETS = ("gemma4-e2b", "gemma4-e4b", "gemma4-31b", "gemma4-26b-a4b", "test-gemma4")


def kv_cache_bytes_inputs(generator: torch.Generator) -> tuple:
    cfg = PRESETS[_GEMMA4_PRESETS[trial_number(generator) % len(_GEMMA4_PRESETS)]]
    # Around the sliding window too: local layers stop growing there.
    n_tokens = choice(generator, (1, cfg.sliding_window, cfg.sliding_window + 1, randint(generator, 2, 5000)))
    return cfg, n_tokens, trial_number(generator) % 4 != 3


def kv_cache_bytes_reference(cfg: GemmaConfig, n_tokens: int, share_kv: bool) -> int:
    """Bytes of bf16 keys and values the package's ``KVCache`` holds after ``n_tokens`` tokens of one
    sequence (built on the meta device: shapes only); ``share_kv=False``: as if no layer shared."""
    if not share_kv:
        cfg = cfg.replace(n_kv_shared_layers=0)
    return KVCache(cfg, 1, n_tokens, dtype=torch.bfloat16, device="meta").nbytes()


def _kv_bytes(cfg, n_tokens, *, layers=None, per_number=2, k_and_v=2, window=True, wide=True, global_kv=True,
              kv_only_when_v_proj=False):
    total = 0
    for layer in (range(cfg.n_layers) if layers is None else layers):
        kept = min(n_tokens, cfg.sliding_window) if window and cfg.is_local(layer) else n_tokens
        d_head = cfg.d_head_for(layer) if wide else cfg.d_head
        n_kv = cfg.n_kv_heads_for(layer) if global_kv else cfg.n_kv_heads
        tensors = 1 if kv_only_when_v_proj and not cfg.has_v_proj(layer) else k_and_v
        total += tensors * per_number * n_kv * d_head * kept
    return total


def _owning(cfg, share_kv):
    return [layer for layer in range(cfg.n_layers) if not (share_kv and cfg.is_kv_shared(layer))]


exercise(
    "kv_cache_bytes",
    make_inputs=kv_cache_bytes_inputs,
    reference=kv_cache_bytes_reference,
    mistakes={
        "With sharing, the KV-shared layers (cfg.is_kv_shared(layer)) store nothing: they read their "
        "source layer's cache.": lambda cfg, n, share: _kv_bytes(cfg, n),
        "Keys and values: two tensors per layer, not one.": lambda cfg, n, share: _kv_bytes(
            cfg, n, layers=_owning(cfg, share), k_and_v=1),
        "bf16 is 2 bytes per number (fp32 would be 4).": lambda cfg, n, share: _kv_bytes(
            cfg, n, layers=_owning(cfg, share), per_number=4),
        "A sliding-window layer keeps at most sliding_window tokens.": lambda cfg, n, share: _kv_bytes(
            cfg, n, layers=_owning(cfg, share), window=False),
        "Global layers have wider heads: use cfg.d_head_for(layer).": lambda cfg, n, share: _kv_bytes(
            cfg, n, layers=_owning(cfg, share), wide=False),
        "K=V models have fewer kv heads on global layers: use cfg.n_kv_heads_for(layer).":
            lambda cfg, n, share: _kv_bytes(cfg, n, layers=_owning(cfg, share), global_kv=False),
        "K=V layers still store values: the key after k_norm and RoPE and the value after v_norm are "
        "two different tensors.": lambda cfg, n, share: _kv_bytes(
            cfg, n, layers=_owning(cfg, share), kv_only_when_v_proj=True),
    },
    notebook=NOTEBOOK,
)


# ---------------------------------------------------------------------------------------------
# Proportional (partial) RoPE
# ---------------------------------------------------------------------------------------------


def partial_rotary_inputs(generator: torch.Generator) -> tuple:
    d_head = choice(generator, (16, 32, 64, 512))
    fraction = (0.25, 0.5, 0.25, 1.0)[trial_number(generator) % 4]
    batch, pos, heads = randint(generator, 1, 2), randint(generator, 1, 6), randint(generator, 1, 3)
    x = torch.randn(batch, pos, heads, d_head, generator=generator)
    return x, _positions(generator, batch, pos), choice(generator, (10_000.0, 1_000_000.0)), fraction


def partial_rotary_reference(x: torch.Tensor, positions: torch.Tensor, theta: float, fraction: float) -> torch.Tensor:
    """``x [batch, pos, head, d_head]`` rotated as on a Gemma 4 global layer: the model's own RoPE."""
    cos, sin = rotary_cos_sin(positions, x.shape[-1], theta, 1.0, x.dtype, fraction=fraction)
    return apply_rotary(x, cos, sin)


def _rotate(x, positions, inv_freq):
    """Gemma's rotation of pairs (i, i + d/2) of ``x`` by ``position * inv_freq[i]``."""
    angles = positions.float()[..., None] * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos()[:, :, None], torch.cat([angles, angles], -1).sin()[:, :, None]
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def _rotary_all_pairs(x, positions, theta, fraction):
    d_head = x.shape[-1]
    return _rotate(x, positions, theta ** -(torch.arange(0, d_head, 2).float() / d_head))


def _rotary_frequencies_of_the_rotated_part(x, positions, theta, fraction):
    d_head = x.shape[-1]
    n_rotated = int(fraction * d_head // 2)
    inv_freq = torch.zeros(d_head // 2)
    inv_freq[:n_rotated] = theta ** -(torch.arange(0, 2 * n_rotated, 2).float() / (2 * n_rotated))
    return _rotate(x, positions, inv_freq)


def _rotary_first_dims_as_a_small_head(x, positions, theta, fraction):
    n_dims = int(fraction * x.shape[-1])
    rotated = _rotary_all_pairs(x[..., :n_dims], positions, theta, 1.0)
    return torch.cat([rotated, x[..., n_dims:]], dim=-1)


exercise(
    "partial_rotary",
    make_inputs=partial_rotary_inputs,
    reference=partial_rotary_reference,
    mistakes={
        "Only the first fraction * d_head / 2 pairs rotate; the others keep angle 0 and pass unchanged.":
            _rotary_all_pairs,
        "Proportional RoPE keeps the frequencies a full head would have: theta ** (-2i / d_head), with the "
        "whole d_head, not the width of the rotated part.": _rotary_frequencies_of_the_rotated_part,
        "Gemma pairs dimension i with i + d_head/2: the rotating dimensions are the first n of each half, "
        "not the first fraction * d_head dimensions.": _rotary_first_dims_as_a_small_head,
    },
    notebook=NOTEBOOK,
)


# ---------------------------------------------------------------------------------------------
# Per-layer embeddings: the table rows and the projected main embedding, combined
# ---------------------------------------------------------------------------------------------


def combine_per_layer_inputs(generator: torch.Generator) -> tuple:
    n_layers, d_per_layer, d_model = randint(generator, 1, 4), choice(generator, (4, 8, 16)), choice(generator, (16, 32))
    batch, pos = randint(generator, 1, 2), randint(generator, 1, 6)
    table_rows = torch.randn(batch, pos, n_layers * d_per_layer, generator=generator) * 0.1
    embedded = torch.randn(batch, pos, d_model, generator=generator) * math.sqrt(d_model) * 0.1
    projection = torch.randn(n_layers * d_per_layer, d_model, generator=generator) * 0.3
    norm_weight = torch.rand(d_per_layer, generator=generator) + 0.5
    return table_rows, embedded, projection, norm_weight, 1e-6


def combine_per_layer_reference(table_rows: torch.Tensor, embedded: torch.Tensor, projection: torch.Tensor,
                                norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``[batch, pos, layer, d_per_layer]``: what ``PerLayerEmbedding`` makes of these table rows and
    this scaled main embedding (the module itself, holding the trial's weights, its table one row per token)."""
    batch, pos, width = table_rows.shape
    d_per_layer = norm_weight.shape[0]
    n_layers = width // d_per_layer
    cfg = _gemma4_stub(embedded.shape[-1], norm_eps=eps).replace(
        n_layers=n_layers, layer_types=("global",) * n_layers, d_per_layer=d_per_layer, vocab_per_layer=batch * pos)
    module = gemma4_parts.PerLayerEmbedding(cfg, RMSNorm)
    with torch.no_grad():
        module.embed.weight.copy_(rearrange(table_rows, "batch pos width -> (batch pos) width"))
        module.model_projection.weight.copy_(projection)
        module.projection_norm.weight.copy_(norm_weight)
    return module(torch.arange(batch * pos).reshape(batch, pos), embedded)


def _ple(table_rows, embedded, projection, norm_weight, eps, *, token_scale=True,
         half=True, gain_offset=False, norm_all_layers=False):
    d_per_layer, d_model = norm_weight.shape[0], embedded.shape[-1]
    token = table_rows * (d_per_layer ** 0.5 if token_scale else 1.0)
    context = F.linear(embedded, projection) * d_model ** -0.5
    gain = 1 + norm_weight if gain_offset else norm_weight
    if norm_all_layers:
        context = context * torch.rsqrt(context.pow(2).mean(-1, keepdim=True) + eps)
        context = rearrange(context, "b p (layer d) -> b p layer d", d=d_per_layer) * gain
    else:
        context = rearrange(context, "b p (layer d) -> b p layer d", d=d_per_layer)
        context = context * torch.rsqrt(context.pow(2).mean(-1, keepdim=True) + eps) * gain
    token = rearrange(token, "b p (layer d) -> b p layer d", d=d_per_layer)
    return (token + context) * (2 ** -0.5 if half else 1.0)


exercise(
    "combine_per_layer",
    make_inputs=combine_per_layer_inputs,
    reference=combine_per_layer_reference,
    mistakes={
        "The sum of two unit-scale parts is divided by sqrt(2), to keep it at unit scale.":
            lambda *a: _ple(*a, half=False),
        "Like the main embedding, the table rows are multiplied by sqrt(d_per_layer).":
            lambda *a: _ple(*a, token_scale=False),
        "Gemma 4's norms multiply by w itself, not by 1 + w as Gemma 1-3's do.": lambda *a: _ple(*a, gain_offset=True),
        "The norm is over each layer's d_per_layer numbers, not over all layers' at once.":
            lambda *a: _ple(*a, norm_all_layers=True),
    },
    notebook=NOTEBOOK,
)
