"""What Gemma 4 adds to a block, in named modules of its own so that model.py still reads as Gemma 1-3.

    per-layer embeddings (E2B, E4B):   PerLayerEmbedding (once per model) -> PerLayerInput (in each block)
    mixture of experts (26B-A4B):      MixtureOfExperts = Router + Experts, beside the dense MLP

Per-layer embeddings (PLE). Besides the main embedding, every token looks up a second, narrow
vector for each layer (``d_per_layer`` = 256 numbers per layer, all layers in one table row). It is
combined with a projection of the main embedding, and each block opens a gate (computed from
its residual stream) onto its own slice, projects the gated vector back to ``d_model`` and adds it
to the stream after the MLP. Table lookups are cheap, so these parameters can live off the
accelerator: hence "E" (effective) 2B / 4B.

Mixture of experts. A router reads the residual stream between attention and MLP and picks
``n_experts_active`` of ``n_experts`` small GeGLU MLPs per token, weighting them by their
renormalised router probability times a learned per-expert scale. Their weighted sum runs
beside the block's dense MLP; each branch has its own norms and the two are added.

Numerics as transformers' ``models/gemma4/modeling_gemma4.py`` (the parity oracle): norms
multiply by ``w`` (not ``1 + w``), softmax in fp32, the scales are Python floats multiplied in the
activation dtype. The modules take the model's ``RMSNorm`` class as an argument (``norm``), so
this file imports no other part of the model. Imports: torch, einops, the config and hooks only.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gemma_lab.config import GemmaConfig
from gemma_lab.hooks import HookPoint


# model.RMSNorm: ``norm(width, eps, gain_offset=..., learned=...)``.
Norm = Callable[..., nn.Module]


def _rms_norm(norm: Norm, width: int, cfg: GemmaConfig, learned: bool = True) -> nn.Module:
    return norm(width, cfg.norm_eps, gain_offset=cfg.norm_gain_offset, learned=learned)


class PerLayerEmbedding(nn.Module):
    """Every token's per-layer inputs ``[batch, pos, layer, d_per_layer]``: a table lookup plus a projection of
    the main embedding, for all layers at once."""

    def __init__(self, cfg: GemmaConfig, norm: Norm) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.n_layers * cfg.d_per_layer
        self.embed = nn.Embedding(cfg.vocab_per_layer, width)  # what the token is, for each layer
        self.model_projection = nn.Linear(cfg.d_model, width, bias=False)  # what the main embedding says
        self.hook_token = HookPoint()  # [batch, pos, layer, d_per_layer] table rows * sqrt(d_per_layer)
        self.projection_norm = _rms_norm(norm, cfg.d_per_layer, cfg)  # over d_per_layer, gain w
        self.hook_context = HookPoint()  # [batch, pos, layer, d_per_layer] normalised projection of the embedding
        self.hook_inputs = HookPoint()  # [batch, pos, layer, d_per_layer] (token + context) / sqrt(2)

    def forward(self, tokens: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """``tokens [batch, pos]`` and the scaled main embedding ``[batch, pos, d_model]``."""
        cfg, weight = self.cfg, self.embed.weight
        if cfg.is_gemma3n:  # its vocabulary (262400) outgrows the table (262144): image/audio ids read row 0
            tokens = torch.where(tokens < cfg.vocab_per_layer, tokens, 0)
        if int(tokens.max()) >= cfg.vocab_per_layer:
            raise ValueError(f"token id {int(tokens.max())} is outside the per-layer embedding table "
                             f"(vocab_per_layer={cfg.vocab_per_layer})")
        # Like the main embedding, sqrt(d_per_layer) is rounded to the weight dtype first.
        scale = torch.tensor(math.sqrt(cfg.d_per_layer), dtype=torch.float32).to(weight.dtype)
        token = rearrange(self.embed(tokens) * scale, "batch pos (layer d_per_layer) -> batch pos layer d_per_layer",
                          layer=cfg.n_layers)
        token = self.hook_token(token)
        context = self.model_projection(embedded) * cfg.d_model ** -0.5
        context = rearrange(context, "batch pos (layer d_per_layer) -> batch pos layer d_per_layer", layer=cfg.n_layers)
        context = self.hook_context(self.projection_norm(context))
        return self.hook_inputs((context + token) * 2.0 ** -0.5)  # two unit-scale parts: keep the sum at unit scale


class PerLayerInput(nn.Module):
    """One block's use of its per-layer input: ``post_norm(projection(gelu(gate(resid)) * input))``."""

    def __init__(self, cfg: GemmaConfig, norm: Norm) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_per_layer, bias=False)
        self.projection = nn.Linear(cfg.d_per_layer, cfg.d_model, bias=False)
        self.hook_input = HookPoint()  # [batch, pos, d_per_layer] this layer's slice, before gating
        self.hook_gate = HookPoint()  # [batch, pos, d_per_layer] gelu(gate(resid))
        self.hook_gated = HookPoint()  # [batch, pos, d_per_layer] gate * input: after gating
        self.post_norm = _rms_norm(norm, cfg.d_model, cfg)

    def forward(self, resid: torch.Tensor, per_layer_input: torch.Tensor) -> torch.Tensor:
        per_layer_input = self.hook_input(per_layer_input)
        gate = self.hook_gate(F.gelu(self.gate(resid), approximate="tanh"))
        gated = self.hook_gated(gate * per_layer_input)
        return self.post_norm(self.projection(gated))


class Router(nn.Module):
    """Picks ``n_experts_active`` experts per token and their weights."""

    def __init__(self, cfg: GemmaConfig, norm: Norm) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = _rms_norm(norm, cfg.d_model, cfg, learned=False)  # scale-free: the gain is `scale` below
        self.scale = nn.Parameter(torch.ones(cfg.d_model))
        self.proj = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.per_expert_scale = nn.Parameter(torch.ones(cfg.n_experts))
        self.hook_logits = HookPoint()  # [batch, pos, expert] router logits
        self.hook_probs = HookPoint()  # [batch, pos, expert] softmax of the logits, fp32
        self.hook_chosen = HookPoint()  # [batch, pos, top_k] chosen experts (int64), most probable first
        self.hook_weights = HookPoint()  # [batch, pos, top_k] their weights, fp32

    def forward(self, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen, weights)``, both ``[batch, pos, top_k]``, for the stream ``[batch, pos, d_model]``."""
        x = self.norm(resid) * self.scale * self.cfg.d_model ** -0.5
        logits = self.hook_logits(self.proj(x))
        probs = self.hook_probs(torch.softmax(logits, dim=-1, dtype=torch.float32))
        chosen = self.hook_chosen(torch.topk(probs, k=self.cfg.n_experts_active, dim=-1).indices)
        top_probs = probs.gather(-1, chosen)  # (so that a hook may also choose other experts)
        weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # renormalise over the chosen few
        weights = self.hook_weights(weights * self.per_expert_scale[chosen])
        return chosen, weights


class Experts(nn.Module):
    """``n_experts`` GeGLU MLPs stored as stacked weights; each token runs only its chosen ones."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Per expert: gate and up stacked as rows [gate | up], as transformers stores them.
        self.gate_up_proj = nn.Parameter(torch.empty(cfg.n_experts, 2 * cfg.d_expert, cfg.d_model))
        self.down_proj = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model, cfg.d_expert))
        self.hook_expert_out = HookPoint()  # [batch, pos, top_k, d_model] each chosen expert's output * its weight (fp32)

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x [batch, pos, d_model]``; ``chosen``, ``weights`` ``[batch, pos, top_k]`` from the router."""
        # Weighted outputs are kept and summed in the router weights' fp32, as the reference does.
        out = x.new_zeros(*chosen.shape, self.cfg.d_model, dtype=torch.promote_types(x.dtype, weights.dtype))
        for expert in chosen.unique().tolist():  # one matmul per expert over the tokens that chose it
            batch, pos, slot = (chosen == expert).nonzero(as_tuple=True)
            gate, up = F.linear(x[batch, pos], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(F.gelu(gate, approximate="tanh") * up, self.down_proj[expert])
            out[batch, pos, slot] = y * weights[batch, pos, slot][:, None]
        return self.hook_expert_out(out).sum(dim=2).to(x.dtype)


class MixtureOfExperts(nn.Module):
    """Gemma 4 26B-A4B's feed-forward: ``norm(dense MLP out) + norm(experts(norm(resid)))``.

    The dense MLP runs in the block as in every Gemma; this module adds the experts beside it.
    The router and the experts read the residual stream itself (the dense MLP reads ``ln2`` of it).
    """

    def __init__(self, cfg: GemmaConfig, norm: Norm) -> None:
        super().__init__()
        self.post_norm_dense = _rms_norm(norm, cfg.d_model, cfg)  # on the dense MLP's output
        self.hook_dense_out = HookPoint()  # [batch, pos, d_model] the dense MLP's share
        self.router = Router(cfg, norm)
        self.pre_norm = _rms_norm(norm, cfg.d_model, cfg)  # the experts' input norm
        self.experts = Experts(cfg)
        self.post_norm = _rms_norm(norm, cfg.d_model, cfg)  # on the experts' summed output
        self.hook_experts_out = HookPoint()  # [batch, pos, d_model] the experts' share

    def forward(self, resid: torch.Tensor, dense_out: torch.Tensor) -> torch.Tensor:
        dense = self.hook_dense_out(self.post_norm_dense(dense_out))
        chosen, weights = self.router(resid)
        experts = self.hook_experts_out(self.post_norm(self.experts(self.pre_norm(resid), chosen, weights)))
        return dense + experts
