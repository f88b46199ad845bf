"""Reading an SAE's features: where they fire, what they write, and what happens without them.

    feature_activations      every feature at every token                    [batch, pos, d_sae]
    top_activating_contexts  the k tokens (over many rows) where one feature fires most, with context
    activation_histogram     how often a feature fires and the distribution of its values
    feature_logit_effects    the feature's decoder direction read through the final norm and unembedding
    ablate_features          (context manager) the SAE spliced in with its error term, features set to 0
    steer_with_feature       (context manager) add a multiple of a feature's decoder direction

The direct logit effect follows ``ActivationCache.apply_ln_to_stack``: a direction added to the
residual stream reaches the logits through the final RMSNorm as ``direction * inv_rms * (1 + w)``
(the norm linearised around a run, ``inv_rms`` from that run) and then the tied unembedding. Without
a run, ``inv_rms`` is one positive number per token position, so it scales every token's effect alike:
the ranking of tokens does not depend on it, and ``inv_rms=None`` leaves it out (effects then read
per unit of normalised stream). Gemma 2's final softcap is not linear and is left out, as in
``direct_logit_attribution``.

Imports: torch and the SAE module; the model is passed in. No plotting or widgets.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from einops import rearrange

from gemma_lab.hooks import HookPoint
from gemma_lab.sae.autoencoder import SAE


def _batched(tokens: torch.Tensor) -> torch.Tensor:
    tokens = torch.as_tensor(tokens)
    return tokens[None] if tokens.ndim == 1 else tokens


def _site_input(activation: torch.Tensor) -> torch.Tensor:
    return rearrange(activation, "... head d_head -> ... (head d_head)") if activation.ndim == 4 else activation


def feature_activations(model, sae: SAE, tokens: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, pos, d_sae]``: the SAE's features on ``tokens`` (the plain model's activations encoded;
    nothing is spliced in, so upstream SAEs do not matter)."""
    tokens = _batched(tokens).to(model.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.hook_name, attention_mask=attention_mask)
        return sae.encode(_site_input(cache[sae.cfg.hook_name]))


@dataclass
class FeatureContexts:
    """The tokens where one feature fires most, each with the tokens around it."""

    feature: int
    values: torch.Tensor  # [n] the activation, largest first
    rows: torch.Tensor  # [n] which row of the input
    positions: torch.Tensor  # [n] which position in that row
    contexts: list[list[int]]  # token ids of each window (``before`` tokens, the token, ``after`` tokens)
    context_acts: list[torch.Tensor]  # the feature's activation at every token of each window
    centre: list[int]  # index of the top token inside each window


def top_activating_contexts(model, sae: SAE, rows: Sequence[Sequence[int]] | torch.Tensor, feature: int, *,
                            k: int = 10, before: int = 10, after: int = 3, batch_size: int = 32,
                            skip_first: bool = True) -> FeatureContexts:
    """The ``k`` tokens of ``rows`` (lists of token ids, any lengths) with the largest activation of
    ``feature``; ``skip_first`` leaves out position 0 (``<bos>``). Ties are broken by order."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise IndexError(f"feature {feature} is outside this SAE's {sae.cfg.d_sae} features")
    rows = [list(map(int, row)) for row in rows]
    per_row = [feature_acts_of_rows(model, sae, rows[start:start + batch_size], feature)
               for start in range(0, len(rows), batch_size)]
    acts = [a for chunk in per_row for a in chunk]  # one [len(row)] tensor per row
    return contexts_from_acts(rows, acts, feature, k=k, before=before, after=after, skip_first=skip_first)


def contexts_from_acts(rows: Sequence[Sequence[int]], acts: Sequence[torch.Tensor], feature: int, *, k: int = 10,
                       before: int = 10, after: int = 3, skip_first: bool = True) -> FeatureContexts:
    """``top_activating_contexts`` from activations computed before: ``acts[r]`` is ``[len(rows[r])]``
    (this feature) or ``[len(rows[r]), d_sae]`` (every feature, as ``feature_acts_of_rows`` returns)."""
    acts = [a[:, feature] if a.ndim == 2 else a for a in acts]
    flat_values, flat_rows, flat_pos = [], [], []
    for r, a in enumerate(acts):
        start = 1 if skip_first else 0
        flat_values.append(a[start:])
        flat_rows.append(torch.full((len(a) - start,), r))
        flat_pos.append(torch.arange(start, len(a)))
    values, rows_of, pos_of = torch.cat(flat_values), torch.cat(flat_rows), torch.cat(flat_pos)
    top = values.topk(min(k, len(values)))
    contexts, context_acts, centre = [], [], []
    for r, p in zip(rows_of[top.indices].tolist(), pos_of[top.indices].tolist()):
        lo, hi = max(0, p - before), min(len(rows[r]), p + after + 1)
        contexts.append(rows[r][lo:hi])
        context_acts.append(acts[r][lo:hi])
        centre.append(p - lo)
    return FeatureContexts(feature, top.values, rows_of[top.indices], pos_of[top.indices], contexts,
                           context_acts, centre)


def feature_acts_of_rows(model, sae: SAE, rows: Sequence[Sequence[int]], feature: int | None = None) -> list[torch.Tensor]:
    """One tensor per row: ``[len(row)]`` activations of ``feature`` (or ``[len(row), d_sae]`` for all).
    Rows are right-padded into one batch; causal attention makes padding on the right harmless."""
    length = max(len(row) for row in rows)
    tokens = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    acts = feature_activations(model, sae, tokens)
    acts = acts if feature is None else acts[..., feature]
    return [acts[i, :len(row)].cpu() for i, row in enumerate(rows)]


@dataclass
class FeatureHistogram:
    """How often one feature fires and how strongly."""

    feature: int
    frequency: float  # fraction of tokens where it fires
    values: torch.Tensor  # [n_fired] its activation where it fires
    counts: torch.Tensor  # [bins] histogram of values
    edges: torch.Tensor  # [bins + 1] bin edges


def activation_histogram(model, sae: SAE, rows: Sequence[Sequence[int]], feature: int, *, bins: int = 30,
                         batch_size: int = 32, skip_first: bool = True) -> FeatureHistogram:
    """The distribution of ``feature``'s non-zero activations over the tokens of ``rows``."""
    start = 1 if skip_first else 0
    acts = torch.cat([a[start:] for i in range(0, len(rows), batch_size)
                      for a in feature_acts_of_rows(model, sae, rows[i:i + batch_size], feature)])
    fired = acts[acts > 0]
    if len(fired):
        counts, edges = torch.histogram(fired.float(), bins=bins)
    else:
        counts, edges = torch.zeros(bins), torch.linspace(0, 1, bins + 1)
    return FeatureHistogram(feature, float((acts > 0).float().mean()), fired, counts, edges)


def output_direction(model, sae: SAE, feature: int) -> torch.Tensor:
    """``[d_model]``: what one unit of ``feature`` adds to the residual stream.

    At ``resid_*`` and ``hook_mlp_out`` sites (transcoders included) that is its decoder row. At
    ``attn.hook_z`` the row lives in the heads' space: it goes through ``o_proj`` and, for Gemma 2/3,
    the post-attention norm's gain (the norm's ``inv_rms`` depends on the run and is left out).
    """
    row = sae.W_dec[feature].detach().float()
    site = sae.splice_prefix
    if site.endswith("attn.hook_z"):
        block = model.blocks[sae.cfg.layer]
        row = row @ block.attn.o_proj.weight.detach().float().T
        if block.ln1_post is not None:
            row = row * (1.0 + block.ln1_post.weight.detach().float())
    elif not (site.endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out",
                             "hook_attn_out")) or site == "hook_embed"):
        raise ValueError(f"no direct path to the residual stream known from {site}")
    return row


@dataclass
class LogitEffects:
    """A feature's direct effect on the logits: the tokens it promotes and suppresses most."""

    feature: int
    effects: torch.Tensor  # [vocab] logit change per unit of feature activation
    top_tokens: torch.Tensor  # [k] ids it pushes up most
    top_values: torch.Tensor  # [k]
    bottom_tokens: torch.Tensor  # [k] ids it pushes down most
    bottom_values: torch.Tensor  # [k]


def feature_logit_effects(model, sae: SAE, feature: int, *, k: int = 10,
                          inv_rms: float | torch.Tensor | None = None) -> LogitEffects:
    """The direct effect of ``feature`` on every logit: its output direction through the final norm's
    gain ``(1 + w)`` (and ``inv_rms``, e.g. ``cache["ln_final.hook_inv_rms"][0, pos]``, if given) and
    the tied unembedding. See the module docstring for why ``inv_rms`` may be left out."""
    with torch.no_grad():
        direction = output_direction(model, sae, feature) * (1.0 + model.ln_final.weight.detach().float())
        if inv_rms is not None:
            direction = direction * torch.as_tensor(inv_rms, dtype=torch.float32).reshape(())
        effects = model.embed.weight.detach().float() @ direction
    top, bottom = effects.topk(k), (-effects).topk(k)
    return LogitEffects(feature, effects, top.indices, top.values, bottom.indices, -bottom.values)


class _SetFeatures:
    """A hook for ``hook_sae_acts_post``: set the listed features to ``value``."""

    def __init__(self, features: list[int], value: float) -> None:
        self.features = features
        self.value = value

    def __call__(self, acts: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        acts = acts.clone()
        acts[..., self.features] = self.value
        return acts


@contextmanager
def ablate_features(model, sae: SAE, features: int | Iterable[int], *, value: float = 0.0) -> Iterator:
    """Within the block, ``sae`` is spliced in with its error term and ``features`` are set to ``value``
    (0: ablated). Everything else runs exactly as without the SAE, so the change in the output is the
    features' effect alone. ``use_error_term`` is restored on exit."""
    features = [features] if isinstance(features, int) else list(features)
    previous = sae.use_error_term
    sae.use_error_term = True
    try:
        with model.hooks(fwd_hooks=[(f"{sae.splice_prefix}.hook_sae_acts_post", _SetFeatures(features, value))],
                         saes=[sae]):
            yield model
    finally:
        sae.use_error_term = previous


class _AddDirection:
    """A hook for the SAE's output site: add ``coeff`` times a feature's decoder row (optionally at some positions)."""

    def __init__(self, row: torch.Tensor, coeff: float, positions: list[int] | None) -> None:
        self.row = row
        self.coeff = coeff
        self.positions = positions

    def __call__(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        shift = self.coeff * self.row.to(activation.device, activation.dtype)
        if activation.ndim == 4:  # attn.hook_z: the row covers every head
            shift = rearrange(shift, "(head d_head) -> head d_head", head=activation.shape[-2])
        if self.positions is None:
            return activation + shift
        selected = torch.isin(hook.positions, torch.tensor(self.positions, device=activation.device))
        selected = selected.reshape(*selected.shape, *([1] * (activation.ndim - 2)))
        return torch.where(selected, activation + shift, activation)


@contextmanager
def steer_with_feature(model, sae: SAE, feature: int, coeff: float, *,
                       positions: Iterable[int] | None = None) -> Iterator:
    """Within the block, every forward pass (generation too) adds ``coeff`` times ``feature``'s decoder
    row where the SAE writes (``sae.splice_prefix``), at every position or at the absolute ``positions``.
    The SAE itself is not spliced in: this is steering along a dictionary direction."""
    row = sae.W_dec[feature].detach()
    hook = _AddDirection(row, coeff, None if positions is None else list(positions))
    with model.hooks(fwd_hooks=[(sae.splice_prefix, hook)]):
        yield model
