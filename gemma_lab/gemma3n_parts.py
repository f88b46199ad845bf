"""What Gemma 3n adds, in named modules of its own so that model.py still reads as Gemma 1-4.

    tokens -> embed -> AltUpStack: 4 copies of the stream ("streams")
           -> n_layers x [AltUpPredict -> the block on the active copy (+ LAuReL beside attention,
                          GaussianTopK in the MLP) -> AltUpCorrect -> per-layer input into the other copies]
           -> AltUpUnstack: the copies mapped back and averaged -> final norm -> logits

AltUp (Alternating Updates, Baykal et al., NeurIPS 2023). The residual stream is widened to
``altup_num_inputs`` copies of ``d_model`` numbers, but each block computes on one copy only,
the "active" one. Before the block, every copy is *predicted* as itself plus a token-dependent
linear mix of all copies (mixing weights from a small router reading the active copy); after the
block, every copy is *corrected* by the block's "innovation" (what the block changed in the active
copy, ``output - predicted active``), scaled per copy by router-dependent weights. A wide stream
at the cost of a narrow block.

LAuReL (Learned Augmented Residual Layer): beside attention, a rank-``laurel_rank`` linear map of
the normalised input (plus a norm) is added to the residual, and the sum scaled by ``1/sqrt(2)``.

Gaussian top-k activation sparsity: on the first layers, only the MLP gate values above
``mean + std * Phi^-1(sparsity)`` (over ``d_mlp``, per token) are kept, shifted down by that
cutoff: if the gate were normally distributed, a share ``sparsity`` (0.95) of neurons would be 0.

Shared with Gemma 4 (``gemma4_parts.py``, reused): per-layer embeddings and the per-layer input
module, KV sharing (``Attention`` in model.py), norms that multiply by ``w``. They differ in where
the per-layer input goes: Gemma 4 adds it to the stream after the MLP; Gemma 3n gates it with the
corrected active copy (times ``altup_correct_scale``'s learned vector) and adds it to copies 1 to
3 only. Gemma 3n also maps per-layer token ids beyond its table to row 0 (its multimodal ids).

Numerics as transformers' ``models/gemma3n/modeling_gemma3n.py`` (the parity oracle): coefficient
clipping applies only in training; the router's tanh runs in fp32. Imports: torch, einops, the
config and hooks only; the model's ``RMSNorm`` class comes in as an argument (``norm``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from gemma_lab.config import GemmaConfig
from gemma_lab.hooks import HookPoint

# model.RMSNorm: ``norm(width, eps, gain_offset=..., learned=...)``.
Norm = Callable[..., nn.Module]


def copy_of(streams: torch.Tensor, index: int) -> torch.Tensor:
    """One copy ``[batch, pos, d_model]`` of ``streams [batch, pos, stream, d_model]``, made contiguous before it
    meets a matmul: with pos 1 (decoding) a strided slice can take torch's slow path (see ``Gemma.unembed``)."""
    return streams[:, :, index].contiguous()


def _match_magnitude(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``x`` rescaled per token to the root-mean-square of ``target`` (the reference's floor: 1e-5 on x's)."""
    target_rms = torch.mean(target ** 2, dim=-1, keepdim=True) ** 0.5
    rms = torch.sqrt(torch.mean(x ** 2, dim=-1, keepdim=True).clamp(min=1e-5))
    return x * target_rms / rms


class AltUpStack(nn.Module):
    """The embedding becomes ``altup_num_inputs`` streams: itself, and learned projections of it
    rescaled to its magnitude. ``[batch, pos, d_model] -> [batch, pos, stream, d_model]``."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_model, bias=False)
                                         for _ in range(cfg.altup_num_inputs - 1))
        self.hook_streams = HookPoint()  # [batch, pos, stream, d_model] the copies entering layer 0

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        copies = [embedded] + [_match_magnitude(project(embedded), embedded) for project in self.projections]
        return self.hook_streams(torch.stack(copies, dim=2))


class AltUpUnstack(nn.Module):
    """The streams become one again: copies 1.. are mapped back by their own projections, rescaled to
    copy 0's magnitude, and all are averaged. ``[batch, pos, stream, d_model] -> [batch, pos, d_model]``."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_model, bias=False)
                                         for _ in range(cfg.altup_num_inputs - 1))
        self.hook_streams = HookPoint()  # [batch, pos, stream, d_model] the copies, mapped back and rescaled
        self.hook_out = HookPoint()  # [batch, pos, d_model] their mean: what the final norm reads

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        first = copy_of(streams, 0)  # the reference rescales to copy 0 (the active copy in every release)
        copies = [first] + [_match_magnitude(project(copy_of(streams, i + 1)), first)
                            for i, project in enumerate(self.projections)]
        return self.hook_out(self.hook_streams(torch.stack(copies, dim=2)).mean(dim=2))


class AltUpRouter(nn.Module):
    """Per token, ``altup_num_inputs`` numbers in (-1, 1) read off a stream: ``tanh(W rmsnorm(x) / d_model)``.

    Prediction and correction both call it, so it has no hook points (they would fire twice): each
    caller hooks what it returns. Its RMSNorm is therefore written out here (fp32, gain ``w``).
    """

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        self.norm_weight = nn.Parameter(torch.ones(cfg.d_model))
        self.proj = nn.Linear(cfg.d_model, cfg.altup_num_inputs, bias=False)
        self.scale = 1.0 / cfg.d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        normed = (x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
                  * self.norm_weight.float()).to(x.dtype)
        scale = torch.tensor(self.scale, dtype=torch.float32).to(x.dtype)  # as the reference's buffer
        return torch.tanh(self.proj(normed * scale).float()).to(x.dtype)


class AltUpPredict(nn.Module):
    """Before the block: each copy predicted as itself plus a router-weighted mix of all copies.

    ``predicted[out] = streams[out] + sum_in coefs[out, in] * streams[in]``, coefs from the router on the active copy.
    """

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = AltUpRouter(cfg)  # shared with AltUpCorrect
        n = cfg.altup_num_inputs
        self.coefs = nn.Linear(n, n * n, bias=False)  # router output -> an n x n mixing matrix
        self.hook_router = HookPoint()  # [batch, pos, stream] router output on the active copy
        self.hook_coefs = HookPoint()  # [batch, pos, stream, stream] mixing weights [out copy, in copy]
        self.hook_predicted = HookPoint()  # [batch, pos, stream, d_model] every copy before the block's correction

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        router = self.hook_router(self.router(copy_of(streams, cfg.altup_active_idx)))
        coefs = F.linear(router, _clipped(self.coefs.weight, cfg, self.training))
        coefs = self.hook_coefs(rearrange(coefs, "batch pos (out inp) -> batch pos out inp", out=cfg.altup_num_inputs))
        mixed = einsum(streams, coefs, "batch pos inp d_model, batch pos out inp -> batch pos out d_model")
        return self.hook_predicted(mixed + streams)


class AltUpCorrect(nn.Module):
    """After the block: each copy moves by the block's innovation on the active copy, weighted per copy.

    ``corrected[i] = predicted[i] + (1 + c_i) * (output - predicted[active])``, c from the router on ``output``.
    """

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.altup_num_inputs
        self.coefs = nn.Linear(n, n, bias=False)
        # Learned per-dimension scale on the corrected active copy, before it gates the per-layer input.
        self.output_scale = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.altup_correct_scale else None
        self.hook_router = HookPoint()  # [batch, pos, stream] router output on the block's output
        self.hook_coefs = HookPoint()  # [batch, pos, stream] how much of the innovation each copy takes (1 + c)
        self.hook_innovation = HookPoint()  # [batch, pos, d_model] block output - predicted active copy
        self.hook_corrected = HookPoint()  # [batch, pos, stream, d_model] every copy after correction

    def forward(self, predicted: torch.Tensor, output: torch.Tensor, router: AltUpRouter) -> torch.Tensor:
        """``router``: the prediction's (``AltUpPredict.router``): both steps read their coefficients from it."""
        cfg = self.cfg
        weights = self.hook_router(router(output))
        coefs = self.hook_coefs(F.linear(weights, _clipped(self.coefs.weight, cfg, self.training)) + 1.0)
        innovation = self.hook_innovation(output - copy_of(predicted, cfg.altup_active_idx))
        corrected = einsum(innovation, coefs, "batch pos d_model, batch pos stream -> batch pos stream d_model")
        return self.hook_corrected(corrected + predicted)

    def scaled_active(self, corrected: torch.Tensor) -> torch.Tensor:
        """The corrected active copy, times ``output_scale`` when the config asks (``altup_correct_scale``)."""
        active = copy_of(corrected, self.cfg.altup_active_idx)
        if self.output_scale is None:
            return active
        return (active.to(self.output_scale.dtype) * self.output_scale).to(active.dtype)


def _clipped(weight: torch.Tensor, cfg: GemmaConfig, training: bool) -> torch.Tensor:
    """AltUp's coefficient weights, clipped to ``+-altup_coef_clip`` while training (as the reference)."""
    if training and cfg.altup_coef_clip is not None:
        return weight.clamp(-cfg.altup_coef_clip, cfg.altup_coef_clip)
    return weight


class Laurel(nn.Module):
    """LAuReL: ``x + norm(up(down(x)))``, a rank-``laurel_rank`` branch on the block's normalised input."""

    def __init__(self, cfg: GemmaConfig, norm: Norm) -> None:
        super().__init__()
        self.down = nn.Linear(cfg.d_model, cfg.laurel_rank, bias=False)
        self.up = nn.Linear(cfg.laurel_rank, cfg.d_model, bias=False)
        self.post_norm = norm(cfg.d_model, cfg.norm_eps, gain_offset=False)  # gain w
        self.hook_branch = HookPoint()  # [batch, pos, d_model] the low-rank branch after its norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.hook_branch(self.post_norm(self.up(self.down(x))))


class GaussianTopK(nn.Module):
    """Keep the gate values above ``mean + std * Phi^-1(sparsity)`` (per token, over d_mlp), shifted down
    by that cutoff; the rest become 0. ``relu(gate - cutoff)``: no sort, a statistical top-k."""

    def __init__(self, sparsity: float) -> None:
        super().__init__()
        self.sparsity = sparsity
        self.hook_cutoff = HookPoint()  # [batch, pos, 1] the threshold each token's gate values must pass

    def forward(self, gate: torch.Tensor) -> torch.Tensor:
        # The standard normal's quantile, computed in fp32 and then rounded to the gate's dtype (0.95 -> 1.6449).
        z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(self.sparsity, dtype=torch.float32)).to(gate.dtype)
        mean = gate.mean(dim=-1, keepdim=True)
        std = gate.std(dim=-1, keepdim=True, unbiased=False)
        cutoff = self.hook_cutoff(mean + std * z)
        return F.relu(gate - cutoff)

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity}"


def streams_plus_per_layer(streams: torch.Tensor, per_layer_out: torch.Tensor) -> torch.Tensor:
    """The per-layer input's contribution added to copies 1.. (not copy 0: the active copy in every release)."""
    return torch.cat([streams[:, :, :1], streams[:, :, 1:] + per_layer_out[:, :, None]], dim=2)


SQRT2 = math.sqrt(2.0)
