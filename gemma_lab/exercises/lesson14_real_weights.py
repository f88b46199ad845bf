"""Exercises of lesson 14, real weights (``notebooks/14_real_weights.ipynb``).

Exercises: weight_memory_gib, kv_cache_bytes. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number

__all__ = [
    "kv_cache_bytes_inputs",
    "kv_cache_bytes_reference",
    "weight_memory_gib_inputs",
    "weight_memory_gib_reference",
]

NOTEBOOK = "14_real_weights"


_FULL_SIZE = tuple(name for name in PRESETS if not name.startswith("test-"))
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def weight_memory_gib_inputs(generator: torch.Generator) -> tuple:
    return PRESETS[choice(generator, _FULL_SIZE)], choice(generator, _DTYPES)


def weight_memory_gib_reference(cfg: GemmaConfig, dtype: torch.dtype) -> float:
    """GiB (2**30 bytes) the weights take: parameters (tied embedding once) times bytes per parameter."""
    return cfg.n_params() * torch.finfo(dtype).bits / 8 / 2**30


def _memory_in_gb(cfg, dtype):
    return cfg.n_params() * torch.finfo(dtype).bits / 8 / 1e9


def _memory_untied(cfg, dtype):
    return (cfg.n_params() + cfg.vocab_size * cfg.d_model) * torch.finfo(dtype).bits / 8 / 2**30


def _memory_bits(cfg, dtype):
    return cfg.n_params() * torch.finfo(dtype).bits / 2**30


exercise(
    "weight_memory_gib",
    make_inputs=weight_memory_gib_inputs,
    reference=weight_memory_gib_reference,
    mistakes={
        "A GiB is 2**30 bytes (1e9 bytes is a GB, about 7% less).": _memory_in_gb,
        "Gemma ties the unembedding to the embedding: one matrix, counted once (cfg.n_params() does).":
            _memory_untied,
        "finfo(dtype).bits counts bits: divide by 8 for bytes.": _memory_bits,
    },
    notebook=NOTEBOOK,
)


# Trial t: a Gemma 1, 2 and 3 model each, then the same again, with contexts shorter than, equal to
# and longer than the sliding window.
_KV_TRIALS = (("gemma-2b", 1.0), ("gemma2-2b", 2.0), ("gemma3-1b", 0.5), ("gemma-7b", 0.25),
              ("gemma2-9b", 1.0), ("gemma3-4b", 16.0))


def kv_cache_bytes_inputs(generator: torch.Generator) -> tuple:
    name, context_in_windows = _KV_TRIALS[trial_number(generator) % len(_KV_TRIALS)]
    cfg = PRESETS[name]
    n_tokens = int((cfg.sliding_window or 4096) * context_in_windows) + randint(generator, -1, 1)
    return cfg, n_tokens, choice(generator, _DTYPES)


def kv_cache_bytes_reference(cfg: GemmaConfig, n_tokens: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values for ``n_tokens`` tokens of one sequence, summed over layers.

    Per layer and kept token: a key and a value, each ``n_kv_heads x d_head`` numbers. A global layer
    keeps every token; a sliding-window layer only the last ``sliding_window`` (what ``KVCache`` keeps).
    Gemma 4: global layers have their own head width and kv heads, and KV-shared layers keep nothing.
    """
    total = 0
    for layer in range(cfg.n_layers):
        if cfg.is_kv_shared(layer):
            continue
        per_token = 2 * cfg.n_kv_heads_for(layer) * cfg.d_head_for(layer) * torch.finfo(dtype).bits // 8
        total += per_token * (min(n_tokens, cfg.sliding_window) if cfg.is_local(layer) else n_tokens)
    return total


def _kv_ignoring_window(cfg, n_tokens, dtype):
    return 2 * cfg.n_kv_heads * cfg.d_head * torch.finfo(dtype).bits // 8 * n_tokens * cfg.n_layers


def _kv_query_heads(cfg, n_tokens, dtype):
    per_token = 2 * cfg.n_heads * cfg.d_head * torch.finfo(dtype).bits // 8
    kept = [min(n_tokens, cfg.sliding_window) if cfg.is_local(layer) else n_tokens for layer in range(cfg.n_layers)]
    return per_token * sum(kept)


def _kv_keys_only(cfg, n_tokens, dtype):
    return kv_cache_bytes_reference(cfg, n_tokens, dtype) // 2


exercise(
    "kv_cache_bytes",
    make_inputs=kv_cache_bytes_inputs,
    reference=kv_cache_bytes_reference,
    mistakes={
        "Sliding-window layers (cfg.is_local(layer)) keep at most cfg.sliding_window tokens.": _kv_ignoring_window,
        "Only the key/value heads are cached (cfg.n_kv_heads): grouped- and multi-query attention "
        "share them between query heads, which is the point.": _kv_query_heads,
        "Both keys and values are cached: a factor 2.": _kv_keys_only,
    },
    notebook=NOTEBOOK,
)
