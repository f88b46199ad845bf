"""ActivationCache: the activations one forward pass stored, looked up by hook name or shorthand,
with the residual-stream bookkeeping that logit attribution needs.

``cache["blocks.3.attn.hook_pattern"]`` and ``cache["pattern", 3]`` are the same tensor
(``cache["pattern", -1]`` is the last layer); the shorthand follows TransformerLens's
``get_act_name`` and is derived from the hook-point table (``hook_points.act_name``), and the analysis methods follow its ``ActivationCache`` (same names, same
arguments), so its tutorials read unchanged. Two things differ because Gemma is not GPT-2:

* Gemma's norms are RMSNorms with a gain ``1 + w`` that is not folded into other weights, so
  ``apply_ln_to_stack`` scales by the cached ``hook_inv_rms`` *and* the gain: the components of a
  residual stack then sum to the norm's actual output, ``hook_normalized``.
* Gemma 2/3 normalise the attention output again (``ln1_post``) before adding it to the stream.
  That norm is not linear, so ``stack_head_results`` linearises it around this run: each head's
  ``z @ W_O`` is scaled by the cached ``ln1_post.hook_inv_rms`` and gain. The heads then sum to
  ``hook_attn_out`` exactly (up to float rounding), and each head's share is proportional to
  what it wrote before the norm.
* Gemma 2's final logit softcap is not linear either: ``logit_attrs`` attributes the logits
  *before* the softcap (for Gemma 1/3 these are the logits).
* Gemma 4 multiplies the whole stream leaving each block by a fixed ``layer_scalar`` (a constant,
  so this stays exact): every component is scaled by the scalars of the blocks it passes through
  on its way to ``layer``, so the decomposition still sums to the stream. Its norm gains are
  ``w``, not ``1 + w`` (``RMSNorm.gain()``), and its per-layer inputs add one more component per
  layer (``"{l}_per_layer_out"``).

Helpers that do arithmetic (``apply_ln_to_stack``, ``stack_head_results``, ``logit_attrs``) work
in float32 and return float32; stacking helpers return the cached dtype.

Imports: torch, einops and the hook-point table. The model is described by a Protocol (``CachedModel``), never
imported, so ``model.py`` can build on this module; no plotting, widgets or tokenizer here.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, Sequence, Union

import torch
from einops import einsum, rearrange
from torch import nn

from gemma_lab.hook_points import act_name  # the shorthand cache["pattern", 3] (re-exported here)


class CachedModel(Protocol):
    """What the analysis methods read from the model: its config and the weights of its parts."""

    cfg: Any  # a GemmaConfig: n_layers, n_heads
    embed: nn.Embedding  # the tied (un)embedding
    blocks: Sequence[Any]  # each with ln1, ln1_post (or None), ln2 and attn.o_proj
    ln_final: nn.Module  # the final RMSNorm (its .weight)

# Which positions a residual stack covers: an int (the axis is dropped), a slice, or a list of positions.
PosSlice = Union[int, slice, Sequence[int], torch.Tensor, None]


def slice_pos(tensor: torch.Tensor, pos_slice: PosSlice, dim: int = -2) -> torch.Tensor:
    """``tensor`` restricted to the positions ``pos_slice`` along axis ``dim`` (None: unchanged)."""
    if pos_slice is None:
        return tensor
    index: list = [slice(None)] * tensor.ndim
    index[dim] = pos_slice if isinstance(pos_slice, (int, slice)) else torch.as_tensor(pos_slice)
    return tensor[tuple(index)]


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations from one run, keyed by hook name; ``cache["pattern", 3]`` shorthand works too."""

    def __init__(self, store: dict[str, torch.Tensor], model: "CachedModel | None" = None,
                 has_batch_dim: bool = True) -> None:
        self._store = store
        self.model = model
        self.has_batch_dim = has_batch_dim

    # ---- lookup ------------------------------------------------------------------------------
    def _key(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            name, layer, *rest = key + (None,) * (2 - len(key))
            if isinstance(layer, int) and layer < 0 and self.model is not None:
                layer += self.model.cfg.n_layers  # cache["pattern", -1]: the last layer
            return act_name(name, layer, *rest)
        return key if key in self._store else act_name(key)

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = self._key(key)
        try:
            return self._store[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not in this cache ({len(self._store)} activations stored); "
                "pass it in names_filter when calling run_with_cache"
            ) from None

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._store  # type: ignore[arg-type]
        except (KeyError, TypeError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        names = list(self._store)
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return f"ActivationCache({len(names)} activations: {shown})"

    def to(self, device: torch.device | str) -> "ActivationCache":
        moved = {name: value.to(device) for name, value in self._store.items()}
        return ActivationCache(moved, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> "ActivationCache":
        """The same activations without the batch axis (for a batch of one)."""
        if not self.has_batch_dim:
            return self
        for name, value in self._store.items():
            if value.shape[0] != 1:
                raise ValueError(f"remove_batch_dim needs a batch of one; {name} is {tuple(value.shape)}")
        return ActivationCache({k: v[0] for k, v in self._store.items()}, self.model, has_batch_dim=False)

    # ---- stacks over layers ------------------------------------------------------------------
    def _model(self) -> CachedModel:
        if self.model is None:
            raise ValueError("this cache has no model; use the one run_with_cache returns")
        return self.model

    def _layers_before(self, layer: int | None) -> int:
        """TransformerLens's layer argument: 'everything before layer'; None, -1 and n_layers mean all."""
        n_layers = self._model().cfg.n_layers
        if layer is None or layer == -1:
            return n_layers
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer must be in [0, {n_layers}] (or None / -1 for all layers), got {layer}")
        return layer

    def stack_activation(self, activation_name: str, layer: int = -1,
                         sublayer_type: str | None = None) -> torch.Tensor:
        """``[layer, ...]``: the activation of every layer before ``layer`` (-1: all), stacked.

        ``cache.stack_activation("pattern")`` is ``[layer, batch, head, q_pos, k_pos]``.
        """
        n = self._layers_before(layer)
        return torch.stack([self[act_name(activation_name, l, sublayer_type)] for l in range(n)])

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: PosSlice = None, mlp_input: bool = False,
                          return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """``[component, batch, pos, d_model]``: the residual stream as it stood before each layer.

        Rows are ``resid_pre`` of layers ``0 .. layer`` (labels ``"0_pre"``, ...; with ``incl_mid``
        also ``"{l}_mid"``), and for ``layer=None`` the final ``resid_post`` (``"final_post"``).
        ``mlp_input`` adds ``resid_mid`` of ``layer`` (the input of its MLP). ``apply_ln`` scales
        every row by the norm that reads the stream at ``layer`` (see ``apply_ln_to_stack``).
        """
        n_layers = self._model().cfg.n_layers
        upto = self._layers_before(layer)
        rows, labels = [], []
        for l in range(upto + 1):
            if l == n_layers:
                rows.append(self["resid_post", n_layers - 1])
                labels.append("final_post")
                continue
            rows.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < upto) or (mlp_input and l == upto):
                rows.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = slice_pos(torch.stack(rows), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, upto, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _carried(self, layer: int, upto: int) -> torch.Tensor | float:
        """What a component written in block ``layer`` is multiplied by on its way to ``resid_pre`` of
        ``upto``: the ``layer_scalar`` of every block it leaves (Gemma 4), else 1."""
        factor = 1.0
        for block in self._model().blocks[layer:upto]:
            if block.layer_scalar is not None:
                factor = factor * block.layer_scalar.float()
        return factor

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: PosSlice = None, incl_embeds: bool = True,
                        return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """``[component, batch, pos, d_model]``: what each part wrote into the stream before ``layer``.

        Rows: ``"embed"``, then ``"{l}_attn_out"`` and ``"{l}_mlp_out"`` for each earlier layer
        (``mode="attn"`` or ``"mlp"`` keeps one kind). They sum to ``resid_pre`` of ``layer``
        (``layer=None``: the final ``resid_post``); ``mlp_input`` adds ``layer``'s own attention.
        """
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        if getattr(self._model().cfg, "is_gemma3n", False):  # the stream is AltUp's copies re-mixed every layer: no sum of writes
            raise ValueError("decompose_resid is not available for Gemma 3n: AltUp re-mixes its copies of the "
                             "stream in every layer, so resid_pre is not a sum of earlier components' outputs")
        n_layers = self._model().cfg.n_layers
        upto = self._layers_before(layer)
        if mlp_input and upto == n_layers:
            raise ValueError("mlp_input=True needs a layer below n_layers (whose MLP input it is)")
        rows, labels = [], []
        carried = [self._carried(l, upto) for l in range(upto + 1)]  # Gemma 4's layer scalars, else 1.0
        if incl_embeds:
            rows.append(self["embed"] * carried[0])
            labels.append("embed")
        per_layer = self._model().blocks[0].per_layer is not None  # Gemma 4 E2B/E4B
        for l in range(upto + (1 if mlp_input else 0)):
            if mode in ("all", "attn"):
                rows.append(self["attn_out", l] * carried[l])
                labels.append(f"{l}_attn_out")
            if mode in ("all", "mlp") and l < upto:
                rows.append(self["mlp_out", l] * carried[l])
                labels.append(f"{l}_mlp_out")
            if mode == "all" and per_layer and l < upto:
                rows.append(self[f"blocks.{l}.hook_per_layer_out"] * carried[l])
                labels.append(f"{l}_per_layer_out")
        stack = slice_pos(torch.stack(rows), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, upto, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: PosSlice = None,
                           apply_ln: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """``[layer * head, batch, pos, d_model]``: each head's contribution to the residual stream.

        Computed from the cached ``hook_z`` as ``z[head] @ W_O[head]`` for every layer before
        ``layer`` (-1: all); labels ``"L{l}H{h}"``. For Gemma 2/3 the post-attention norm is
        linearised with its cached ``inv_rms`` (see the module docstring), so the heads of a layer
        sum to its ``hook_attn_out``. ``incl_remainder`` appends the rest of the stream
        (``"remainder"``: embed and MLPs). Needs ``hook_z`` and, for Gemma 2/3,
        ``ln1_post.hook_inv_rms`` in the cache.
        """
        model = self._model()
        upto = self._layers_before(layer)
        per_layer = []
        for l in range(upto):
            block = model.blocks[l]
            z = slice_pos(self["z", l], pos_slice, dim=-3).float()
            w_o = rearrange(block.attn.o_proj.weight.float(), "d_model (head d_head) -> head d_head d_model",
                            head=model.cfg.n_heads)
            result = einsum(z, w_o, "... head d_head, head d_head d_model -> head ... d_model")
            if block.ln1_post is not None:  # linearise the post-attention RMSNorm around this run
                inv_rms = slice_pos(self[f"blocks.{l}.ln1_post.hook_inv_rms"], pos_slice).float()
                result = result * inv_rms * block.ln1_post.gain()
            per_layer.append(result * self._carried(l, upto))
        heads = rearrange(torch.stack(per_layer), "layer head ... -> (layer head) ...")
        labels = [f"L{l}H{h}" for l in range(upto) for h in range(model.cfg.n_heads)]
        if incl_remainder:
            total = self["resid_post", upto - 1] if upto == model.cfg.n_layers else self["resid_pre", upto]
            remainder = slice_pos(total, pos_slice).float() - heads.sum(dim=0)
            heads = torch.cat([heads, remainder[None]])
            labels.append("remainder")
        if apply_ln:
            heads = self.apply_ln_to_stack(heads, upto, pos_slice=pos_slice)
        return (heads, labels) if return_labels else heads

    # ---- norms and logits ----------------------------------------------------------------------
    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None,
                          mlp_input: bool = False, pos_slice: PosSlice = None) -> torch.Tensor:
        """Scale each component of a residual stack the way the norm reading the stream at ``layer``
        scaled the whole stream in this run: ``component * inv_rms * (1 + w)``.

        ``layer=None`` (or -1, or n_layers) means the final norm ``ln_final``; otherwise ``ln1`` of
        ``layer`` (``ln2`` with ``mlp_input``). ``inv_rms`` is the cached one of the *full* stream,
        so the scaled components sum to the norm's output (``hook_normalized``). ``pos_slice`` says
        which positions ``residual_stack`` covers. Shape ``[..., batch, pos, d_model]`` in and out.
        """
        model = self._model()
        if layer is None or layer in (-1, model.cfg.n_layers):
            norm, name = model.ln_final, "ln_final"
        else:
            norm_name = "ln2" if mlp_input else "ln1"
            norm, name = getattr(model.blocks[layer], norm_name), f"blocks.{layer}.{norm_name}"
        inv_rms = slice_pos(self[f"{name}.hook_inv_rms"], pos_slice).float()
        return residual_stack.float() * inv_rms * norm.gain()

    def logit_attrs(self, residual_stack: torch.Tensor, tokens: int | torch.Tensor,
                    incorrect_tokens: int | torch.Tensor | None = None,
                    pos_slice: PosSlice = None) -> torch.Tensor:
        """Direct logit attribution: how much each component of ``residual_stack`` adds to the logit
        of ``tokens`` (minus that of ``incorrect_tokens``, if given).

        ``residual_stack``: ``[component, batch, pos, d_model]`` of raw (un-normalised) stream
        contributions, covering the positions ``pos_slice`` (an int drops the pos axis), e.g.
        ``cache.decompose_resid(pos_slice=-1)``. The final norm is applied with the cached
        ``inv_rms`` (``apply_ln_to_stack``), then each row is dotted with the token's unembedding
        row. ``tokens``: an id, ``[batch]`` (one per sequence) or ``[batch, pos]`` (one per
        position). Returns ``[component, batch, pos]`` (or ``[component, batch]``). A full
        decomposition sums to the logit (difference) before Gemma 2's final softcap.
        """
        model = self._model()
        directions = self._unembed_directions(tokens, residual_stack, pos_slice)
        if incorrect_tokens is not None:
            directions = directions - self._unembed_directions(incorrect_tokens, residual_stack, pos_slice)
        scaled = self.apply_ln_to_stack(residual_stack, model.cfg.n_layers, pos_slice=pos_slice)
        return (scaled * directions).sum(dim=-1)

    def _unembed_directions(self, tokens: int | torch.Tensor, residual_stack: torch.Tensor,
                            pos_slice: PosSlice) -> torch.Tensor:
        """Rows of the (tied) unembedding for ``tokens``, shaped to broadcast against the stack."""
        if isinstance(tokens, str):
            raise TypeError("logit_attrs takes token ids (the model holds no tokenizer: use tokenizer.encode)")
        tokens = torch.as_tensor(tokens, device=residual_stack.device)
        directions = self._model().embed.weight.detach()[tokens].float()  # tokens.shape + [d_model]
        if tokens.ndim == 2:  # one token per (batch, pos): restrict to the stack's positions
            directions = slice_pos(directions, pos_slice)
        elif tokens.ndim == 1 and self.has_batch_dim and residual_stack.ndim == 4:
            directions = directions[:, None, :]  # one token per sequence, the same at every position
        return directions
