"""Exercises of lesson 04, attention: the mask, the pattern, grouped-query attention (``notebooks/04_attention.ipynb``).

Exercises: attention_mask, attention_pattern, grouped_attention. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange

from gemma_lab import model as gemma_model
from gemma_lab.config import GemmaConfig
from gemma_lab.exercises._trials import _SCALE_HINT, _dtype, _grouped, _positions, _randn
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number

__all__ = [
    "attention_mask",
    "attention_pattern",
    "grouped_attention",
]

NOTEBOOK = "04_attention"


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """``[batch, q_pos, k_pos]`` True where a query may attend to a key (``gemma_lab.model.attention_mask``)."""
    return gemma_model.attention_mask(q_positions, k_positions, torch.ones_like(k_positions, dtype=torch.bool),
                                      window)


def _attention_mask_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    if trial == 0:
        positions = torch.arange(5)[None]
        return positions, positions, None
    if trial == 1:
        positions = torch.arange(8)[None]
        return positions, positions, 3
    if trial == 2:  # one new token decoding against a cache of 8 keys
        return torch.tensor([[7]]), torch.arange(8)[None], 4
    batch, n_keys = randint(generator, 1, 2), randint(generator, 2, 10)
    n_queries = randint(generator, 1, n_keys)
    k_positions = _positions(generator, batch, n_keys, high=20)
    window = choice(generator, [None, 1, 2, 3, n_keys])
    return k_positions[:, -n_queries:], k_positions, window


def _mask_parts(q_positions, k_positions):
    return q_positions[:, :, None], k_positions[:, None, :]


def _attention_mask_not_causal(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = torch.ones(q.shape[0], q.shape[1], k.shape[2], dtype=torch.bool)
    return allowed & ((q - k).abs() < window) if window is not None else allowed


def _attention_mask_future(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = k >= q
    return allowed & (k - q < window) if window is not None else allowed


def _attention_mask_window_off_by_one(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = k <= q
    return allowed & (q - k <= window) if window is not None else allowed


def _attention_mask_no_window(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    return k <= q


def _attention_mask_strict(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = k < q
    return allowed & (q - k < window) if window is not None else allowed


exercise(
    "attention_mask",
    make_inputs=_attention_mask_inputs,
    reference=attention_mask,
    mistakes={
        "Did you forget the causal mask? A query may attend only to keys at its own position or earlier (k <= q).":
            _attention_mask_not_causal,
        "Did you let queries see the future? Allowed is k <= q, not k >= q.": _attention_mask_future,
        "Is your window off by one? It counts the query itself: allowed when q - k < window, so a query sees "
        "at most `window` keys.": _attention_mask_window_off_by_one,
        "Did you apply the sliding window? When window is not None, keys window or more positions back are masked.":
            _attention_mask_no_window,
        "Did you mask the diagonal? A query always attends to its own key: k <= q, not k < q.":
            _attention_mask_strict,
    },
    notebook=NOTEBOOK,
)


def _attention_module(n_heads: int, n_kv_heads: int, d_head: int, query_pre_attn_scalar: float,
                      softcap: float | None) -> gemma_model.Attention:
    """A ``gemma_lab.model.Attention`` for these head sizes (its projections are never used here)."""
    cfg = GemmaConfig(family=2, vocab_size=1, d_model=1, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads,
                      d_head=d_head, d_mlp=1, query_pre_attn_scalar=float(query_pre_attn_scalar),
                      attn_softcap=softcap)
    return gemma_model.Attention(cfg, 0)


def _package_attention(q, k, v, allowed, query_pre_attn_scalar, softcap):
    """(pattern, z) from the package's explicit attention path; k, v are ``[batch, k_pos, kv_head, d_head]``."""
    attention = _attention_module(q.shape[2], k.shape[2], q.shape[3], query_pre_attn_scalar, softcap)
    seen = {}

    def keep(pattern, hook):
        seen["pattern"] = pattern

    attention.hook_pattern.fwd_fns.append(keep)
    to_heads = "batch k_pos kv_head d_head -> batch kv_head k_pos d_head"
    z = attention._explicit_attention(q, rearrange(k, to_heads), rearrange(v, to_heads), allowed)
    return seen["pattern"], z


def attention_pattern(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, query_pre_attn_scalar: float,
                      softcap: float | None = None) -> torch.Tensor:
    """``[batch, head, q_pos, k_pos]`` attention weights for ``q [batch, q_pos, head, d_head]`` and
    ``k [batch, k_pos, head, d_head]`` (one key head per query head), by the package's attention."""
    return _package_attention(q, k, torch.zeros_like(k), allowed, query_pre_attn_scalar, softcap)[0]


def _attention_trial(generator: torch.Generator, n_kv_heads: int, group: int) -> tuple:
    """q, k, v, allowed for one attention trial (k and v with ``n_kv_heads`` heads)."""
    trial = trial_number(generator)
    dtype = _dtype(generator)
    batch = randint(generator, 1, 2)
    d_head = choice(generator, [4, 8, 16])
    n_keys = randint(generator, 2, 9)
    n_queries = 1 if trial == 2 else randint(generator, 1, n_keys)
    k_positions = _positions(generator, batch, n_keys, high=10)
    window = choice(generator, [None, 2, 3]) if trial > 1 else (None, 3)[trial]
    allowed = attention_mask(k_positions[:, -n_queries:], k_positions, window)
    q = _randn(generator, batch, n_queries, n_kv_heads * group, d_head, dtype=dtype)
    k = _randn(generator, batch, n_keys, n_kv_heads, d_head, dtype=dtype)
    v = _randn(generator, batch, n_keys, n_kv_heads, d_head, dtype=dtype)
    return q, k, v, allowed, d_head


def _attention_pattern_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    heads = randint(generator, 1, 3)
    q, k, _, allowed, d_head = _attention_trial(generator, heads, 1)
    scalar = choice(generator, [d_head / 2, 2.0 * d_head, 10.0])
    softcap = None
    if trial in (3, 5):  # Gemma 2: large scores, so the cap bites
        q, softcap = q * 4, choice(generator, [5.0, 20.0])
    return q, k, allowed, scalar, softcap


def _scores(q, k, scale, softcap, allowed, fill=None):
    scores = einsum(q.float(), k.float(), "batch q_pos head d_head, batch k_pos head d_head -> batch head q_pos k_pos")
    scores = scores * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if allowed is not None:
        fill = torch.finfo(scores.dtype).min if fill is None else fill
        scores = scores.masked_fill(~allowed[:, None], fill)
    return scores


def _attention_pattern_head_dim_scale(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, q.shape[-1] ** -0.5, softcap, allowed).softmax(-1).to(q.dtype)


def _attention_pattern_not_square_root(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, 1 / query_pre_attn_scalar, softcap, allowed).softmax(-1).to(q.dtype)


def _attention_pattern_unmasked(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, None).softmax(-1).to(q.dtype)


def _attention_pattern_query_softmax(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, allowed).softmax(-2).to(q.dtype)


def _attention_pattern_no_softcap(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, None, allowed).softmax(-1).to(q.dtype)


def _attention_pattern_zero_fill(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, allowed, fill=0.0).softmax(-1).to(q.dtype)


def _attention_pattern_mask_after_softmax(q, k, allowed, query_pre_attn_scalar, softcap=None):
    pattern = _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, None).softmax(-1)
    return (pattern * allowed[:, None]).to(q.dtype)


_CAUSAL_HINT = "Did you forget the causal mask? Masked scores must get a very negative value before the softmax."

exercise(
    "attention_pattern",
    make_inputs=_attention_pattern_inputs,
    reference=attention_pattern,
    mistakes={
        _SCALE_HINT: _attention_pattern_head_dim_scale,
        "Did you divide by query_pre_attn_scalar rather than by its square root?": _attention_pattern_not_square_root,
        _CAUSAL_HINT: _attention_pattern_unmasked,
        "Did you apply softmax over the query axis? Each query's weights over the keys sum to 1: softmax over "
        "k_pos, the last axis.": _attention_pattern_query_softmax,
        "Did you apply the softcap when one is given? Gemma 2: scores = softcap * tanh(scores / softcap), "
        "after scaling and before the mask.": _attention_pattern_no_softcap,
        "Did you mask with 0? A score of 0 still gets weight after the softmax; use a very negative number "
        "(torch.finfo(dtype).min) or -inf.": _attention_pattern_zero_fill,
        "Did you mask after the softmax? Mask the scores first, so that the allowed weights sum to 1.":
            _attention_pattern_mask_after_softmax,
    },
    notebook=NOTEBOOK,
)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                      query_pre_attn_scalar: float, softcap: float | None = None) -> torch.Tensor:
    """``z [batch, q_pos, head, d_head]``: each group of query heads attends with its own kv_head
    (``q [batch, q_pos, head, d_head]``, ``k``/``v [batch, k_pos, kv_head, d_head]``), by the package."""
    return _package_attention(q, k, v, allowed, query_pre_attn_scalar, softcap)[1]


def _grouped_attention_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    n_kv_heads, group = [(1, 3), (2, 3), (3, 1), (2, 2)][trial] if trial < 4 else (randint(generator, 1, 3),
                                                                                 randint(generator, 1, 4))
    q, k, v, allowed, d_head = _attention_trial(generator, n_kv_heads, group)
    scalar = choice(generator, [d_head / 2, 2.0 * d_head])
    return q, k, v, allowed, scalar, None


def _grouped_attention_tiled(q, k, v, allowed, query_pre_attn_scalar, softcap=None):
    return _grouped(q, k, v, allowed, query_pre_attn_scalar ** -0.5, softcap, kv_layout="(group kv_head)")


def _grouped_attention_unmasked(q, k, v, allowed, query_pre_attn_scalar, softcap=None):
    return _grouped(q, k, v, allowed, query_pre_attn_scalar ** -0.5, softcap, masked=False)


def _grouped_attention_head_dim_scale(q, k, v, allowed, query_pre_attn_scalar, softcap=None):
    return _grouped(q, k, v, allowed, q.shape[-1] ** -0.5, softcap)


exercise(
    "grouped_attention",
    make_inputs=_grouped_attention_inputs,
    reference=grouped_attention,
    mistakes={
        "Did you group the query heads as (kv_head group)? Consecutive query heads share a kv_head "
        "(query head h uses kv_head h // group), like repeat_interleave, not repeat.": _grouped_attention_tiled,
        _CAUSAL_HINT: _grouped_attention_unmasked,
        _SCALE_HINT: _grouped_attention_head_dim_scale,
    },
    notebook=NOTEBOOK,
)
