"""Training a sparse autoencoder or a transcoder on a model's activations: TopK with AuxK.

Recipe: Gao et al., 2024, "Scaling and evaluating sparse autoencoders" (OpenAI), section 2:
  * the activation is TopK (keep the k largest pre-activations), so L0 = k by construction and
    there is no sparsity penalty to tune;
  * loss = normalised MSE, ``|recons - target|^2 / |target - mean|^2`` (the fraction of variance
    unexplained, FVU), plus ``aux_coeff`` (1/32) times the AuxK loss: the ``k_aux`` largest
    pre-activations among *dead* features (none fired in the last ``dead_after`` tokens) must
    reconstruct the main reconstruction's error, which pulls dead features back into use;
  * ``b_dec`` starts at the mean of the target, ``W_enc`` starts as ``W_dec.T``, decoder rows are
    kept at unit norm (renormalised after every step, the gradient's component along each row
    removed first), Adam, a constant learning rate after a short warm-up.
An SAE subtracts ``b_dec`` from its input (``apply_b_dec_to_input``, Gao et al.'s ``b_pre``); a
transcoder reads one site and predicts another (``blocks.L.ln2.hook_normalized`` ->
``blocks.L.hook_mlp_out``), so its ``b_dec`` starts at the mean MLP output.

Activations are collected once (``collect_activations``), without the ``<bos>`` position, whose
stream is an outlier that every feature would otherwise spend capacity on; then shuffled with a
seeded generator. Same seed, same data and same machine: the same weights.

The bundled tiny SAEs are made with these functions by ``gemma_lab/tiny/sae.py``
(``python -m gemma_lab.tiny.sae``; see ``data/tiny-sae/README.md``).

Imports: torch, safetensors, tqdm and the SAE module; the model is passed in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from gemma_lab.sae.autoencoder import SAE, SAEConfig, make_sae


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run; one comment per field."""

    d_sae: int = 1024  # features
    k: int = 16  # features kept per token (the L0)
    steps: int = 3000  # optimiser steps
    batch_size: int = 1024  # activation vectors per step
    lr: float = 1e-3  # Adam learning rate after warm-up
    warmup: int = 100  # linear warm-up steps
    aux_coeff: float = 1 / 32  # weight of the AuxK loss (Gao et al.)
    k_aux: int = 64  # dead features asked to explain the error (Gao et al.: d_in / 2)
    dead_after: int = 100_000  # tokens without firing after which a feature counts as dead
    seed: int = 0  # initialisation and data order


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


def collect_activations(model, token_rows: Iterable[list[int]], hook_names: list[str],
                        batch_size: int = 32, progress: bool = True) -> dict[str, torch.Tensor]:
    """``{name: [n_tokens, width]}``: the activations at ``hook_names`` of every token of every row,
    the first position of each row (``<bos>``) left out. Rows are run in right-padded batches; padded
    positions are dropped (causal attention: padding on the right changes nothing before it)."""
    rows = [list(row) for row in token_rows]
    store: dict[str, list[torch.Tensor]] = {name: [] for name in hook_names}
    order = model.hook_names()
    last = max(hook_names, key=order.index)  # the forward pass stops once this one has fired
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc="collecting activations", disable=not progress):
            chunk = rows[start:start + batch_size]
            length = max(len(row) for row in chunk)
            tokens = torch.zeros(len(chunk), length, dtype=torch.long)
            keep = torch.zeros(len(chunk), length, dtype=torch.bool)
            for i, row in enumerate(chunk):
                tokens[i, :len(row)] = torch.tensor(row)
                keep[i, 1:len(row)] = True
            saver = _SaveAndStop(keep.to(model.device), last)
            try:
                model.run_with_hooks(tokens.to(model.device), fwd_hooks=[(name, saver) for name in hook_names])
            except _StopForward:
                pass
            for name in hook_names:
                store[name].append(saver.saved[name])
    return {name: torch.cat(parts) for name, parts in store.items()}


class _StopForward(Exception):
    """Raised by ``_SaveAndStop`` once the last wanted activation is saved: the rest of the pass is not needed."""


class _SaveAndStop:
    """A hook that keeps the activation at the ``keep`` positions (as ``[n, width]``) and, at ``last``, stops."""

    def __init__(self, keep: torch.Tensor, last: str) -> None:
        self.keep = keep
        self.last = last
        self.saved: dict[str, torch.Tensor] = {}

    def __call__(self, activation: torch.Tensor, hook) -> None:
        if activation.ndim == 4:  # attn.hook_z: the heads side by side
            activation = activation.flatten(-2)
        self.saved[hook.name] = activation[self.keep].float().cpu()
        if hook.name == self.last:
            raise _StopForward


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def fvu(recons: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: ``sum |recons - target|^2 / sum |target - mean(target)|^2``."""
    return (recons - target).pow(2).sum() / (target - target.mean(dim=0)).pow(2).sum()


def init_sae(cfg: SAEConfig, target: torch.Tensor, generator: torch.Generator) -> SAE:
    """Gao et al.'s initialisation: unit-norm random decoder rows, encoder = decoder transposed,
    ``b_dec`` = mean target, ``b_enc`` = 0."""
    sae = make_sae(cfg)
    with torch.no_grad():
        w_dec = torch.randn(cfg.d_sae, cfg.width_out, generator=generator)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        if cfg.d_in == cfg.width_out:
            sae.W_enc.copy_(sae.W_dec.T)
        else:
            w_enc = torch.randn(cfg.d_in, cfg.d_sae, generator=generator)
            sae.W_enc.copy_(w_enc / w_enc.norm(dim=0, keepdim=True))
        sae.b_dec.copy_(target.mean(dim=0))
    return sae


def _aux_loss(sae: SAE, pre: torch.Tensor, error: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK: the top ``k_aux`` dead pre-activations reconstruct the error (normalised like the FVU)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    top = dead_pre.topk(min(k_aux, n_dead), dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    error_hat = acts @ sae.W_dec
    return (error_hat - error.detach()).pow(2).sum() / (error.detach() - error.detach().mean(dim=0)).pow(2).sum()


def train_sae(cfg: SAEConfig, inputs: torch.Tensor, targets: torch.Tensor | None = None,
              train: TrainConfig = TrainConfig(), progress: bool = True) -> tuple[SAE, dict]:
    """A TopK SAE (``targets`` None) or transcoder trained on ``inputs [n, d_in]`` (-> ``targets [n, d_out]``).

    Returns the SAE (eval mode) and a log: the loss every 50 steps and the seconds it took.
    """
    if cfg.architecture != "topk":
        raise ValueError(f"train_sae implements the TopK recipe; cfg.architecture is {cfg.architecture!r}")
    targets = inputs if targets is None else targets
    generator = torch.Generator().manual_seed(train.seed)
    sae = init_sae(cfg, targets, generator).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=train.lr, betas=(0.9, 0.999))
    last_fired = torch.zeros(cfg.d_sae, dtype=torch.long)  # tokens seen since each feature last fired
    log: dict = {"step": [], "fvu": [], "aux": [], "dead": []}
    n = inputs.shape[0]
    order = torch.randperm(n, generator=generator)
    cursor = 0
    started = time.perf_counter()
    bar = tqdm(range(train.steps), desc=f"training {cfg.hook_name_out or cfg.hook_name}", disable=not progress)
    for step in bar:
        if cursor + train.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor:cursor + train.batch_size]
        cursor += train.batch_size
        x, y = inputs[index], targets[index]

        xin = x - sae.b_dec if cfg.apply_b_dec_to_input else x
        pre = xin @ sae.W_enc + sae.b_enc
        acts = sae.activation(pre)
        recons = acts @ sae.W_dec + sae.b_dec
        main = fvu(recons, y)
        fired = (acts > 0).any(dim=0)
        last_fired = torch.where(fired, torch.zeros_like(last_fired), last_fired + x.shape[0])
        dead = last_fired >= train.dead_after
        aux = _aux_loss(sae, pre, y - recons, dead, train.k_aux)
        loss = main + train.aux_coeff * aux

        for group in optimizer.param_groups:
            group["lr"] = train.lr * min(1.0, (step + 1) / train.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep decoder rows on the unit sphere: drop the gradient along each row
            w = sae.W_dec
            w.grad -= (w.grad * w).sum(dim=-1, keepdim=True) * w
        optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        if step % 50 == 0 or step == train.steps - 1:
            log["step"].append(step)
            log["fvu"].append(round(float(main.detach()), 5))
            log["aux"].append(round(float(aux.detach()), 5))
            log["dead"].append(int(dead.sum()))
            bar.set_postfix(fvu=f"{log['fvu'][-1]:.3f}", dead=log["dead"][-1])
    log["seconds"] = round(time.perf_counter() - started, 1)
    return sae.eval(), log


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(sae: SAE, inputs: torch.Tensor, targets: torch.Tensor | None = None, batch_size: int = 4096) -> dict:
    """L0 (mean features firing per token), FVU, and dead features (never firing on these tokens)."""
    targets = inputs if targets is None else targets
    fired_count = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    l0_sum, err, n = 0.0, 0.0, inputs.shape[0]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
            acts = sae.encode(x)
            fired = acts > 0
            fired_count += fired.sum(dim=0)
            l0_sum += float(fired.sum())
            err += float((sae.decode(acts, x) - y).pow(2).sum())
    variance = float((targets - targets.mean(dim=0)).pow(2).sum())
    return {"l0": round(l0_sum / n, 3), "fvu": round(err / variance, 4), "dead": int((fired_count == 0).sum()),
            "tokens": n}


# ---------------------------------------------------------------------------------------------
# Saving (SAELens' format, which load_sae reads)
# ---------------------------------------------------------------------------------------------


def save_sae(sae: SAE, folder: str | Path, extra: dict | None = None) -> Path:
    """``cfg.json`` + ``sae_weights.safetensors`` in SAELens' layout (``sae_lens.SAE.load_from_disk`` reads it too)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    architecture = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[cfg.architecture]
    if cfg.is_transcoder:  # SAELens has no TopK transcoder: "topk_transcoder" is gemma_lab's (load_sae reads it)
        prefix = {"relu": "", "jumprelu": "jumprelu_", "topk": "topk_"}[cfg.architecture]
        architecture = prefix + ("skip_transcoder" if cfg.affine_skip else "transcoder")
    # The layout of SAELens 6 configs (SAELens reads older ones differently, by this version field).
    metadata = {"hook_name": cfg.hook_name, "model_name": cfg.model_name, "sae_lens_version": "6.0.0"}
    if cfg.is_transcoder:
        metadata["hook_name_out"] = cfg.hook_name_out
    config = {"architecture": architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype,
              "device": "cpu", "apply_b_dec_to_input": cfg.apply_b_dec_to_input, "normalize_activations": "none",
              "reshape_activations": "hook_z" if cfg.hook_name.endswith("attn.hook_z") else "none",
              "metadata": metadata}
    if cfg.k is not None:
        config["k"] = cfg.k
    if cfg.is_transcoder:
        config["d_out"] = cfg.width_out
    if extra:
        config["gemma_lab"] = extra
    tensors = {name: param.detach().contiguous() for name, param in sae.state_dict().items()}
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
