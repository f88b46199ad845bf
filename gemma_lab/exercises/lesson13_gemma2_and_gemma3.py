"""Exercises of lesson 13, Gemma 2 and Gemma 3 (``notebooks/13_gemma2_and_gemma3.ipynb``).

Exercises: softcap, sliding_window_mask. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises._trials import _random_float
from gemma_lab.exercises.checking import choice, exercise, randint
from gemma_lab.model import attention_mask

__all__ = [
    "sliding_window_mask_inputs",
    "sliding_window_mask_reference",
    "softcap_inputs",
    "softcap_reference",
]

NOTEBOOK = "13_gemma2_and_gemma3"


def softcap_inputs(generator: torch.Generator) -> tuple:
    cap = choice(generator, (50.0, 30.0, 5.0, 1.0))
    return _random_float(generator, (randint(generator, 1, 4), randint(generator, 1, 16))) * 3 * cap, cap


def softcap_reference(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``: close to ``x`` near zero, never beyond ``±cap`` (Gemma 2's softcaps)."""
    return cap * torch.tanh(x / cap)


def _softcap_hard_clip(x, cap):
    return x.clamp(-cap, cap)


def _softcap_no_rescale(x, cap):
    return torch.tanh(x / cap)


exercise(
    "softcap",
    make_inputs=softcap_inputs,
    reference=softcap_reference,
    mistakes={
        "A softcap is smooth: cap * tanh(x / cap), not a hard clamp (which has no gradient beyond the cap).":
            _softcap_hard_clip,
        "tanh lives in (-1, 1): multiply by cap again so that small values pass unchanged.": _softcap_no_rescale,
    },
    notebook=NOTEBOOK,
)


def sliding_window_mask_inputs(generator: torch.Generator) -> tuple:
    n_pos = randint(generator, 1, 16)
    return n_pos, randint(generator, 1, n_pos + 2)


def sliding_window_mask_reference(n_pos: int, window: int) -> torch.Tensor:
    """``[q_pos, k_pos]`` bool, True where a query may attend: the model's own causal sliding-window mask."""
    positions = torch.arange(n_pos)[None]
    return attention_mask(positions, positions, torch.ones_like(positions, dtype=torch.bool), window)[0]


def _window_one_too_wide(n_pos, window):
    q, k = torch.arange(n_pos)[:, None], torch.arange(n_pos)[None, :]
    return (k <= q) & (q - k <= window)


def _window_not_causal(n_pos, window):
    q, k = torch.arange(n_pos)[:, None], torch.arange(n_pos)[None, :]
    return (q - k).abs() < window


exercise(
    "sliding_window_mask",
    make_inputs=sliding_window_mask_inputs,
    reference=sliding_window_mask_reference,
    mistakes={
        "The window counts the query itself: a window of w sees q and the w - 1 before it, so q - k < w.":
            _window_one_too_wide,
        "Still causal: a key after the query (k > q) is never visible, window or not.": _window_not_causal,
    },
    notebook=NOTEBOOK,
)
