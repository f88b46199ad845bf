"""Exercises of lesson 19, probes and function vectors (``notebooks/19_probes_and_function_vectors.ipynb``).

Exercises: train_probe, steer_resid. Each has its reference, its trial inputs, and its usual
mistakes written out as the wrong functions they describe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemma_lab.exercises.checking import exercise, randint, trial_number

__all__ = [
    "train_probe_inputs",
    "train_probe_reference",
    "steer_resid_inputs",
    "steer_resid_reference",
]

NOTEBOOK = "19_probes_and_function_vectors"


# ---- train_probe ----------------------------------------------------------------------------------

def train_probe_inputs(generator: torch.Generator) -> tuple:
    n, d = randint(generator, 6, 40), randint(generator, 2, 12)
    n_classes = 2 if trial_number(generator) < 2 else randint(generator, 2, 5)
    acts = torch.randn((n, d), generator=generator)
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    labels[:n_classes] = torch.arange(n_classes)  # every class present
    acts = acts + 0.8 * torch.randn((n_classes, d), generator=generator)[labels]  # a signal to find
    return acts, labels, n_classes, randint(generator, 5, 40), 0.1


def train_probe_reference(acts: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int,
                          lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear probe ``logits = acts @ W + b`` trained by full-batch gradient descent on the mean
    cross-entropy, from ``W = 0, b = 0``: ``[n, d], [n] -> (W [d, n_classes], b [n_classes])``."""
    W = torch.zeros(acts.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(acts.float() @ W + b, labels)
            grad_W, grad_b = torch.autograd.grad(loss, (W, b))
            with torch.no_grad():
                W -= lr * grad_W
                b -= lr * grad_b
    return W.detach(), b.detach()


def _probe(acts, labels, n_classes, steps, lr, *, bias=True, reduction="mean", accumulate=False, loss="ce"):
    W = torch.zeros(acts.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=bias)
    with torch.enable_grad():
        for _ in range(steps):
            logits = acts.float() @ W + b
            if loss == "mse":
                value = ((logits - F.one_hot(labels, n_classes).float()) ** 2).mean()
            else:
                value = F.cross_entropy(logits, labels, reduction=reduction)
            value.backward()
            with torch.no_grad():
                W -= lr * W.grad
                if bias:
                    b -= lr * b.grad
            if not accumulate:
                W.grad = None
                b.grad = None
    return W.detach(), b.detach()


exercise(
    "train_probe",
    make_inputs=train_probe_inputs,
    reference=train_probe_reference,
    mistakes={
        "Train the bias too: b starts at zero and gets its own gradient step, like W.":
            lambda *a: _probe(*a, bias=False),
        "Take the mean of the loss over the examples (F.cross_entropy's default), not the sum: a sum "
        "makes the step grow with the number of examples.": lambda *a: _probe(*a, reduction="sum"),
        "Zero the gradients after each step (W.grad = None, or optimizer.zero_grad()): backward() adds "
        "to what is already there.": lambda *a: _probe(*a, accumulate=True),
        "A probe for classes is trained on the cross-entropy of its logits (softmax), not on the "
        "squared distance to one-hot labels.": lambda *a: _probe(*a, loss="mse"),
    },
    notebook=NOTEBOOK,
)


# ---- steer_resid ----------------------------------------------------------------------------------

def steer_resid_inputs(generator: torch.Generator) -> tuple:
    batch, pos, d_model = randint(generator, 1, 3), randint(generator, 2, 7), randint(generator, 3, 16)
    dtype = torch.bfloat16 if trial_number(generator) >= 4 else torch.float32
    resid = torch.randn((batch, pos, d_model), generator=generator).to(dtype)
    direction = torch.randn((d_model,), generator=generator)  # float32, whatever the stream's dtype
    coeff = (2.0, -1.5, 0.5)[trial_number(generator) % 3]
    position = None if trial_number(generator) == 3 else (-1, randint(generator, 0, pos - 1))[trial_number(generator) % 2]
    return resid, direction, coeff, position


def steer_resid_reference(resid: torch.Tensor, direction: torch.Tensor, coeff: float, position) -> torch.Tensor:
    """``resid`` ``[batch, pos, d_model]`` with ``coeff * direction`` added at ``position`` (an index
    into pos, negative from the end; None: every position), in ``resid``'s dtype; ``resid`` itself is
    left as it was (a new tensor is returned)."""
    shift = (coeff * direction.float()).to(resid.dtype)
    steered = resid.clone()
    if position is None:
        return steered + shift
    steered[:, position] += shift
    return steered


def _steer_everywhere(resid, direction, coeff, position):
    return resid + (coeff * direction.float()).to(resid.dtype)


def _steer_without_coeff(resid, direction, coeff, position):
    return steer_resid_reference(resid, direction, 1.0, position)


def _steer_first_prompt_only(resid, direction, coeff, position):
    steered = resid.clone()
    index = slice(None) if position is None else position
    steered[0, index] += (coeff * direction.float()).to(resid.dtype)
    return steered


def _steer_float32(resid, direction, coeff, position):
    return steer_resid_reference(resid.float(), direction, coeff, position)


exercise(
    "steer_resid",
    make_inputs=steer_resid_inputs,
    reference=steer_resid_reference,
    mistakes={
        "Add the direction at `position` only (resid[:, position]); None means every position.": _steer_everywhere,
        "Scale the direction by `coeff`: the coefficient is how far to push.": _steer_without_coeff,
        "Index the position for every prompt in the batch: resid[:, position], not resid[0, position].":
            _steer_first_prompt_only,
        "Give back the stream's own dtype: cast the shift to resid.dtype (a bfloat16 model must get "
        "bfloat16 back).": _steer_float32,
    },
    notebook=NOTEBOOK,
)
