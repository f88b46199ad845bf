"""Exercises of lesson 12, steering (``notebooks/12_steering.ipynb``).

Exercises: steering_vector. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises._trials import _random_float
from gemma_lab.exercises.checking import exercise, randint

__all__ = [
    "steering_vector_inputs",
    "steering_vector_reference",
]

NOTEBOOK = "12_steering"


def steering_vector_inputs(generator: torch.Generator) -> tuple:
    d_model = randint(generator, 4, 32)
    acts_a = _random_float(generator, (randint(generator, 1, 6), d_model)) + 1.0
    acts_b = _random_float(generator, (randint(generator, 1, 6), d_model)).to(acts_a.dtype)
    return acts_a, acts_b


def steering_vector_reference(acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
    """``mean(acts_a) - mean(acts_b)`` over prompts: ``[n_a, d_model], [n_b, d_model] -> [d_model]``."""
    return acts_a.mean(dim=0) - acts_b.mean(dim=0)


def _steering_reversed(acts_a, acts_b):
    return acts_b.mean(dim=0) - acts_a.mean(dim=0)


def _steering_normalised(acts_a, acts_b):
    direction = acts_a.mean(dim=0) - acts_b.mean(dim=0)
    return direction / direction.norm()


def _steering_summed(acts_a, acts_b):
    return acts_a.sum(dim=0) - acts_b.sum(dim=0)


exercise(
    "steering_vector",
    make_inputs=steering_vector_inputs,
    reference=steering_vector_reference,
    mistakes={
        "The direction points from B to A: mean(acts_a) - mean(acts_b).": _steering_reversed,
        "Keep the length: the difference of means already has the size of a real change in the "
        "residual stream, which is what makes a coefficient of 1 meaningful.": _steering_normalised,
        "A sum grows with the number of prompts, and the two sets need not be the same size: take "
        "the mean of each.": _steering_summed,
    },
    notebook=NOTEBOOK,
)
