"""Interpretability tools built on hooks: each function runs the model and returns tensors ready to plot.

    logit_lens                what the stream would predict after each layer       [layer, pos, k]
    direct_logit_attribution  what each head / MLP writes towards a logit          [layer, head], [layer]
    ablate_heads, ablate_neurons
                              zero- or mean-ablation (context managers; hook factories too)
    patch_by_layer_pos, patch_by_layer, patch_by_head
                              activation patching with your metric     [layer, pos], [layer], [layer, head]
    activation_patching       the same, with both runs named: direction="denoise" or "noise"
    path_patch, path_patch_heads
                              a sender head's effect along its paths into receivers    float, [layer, head]
    steer                     add a direction to the residual stream (also around generation)
    repeated_tokens, head_scores, in_context_loss
                              previous-token, induction and duplicate-token heads on repeated random tokens
    head_circuits, composition_score
                              each head's OV and QK matrices, and how strongly two heads compose
    qk_scores_by_offset       a head's QK circuit under RoPE, by relative offset    [offset, q row, k row]

Conventions. ``tokens`` are ``[batch, pos]`` token ids (a 1-D tensor is one sequence). A
``metric`` is ``fn(logits) -> scalar`` (a float or a 0-d tensor). Functions that loop over many
forward passes show a ``tqdm.auto`` progress bar (``progress=False`` hides it). Everything runs
under ``torch.no_grad()``. Worked examples: ``docs/interp.md``.

References: logit lens (nostalgebraist, 2020); direct logit attribution and induction heads
(Elhage et al., 2021, "A Mathematical Framework for Transformer Circuits"; Olsson et al., 2022);
activation patching (Meng et al., 2022; Heimersheim & Nanda, 2024, "How to use and interpret
activation patching"); path patching (Wang et al., 2022, "Interpretability in the Wild"); steering by activation addition (Turner et al., 2023). Names and
arguments follow TransformerLens where it has an equivalent.

Imports: torch, einops and tqdm; the model is passed in. No plotting, widgets or tokenizer here:
``gemma_lab.viz`` draws what these functions return.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, Union

import torch
from einops import rearrange
from tqdm.auto import tqdm

from gemma_lab.activation_cache import ActivationCache
from gemma_lab.hook_points import SHORT_NAMES, act_name, head_axis, hook_axes
from gemma_lab.hooks import HookFn, HookPoint

if TYPE_CHECKING:
    from gemma_lab.model import Gemma

Metric = Callable[[torch.Tensor], Union[float, torch.Tensor]]


def _batched(tokens: torch.Tensor) -> torch.Tensor:
    return tokens[None] if tokens.ndim == 1 else tokens


# ---------------------------------------------------------------------------------------------
# Logit lens
# ---------------------------------------------------------------------------------------------


def unembed(model: "Gemma", resid: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., vocab]`` that a residual-stream state ``[..., d_model]`` would give if it were
    the last layer's output: ``model.unembed`` (final RMSNorm, tied unembedding, Gemma 2's softcap).

    For the final ``resid_post`` this is exactly the model's output. It runs ``model.ln_final``,
    so hooks attached to ``ln_final`` see these calls too.
    """
    # A HookedGemma's own .unembed is TransformerLens's (x @ W_U, no norm): use its Gemma's.
    return getattr(model, "model", model).unembed(resid)


@dataclass
class LogitLens:
    """What the residual stream predicts after each layer, for one sequence."""

    labels: list[str]  # one per row: "embed", then "0", "1", ... (the stream after that layer)
    top_tokens: torch.Tensor  # [layer, pos, k] ids of the k most likely next tokens, most likely first
    top_probs: torch.Tensor  # [layer, pos, k] their probabilities
    target_tokens: torch.Tensor  # [pos] the token tracked in target_probs
    target_probs: torch.Tensor  # [layer, pos] probability of target_tokens[pos] at each row


def logit_lens(model: "Gemma", tokens: torch.Tensor, *, k: int = 5, targets: torch.Tensor | None = None,
               incl_mid: bool = False, cache: ActivationCache | None = None) -> LogitLens:
    """Read the residual stream after every layer through the model's own final norm and unembedding.

    tokens: one sequence ``[pos]`` (or ``[1, pos]``).
    targets: ``[pos]`` token ids to follow through the layers; by default the model's own final
        prediction at each position (so the last row of ``target_probs`` is its top probability).
    incl_mid: also read the stream between attention and MLP (rows ``"{l}_mid"``).
    cache: a cache of this sequence with ``resid_pre``/``resid_mid``/``resid_post`` (run if not given).

    Row 0 (``"embed"``) is the embedding alone; the last row is exactly the model's output.
    Gemma 3n: each row reads all AltUp copies of the stream (``hook_streams_post``) through the model's
    own ending (un-stacking, final norm, unembedding), so the last row is still exactly the output;
    there is no ``incl_mid`` (between attention and MLP only the active copy exists).
    For a heatmap: ``viz.logit_lens_heatmap(lens.top_probs[..., 0], <decoded lens.top_tokens[..., 0]>, ...)``.
    """
    tokens = _batched(tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"logit_lens reads one sequence; got a batch of {tokens.shape[0]}")
    gemma = getattr(model, "model", model)
    if gemma.cfg.is_gemma3n:
        return _logit_lens_over_streams(gemma, tokens, k, targets, incl_mid, cache)
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: ".hook_resid_" in n)
    rows, labels = [cache["resid_pre", 0]], ["embed"]
    for layer in range(model.cfg.n_layers):
        if incl_mid:
            rows.append(cache["resid_mid", layer])
            labels.append(f"{layer}_mid")
        rows.append(cache["resid_post", layer])
        labels.append(str(layer))

    return _lens_rows(model, rows, labels, k, targets)


def _logit_lens_over_streams(model: "Gemma", tokens: torch.Tensor, k: int, targets: torch.Tensor | None,
                             incl_mid: bool, cache: ActivationCache | None) -> LogitLens:
    """Gemma 3n's logit lens: the copies of the stream after each layer, un-stacked as the model ends."""
    if incl_mid:
        raise ValueError("logit_lens(incl_mid=True) is not available for Gemma 3n: between attention and MLP "
                         "only the active AltUp copy exists, and the model's ending reads all copies")
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_streams_p" in n)
    rows = [cache["streams_pre", 0]] + [cache["streams_post", layer] for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        rows = [model.altup_unstack(streams) for streams in rows]
    return _lens_rows(model, rows, ["embed"] + [str(layer) for layer in range(model.cfg.n_layers)], k, targets)


def _lens_rows(model: "Gemma", rows: list[torch.Tensor], labels: list[str], k: int,
               targets: torch.Tensor | None) -> LogitLens:
    top_probs, top_tokens, all_probs = [], [], []
    with torch.no_grad():
        for resid in rows:  # one row at a time: [pos, vocab] probabilities, never [layer, pos, vocab]
            probs = torch.softmax(unembed(model, resid).float(), dim=-1)[0]
            values, ids = probs.topk(k, dim=-1)
            top_probs.append(values)
            top_tokens.append(ids)
            all_probs.append(probs)
        if targets is None:
            targets = top_tokens[-1][:, 0]
        targets = torch.as_tensor(targets, device=all_probs[0].device).reshape(-1)
        target_probs = torch.stack([p.gather(-1, targets[:, None])[:, 0] for p in all_probs])
    return LogitLens(labels, torch.stack(top_tokens), torch.stack(top_probs), targets, target_probs)


# ---------------------------------------------------------------------------------------------
# Direct logit attribution
# ---------------------------------------------------------------------------------------------


@dataclass
class LogitAttribution:
    """Direct contributions to one logit (difference), averaged over the batch."""

    embed: torch.Tensor  # [] the token embedding's contribution
    heads: torch.Tensor  # [layer, head] each attention head's
    mlps: torch.Tensor  # [layer] each MLP's (Gemma 4 26B-A4B: dense MLP and experts together)
    total: torch.Tensor  # [] the logit (difference) itself, before Gemma 2's final softcap
    per_layer: torch.Tensor | None = None  # [layer] Gemma 4 E2B/E4B: each per-layer input's


def direct_logit_attribution(model: "Gemma", tokens: torch.Tensor, target: int | torch.Tensor, *,
                             incorrect: int | torch.Tensor | None = None, pos: int = -1,
                             cache: ActivationCache | None = None) -> LogitAttribution:
    """How much each head and each MLP writes directly towards ``target``'s logit at position ``pos``.

    target, incorrect: a token id or ``[batch]`` ids; with ``incorrect`` the attribution is to the
        logit difference ``target - incorrect`` (e.g. " Mary" - " John").
    The final norm is linearised with this run's ``inv_rms`` (and Gemma 2/3's post-attention
    norm likewise, see ``ActivationCache.stack_head_results``), so ``embed + heads.sum() +
    mlps.sum()`` (Gemma 4 E2B/E4B: ``+ per_layer.sum()``) equals ``total`` up to float rounding;
    Gemma 4's layer scalars are folded into each component. Gemma 2's final softcap is not
    linear: ``total`` is the logit before it.

    Gemma 3n raises: its stream is four AltUp copies re-mixed in every layer by token-dependent
    coefficients, so the final state is not a sum of what each head and MLP wrote. Nothing like
    DLA is exact there; use ablation or activation patching, which are.
    """
    if getattr(model, "model", model).cfg.is_gemma3n:
        raise ValueError(_NO_DECOMPOSITION_3N)
    tokens = _batched(tokens)
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=_dla_names)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        heads = cache.stack_head_results(pos_slice=pos)  # [layer*head, batch, d_model]
        parts, labels = cache.decompose_resid(pos_slice=pos, return_labels=True)  # embed, attn, mlp (, per-layer)
        kinds = {kind: parts[[i for i, label in enumerate(labels) if label.endswith(kind)]]
                 for kind in ("embed", "_mlp_out", "_per_layer_out")}
        attrs = [cache.logit_attrs(stack, target, incorrect, pos_slice=pos).mean(dim=-1)
                 for stack in (kinds["embed"], heads, kinds["_mlp_out"], kinds["_per_layer_out"])]
        direction = model.embed.weight[torch.as_tensor(target)].float()
        if incorrect is not None:
            direction = direction - model.embed.weight[torch.as_tensor(incorrect)].float()
        total = (cache["ln_final.hook_normalized"][:, pos].float() * direction).sum(dim=-1).mean()
    per_layer = attrs[3] if model.blocks[0].per_layer is not None else None
    return LogitAttribution(attrs[0][0], attrs[1].reshape(n_layers, n_heads), attrs[2], total, per_layer)


_NO_DECOMPOSITION_3N = (
    "direct logit attribution is not available for Gemma 3n: AltUp re-mixes its four copies of the stream "
    "in every layer with token-dependent coefficients, so the output is not a sum of the components' "
    "writes; use ablation or activation patching (exact for any model) instead")


def _dla_names(name: str) -> bool:
    return (name in ("hook_embed", "ln_final.hook_inv_rms", "ln_final.hook_normalized")
            or name.endswith(("attn.hook_z", "ln1_post.hook_inv_rms", "hook_attn_out", "hook_mlp_out",
                              "hook_per_layer_out")))


# ---------------------------------------------------------------------------------------------
# Ablation
# ---------------------------------------------------------------------------------------------


def head_ablation_hook(heads: int | Sequence[int], value: float | torch.Tensor = 0.0) -> HookFn:
    """A hook for ``attn.hook_z`` that sets the given heads' output to ``value``.

    value: 0 (zero-ablation), or a tensor broadcastable to ``[len(heads), d_head]`` such as the
    heads' mean ``z`` over a reference batch (mean-ablation).
    """
    index = [heads] if isinstance(heads, int) else list(heads)

    def ablate_z(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        z = z.clone()
        z[:, :, index] = torch.as_tensor(value, dtype=z.dtype, device=z.device)
        return z

    return ablate_z


def neuron_ablation_hook(neurons: int | Sequence[int], value: float | torch.Tensor = 0.0) -> HookFn:
    """A hook for ``mlp.hook_post`` that sets the given neurons to ``value`` (0, or e.g. their mean)."""
    index = [neurons] if isinstance(neurons, int) else list(neurons)

    def ablate_post(post: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        post = post.clone()
        post[..., index] = torch.as_tensor(value, dtype=post.dtype, device=post.device)
        return post

    return ablate_post


def mean_activation(model: "Gemma", tokens: torch.Tensor, name: str, *, attention_mask=None) -> torch.Tensor:
    """The activation at hook ``name`` averaged over batch and positions of ``tokens``.

    ``[head, d_head]`` for ``hook_z``, ``[d_mlp]`` for ``hook_post``, ``[d_model]`` for the stream.
    With ``attention_mask``, padding positions are left out of the mean.
    """
    tokens = _batched(tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=name, attention_mask=attention_mask)
    act = cache[name].float()
    if attention_mask is None:
        return act.mean(dim=(0, 1)).to(cache[name].dtype)
    weights = _batched(attention_mask).to(act.dtype).reshape(*act.shape[:2], *([1] * (act.ndim - 2)))
    return ((act * weights).sum(dim=(0, 1)) / weights.sum()).to(cache[name].dtype)


@contextmanager
def ablate_heads(model: "Gemma", heads: Iterable[tuple[int, int]], *, mode: str = "zero",
                 reference_tokens: torch.Tensor | None = None) -> Iterator["Gemma"]:
    """Within the block, attention heads ``[(layer, head), ...]`` write nothing (``mode="zero"``) or
    their mean output over ``reference_tokens`` (``mode="mean"``), through ``hook_z``.

    Zeroing a head's ``z`` is exactly zeroing its columns of ``o_proj`` (and, for Gemma 2/3, the
    post-attention norm then rescales what the other heads wrote). Means are computed when the
    block is entered, by a forward pass over ``reference_tokens`` with the hooks active then.
    """
    hooks = _ablation_hooks(model, heads, "z", head_ablation_hook, mode, reference_tokens)
    with model.hooks(fwd_hooks=hooks):
        yield model


@contextmanager
def ablate_neurons(model: "Gemma", neurons: Iterable[tuple[int, int]], *, mode: str = "zero",
                   reference_tokens: torch.Tensor | None = None) -> Iterator["Gemma"]:
    """Within the block, MLP neurons ``[(layer, neuron), ...]`` are set to 0 or their mean over
    ``reference_tokens``, at ``mlp.hook_post`` (the input of ``down_proj``)."""
    hooks = _ablation_hooks(model, neurons, "post", neuron_ablation_hook, mode, reference_tokens)
    with model.hooks(fwd_hooks=hooks):
        yield model


def _ablation_hooks(model: "Gemma", units: Iterable[tuple[int, int]], activation: str, make_hook,
                    mode: str, reference_tokens: torch.Tensor | None) -> list:
    """One hook per layer that sets the listed ``(layer, index)`` units of ``activation`` to 0 or their mean."""
    by_layer: dict[int, list[int]] = {}
    for layer, index in units:
        by_layer.setdefault(layer, []).append(index)
    hooks = []
    for layer, indices in by_layer.items():
        name = act_name(activation, layer)
        value = _ablation_value(model, name, mode, reference_tokens)
        value = value if isinstance(value, float) else value[indices]
        hooks.append((name, make_hook(indices, value)))
    return hooks


def _ablation_value(model: "Gemma", name: str, mode: str,
                    reference_tokens: torch.Tensor | None) -> float | torch.Tensor:
    if mode == "zero":
        return 0.0
    if mode != "mean":
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    if reference_tokens is None:
        raise ValueError("mode='mean' needs reference_tokens: the batch whose mean replaces the activation")
    return mean_activation(model, reference_tokens, name)


# ---------------------------------------------------------------------------------------------
# Activation patching
# ---------------------------------------------------------------------------------------------

# Activations with a head (or kv_head) axis, and where it sits: read off the hook-point table.
_HEAD_AXIS = {short: head_axis(short) for short in SHORT_NAMES
              if {"head", "kv_head"} & set(hook_axes(act_name(short, 0)))}


def _patched_metric(model: "Gemma", corrupted_tokens: torch.Tensor, name: str, hook: HookFn,
                    metric: Metric) -> float:
    logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])
    return float(metric(logits))


def _clean(clean_cache: ActivationCache, name: str, corrupted_tokens: torch.Tensor) -> torch.Tensor:
    try:
        clean = clean_cache[name]
    except KeyError:
        raise KeyError(f"the clean cache has no {name!r}; run the clean tokens with run_with_cache "
                       f"and a names_filter that includes it") from None
    if clean.shape[:1] != corrupted_tokens.shape[:1]:
        raise ValueError(f"clean {name} has batch {clean.shape[0]}; corrupted tokens {corrupted_tokens.shape[0]}")
    return clean


class _Patch:
    """A hook that copies ``clean[index]`` into the activation (index over all axes)."""

    def __init__(self, clean: torch.Tensor, index: tuple) -> None:
        self.clean = clean
        self.index = index

    def __call__(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        if activation.shape != self.clean.shape:
            raise ValueError(f"{hook.name}: clean activation has shape {tuple(self.clean.shape)}, "
                             f"corrupted {tuple(activation.shape)}; patching needs the same shapes")
        patched = activation.clone()
        patched[self.index] = self.clean[self.index].to(activation.device, activation.dtype)
        return patched


def patch_by_layer_pos(model: "Gemma", corrupted_tokens: torch.Tensor, clean_cache: ActivationCache,
                       metric: Metric, *, activation: str = "resid_pre",
                       progress: bool = True) -> torch.Tensor:
    """``[layer, pos]``: ``metric`` of the corrupted run with one (layer, position) of ``activation``
    replaced by its value in the clean run.

    activation: a stream-sized activation, ``"resid_pre"`` (default), ``"resid_mid"``,
    ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``. ``clean_cache`` must hold it for every layer.
    This is denoising; given the clean tokens and a corrupted cache it is noising (the
    ``patch_by_*`` functions copy from the cache into the run of the tokens they are given).
    ``activation_patching`` names both runs and the direction.
    """
    corrupted_tokens = _batched(corrupted_tokens)
    n_layers, n_pos = model.cfg.n_layers, corrupted_tokens.shape[1]
    results = torch.zeros(n_layers, n_pos)
    bar = tqdm(total=n_layers * n_pos, desc=f"patching {activation}", disable=not progress)
    with torch.no_grad(), bar:
        for layer in range(n_layers):
            name = act_name(activation, layer)
            clean = _clean(clean_cache, name, corrupted_tokens)
            for pos in range(n_pos):
                results[layer, pos] = _patched_metric(model, corrupted_tokens, name,
                                                      _Patch(clean, (slice(None), pos)), metric)
                bar.update()
    return results


def patch_by_layer(model: "Gemma", corrupted_tokens: torch.Tensor, clean_cache: ActivationCache,
                   metric: Metric, *, activation: str = "attn_out", progress: bool = True) -> torch.Tensor:
    """``[layer]``: ``metric`` of the corrupted run with ``activation`` of one layer (all positions)
    replaced by its clean value. Typical: ``"attn_out"``, ``"mlp_out"``, ``"resid_pre"``."""
    corrupted_tokens = _batched(corrupted_tokens)
    results = torch.zeros(model.cfg.n_layers)
    with torch.no_grad():
        for layer in tqdm(range(model.cfg.n_layers), desc=f"patching {activation}", disable=not progress):
            name = act_name(activation, layer)
            clean = _clean(clean_cache, name, corrupted_tokens)
            results[layer] = _patched_metric(model, corrupted_tokens, name, _Patch(clean, (...,)), metric)
    return results


def patch_by_head(model: "Gemma", corrupted_tokens: torch.Tensor, clean_cache: ActivationCache,
                  metric: Metric, *, activation: str = "z", progress: bool = True) -> torch.Tensor:
    """``[layer, head]``: ``metric`` of the corrupted run with one head's ``activation`` (all
    positions) replaced by its clean value.

    activation: ``"z"`` (the head's output, default), ``"pattern"`` (where it attends; this
    switches attention to the explicit path), or ``"q"``/``"rot_q"``/``"result"``; ``"k"``/``"v"``
    give ``[layer, kv_head]``.
    """
    if activation not in _HEAD_AXIS:
        raise ValueError(f"activation must be one of {sorted(_HEAD_AXIS)}, got {activation!r}")
    corrupted_tokens = _batched(corrupted_tokens)
    axis = _HEAD_AXIS[activation]
    n_layers = model.cfg.n_layers
    first = _clean(clean_cache, act_name(activation, 0), corrupted_tokens)
    n_heads = first.shape[axis]
    results = torch.zeros(n_layers, n_heads)
    bar = tqdm(total=n_layers * n_heads, desc=f"patching {activation}", disable=not progress)
    with torch.no_grad(), bar:
        for layer in range(n_layers):
            name = act_name(activation, layer)
            clean = _clean(clean_cache, name, corrupted_tokens)
            for head in range(n_heads):
                index = (slice(None),) * axis + (head,)
                patch = _Patch(clean, index)
                results[layer, head] = _patched_metric(model, corrupted_tokens, name, patch, metric)
                bar.update()
    return results


def activation_patching(model: "Gemma", clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                        metric: Metric, *, direction: str = "denoise", by: str = "layer_pos",
                        activation: str | None = None, progress: bool = True) -> torch.Tensor:
    """Activation patching in either direction, with the runs named (Heimersheim & Nanda, 2024).

    direction: ``"denoise"`` runs the corrupted prompts and restores one clean activation (a cell
        that brings the clean metric back is *sufficient* for the behaviour); ``"noise"`` runs the
        clean prompts and copies in one corrupted activation (a cell that destroys it is
        *necessary*). The other run is cached here, for the activations patched only.
    by: ``"layer_pos"`` -> ``[layer, pos]`` (``patch_by_layer_pos``), ``"layer"`` -> ``[layer]``
        (``patch_by_layer``), ``"head"`` -> ``[layer, head]`` (``patch_by_head``); ``activation``
        defaults to ``"resid_pre"``, ``"attn_out"`` and ``"z"`` respectively.
    Returns the raw metric of each patched run.
    """
    functions = {"layer_pos": (patch_by_layer_pos, "resid_pre"), "layer": (patch_by_layer, "attn_out"),
                 "head": (patch_by_head, "z")}
    if by not in functions:
        raise ValueError(f"by must be one of {sorted(functions)}, got {by!r}")
    target, source = _directed(clean_tokens, corrupted_tokens, direction)
    function, default = functions[by]
    activation = activation or default
    suffix = act_name(activation, 0).split(".", 2)[-1]  # e.g. "attn.hook_z"
    with torch.no_grad():
        _, source_cache = model.run_with_cache(source, names_filter=lambda name: name.endswith(suffix))
    return function(model, target, source_cache, metric, activation=activation, progress=progress)


def _directed(clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
              direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the run that is patched, the run the patched values come from), both ``[batch, pos]``."""
    clean_tokens, corrupted_tokens = _batched(clean_tokens), _batched(corrupted_tokens)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean tokens {tuple(clean_tokens.shape)} and corrupted tokens "
                         f"{tuple(corrupted_tokens.shape)} must have the same shape to be patched position by position")
    if direction == "denoise":
        return corrupted_tokens, clean_tokens
    if direction == "noise":
        return clean_tokens, corrupted_tokens
    raise ValueError(f'direction must be "denoise" (corrupted run, clean activations) or "noise" '
                     f"(clean run, corrupted activations), got {direction!r}")


# ---------------------------------------------------------------------------------------------
# Path patching
# ---------------------------------------------------------------------------------------------

Head = tuple[int, int]
_FREEZE = ("heads", "all", "none")


def path_patch(model: "Gemma", clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Metric,
               senders: Head | Sequence[Head], receivers: str | Head | Sequence[Head] = "logits", *,
               receiver_input: str = "q", direction: str = "noise", freeze: str = "heads") -> float:
    """Path patching (Wang et al., 2022; ARENA 1.4): the metric when the senders' output changes
    only along its paths into the receivers.

    senders: ``(layer, head)`` or a list of them; their ``hook_z`` is taken from the other run.
    receivers: ``"logits"`` (the paths into the final residual stream, read by the metric) or
        ``(layer, head)``/a list, in later layers than every sender; ``receiver_input`` says which
        of their inputs receive: ``"q"`` (index: query head), ``"k"`` or ``"v"`` (index: kv_head).
    direction: ``"noise"`` (default, as Wang et al.): the clean run is the base and the senders
        carry corrupted values; ``"denoise"``: the reverse.
    freeze: which other components keep their base-run values along the way, cutting the paths
        through them. ``"heads"`` (default, as Wang et al. and ARENA): every other head's ``z``;
        MLPs are recomputed, so paths through MLPs count. ``"all"``: heads, MLPs (and Gemma 4's
        per-layer inputs): only the direct path. ``"none"``: nothing; with ``receivers="logits"``
        this is ordinary activation patching of the senders.

    Two runs on the base prompts. Run 1: senders patched, the frozen components pinned to their
    base values, the receivers' inputs recorded (with ``"logits"``, the metric is read here).
    Run 2: only the receivers' inputs are replaced by what run 1 recorded; everything after them
    is recomputed. On Gemma 2/3 a head's write passes through the post-attention norm with its
    layer's other heads, so the sender's change includes that norm's rescaling of them: hooks at
    ``hook_z`` make this exact, with no linearisation.
    """
    senders = _heads(model, senders, "senders")
    receivers = _receivers(model, receivers, receiver_input, freeze)
    base, source = _directed(clean_tokens, corrupted_tokens, direction)
    base_cache, source_cache = _path_caches(model, base, source)
    return _path_patch(model, base, base_cache, source_cache, metric, senders, receivers, receiver_input, freeze)


def path_patch_heads(model: "Gemma", clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                     metric: Metric, receivers: str | Head | Sequence[Head] = "logits", *,
                     receiver_input: str = "q", direction: str = "noise", freeze: str = "heads",
                     progress: bool = True) -> torch.Tensor:
    """``[layer, head]``: ``path_patch`` with each head in turn as the only sender; NaN for heads
    that cannot send to the receivers (in their layer or later). Both runs are cached once."""
    receivers = _receivers(model, receivers, receiver_input, freeze)
    base, source = _directed(clean_tokens, corrupted_tokens, direction)
    base_cache, source_cache = _path_caches(model, base, source)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    last = n_layers if receivers == "logits" else min(layer for layer, _ in receivers)
    results = torch.full((n_layers, n_heads), float("nan"))
    bar = tqdm(total=last * n_heads, desc="path patching", disable=not progress)
    with bar:
        for layer in range(last):
            for head in range(n_heads):
                results[layer, head] = _path_patch(model, base, base_cache, source_cache, metric, [(layer, head)],
                                                   receivers, receiver_input, freeze)
                bar.update()
    return results


def _path_caches(model: "Gemma", base: torch.Tensor, source: torch.Tensor) -> tuple[ActivationCache, ActivationCache]:
    """The base run's head outputs and MLP outputs (what gets frozen), and the source run's head outputs."""
    with torch.no_grad():
        _, base_cache = model.run_with_cache(
            base, names_filter=lambda name: name.endswith(("attn.hook_z", "hook_mlp_out", "hook_per_layer_out")))
        _, source_cache = model.run_with_cache(source, names_filter=lambda name: name.endswith("attn.hook_z"))
    return base_cache, source_cache


def _heads(model: "Gemma", heads: Head | Sequence[Head], what: str, n_heads: int | None = None) -> list[Head]:
    """``(layer, head)`` or a list of them, checked against the model."""
    heads = [heads] if isinstance(heads, tuple) and len(heads) == 2 and isinstance(heads[0], int) else list(heads)
    n_heads = model.cfg.n_heads if n_heads is None else n_heads
    if not heads:
        raise ValueError(f"{what}: give at least one (layer, head)")
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < n_heads):
            raise ValueError(f"{what}: ({layer}, {head}) is not a head of this model "
                             f"({model.cfg.n_layers} layers x {n_heads} heads)")
    return heads


def _receivers(model: "Gemma", receivers: str | Head | Sequence[Head], receiver_input: str,
               freeze: str) -> str | list[Head]:
    """``"logits"`` or the receivers as a checked list of ``(layer, index)``."""
    if freeze not in _FREEZE:
        raise ValueError(f"freeze must be one of {_FREEZE}, got {freeze!r}")
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f'receivers: "logits" or (layer, head) pairs, got {receivers!r}')
        return receivers
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f'receiver_input must be "q", "k" or "v", got {receiver_input!r}')
    index = "head" if receiver_input == "q" else "kv_head"
    n_index = model.cfg.n_heads if receiver_input == "q" else model.cfg.n_kv_heads
    return _heads(model, receivers, f"receivers ({receiver_input}: layer, {index})", n_index)


def _path_patch(model: "Gemma", base: torch.Tensor, base_cache: ActivationCache, source_cache: ActivationCache,
                metric: Metric, senders: list[Head], receivers: str | list[Head],
                receiver_input: str, freeze: str) -> float:
    if receivers != "logits" and min(layer for layer, _ in receivers) <= max(layer for layer, _ in senders):
        raise ValueError(f"receivers {receivers} must all be in later layers than the senders {senders}: "
                         "a head only reads what earlier layers wrote")
    to_logits = receivers == "logits"

    # Run 1: the senders' z from the other run, frozen components pinned to the base run.
    def heads_hook(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        layer = int(hook.name.split(".")[1])
        patched = base_cache[hook.name].to(z.dtype).clone() if freeze != "none" else z.clone()
        for sender_layer, head in senders:
            if sender_layer == layer:
                patched[:, :, head] = source_cache[hook.name][:, :, head].to(z.dtype)
        return patched

    def pin(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return base_cache[hook.name].to(activation.dtype)

    hooks: list[tuple[str | Callable, HookFn]] = [(lambda name: name.endswith("attn.hook_z"), heads_hook)]
    if freeze == "all":
        hooks.append((lambda name: name.endswith(("hook_mlp_out", "hook_per_layer_out")), pin))
    received: dict[str, torch.Tensor] = {}
    if not to_logits:
        def record(activation: torch.Tensor, hook: HookPoint) -> None:
            received[hook.name] = activation.detach().clone()

        names = sorted({f"blocks.{layer}.attn.hook_{receiver_input}" for layer, _ in receivers})
        hook_names = set(model.hook_dict) if hasattr(model, "hook_dict") else None
        missing = [name for name in names if hook_names is not None and name not in hook_names]
        if missing:
            raise ValueError(f"this model has no {missing} (Gemma 4 KV-shared layers compute no keys or values); "
                             'use receiver_input="q" there')
        hooks += [(name, record) for name in names]
    with torch.no_grad():
        logits = model.run_with_hooks(base, fwd_hooks=hooks)
        if to_logits:
            return float(metric(logits))

        # Run 2: the base run with only the receivers' inputs replaced.
        def receive(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            layer = int(hook.name.split(".")[1])
            patched = activation.clone()
            for receiver_layer, head in receivers:
                if receiver_layer == layer:
                    patched[:, :, head] = received[hook.name][:, :, head]
            return patched

        logits = model.run_with_hooks(base, fwd_hooks=[(name, receive) for name in names])
    return float(metric(logits))


# ---------------------------------------------------------------------------------------------
# Steering
# ---------------------------------------------------------------------------------------------


def steering_hook(direction: torch.Tensor, coeff: float = 1.0,
                  positions: Iterable[int] | None = None) -> HookFn:
    """A hook for a stream-sized activation that adds ``coeff * direction`` (``[d_model]``).

    positions: absolute positions to steer (``hook.positions``, so it also holds during
    generation with a KV cache); None steers every position.
    """
    wanted = None if positions is None else torch.as_tensor(list(positions), dtype=torch.long)

    def add_direction(resid: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        shift = coeff * direction.to(resid.device, resid.dtype)
        if wanted is None:
            return resid + shift
        selected = torch.isin(hook.positions, wanted.to(hook.positions.device))  # [batch, pos]
        return torch.where(selected[..., None], resid + shift, resid)

    return add_direction


@contextmanager
def steer(model: "Gemma", direction: torch.Tensor, layer: int, *, coeff: float = 1.0,
          activation: str = "resid_pre", positions: Iterable[int] | None = None) -> Iterator["Gemma"]:
    """Within the block, every forward pass adds ``coeff * direction`` to the residual stream of
    ``layer`` (``activation``: ``"resid_pre"``, ``"resid_mid"`` or ``"resid_post"``).

    Wrap ``generate(...)`` in it to steer generation. See ``steering_hook`` for ``positions``.
    """
    if direction.shape != (model.cfg.d_model,):
        raise ValueError(f"direction must have shape [d_model] = ({model.cfg.d_model},), "
                         f"got {tuple(direction.shape)}")
    with model.hooks(fwd_hooks=[(act_name(activation, layer), steering_hook(direction, coeff, positions))]):
        yield model


# ---------------------------------------------------------------------------------------------
# Induction: repeated random tokens
# ---------------------------------------------------------------------------------------------


def repeated_tokens(vocab_size: int, seq_len: int, batch: int = 1, *, seed: int = 0, bos: int | None = 2,
                    low: int = 3) -> torch.Tensor:
    """``[batch, 1 + 2 * seq_len]``: ``<bos>``, then ``seq_len`` random tokens, then the same again.

    Tokens are drawn uniformly from ``[low, vocab_size)`` (by default after ``<pad>``, ``<eos>``,
    ``<bos>``), reproducibly from ``seed``. ``bos=None`` leaves out the ``<bos>``.
    """
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(low, vocab_size, (batch, seq_len), generator=generator)
    parts = [half, half] if bos is None else [torch.full((batch, 1), bos), half, half]
    return torch.cat(parts, dim=1)


def _repeated_or_given(model: "Gemma", tokens: torch.Tensor | None, seq_len: int, batch: int, seed: int,
                       bos: int | None) -> torch.Tensor:
    """``tokens`` checked against ``seq_len`` and ``bos``, or fresh ``repeated_tokens``."""
    if tokens is None:
        return repeated_tokens(model.cfg.vocab_size, seq_len, batch, seed=seed, bos=bos).to(model.device)
    expected = 2 * seq_len + (0 if bos is None else 1)
    if tokens.ndim != 2 or tokens.shape[1] != expected:
        raise ValueError(f"tokens must be [batch, {expected}] (a span of {seq_len} written twice"
                         f"{'' if bos is None else ' after <bos>'}), got {tuple(tokens.shape)}")
    return tokens.to(model.device)


def head_scores(model: "Gemma", seq_len: int = 50, batch: int = 4, *, seed: int = 0,
                bos: int | None = 2, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"previous_token", "induction", "duplicate_token"}`` -> ``[layer, head]`` scores on repeated
    random tokens (``repeated_tokens``): the mean attention, over the batch and every query ``i``
    in the second copy, to ``i - 1`` (previous token), to ``i - seq_len + 1`` (the token after
    ``i``'s earlier occurrence: induction), and to ``i - seq_len`` (that occurrence: duplicate token).

    A score of 1 means the head does only that. On sliding-window layers a head cannot reach
    further back than the window, so keep ``seq_len`` below it to see induction there.

    ``tokens``: repeated tokens of your own to score instead (``[batch, 1 + 2 * seq_len]`` with
    ``<bos>``, or ``[batch, 2 * seq_len]`` with ``bos=None``); ``batch`` and ``seed`` are then unused.
    """
    tokens = _repeated_or_given(model, tokens, seq_len, batch, seed, bos)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    patterns = cache.stack_activation("pattern").float()  # [layer, batch, head, q_pos, k_pos]
    second = (0 if bos is None else 1) + seq_len  # first query position of the second copy
    offsets = {"previous_token": 1, "induction": seq_len - 1, "duplicate_token": seq_len}
    scores = {}
    for kind, offset in offsets.items():
        # diagonal j holds pattern[q = j + offset, k = j]; keep the queries in the second copy.
        diagonal = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)[..., second - offset:]
        scores[kind] = diagonal.mean(dim=(1, 3))
    return scores


def in_context_loss(model: "Gemma", seq_len: int = 50, batch: int = 4, *, seed: int = 0,
                    bos: int | None = 2, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Next-token loss on repeated random tokens: high on the first copy (random), low on the second
    if the model has induction heads.

    Returns ``"per_position"``: ``[pos - 1]`` loss of predicting token ``t + 1`` from position ``t``
    (mean over the batch), and ``"first_copy"``/``"second_copy"``: the mean over each copy's
    tokens after its first (a copy's first token cannot be predicted from context). ``tokens``: as
    in ``head_scores``.
    """
    tokens = _repeated_or_given(model, tokens, seq_len, batch, seed, bos)
    with torch.no_grad():
        logits = model(tokens).float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    loss = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0].mean(dim=0)  # [pos - 1]; index t predicts t + 1
    start = 0 if bos is None else 1  # position of the first copy's first token
    # Targets start + 1 .. start + seq_len - 1 (first copy) are predicted from index target - 1.
    first = loss[start: start + seq_len - 1]
    second = loss[start + seq_len: start + 2 * seq_len - 1]
    return {"per_position": loss, "first_copy": first.mean(), "second_copy": second.mean()}


# ---------------------------------------------------------------------------------------------
# Circuits in the weights: OV, QK and composition
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadCircuits:
    """Each head's circuits as ``[layer, head, d_model, d_model]`` matrices acting on row vectors.

    ``ov``: what a head writes when it attends to a key position, ``x_key @ ov`` (``W_V @ W_O``).
    ``qk``: the attention score between a query and a key, ``x_query @ qk @ x_key.T``
    (``W_Q @ W_K.T``).
    """

    ov: torch.Tensor
    qk: torch.Tensor


def head_circuits(model: "Gemma") -> HeadCircuits:
    """The OV and QK circuits of every head, with the gains of the norms around them folded in.

    Folded in: the pre-attention norm's gain on the input side (``ln1``), Gemma 2/3's
    post-attention norm gain on the OV output side (``ln1_post``) and Gemma 3's q/k norm gains
    (``q_norm``, ``k_norm``). What cannot be folded into one matrix is left out and should be said
    when reading them: each norm's division by the RMS of its input (a per-position scale, which
    changes sizes but no directions), RoPE (``qk`` is the score at equal query and key positions:
    no rotation), the ``query_pre_attn_scalar`` scale and Gemma 2's softcap. Grouped-query heads
    share their kv head's ``W_K`` and ``W_V``. Gemma 1 to 3 (Gemma 4's per-layer head sizes and
    shared key/values are not covered).
    """
    cfg = model.cfg
    if cfg.family == 4:
        raise ValueError("head_circuits covers Gemma 1 to 3; Gemma 4 layers differ in head size and may share keys")
    ov, qk = [], []
    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            group = cfg.n_heads // attn.n_kv_heads
            split = "(head d_head) d_model -> head d_model d_head"
            w_q = rearrange(attn.q_proj.weight.float(), split, head=cfg.n_heads)
            w_k = rearrange(attn.k_proj.weight.float(), split, head=attn.n_kv_heads).repeat_interleave(group, 0)
            w_v = rearrange(attn.v_proj.weight.float(), split, head=attn.n_kv_heads).repeat_interleave(group, 0)
            w_o = rearrange(attn.o_proj.weight.float(), "d_model (head d_head) -> head d_head d_model",
                            head=cfg.n_heads)
            gain_in = block.ln1.gain()[:, None]  # [d_model, 1]: scales the rows the projections read
            w_q, w_k, w_v = w_q * gain_in, w_k * gain_in, w_v * gain_in
            if attn.q_norm is not None:
                w_q, w_k = w_q * attn.q_norm.gain(), w_k * attn.k_norm.gain()
            head_ov = w_v @ w_o  # [head, d_model, d_model]
            if block.ln1_post is not None:
                head_ov = head_ov * block.ln1_post.gain()
            ov.append(head_ov)
            qk.append(w_q @ w_k.transpose(-1, -2))
    return HeadCircuits(torch.stack(ov), torch.stack(qk))


def composition_score(w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """How much of ``w_b`` reads what ``w_a`` writes: ``|w_a @ w_b|_F / (|w_a|_F |w_b|_F)``.

    ``w_a``: ``[..., d, d]`` an earlier head's OV circuit; ``w_b``: ``[..., d, d]`` a later head's
    matrix that reads the stream, ``qk.T`` for K-composition (the key side), ``qk`` for
    Q-composition, ``ov`` for V-composition (Elhage et al., 2021). Leading axes broadcast. Between 0
    and 1; random Gaussian matrices (of any rank) in ``d`` dimensions score about ``1 / sqrt(d)``,
    not 0, so compare with that baseline.
    """
    w_a, w_b = w_a.float(), w_b.float()
    product = torch.linalg.matrix_norm(w_a @ w_b)
    return product / (torch.linalg.matrix_norm(w_a) * torch.linalg.matrix_norm(w_b))


def qk_scores_by_offset(model: "Gemma", layer: int, head: int, query_resid: torch.Tensor,
                        key_resid: torch.Tensor, offsets: Sequence[int] | torch.Tensor, *,
                        query_position: int | None = None, softcap: bool = True) -> torch.Tensor:
    """``[offset, n_q, n_k]``: the attention score that ``head`` of ``layer`` gives a query whose
    residual stream is ``query_resid[i]`` (``[n_q, d_model]``) to a key whose stream is
    ``key_resid[j]`` (``[n_k, d_model]``) sitting ``offset`` positions earlier, for each offset.

    The QK circuit with everything the model does on the way, by its own modules: ``ln1`` (with its
    division by each row's RMS), the head's slice of ``W_Q`` / its kv head's slice of ``W_K``,
    Gemma 3's ``q_norm``/``k_norm``, RoPE (``rotary_cos_sin``/``apply_rotary`` with this layer's
    base and scale), the ``query_pre_attn_scalar`` scale and, with ``softcap``, Gemma 2's attention
    softcap: the value ``hook_attn_scores`` holds for a visible key (the causal and sliding-window
    masks are not applied; a key beyond the window gets the lowest score in the model).

    RoPE makes the score depend on where the two tokens sit, but only through their distance:
    ``rot(q, p) . rot(k, p - offset) = rot(q, offset) . k``. By default the query is rotated by
    ``offset`` and the key not at all; ``query_position=p`` rotates them by their absolute
    positions ``p`` and ``p - offset`` instead, as a forward pass does (equal up to float rounding).
    With ``query_resid = key_resid = embed_scale * W_E[tokens]`` on layer 0 this is the full QK
    circuit ``[token, token]`` at each offset, exactly what layer 0 computes on any input.
    Gemma 1 to 3 (not 3n or 4, whose layers may share keys).
    """
    from gemma_lab.model import apply_rotary, rotary_cos_sin  # the model's own RoPE

    cfg = model.cfg
    if cfg.family == 4 or cfg.is_gemma3n:
        raise ValueError("qk_scores_by_offset covers Gemma 1 to 3; Gemma 3n and 4 layers may share keys")
    if not 0 <= layer < cfg.n_layers or not 0 <= head < cfg.n_heads:
        raise ValueError(f"layer {layer}, head {head} out of range: the model has {cfg.n_layers} layers "
                         f"of {cfg.n_heads} heads")
    for name, rows in (("query_resid", query_resid), ("key_resid", key_resid)):
        if rows.ndim != 2 or rows.shape[-1] != cfg.d_model:
            raise ValueError(f"{name} must be [rows, d_model={cfg.d_model}], got {tuple(rows.shape)}")
    offsets = torch.as_tensor(offsets, dtype=torch.long).reshape(-1)
    block, attn = model.blocks[layer], model.blocks[layer].attn
    dtype, device = model.dtype, model.device
    d_head, kv_head = cfg.d_head, head // (cfg.n_heads // attn.n_kv_heads)
    with torch.no_grad():
        x_q = block.ln1(query_resid.to(device, dtype))  # [n_q, d_model]
        x_k = block.ln1(key_resid.to(device, dtype))  # [n_k, d_model]
        q = x_q @ attn.q_proj.weight[head * d_head:(head + 1) * d_head].T  # [n_q, d_head]
        k = x_k @ attn.k_proj.weight[kv_head * d_head:(kv_head + 1) * d_head].T  # [n_k, d_head]
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        theta, scale = cfg.rope_for_layer(layer)
        if query_position is None:  # rotate the query by the offset, the key by nothing (position 0)
            q_pos, k_pos = offsets, torch.zeros_like(offsets)
        else:
            q_pos, k_pos = torch.full_like(offsets, query_position), query_position - offsets
        q_cos, q_sin = rotary_cos_sin(q_pos[None].to(device), d_head, theta, scale, dtype)  # [1, offset, d_head]
        k_cos, k_sin = rotary_cos_sin(k_pos[None].to(device), d_head, theta, scale, dtype)
        # apply_rotary takes [batch, pos, head, d_head]: offsets on the pos axis, rows on the head axis.
        rot_q = apply_rotary(q[None, None].expand(1, len(offsets), -1, -1), q_cos, q_sin)[0]  # [offset, n_q, d_head]
        rot_k = apply_rotary(k[None, None].expand(1, len(offsets), -1, -1), k_cos, k_sin)[0]  # [offset, n_k, d_head]
        scores = (rot_q @ rot_k.transpose(-1, -2)) * cfg.attn_scale  # [offset, n_q, n_k]
        if softcap and cfg.attn_softcap is not None:
            scores = cfg.attn_softcap * torch.tanh(scores / cfg.attn_softcap)
    return scores.float()
