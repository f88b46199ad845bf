"""Exercises of lesson 07, sampling filters (``notebooks/07_generation_and_sampling.ipynb``).

Exercises: top_k_filter, top_p_filter. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import math

import torch

from gemma_lab import sampling
from gemma_lab.exercises._trials import _randn
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number

__all__ = [
    "top_k_filter",
    "top_p_filter",
]

NOTEBOOK = "07_generation_and_sampling"


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, the rest ``-inf`` (``gemma_lab.sampling.apply_top_k``)."""
    return sampling.apply_top_k(logits, k)


def _logits(generator: torch.Generator, scale: float) -> torch.Tensor:
    shape = [randint(generator, 1, 3), randint(generator, 5, 40)]
    if trial_number(generator) == 2:
        shape = shape[1:]  # a single row: [vocab]
    return _randn(generator, *shape, scale=scale)


def _top_k_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    logits = _logits(generator, 3.0)
    vocab = logits.shape[-1]
    k = {0: 1, 1: vocab + 3}.get(trial, randint(generator, 2, vocab - 1))
    return logits, k


def _top_k_smallest(logits, k):
    k = min(k, logits.shape[-1])
    kth_smallest = logits.topk(k, dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth_smallest, -math.inf)


def _top_k_one_extra(logits, k):
    ordered = logits.sort(dim=-1, descending=True).values
    threshold = ordered[..., min(k, logits.shape[-1] - 1)][..., None]
    return logits.masked_fill(logits < threshold, -math.inf)


def _top_k_zero_fill(logits, k):
    return sampling.apply_top_k(logits, k).nan_to_num(neginf=0.0)


_NEG_INF_HINT = ("Did you set the removed logits to -inf? A logit of 0 still gets probability after the softmax; "
                 "-inf gets exactly 0.")

exercise(
    "top_k_filter",
    make_inputs=_top_k_inputs,
    reference=top_k_filter,
    mistakes={
        "Did you keep the k largest logits? (Sorting ascending, or topk(largest=False), picks the smallest.)":
            _top_k_smallest,
        "Is k off by one? Keep the k largest: remove every logit below the k-th largest (index k - 1 of the "
        "descending order).": _top_k_one_extra,
        _NEG_INF_HINT: _top_k_zero_fill,
    },
    notebook=NOTEBOOK,
)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens holding at least ``p`` of the probability, the rest
    ``-inf`` (``gemma_lab.sampling.apply_top_p``)."""
    return sampling.apply_top_p(logits, p)


def _top_p_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    p = {0: 0.9, 1: 1.0, 2: 0.5, 3: 0.01}.get(trial) or choice(generator, [0.3, 0.75, 0.95])
    return _logits(generator, 2.0), p


def _sorted_probs(logits, descending=True):
    ordered, order = logits.sort(dim=-1, descending=descending)
    return ordered.float().softmax(-1), order


def _keep_sorted(logits, keep_sorted, order):
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, -math.inf)


def _top_p_drops_crossing_token(logits, p):
    probs, order = _sorted_probs(logits)
    return _keep_sorted(logits, probs.cumsum(-1) <= p, order)


def _top_p_unsorted(logits, p):
    probs = logits.float().softmax(-1)
    before = probs.cumsum(-1) - probs
    return logits.masked_fill(before >= p, -math.inf)


def _top_p_ascending(logits, p):
    probs, order = _sorted_probs(logits, descending=False)
    before = probs.cumsum(-1) - probs
    return _keep_sorted(logits, before < p, order)


def _top_p_zero_fill(logits, p):
    return sampling.apply_top_p(logits, p).nan_to_num(neginf=0.0)


exercise(
    "top_p_filter",
    make_inputs=_top_p_inputs,
    reference=top_p_filter,
    mistakes={
        "Did you keep the token that carries the total past p? Keep a token while the probability of the more "
        "likely tokens before it is still below p (so the most likely token always stays).":
            _top_p_drops_crossing_token,
        "Did you sort by probability before the cumulative sum? The nucleus is made of the most likely tokens.":
            _top_p_unsorted,
        "Did you sort in descending order? Start the running total at the most likely token.": _top_p_ascending,
        _NEG_INF_HINT: _top_p_zero_fill,
    },
    notebook=NOTEBOOK,
)
