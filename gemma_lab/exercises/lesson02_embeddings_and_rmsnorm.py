"""Exercises of lesson 02, embeddings and RMSNorm (``notebooks/02_embeddings_and_rmsnorm.ipynb``).

Exercises: embed, rms_norm. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gemma_lab import model as gemma_model
from gemma_lab.exercises._trials import _dtype, _randn, exactly_equal
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number

__all__ = [
    "embed",
    "rms_norm",
]

NOTEBOOK = "02_embeddings_and_rmsnorm"


def embed(tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight[tokens] * sqrt(d_model)``, the scale rounded to the weight dtype: ``[batch, pos, d_model]``.

    The same two lines as ``Gemma.forward``.
    """
    scale = torch.tensor(math.sqrt(weight.shape[-1]), dtype=torch.float32).to(weight.dtype)
    return F.embedding(tokens, weight) * scale


def _embed_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    dtype = _dtype(generator)
    d_model = 1152 if trial == 1 else choice(generator, [24, 40, 48, 72, 80, 1152])
    vocab = randint(generator, 5, 40)
    batch, pos = (1, 1) if trial == 0 else (randint(generator, 1, 3), randint(generator, 1, 7))
    tokens = torch.randint(0, vocab, (batch, pos), generator=generator)
    return tokens, _randn(generator, vocab, d_model, scale=0.5, dtype=dtype)


def _embed_unscaled(tokens, weight):
    return weight[tokens]


def _embed_scale_not_rounded(tokens, weight):
    return weight[tokens] * math.sqrt(weight.shape[-1])


def _embed_divided(tokens, weight):
    scale = torch.tensor(math.sqrt(weight.shape[-1])).to(weight.dtype)
    return weight[tokens] / scale


exercise(
    "embed",
    make_inputs=_embed_inputs,
    reference=embed,
    mistakes={
        "Did you multiply by sqrt(d_model)? Gemma scales the embeddings up by sqrt(d_model).": _embed_unscaled,
        "Did you round sqrt(d_model) to the weight dtype? Make the scale a tensor in weight.dtype first "
        "(in bfloat16, sqrt(1152) = 33.94 becomes 34.0), then multiply.": _embed_scale_not_rounded,
        "Did you divide by sqrt(d_model) rather than multiply?": _embed_divided,
    },
    compare=exactly_equal,
    notebook=NOTEBOOK,
)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm over the last axis, computed by ``gemma_lab.model.RMSNorm``."""
    norm = gemma_model.RMSNorm(x.shape[-1], eps).to(weight.dtype)
    norm.weight.data.copy_(weight)
    return norm(x)


def _rms_norm_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    dtype = _dtype(generator)
    d_model = choice(generator, [8, 16, 40, 64])
    batch, pos = randint(generator, 1, 3), randint(generator, 1, 6)
    scale = {2: 1e-3, 3: 30.0}.get(trial, 1.0)  # tiny activations make eps matter; large ones test range
    x = _randn(generator, batch, pos, d_model, scale=scale, dtype=dtype) + _randn(generator, 1, 1, d_model, scale=0.5 * scale, dtype=dtype)
    weight = _randn(generator, d_model, scale=0.5, dtype=dtype)
    eps = {4: 0.1, 5: 1e-2}.get(trial, 1e-6)
    return x, weight, eps


def _rms_norm_eps_outside(x, weight, eps):
    xf = x.float()
    return (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + eps) * (1 + weight.float())).to(x.dtype)


def _rms_norm_gain_without_one(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _rms_norm_centred(x, weight, eps):
    xf = x.float()
    xf = xf - xf.mean(-1, keepdim=True)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.float())).to(x.dtype)


def _rms_norm_all_axes(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean() + eps) * (1 + weight.float())).to(x.dtype)


def _rms_norm_stays_float32(x, weight, eps):
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.float())


exercise(
    "rms_norm",
    make_inputs=_rms_norm_inputs,
    reference=rms_norm,
    mistakes={
        "Is your epsilon inside the square root? x / sqrt(mean(x²) + eps), not x / (sqrt(mean(x²)) + eps).":
            _rms_norm_eps_outside,
        "Did you add 1 to the norm weight? Gemma stores the gain as an offset from 1: multiply by (1 + weight).":
            _rms_norm_gain_without_one,
        "Did you subtract the mean? RMSNorm does not centre; it only divides by the root-mean-square.":
            _rms_norm_centred,
        "Did you take the mean over the last axis (d_model) only, with keepdim=True? Each vector is "
        "normalised on its own.": _rms_norm_all_axes,
        "Did you cast the result back to x's dtype? Compute in float32, then .to(x.dtype) once at the end.":
            _rms_norm_stays_float32,
    },
    notebook=NOTEBOOK,
)
