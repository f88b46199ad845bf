"""Exercises of lesson 11, activation patching on indirect-object identification (``notebooks/11_activation_patching_ioi.ipynb``).

Exercises: logit_difference, patch_residual. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises._trials import _random_float
from gemma_lab.exercises.checking import exercise, randint

__all__ = [
    "logit_difference_inputs",
    "logit_difference_reference",
    "patch_residual_inputs",
    "patch_residual_reference",
]

NOTEBOOK = "11_activation_patching_ioi"


def logit_difference_inputs(generator: torch.Generator) -> tuple:
    batch, n_pos, vocab = randint(generator, 1, 4), randint(generator, 2, 9), randint(generator, 8, 40)
    logits = _random_float(generator, (batch, n_pos, vocab))
    io_ids = torch.randint(0, vocab, (batch,), generator=generator)
    s_ids = (io_ids + torch.randint(1, vocab, (batch,), generator=generator)) % vocab  # never the IO token
    return logits, io_ids, s_ids


def logit_difference_reference(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``logit(IO) - logit(S)`` at the last position: a 0-d float32 tensor."""
    last = logits[:, -1, :].float()  # [batch, vocab]
    rows = torch.arange(last.shape[0])
    return (last[rows, io_ids] - last[rows, s_ids]).mean()


def _logit_difference_first_position(logits, io_ids, s_ids):
    first = logits[:, 0, :].float()
    rows = torch.arange(first.shape[0])
    return (first[rows, io_ids] - first[rows, s_ids]).mean()


def _logit_difference_swapped(logits, io_ids, s_ids):
    return -logit_difference_reference(logits, io_ids, s_ids)


def _logit_difference_summed(logits, io_ids, s_ids):
    return logit_difference_reference(logits, io_ids, s_ids) * logits.shape[0]


exercise(
    "logit_difference",
    make_inputs=logit_difference_inputs,
    reference=logit_difference_reference,
    mistakes={
        "The prediction for the answer is made at the last position (logits[:, -1]), not the first.":
            _logit_difference_first_position,
        "The sign: logit(IO) - logit(S), so that a model that gets IOI right scores positive.":
            _logit_difference_swapped,
        "Average over the batch (.mean()) rather than summing, so the number does not grow with the "
        "number of prompts.": _logit_difference_summed,
    },
    notebook=NOTEBOOK,
)


def patch_residual_inputs(generator: torch.Generator) -> tuple:
    batch, n_pos, d_model = randint(generator, 1, 3), randint(generator, 2, 10), randint(generator, 4, 32)
    corrupted = _random_float(generator, (batch, n_pos, d_model))
    clean = _random_float(generator, (batch, n_pos, d_model)).to(corrupted.dtype)
    return corrupted, clean, randint(generator, 0, n_pos - 1)


def patch_residual_reference(corrupted: torch.Tensor, clean: torch.Tensor, pos: int) -> torch.Tensor:
    """The corrupted run's residual stream ``[batch, pos, d_model]`` with position ``pos`` taken from the clean run."""
    patched = corrupted.clone()
    patched[:, pos, :] = clean[:, pos, :]
    return patched


def _patch_from_pos_on(corrupted, clean, pos):
    patched = corrupted.clone()
    patched[:, pos:, :] = clean[:, pos:, :]
    return patched


def _patch_wrong_direction(corrupted, clean, pos):
    patched = clean.clone()
    patched[:, pos, :] = corrupted[:, pos, :]
    return patched


exercise(
    "patch_residual",
    make_inputs=patch_residual_inputs,
    reference=patch_residual_reference,
    mistakes={
        "Patch one position only (patched[:, pos]); a slice pos: patches every later position too.":
            _patch_from_pos_on,
        "Direction: we run the corrupted prompt and restore one clean activation, so start from "
        "`corrupted` and copy in clean[:, pos].": _patch_wrong_direction,
    },
    notebook=NOTEBOOK,
)
