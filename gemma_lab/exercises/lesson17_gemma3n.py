"""Exercises of lesson 17, Gemma 3n (``notebooks/17_gemma3n.py``), and the lesson's model.

Exercises: gaussian_topk, altup_predict. Each has its reference (the package's code, with the
exercise's signature), its trial inputs, and its usual mistakes written out as the wrong functions
they describe.

``gemma3n_lesson_model(model, tokenizer)``: the lesson model itself when it is a Gemma 3n; otherwise a
small Gemma 3n with random weights (the ``test-gemma3n`` shape, the tokenizer's vocabulary), since
no Gemma 3n ships with the package. Its numbers are that random model's own, and say nothing about
what a trained Gemma 3n has learned; the mechanics are the same.
"""

from __future__ import annotations

import torch
from einops import einsum

from gemma_lab.config import GemmaConfig
from gemma_lab.exercises._trials import _random_float
from gemma_lab.exercises.checking import choice, exercise, randint
from gemma_lab.gemma3n_parts import GaussianTopK
from gemma_lab.model import Gemma, init_weights

__all__ = [
    "altup_predict_inputs",
    "altup_predict_reference",
    "gaussian_topk_inputs",
    "gaussian_topk_reference",
    "gemma3n_lesson_model",
]

NOTEBOOK = "17_gemma3n"


def gemma3n_lesson_model(model: Gemma, tokenizer) -> tuple[Gemma, str]:
    """``(a Gemma 3n, where it came from)``: ``model`` if it is one, else a random-weight ``test-gemma3n``."""
    if model.cfg.is_gemma3n:
        return model, "the lesson checkpoint"
    vocab = max(tokenizer.vocab_size, 16)
    cfg = GemmaConfig.from_preset("test-gemma3n").replace(vocab_size=vocab, vocab_per_layer=vocab)
    small = init_weights(Gemma(cfg), seed=0, std=0.1).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # gains 1 +- 0.3 rather than exactly 1, as a trained model's would vary
        for param in small.parameters():
            if param.ndim == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return small, "random weights (test-gemma3n shape): no Gemma 3n ships with gemma_lab"


# ---- gaussian top-k ----------------------------------------------------------------------------------


def gaussian_topk_inputs(generator: torch.Generator) -> tuple:
    shape = (randint(generator, 1, 3), randint(generator, 1, 5), choice(generator, (16, 64, 256)))
    return _random_float(generator, shape) * 2 + 0.3, choice(generator, (0.95, 0.9, 0.5))


def gaussian_topk_reference(gate: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``relu(gate - (mean + std * Phi^-1(sparsity)))`` over the last axis (std without Bessel's correction)."""
    return GaussianTopK(sparsity)(gate)


def _topk_unshifted(gate, sparsity):
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(sparsity))
    cutoff = gate.mean(-1, keepdim=True) + gate.std(-1, keepdim=True, unbiased=False) * z
    return torch.where(gate > cutoff, gate, torch.zeros_like(gate))


def _topk_unbiased_std(gate, sparsity):
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(sparsity))
    return torch.relu(gate - (gate.mean(-1, keepdim=True) + gate.std(-1, keepdim=True) * z))


def _topk_sparsity_as_z(gate, sparsity):
    return torch.relu(gate - (gate.mean(-1, keepdim=True) + gate.std(-1, keepdim=True, unbiased=False) * sparsity))


exercise(
    "gaussian_topk",
    make_inputs=gaussian_topk_inputs,
    reference=gaussian_topk_reference,
    mistakes={
        "Gemma 3n shifts the kept values down by the cutoff: relu(gate - cutoff), not gate where gate > cutoff.":
            _topk_unshifted,
        "The reference's std is the population one: std(unbiased=False).": _topk_unbiased_std,
        "The sparsity is a share, not a number of standard deviations: use the normal quantile Phi^-1(sparsity).":
            _topk_sparsity_as_z,
    },
    notebook=NOTEBOOK,
)


# ---- AltUp's prediction -----------------------------------------------------------------------------


def altup_predict_inputs(generator: torch.Generator) -> tuple:
    batch, pos, n, d = randint(generator, 1, 2), randint(generator, 1, 4), choice(generator, (2, 4)), randint(generator, 2, 8)
    return _random_float(generator, (batch, pos, n, d)), _random_float(generator, (batch, pos, n, n))


def altup_predict_reference(streams: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """``predicted[out] = streams[out] + sum_in coefs[out, in] * streams[in]``, per token (AltUpPredict)."""
    mixed = einsum(streams, coefs, "batch pos inp d_model, batch pos out inp -> batch pos out d_model")
    return mixed + streams


def _predict_transposed(streams, coefs):
    return einsum(streams, coefs, "b p i d, b p i o -> b p o d") + streams


def _predict_without_residual(streams, coefs):
    return einsum(streams, coefs, "b p i d, b p o i -> b p o d")


exercise(
    "altup_predict",
    make_inputs=altup_predict_inputs,
    reference=altup_predict_reference,
    mistakes={
        "coefs is [out copy, in copy]: copy `out` reads row `out` of the matrix, not column.": _predict_transposed,
        "The prediction starts from each copy itself: add streams to the mix.": _predict_without_residual,
    },
    notebook=NOTEBOOK,
)
