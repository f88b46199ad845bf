"""The tuned lens: a learned affine translator per layer in front of the model's own readout.

The logit lens (``interp.logit_lens``) reads the residual stream after layer ``l`` through the
final RMSNorm and the tied unembedding, as if it were the last layer's output. It is not, and the
readout was trained only on the last layer: the tuned lens (Belrose et al., 2023, "Eliciting Latent
Predictions from Transformers with the Tuned Lens") learns, for each layer, a small correction
that maps the stream at that layer towards the final stream before the same readout:

    lens_l(h) = unembed(h + h @ A_l + b_l)          A_l [d_model, d_model], b_l [d_model]

trained to minimise ``KL(model's output || lens_l)`` on text the model knows. ``A_l`` and
``b_l`` start at zero, so an untrained ``TunedLens`` *is* the logit lens. The last row (the stream
after the last layer) needs no translator: the readout of it is the model's output.

    residual_stack(model, tokens)        [row, batch, pos, d_model]: the embedding, then after each layer
    TunedLens(model)                     translators for rows 0 .. n_layers - 1; .logits(model, stack)
    train_tuned_lens(model, tokens)      fit them (seconds on the tiny model)
    lens_kl(model, tokens, lens=None)    [row]: mean KL(output || lens) per row; lens=None is the logit lens

Rows are labelled like ``interp.logit_lens``'s: ``"embed"``, ``"0"``, ``"1"``, ... Gemma 1 to 4
(Gemma 3n's stream is four AltUp copies: refused). Imports torch, tqdm and the interp layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from gemma_lab.interp import unembed

if TYPE_CHECKING:
    from gemma_lab.model import Gemma


def _check_model(model: "Gemma") -> None:
    if model.cfg.is_gemma3n:
        raise ValueError("the tuned lens reads one residual stream; Gemma 3n carries four AltUp copies "
                         "(use interp.logit_lens, which reads them through the model's own ending)")


def _batched(tokens: torch.Tensor) -> torch.Tensor:
    return tokens[None] if tokens.ndim == 1 else tokens


def residual_stack(model: "Gemma", tokens: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[row, batch, pos, d_model]``: ``hook_embed``, then ``blocks.{l}.hook_resid_post`` for every layer.

    The last row read through ``interp.unembed`` is exactly the model's output.
    """
    _check_model(model)
    tokens = _batched(tokens)
    n_layers = model.cfg.n_layers
    wanted = {"hook_embed"} | {f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, attention_mask=attention_mask, names_filter=lambda n: n in wanted)
    return torch.stack([cache["hook_embed"]] + [cache["resid_post", layer] for layer in range(n_layers)])


class TunedLens(nn.Module):
    """One affine translator ``h -> h + h @ A_l + b_l`` per row but the last, all starting at zero.

    ``translators[l]`` is an ``nn.Linear(d_model, d_model)`` holding ``A_l`` (as ``weight.T``) and
    ``b_l``; row ``l`` counts like ``interp.logit_lens``'s rows (0: the embedding, ``l + 1``: after
    layer ``l``). Parameters are float32 whatever the model's dtype.
    """

    def __init__(self, model: "Gemma") -> None:
        super().__init__()
        _check_model(model)
        d_model, n_layers = model.cfg.d_model, model.cfg.n_layers
        self.labels = ["embed"] + [str(layer) for layer in range(n_layers)]
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for translator in self.translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        self.to(model.device)

    def translate(self, resid_stack: torch.Tensor) -> torch.Tensor:
        """``[row, ..., d_model]`` (all ``n_layers + 1`` rows) -> the same, each row but the last translated."""
        if resid_stack.shape[0] != len(self.labels):
            raise ValueError(f"resid_stack has {resid_stack.shape[0]} rows; this lens has {len(self.labels)} "
                             f"({', '.join(self.labels)})")
        resid = resid_stack.float()
        rows = [resid[row] + translator(resid[row]) for row, translator in enumerate(self.translators)]
        return torch.stack(rows + [resid[-1]])

    def logits(self, model: "Gemma", resid_stack: torch.Tensor) -> torch.Tensor:
        """``[row, ..., vocab]`` float32: each translated row through the model's final norm, unembedding and softcap."""
        translated = self.translate(resid_stack).to(model.dtype)
        return unembed(model, translated).float()


def _kl_to_output(lens_logits: torch.Tensor, output_logits: torch.Tensor) -> torch.Tensor:
    """``[row, n]``: KL(output || lens) per row and position, in nats."""
    target = torch.log_softmax(output_logits.float(), dim=-1)
    predicted = torch.log_softmax(lens_logits.float(), dim=-1)
    return (target.exp() * (target - predicted)).sum(dim=-1)


def _positions(tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    valid = torch.ones(tokens.shape, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    return valid.reshape(-1).nonzero()[:, 0]


def lens_kl(model: "Gemma", tokens: torch.Tensor, lens: TunedLens | None = None, *,
            attention_mask: torch.Tensor | None = None, chunk: int = 512) -> torch.Tensor:
    """``[row]``: the mean over positions of ``KL(model's output || lens prediction)``, in nats.

    ``lens=None`` measures the logit lens. The last row is 0 for both (the readout of the last
    layer is the output). Padding (``attention_mask`` 0) is left out. Positions are read out
    ``chunk`` at a time and one row at a time, so a 256k vocabulary fits in memory.
    """
    tokens = _batched(tokens)
    stack = residual_stack(model, tokens, attention_mask=attention_mask)
    stack = stack.reshape(stack.shape[0], -1, stack.shape[-1])[:, _positions(tokens, attention_mask)]
    lens = lens if lens is not None else TunedLens(model)
    n_rows, n_positions = stack.shape[:2]
    total = torch.zeros(n_rows)
    with torch.no_grad():
        for start in range(0, n_positions, chunk):
            part = lens.translate(stack[:, start:start + chunk])  # [row, chunk, d_model]
            output = unembed(model, part[-1].to(model.dtype)).float()
            for row in range(n_rows - 1):
                row_logits = unembed(model, part[row].to(model.dtype)).float()
                total[row] += _kl_to_output(row_logits, output).sum().cpu()
    return total / n_positions


def train_tuned_lens(model: "Gemma", tokens: torch.Tensor, *, steps: int = 300, lr: float = 1e-3,
                     batch_positions: int = 512, weight_decay: float = 0.0, seed: int = 0,
                     attention_mask: torch.Tensor | None = None, lens: TunedLens | None = None,
                     progress: bool = True) -> TunedLens:
    """Fit a ``TunedLens`` on ``tokens`` ``[batch, pos]``: Adam on the summed per-row ``KL(output || lens)``.

    The residual streams are computed once; each step reads out ``batch_positions`` random
    positions (drawn reproducibly from ``seed``). The model is not changed and gets no gradients.
    ``lens``: continue training that lens instead of a new one. Returns the lens in eval mode;
    measure it on held-out text with ``lens_kl``.
    """
    if steps < 0 or batch_positions < 1:
        raise ValueError(f"train_tuned_lens needs steps >= 0 and batch_positions >= 1, got {steps}, {batch_positions}")
    tokens = _batched(tokens)
    stack = residual_stack(model, tokens, attention_mask=attention_mask)
    stack = stack.reshape(stack.shape[0], -1, stack.shape[-1])[:, _positions(tokens, attention_mask)]
    lens = lens if lens is not None else TunedLens(model)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    frozen = [p for p in model.parameters() if p.requires_grad]
    lens.train()
    try:
        for p in frozen:  # gradients flow through the readout to the lens, never into the model
            p.requires_grad_(False)
        with torch.enable_grad():
            for _ in tqdm(range(steps), desc="tuned lens", disable=not progress):
                chosen = torch.randint(0, stack.shape[1], (batch_positions,), generator=generator).to(stack.device)
                lens_logits = lens.logits(model, stack[:, chosen])  # the last row, untranslated, is the output
                loss = _kl_to_output(lens_logits[:-1], lens_logits[-1].detach()).mean(dim=-1).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return lens.eval()
