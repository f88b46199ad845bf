"""MatFormer slicing: a smaller Gemma 3n cut out of a bigger one's weights, the way Google's MatFormer Lab does it.

Gemma 3n E4B was trained as a *Matryoshka transformer* (MatFormer): inside every MLP, the first neurons
alone form a working narrower MLP, and some blocks of layers can be left out. E2B is E4B with layers
20-24 removed and every MLP cut to its first 8192 of 16384 neurons; "mix-n-match" sizes in between pick
a width per layer. The recipe (gemma-cookbook ``Gemma/[Gemma_3n]MatFormer_Lab.ipynb``, configurations in
the Hugging Face dataset ``google/gemma3n-slicing-configs``) does, for each tensor of the checkpoint:

* a skipped layer's weights are dropped, and the kept layers are renumbered 0, 1, 2, ...;
* a kept layer's ``gate_proj`` and ``up_proj`` keep their first ``ffn_dim`` rows, ``down_proj`` its
  first ``ffn_dim`` columns;
* the per-layer embedding table and the projection feeding it, laid out as ``n_layers`` slices of
  ``d_per_layer``, lose the skipped layers' slices (their shared norm is unchanged);
* in the config: ``num_hidden_layers`` and ``intermediate_size`` (one width per kept layer) are set,
  ``num_kv_shared_layers`` loses the skipped KV-shared layers, and the per-layer activation sparsity
  loses the skipped layers' entries. Here ``layer_types`` loses them too (the notebook leaves it alone;
  for E2B's skip of one whole block of 4 local + 1 global layer the result is the same).

The notebook refuses to skip the last local and the last global non-shared layer: they hold the keys
and values the KV-shared layers read. ``slice_gemma3n`` checks the general form of that rule (no kept
layer may lose the layer its keys and values come from) and that no layer changes from computing its
own keys to sharing or back, so that the sliced model runs exactly the sub-network the big one contains.

Layering: imports the model and config; the model never imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from einops import rearrange

from gemma_lab.config import GemmaConfig
from gemma_lab.model import Gemma


@dataclass(frozen=True)
class PublishedSlice:
    """One row of ``google/gemma3n-slicing-configs``: which layers go, and each kept layer's MLP width."""

    layers_to_skip: tuple[int, ...]
    ffn_dims: tuple[int, ...]  # one per kept layer, in the order they stay
    n_layers: int  # layers of the model it applies to (E4B: 35)
    note: str = ""


_E4B_LAYERS = 35
_HALF, _FULL = 2048 * 4, 2048 * 8  # the dataset writes widths as 2_048 * 4 and 2_048 * 8
_E2B_SKIP = (20, 21, 22, 23, 24)  # the first block of 4 local + 1 global KV-shared layers


def _widths(n_kept: int, full_at: Sequence[int] = ()) -> tuple[int, ...]:
    return tuple(_FULL if layer in full_at else _HALF for layer in range(n_kept))


# Rows of the Hugging Face dataset google/gemma3n-slicing-configs (configs.csv, read through its dataset
# viewer), as used by the gemma-cookbook MatFormer Lab notebook. Only rows whose full width list could be read
# are here; the dataset has more (E2.69B to E3.79B, layer- and block-level), each with its MMLU accuracy.
PUBLISHED_SLICES: dict[str, PublishedSlice] = {
    # "Main model": E4B itself, 35 layers all 16384 wide (3.98B effective parameters, MMLU 62.3% pretrained).
    "e4b": PublishedSlice((), (_FULL,) * _E4B_LAYERS, _E4B_LAYERS, "Main model"),
    # "Config for official E2B Model": 30 layers, all 8192 wide, layers 20-24 skipped (1.91B, MMLU 50.9%).
    "e2b": PublishedSlice(_E2B_SKIP, _widths(30), _E4B_LAYERS, "Config for official E2B Model"),
    # "Config for E1.96B (layer-level)": E2B's layers with the first global layer (4) kept 16384 wide (MMLU 53.4%).
    "e1.96b-layer-level": PublishedSlice(_E2B_SKIP, _widths(30, full_at=(4,)), _E4B_LAYERS,
                                        "Config for E1.96B (layer-level)"),
    # "Config for E2.54B (layer-level)": all 35 layers; 16384 wide at layers 4 and 20-24, else 8192 (MMLU 55.4%).
    # (Counted as the notebook counts E2B's 1.91B, this width list gives 2.52B effective, not the name's 2.54B.)
    "e2.54b-layer-level": PublishedSlice((), _widths(35, full_at=(4, 20, 21, 22, 23, 24)), _E4B_LAYERS,
                                        "Config for E2.54B (layer-level)"),
}


def sliced_config(cfg: GemmaConfig, layers_to_skip: Sequence[int] = (),
                  ffn_dims: int | Sequence[int] | None = None) -> GemmaConfig:
    """The config of the sub-model: fewer layers, the given MLP widths (checked; errors name the argument).

    ``ffn_dims``: one width per kept layer, one width for all, or None to keep every layer's width.
    """
    kept = _kept_layers(cfg, layers_to_skip)
    widths = _kept_widths(cfg, kept, ffn_dims)
    _check_kv_sharing(cfg, kept)
    n_kv_shared = sum(cfg.is_kv_shared(layer) for layer in kept)
    sparsity = tuple(cfg.sparsity_for(layer) for layer in kept) if cfg.activation_sparsity else ()
    return cfg.replace(
        n_layers=len(kept),
        layer_types=tuple(cfg.layer_types[layer] for layer in kept),
        activation_sparsity=sparsity if any(sparsity) else (),
        n_kv_shared_layers=n_kv_shared,
        d_mlp=max(widths),
        d_mlp_per_layer=widths,  # stored as () when all are equal (GemmaConfig normalises it)
        name=f"{cfg.name or 'gemma3n'} sliced ({len(kept)} layers)",
    )


def slice_gemma3n(model: Gemma, layers_to_skip: Sequence[int] = (), ffn_dims: int | Sequence[int] | None = None,
                  *, preset: str | None = None) -> Gemma:
    """A new, smaller Gemma 3n holding a copy of ``model``'s nested sub-network (``model`` is left untouched).

    Either ``preset`` (a key of ``PUBLISHED_SLICES``, e.g. ``"e2b"`` on an E4B) or ``layers_to_skip``
    (original layer indices) and ``ffn_dims`` (see ``sliced_config``). Save it with
    ``gemma_lab.loading.save_pretrained`` to get a checkpoint transformers and ``load_pretrained`` read.
    """
    cfg = model.cfg
    if not cfg.is_gemma3n:
        raise ValueError(f"model: MatFormer slicing applies to Gemma 3n, got a Gemma {cfg.family} model")
    if any(type(block.mlp.gate_proj) is not torch.nn.Linear for block in model.blocks):
        raise ValueError("model: slice the full-precision model, before quantizing it (its MLPs are not plain Linear)")
    if preset is not None:
        layers_to_skip, ffn_dims = _preset(preset, cfg, layers_to_skip, ffn_dims)
    new_cfg = sliced_config(cfg, layers_to_skip, ffn_dims)
    kept = [layer for layer in range(cfg.n_layers) if layer not in set(layers_to_skip)]
    state = _sliced_state(model, kept, [new_cfg.d_mlp_for(new) for new in range(len(kept))])
    with torch.device("meta"):  # no random init of weights about to be replaced
        small = Gemma(new_cfg)
    small.load_state_dict(state, assign=True)
    return small.train(model.training)


def _preset(name: str, cfg: GemmaConfig, layers_to_skip, ffn_dims) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if tuple(layers_to_skip) or ffn_dims is not None:
        raise ValueError("preset: give either a preset or layers_to_skip/ffn_dims, not both")
    if name not in PUBLISHED_SLICES:
        raise ValueError(f"preset: unknown slice {name!r}; choose one of {', '.join(PUBLISHED_SLICES)}")
    published = PUBLISHED_SLICES[name]
    if cfg.n_layers != published.n_layers or any(cfg.d_mlp_for(layer) != _FULL for layer in range(cfg.n_layers)):
        widths = sorted({cfg.d_mlp_for(layer) for layer in range(cfg.n_layers)})
        raise ValueError(f"preset: {name!r} slices Gemma 3n E4B (35 layers, MLPs 16384 wide); this model has "
                         f"{cfg.n_layers} layers and MLP widths {widths}")
    return published.layers_to_skip, published.ffn_dims


def _kept_layers(cfg: GemmaConfig, layers_to_skip: Sequence[int]) -> list[int]:
    skip = list(layers_to_skip)
    bad = [layer for layer in skip if type(layer) is not int or not 0 <= layer < cfg.n_layers]
    if bad:
        raise ValueError(f"layers_to_skip: {bad} not layer indices of this {cfg.n_layers}-layer model "
                         f"(0 to {cfg.n_layers - 1})")
    if len(set(skip)) != len(skip):
        raise ValueError(f"layers_to_skip: {skip} names a layer twice")
    kept = [layer for layer in range(cfg.n_layers) if layer not in set(skip)]
    if not kept:
        raise ValueError("layers_to_skip: skips every layer")
    return kept


def _kept_widths(cfg: GemmaConfig, kept: list[int], ffn_dims: int | Sequence[int] | None) -> tuple[int, ...]:
    if ffn_dims is None:
        return tuple(cfg.d_mlp_for(layer) for layer in kept)
    widths = [ffn_dims] * len(kept) if isinstance(ffn_dims, int) else list(ffn_dims)
    if len(widths) != len(kept):
        raise ValueError(f"ffn_dims: {len(widths)} widths for the {len(kept)} layers kept (one per kept layer)")
    for new, (layer, width) in enumerate(zip(kept, widths)):
        if type(width) is not int or not 0 < width <= cfg.d_mlp_for(layer):
            raise ValueError(f"ffn_dims[{new}] = {width!r}: kept layer {layer} has an MLP {cfg.d_mlp_for(layer)} "
                             "wide; a slice keeps a positive number of its first neurons, at most all of them")
    return tuple(widths)


def _check_kv_sharing(cfg: GemmaConfig, kept: list[int]) -> None:
    """Every kept KV-shared layer must still find the layer it read keys and values from."""
    for layer in kept:
        source = cfg.kv_source(layer)
        if source not in kept:
            raise ValueError(f"layers_to_skip: layer {source} holds the keys and values KV-shared layer {layer} "
                             f"reads ({cfg.layer_types[layer]} attention); keep it, or skip every layer reading it")


def _sliced_state(model: Gemma, kept: list[int], widths: list[int]) -> dict[str, torch.Tensor]:
    """Our parameter names -> the sliced tensors (copies), for the model with only ``kept`` layers."""
    cfg = model.cfg
    new_index = {old: new for new, old in enumerate(kept)}
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("blocks."):
            _, old, rest = name.split(".", 2)
            if int(old) not in new_index:
                continue  # a skipped layer
            new = new_index[int(old)]
            name = f"blocks.{new}.{rest}"
            if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):  # [d_mlp, d_model]: the first neurons' rows
                tensor = tensor[: widths[new]]
            elif rest == "mlp.down_proj.weight":  # [d_model, d_mlp]: the first neurons' columns
                tensor = tensor[:, : widths[new]]
        elif name == "per_layer_embed.embed.weight":  # each token's row holds one d_per_layer slice per layer
            by_layer = rearrange(tensor, "vocab (layer d_per_layer) -> vocab layer d_per_layer", layer=cfg.n_layers)
            tensor = rearrange(by_layer[:, kept], "vocab layer d_per_layer -> vocab (layer d_per_layer)")
        elif name == "per_layer_embed.model_projection.weight":  # d_model -> one d_per_layer slice per layer
            by_layer = rearrange(tensor, "(layer d_per_layer) d_model -> layer d_per_layer d_model",
                                 layer=cfg.n_layers)
            tensor = rearrange(by_layer[kept], "layer d_per_layer d_model -> (layer d_per_layer) d_model")
        state[name] = tensor.detach().clone().contiguous()  # a copy: the two models never share storage
    return state
