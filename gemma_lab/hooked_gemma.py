"""HookedGemma: a Gemma model and its tokenizer, behind TransformerLens's ``HookedTransformer`` API.

    model = gemma_lab.HookedGemma.from_pretrained("tiny")   # was: HookedTransformer.from_pretrained(...)
    logits, cache = model.run_with_cache("When Mary and John went to the store, John gave a drink to")
    model.to_str_tokens(" Mary"), model.W_U.shape, model.OV[1, 0].eigenvalues

Course code written for TransformerLens (its demos, ARENA's chapter 1) runs on it with the line
that builds the model translated. The model itself (``model.model``, a ``gemma_lab.Gemma``) holds
no tokenizer and stays as it is; this object sits above model and tokenizer and adds:

* text in and out: ``to_tokens``, ``to_str_tokens``, ``to_string``, ``to_single_token``,
  ``get_token_position``, ``generate``, and a forward pass that takes text or tokens with
  ``return_type`` ("logits", "loss", "both", None), ``loss_per_token``, ``stop_at_layer``;
* TransformerLens's config names (``model.cfg.d_vocab``, ``n_ctx``, ``device``, ...: ``TLConfig``);
* weight views in TransformerLens's shapes (``W_E``, ``W_Q`` ``[layer, head, d_model, d_head]``,
  ``OV``/``QK`` as ``FactoredMatrix``, ``blocks[L].attn.W_Q``, zero biases), see ``docs/transformerlens.md``;
* hook names TransformerLens users type that gemma_lab spells differently or computes elsewhere
  (``ln1.hook_scale``, ``hook_q_input``, ``hook_mlp_in``, ``hook_tokens``, ``unembed.hook_in``):
  *alias points*, read and written through adapters on the real hook points, so the plain
  forward pass is untouched when nobody hooks them.

Numbers: views are of the unprocessed weights (TransformerLens's ``from_pretrained_no_processing``):
no norm gains folded, no centring. They match the hooks of this model exactly
(``cache["normalized", 0, "ln1"] @ W_Q[0, h] == cache["q", 0][..., h, :]``). ``W_E`` carries
Gemma's ``sqrt(d_model)`` scale (what is added to the stream), ``W_U`` does not.

Imports: the model, the tokenizer, generation, the cache and the factored matrix; no plotting
or widgets.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
from einops import einsum, rearrange, repeat
from torch import nn

from gemma_lab.cache import ActivationCache
from gemma_lab.config import GemmaConfig
from gemma_lab.factored_matrix import FactoredMatrix
from gemma_lab.generation import generate as generate_tokens
from gemma_lab.hooks import HookedModule, HookFn, HookPoint, HookSpec, LayerIndex, NameFilter, _Saver
from gemma_lab.model import Gemma, RMSNorm
from gemma_lab.tl_utils import get_act_name, lm_cross_entropy_loss
from gemma_lab.tokenizer import GemmaTokenizer

_ARCHITECTURES = {1: "GemmaForCausalLM", 2: "Gemma2ForCausalLM", 3: "Gemma3ForCausalLM"}


# ---------------------------------------------------------------------------------------------
# Config: TransformerLens's names over GemmaConfig
# ---------------------------------------------------------------------------------------------


class TLConfig:
    """``model.cfg`` as TransformerLens's ``HookedTransformerConfig`` names it, read from GemmaConfig.

    Every GemmaConfig field reads through (``cfg.n_kv_heads``, ``cfg.sandwich_norms``); the
    TransformerLens names are added (``d_vocab``, ``n_ctx``, ``device``, ...). One name means
    something else in the two: ``cfg.attn_scale`` here is TransformerLens's *divisor* of the
    scores (``sqrt(query_pre_attn_scalar)``); GemmaConfig's multiplier is ``model.model.cfg.attn_scale``.
    The ``use_*`` switches are the only settable fields (use ``model.set_use_*``).
    """

    _SWITCHES = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in", "use_hook_tokens")

    def __init__(self, model: Gemma, tokenizer_name: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "tokenizer_name", tokenizer_name)
        for switch in self._SWITCHES:
            object.__setattr__(self, switch, False)

    @property
    def gemma(self) -> GemmaConfig:
        return self._model.cfg

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._model.cfg, name)

    def __setattr__(self, name: str, value) -> None:
        if name not in self._SWITCHES:
            raise AttributeError(f"cfg.{name} is read-only (the architecture is fixed by the weights); "
                                 f"settable: {', '.join(self._SWITCHES)}")
        object.__setattr__(self, name, bool(value))

    def __repr__(self) -> str:
        return f"TLConfig({self.gemma!r})"

    # ---- TransformerLens's names -----------------------------------------------------------
    d_vocab = property(lambda self: self.gemma.vocab_size, doc="vocab_size")
    d_vocab_out = property(lambda self: self.gemma.vocab_size, doc="vocab_size (tied unembedding)")
    n_ctx = property(lambda self: self.gemma.max_seq_len, doc="max_seq_len")
    n_key_value_heads = property(lambda self: self.gemma.n_kv_heads, doc="n_kv_heads")
    device = property(lambda self: self._model.device, doc="where the weights are (live)")
    dtype = property(lambda self: self._model.dtype, doc="the weights' dtype (live)")
    model_name = property(lambda self: self.gemma.name)
    original_architecture = property(lambda self: _ARCHITECTURES[self.gemma.family])
    act_fn = property(lambda self: "gelu_pytorch_tanh" if self.gemma.activation == "gelu_tanh" else "gelu")
    eps = property(lambda self: self.gemma.norm_eps)
    attn_scale = property(lambda self: 1.0 / self.gemma.attn_scale, doc="TL's divisor of q.k")
    use_attn_scale = property(lambda self: True)
    attn_scores_soft_cap = property(lambda self: self.gemma.attn_softcap or -1.0)
    output_logits_soft_cap = property(lambda self: self.gemma.final_softcap or -1.0)
    window_size = property(lambda self: self.gemma.sliding_window)
    attn_types = property(lambda self: list(self.gemma.layer_types))
    use_local_attn = property(lambda self: "local" in self.gemma.layer_types)
    rotary_base = property(lambda self: self.gemma.rope_theta)
    rotary_base_local = property(lambda self: self.gemma.rope_theta_local)
    rotary_dim = property(lambda self: self.gemma.d_head)
    use_normalization_before_and_after = property(lambda self: self.gemma.sandwich_norms)
    use_qk_norm = property(lambda self: self.gemma.qk_norm)
    normalization_type = property(lambda self: "RMS")
    final_rms = property(lambda self: True)
    gated_mlp = property(lambda self: True)
    positional_embedding_type = property(lambda self: "rotary")
    attn_only = property(lambda self: False)
    parallel_attn_mlp = property(lambda self: False)
    default_prepend_bos = property(lambda self: True)
    tokenizer_prepends_bos = property(lambda self: True)
    default_padding_side = property(lambda self: "right")
    ungroup_grouped_query_attention = property(lambda self: False)


# ---------------------------------------------------------------------------------------------
# Tokenizer: transformers' names over GemmaTokenizer
# ---------------------------------------------------------------------------------------------


class TLTokenizer:
    """``model.tokenizer``: the GemmaTokenizer with the transformers names TransformerLens code uses
    (``bos_token_id``, ``decode`` keeping special tokens, ``batch_decode``, ``tokenizer(text)``).

    Everything else reads through to GemmaTokenizer (``encode`` adds ``<bos>``, ``id_to_piece``, ...).
    """

    def __init__(self, tokenizer: GemmaTokenizer, owner: "HookedGemma") -> None:
        self._tokenizer = tokenizer
        self._owner = owner

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._tokenizer, name)

    def __repr__(self) -> str:
        return f"TLTokenizer({self._tokenizer!r})"

    def __len__(self) -> int:
        return self._tokenizer.vocab_size

    bos_token_id = property(lambda self: self._tokenizer.bos_id)
    eos_token_id = property(lambda self: self._tokenizer.eos_id)
    pad_token_id = property(lambda self: self._tokenizer.pad_id)
    unk_token_id = property(lambda self: self._tokenizer.unk_id)
    bos_token = property(lambda self: self._tokenizer.id_to_piece(self._tokenizer.bos_id))
    eos_token = property(lambda self: self._tokenizer.id_to_piece(self._tokenizer.eos_id))
    pad_token = property(lambda self: self._tokenizer.id_to_piece(self._tokenizer.pad_id))

    @property
    def padding_side(self) -> str:
        return self._owner.padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        self._owner.padding_side = self._owner._padding_side(side)

    def decode(self, ids, skip_special_tokens: bool = False, **_: object) -> str:
        """Text of one sequence; ``<bos>``/``<eos>``/``<pad>`` kept by name unless ``skip_special_tokens``."""
        return self._tokenizer.decode(ids) if skip_special_tokens else self._owner.to_string(ids)

    def batch_decode(self, rows, skip_special_tokens: bool = False, **_: object) -> list[str]:
        rows = rows.tolist() if hasattr(rows, "tolist") else rows
        return [self.decode(row, skip_special_tokens) for row in rows]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self._tokenizer.id_to_piece(ids)
        return [self._tokenizer.id_to_piece(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]

    def __call__(self, text, return_tensors: str | None = None, padding: bool = True, add_special_tokens: bool = True,
                 **_: object) -> dict:
        """``{"input_ids", "attention_mask"}`` for a text or a list of texts (``return_tensors="pt"``: tensors)."""
        tokens, mask = self._owner._encode(text, add_special_tokens, None)
        mask = torch.ones_like(tokens) if mask is None else mask
        if return_tensors == "pt":
            return {"input_ids": tokens, "attention_mask": mask}
        if isinstance(text, str):
            return {"input_ids": tokens[0].tolist(), "attention_mask": mask[0].tolist()}
        return {"input_ids": tokens.tolist(), "attention_mask": mask.tolist()}


# ---------------------------------------------------------------------------------------------
# Module views: TransformerLens's weight names on gemma_lab's modules
# ---------------------------------------------------------------------------------------------


class _View:
    """Reads through to a gemma_lab module; adds TransformerLens's names for its weights."""

    def __init__(self, module: nn.Module, owner: "HookedGemma", prefix: str) -> None:
        self._module = module
        self._owner = owner
        self._prefix = prefix

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        alias = self._owner._aliases.get(f"{self._prefix}.{name}" if self._prefix else name)
        if alias is not None:
            return alias
        return getattr(self._module, name)

    def __call__(self, *args, **kwargs):
        return self._module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__.lstrip('_')}({self._module!r})"


class _NormView(_View):
    """An RMSNorm; ``w`` is the gain actually applied, ``1 + weight`` (TL stores it that way)."""

    @property
    def w(self) -> torch.Tensor:
        return 1.0 + self._module.weight


class _EmbedView(_View):
    """The embedding as TransformerLens has it: ``W_E`` includes Gemma's ``sqrt(d_model)`` scale."""

    @property
    def W_E(self) -> torch.Tensor:
        return self._owner.W_E

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._owner.W_E[tokens]


class _UnembedView(_View):
    """The tied unembedding: ``W_U = embed.weight.T``; ``unembed(x) = x @ W_U`` (no softcap, as in TL)."""

    @property
    def W_U(self) -> torch.Tensor:
        return self._owner.W_U

    @property
    def b_U(self) -> torch.Tensor:
        return self._owner.b_U

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        return resid @ self._owner.W_U


class _AttnView(_View):
    """One layer's attention with per-head weights in TL's shapes (kv heads repeated per query head)."""

    def _heads(self, proj: nn.Linear, n_heads: int) -> torch.Tensor:
        return rearrange(proj.weight, "(head d_head) d_model -> head d_model d_head", head=n_heads)

    def _expand(self, per_kv_head: torch.Tensor) -> torch.Tensor:
        # Query head h reads kv_head h // group: the (kv_head group) order of model.py.
        return repeat(per_kv_head, "kv_head d_model d_head -> (kv_head group) d_model d_head",
                      group=self._module.cfg.group_size)

    @property
    def W_Q(self) -> torch.Tensor:
        return self._heads(self._module.q_proj, self._module.cfg.n_heads)

    @property
    def W_K(self) -> torch.Tensor:
        return self._expand(self._heads(self._module.k_proj, self._module.cfg.n_kv_heads))

    @property
    def W_V(self) -> torch.Tensor:
        return self._expand(self._heads(self._module.v_proj, self._module.cfg.n_kv_heads))

    @property
    def W_O(self) -> torch.Tensor:
        return rearrange(self._module.o_proj.weight, "d_model (head d_head) -> head d_head d_model",
                         head=self._module.cfg.n_heads)

    def _zeros(self, *shape: int) -> torch.Tensor:
        weight = self._module.q_proj.weight
        return torch.zeros(shape, dtype=weight.dtype, device=weight.device)

    b_Q = property(lambda self: self._zeros(self._module.cfg.n_heads, self._module.cfg.d_head))
    b_K = property(lambda self: self._zeros(self._module.cfg.n_heads, self._module.cfg.d_head))
    b_V = property(lambda self: self._zeros(self._module.cfg.n_heads, self._module.cfg.d_head))
    b_O = property(lambda self: self._zeros(self._module.cfg.d_model))

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))


class _MLPView(_View):
    """GeGLU weights in TL's names: ``W_gate`` (the GELU branch), ``W_in`` (linear branch), ``W_out``."""

    W_gate = property(lambda self: self._module.gate_proj.weight.T)
    W_in = property(lambda self: self._module.up_proj.weight.T)
    W_out = property(lambda self: self._module.down_proj.weight.T)

    def _zeros(self, n: int) -> torch.Tensor:
        weight = self._module.up_proj.weight
        return torch.zeros(n, dtype=weight.dtype, device=weight.device)

    b_in = property(lambda self: self._zeros(self._module.up_proj.weight.shape[0]))
    b_out = property(lambda self: self._zeros(self._module.down_proj.weight.shape[0]))


class _BlockView(_View):
    """A block whose attention, MLP and norms are views too."""

    def __init__(self, module: nn.Module, owner: "HookedGemma", prefix: str) -> None:
        super().__init__(module, owner, prefix)
        self.attn = _AttnView(module.attn, owner, f"{prefix}.attn")
        self.mlp = _MLPView(module.mlp, owner, f"{prefix}.mlp")
        for norm in ("ln1", "ln2", "ln1_post", "ln2_post"):
            real = getattr(module, norm)
            setattr(self, norm, None if real is None else _NormView(real, owner, f"{prefix}.{norm}"))


# ---------------------------------------------------------------------------------------------
# Alias hook points
# ---------------------------------------------------------------------------------------------


def rms_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """What ``norm(x)`` computes, without firing its hook points (tested bit-equal to ``norm(x)``)."""
    x_fp32 = x.float()
    inv_rms = torch.rsqrt(x_fp32.pow(2).mean(dim=-1, keepdim=True) + norm.eps)
    return ((x_fp32 * inv_rms) * (1.0 + norm.weight.float())).to(x.dtype)


class AliasHookPoint(HookPoint):
    """A hook name TransformerLens users know, computed from a real hook point of the model.

    It is never called in the forward pass. Attaching ``fn`` attaches *adapters* to real points:
    they show ``fn`` the TransformerLens tensor and, if ``fn`` changes it (by returning a new
    tensor or editing in place), carry the change into the model. Nothing runs when nobody hooks it.
    """

    supports_backward = False

    def __init__(self, name: str, owner: "HookedGemma", layer: int | None) -> None:
        super().__init__()
        self.name = name
        self.layer = None if layer is None else LayerIndex(layer)
        self.context = owner.run_context
        object.__setattr__(self, "_owner", owner)  # a back-reference, not a submodule
        self._attached: list[tuple[HookFn, str, list[tuple[HookPoint, HookFn]]]] = []

    @property
    def has_hooks(self) -> bool:
        return bool(self._attached)

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> None:
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"hook direction must be 'fwd' or 'bwd', got {dir!r}")
        if dir == "bwd" and not self.supports_backward:
            raise ValueError(f"backward hooks on {self.name} are not supported (it is computed from "
                             f"{self.anchor_names()}); put the backward hook there")
        adapters = self.adapters(fn) if dir == "fwd" else self.backward_adapters(fn)
        for point, adapter, first in adapters:
            point.add_hook(adapter, dir)
            if first:  # must see the activation before any other hook on that point changes it
                fns = point._fns(dir)
                fns.insert(0, fns.pop())
        self._attached.append((fn, dir, [(point, adapter) for point, adapter, _ in adapters]))

    def remove_hook(self, fn: HookFn, dir: str = "fwd") -> None:
        for i, (attached, direction, adapters) in enumerate(self._attached):
            if attached is fn and direction == dir:
                for point, adapter in adapters:
                    point.remove_hook(adapter, dir)
                del self._attached[i]
                return

    def remove_hooks(self, dir: str = "both") -> None:
        for fn, direction, _ in list(self._attached):
            if dir in (direction, "both"):
                self.remove_hook(fn, direction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"{self.name} is an alias point; the model never calls it")

    # ---- what a kind of alias defines ---------------------------------------------------------
    def anchor_names(self) -> list[str]:
        raise NotImplementedError

    def adapters(self, fn: HookFn) -> list[tuple[HookPoint, HookFn, bool]]:
        """(real point, adapter, run before other hooks there?) for a forward hook ``fn``."""
        raise NotImplementedError

    def backward_adapters(self, fn: HookFn) -> list[tuple[HookPoint, HookFn, bool]]:
        raise NotImplementedError

    def point(self, name: str) -> HookPoint:
        return self._owner.model._hook_points[name]

    def call_user(self, fn: HookFn, shown: torch.Tensor) -> torch.Tensor:
        """``fn(shown, self)``; returns what it leaves: its return value, or ``shown`` as edited in place."""
        out = fn(shown, self)
        if out is None:
            return shown
        if not isinstance(out, torch.Tensor) or out.shape != shown.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
            raise ValueError(f"hook on {self.name} returned {got}; expected a tensor of shape {tuple(shown.shape)}")
        return out


class RenameAlias(AliasHookPoint):
    """Another name for the same tensor (``unembed.hook_in`` is ``ln_final.hook_normalized``)."""

    supports_backward = True

    def __init__(self, name: str, owner: "HookedGemma", layer: int | None, target: str) -> None:
        super().__init__(name, owner, layer)
        self.target = target

    def anchor_names(self) -> list[str]:
        return [self.target]

    def adapters(self, fn: HookFn):
        return [(self.point(self.target), _Renamed(fn, self), False)]

    backward_adapters = adapters


class _Renamed:
    def __init__(self, fn: HookFn, alias: AliasHookPoint) -> None:
        self.fn, self.alias = fn, alias

    def __call__(self, tensor: torch.Tensor, hook: HookPoint):
        return self.fn(tensor, self.alias)


class ScaleAlias(AliasHookPoint):
    """``X.hook_scale``: TransformerLens's RMS, ``1 / hook_inv_rms`` (ours is its inverse)."""

    def __init__(self, name: str, owner: "HookedGemma", layer: int | None, inv_rms: str) -> None:
        super().__init__(name, owner, layer)
        self.inv_rms = inv_rms

    def anchor_names(self) -> list[str]:
        return [self.inv_rms]

    def adapters(self, fn: HookFn):
        return [(self.point(self.inv_rms), _ScaleAdapter(fn, self), False)]


class _ScaleAdapter:
    def __init__(self, fn: HookFn, alias: ScaleAlias) -> None:
        self.fn, self.alias = fn, alias

    def __call__(self, inv_rms: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
        scale = 1.0 / inv_rms
        edited = self.alias.call_user(self.fn, scale.clone())
        return None if torch.equal(edited, scale) else 1.0 / edited


class MLPInAlias(AliasHookPoint):
    """``blocks.L.hook_mlp_in``: the MLP's input before ``ln2`` (= ``resid_mid``); an edit reaches the MLP only."""

    def anchor_names(self) -> list[str]:
        return [f"blocks.{self.layer}.hook_resid_mid", f"blocks.{self.layer}.ln2.hook_normalized"]

    def adapters(self, fn: HookFn):
        edit = _MLPInEdit(fn, self)
        read, write = self.anchor_names()
        return [(self.point(read), edit.read, False), (self.point(write), edit.write, True)]


class _MLPInEdit:
    """Shows ``resid_mid`` to the hook; if it changed, re-normalises the changed positions for the MLP."""

    def __init__(self, fn: HookFn, alias: MLPInAlias) -> None:
        self.fn, self.alias = fn, alias
        self.edited: torch.Tensor | None = None
        self.changed: torch.Tensor | None = None

    def read(self, resid_mid: torch.Tensor, hook: HookPoint) -> None:
        edited = self.alias.call_user(self.fn, resid_mid.clone())
        changed = (edited != resid_mid).any(dim=-1, keepdim=True)
        self.edited, self.changed = (edited, changed) if changed.any() else (None, None)

    def write(self, normalized: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
        if self.edited is None:
            return None
        ln2 = self.alias._owner.model.blocks[self.alias.layer].ln2
        renormalized = rms_norm(ln2, self.edited)
        self.edited = None
        return torch.where(self.changed, renormalized, normalized)


class SplitInputAlias(AliasHookPoint):
    """``blocks.L.hook_attn_in`` / ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``.

    TransformerLens's per-head copies of the attention input ``resid_pre`` (before ``ln1``):
    ``[batch, pos, head, d_model]`` (k and v: ``kv_head``). An edit to a head's copy reaches only
    that head: its query (key, value) is recomputed as ``ln1(edited) @ W``. ``hook_attn_in`` feeds
    all three; on a grouped-query model the heads sharing a kv_head must then get the same edit.
    """

    TARGETS = {"attn_in": ("q", "k", "v"), "q_input": ("q",), "k_input": ("k",), "v_input": ("v",)}

    def __init__(self, name: str, owner: "HookedGemma", layer: int, kind: str) -> None:
        super().__init__(name, owner, layer)
        self.kind = kind
        cfg = owner.model.cfg
        self.n_copies = cfg.n_kv_heads if kind in ("k_input", "v_input") else cfg.n_heads

    def anchor_names(self) -> list[str]:
        return [f"blocks.{self.layer}.hook_resid_pre"] + [
            f"blocks.{self.layer}.attn.hook_{target}" for target in self.TARGETS[self.kind]]

    def adapters(self, fn: HookFn):
        edit = _SplitInputEdit(fn, self)
        read, *writes = self.anchor_names()
        return [(self.point(read), edit.read, False)] + [
            (self.point(name), _SplitInputWrite(edit, target), True)
            for name, target in zip(writes, self.TARGETS[self.kind])]


class _SplitInputEdit:
    def __init__(self, fn: HookFn, alias: SplitInputAlias) -> None:
        self.fn, self.alias = fn, alias
        self.edited: torch.Tensor | None = None
        self.changed: torch.Tensor | None = None

    def read(self, resid_pre: torch.Tensor, hook: HookPoint) -> None:
        copies = repeat(resid_pre, "batch pos d_model -> batch pos head d_model", head=self.alias.n_copies)
        edited = self.alias.call_user(self.fn, copies.clone())
        changed = (edited != copies).any(dim=-1)  # [batch, pos, head]
        self.edited, self.changed = (edited, changed) if changed.any() else (None, None)

    def inputs_for(self, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The edited per-head inputs and changed mask, per kv_head when ``target`` is k or v."""
        alias, cfg = self.alias, self.alias._owner.model.cfg
        if target == "q" or alias.kind != "attn_in" or cfg.group_size == 1:
            return self.edited, self.changed
        grouped = rearrange(self.edited, "batch pos (kv_head group) d_model -> batch pos kv_head group d_model",
                            group=cfg.group_size)
        if not (grouped == grouped[:, :, :, :1]).all():
            raise ValueError(f"{alias.name}: heads that share a key/value head (groups of {cfg.group_size}) got "
                             "different edits, which their one key and value cannot follow; edit "
                             f"blocks.{alias.layer}.hook_q_input / hook_k_input / hook_v_input instead")
        changed = rearrange(self.changed, "batch pos (kv_head group) -> batch pos kv_head group",
                            group=cfg.group_size).any(dim=-1)
        return grouped[:, :, :, 0], changed


class _SplitInputWrite:
    def __init__(self, edit: _SplitInputEdit, target: str) -> None:
        self.edit, self.target = edit, target

    def __call__(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
        if self.edit.edited is None:
            return None
        inputs, changed = self.edit.inputs_for(self.target)
        block = self.edit.alias._owner.model.blocks[self.edit.alias.layer]
        proj = getattr(block.attn, f"{self.target}_proj")
        weight = rearrange(proj.weight, "(head d_head) d_model -> head d_model d_head", head=inputs.shape[2])
        recomputed = einsum(rms_norm(block.ln1, inputs), weight,
                            "batch pos head d_model, head d_model d_head -> batch pos head d_head")
        return torch.where(changed[..., None], recomputed, activation)


# ---------------------------------------------------------------------------------------------
# The cache, with TransformerLens's key spellings
# ---------------------------------------------------------------------------------------------


class TLActivationCache(ActivationCache):
    """ActivationCache that also reads TransformerLens's keys (``cache["scale", 3, "ln1"]``,
    ``cache["q_input", 0]``, ``"resid_pre5"``) and has its ``cache_dict``, ``to`` and
    ``compute_head_results``."""

    def _key(self, key) -> str:
        if isinstance(key, str) and key in self._store:
            return key
        if isinstance(key, tuple):
            name, layer, *rest = key + (None,) * (2 - len(key))
            if isinstance(layer, int) and layer < 0 and self.model is not None:
                layer += self.model.cfg.n_layers
            return get_act_name(name, layer, *rest)
        return get_act_name(key)

    @property
    def cache_dict(self) -> dict[str, torch.Tensor]:
        return self._store

    def to(self, device: torch.device | str, move_model: bool = False) -> "TLActivationCache":
        if move_model and self.model is not None:
            self.model.to(device)
        return TLActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> "TLActivationCache":
        plain = super().remove_batch_dim()
        return plain if plain is self else TLActivationCache(plain._store, self.model, has_batch_dim=False)

    def compute_head_results(self) -> None:
        """Add ``blocks.L.attn.hook_result`` (each head's ``z @ W_O``, before Gemma 2/3's post-attention
        norm, as the hook point gives it) for every layer, from the cached ``hook_z``."""
        model = self._model()
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_result"
            if name in self._store:
                continue
            w_o = model.blocks[layer].attn.W_O
            z = self["z", layer]
            self._store[name] = einsum(z, w_o.to(z.dtype), "... head d_head, head d_head d_model -> ... head d_model")

    def logit_attrs(self, residual_stack, tokens, incorrect_tokens=None, pos_slice=None) -> torch.Tensor:
        """As ``ActivationCache.logit_attrs``; ``tokens`` may also be a single-token string."""
        model = self._model()
        if isinstance(tokens, str):
            tokens = model.to_single_token(tokens)
        if isinstance(incorrect_tokens, str):
            incorrect_tokens = model.to_single_token(incorrect_tokens)
        return super().logit_attrs(residual_stack, tokens, incorrect_tokens, pos_slice)


# ---------------------------------------------------------------------------------------------
# HookedGemma
# ---------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by the hook that ends a forward pass at ``stop_at_layer``; carries the residual stream."""

    def __init__(self, resid: torch.Tensor) -> None:
        super().__init__()
        self.resid = resid


class _Stopper:
    def __call__(self, resid: torch.Tensor, hook: HookPoint) -> None:
        raise _StopForward(resid)


class HookedGemma(HookedModule):
    """A Gemma model paired with its tokenizer, with TransformerLens's ``HookedTransformer`` interface."""

    def __init__(self, model: Gemma, tokenizer: GemmaTokenizer, padding_side: str = "right") -> None:
        super().__init__()
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens, more than the "
                             f"model's vocab_size {model.cfg.vocab_size}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.model = model
        self.gemma_tokenizer = tokenizer
        self.tokenizer = TLTokenizer(tokenizer, self)  # transformers' names, for TL code
        self.padding_side = padding_side
        self.cfg = TLConfig(model, tokenizer.source)
        self.run_context = model.run_context
        self.hook_tokens = HookPoint()  # [batch, pos] the token ids entering the model
        self.hook_tokens.name, self.hook_tokens.context = "hook_tokens", model.run_context
        self._aliases: dict[str, AliasHookPoint] = {}
        self._build_aliases()
        self._embed = _EmbedView(model.embed, self, "embed")
        self._unembed = _UnembedView(model.embed, self, "unembed")
        self._ln_final = _NormView(model.ln_final, self, "ln_final")
        self._blocks = [_BlockView(block, self, f"blocks.{i}") for i, block in enumerate(model.blocks)]
        self._permanent: list[tuple[HookPoint, HookFn, str]] = []  # add_hook(..., is_permanent=True)
        self._scoped: list[tuple[HookPoint, HookFn, str]] = []  # attached by hooks() blocks still open
        self.train(model.training)  # the pair is in the model's mode (loaded models are in eval mode)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = "tiny", *, dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", padding_side: str = "right", requires_grad: bool = True,
                        **load_kwargs) -> "HookedGemma":
        """Load a checkpoint (``"tiny"`` or a folder) and its tokenizer, as ``load_pretrained`` and
        ``load_tokenizer`` do. ``dtype`` / ``device`` go to the loader.

        The weights require gradients, as TransformerLens's do (``load_pretrained`` freezes them),
        so gradient idioms work; call ``torch.set_grad_enabled(False)`` when you only run forward
        passes, as TransformerLens notebooks do, or pass ``requires_grad=False``.
        """
        from gemma_lab.loading import load_pretrained
        from gemma_lab.tokenizer import load_tokenizer

        model = load_pretrained(path, dtype=dtype, device=device, **load_kwargs).requires_grad_(requires_grad)
        return cls(model, load_tokenizer(path), padding_side=padding_side)

    # ---- hook points: the model's, hook_tokens and the aliases ---------------------------------
    def _build_aliases(self) -> None:
        names = self.model.hook_names()
        for name in names:
            layer = self.model._hook_points[name].layer
            if name.endswith(".hook_inv_rms"):
                alias = name[: -len("hook_inv_rms")] + "hook_scale"
                self._aliases[alias] = ScaleAlias(alias, self, layer, name)
        for layer in range(self.model.cfg.n_layers):
            for kind in ("attn_in", "q_input", "k_input", "v_input"):
                alias = f"blocks.{layer}.hook_{kind}"
                self._aliases[alias] = SplitInputAlias(alias, self, layer, kind)
            alias = f"blocks.{layer}.hook_mlp_in"
            self._aliases[alias] = MLPInAlias(alias, self, layer)
        self._aliases["unembed.hook_in"] = RenameAlias("unembed.hook_in", self, None, "ln_final.hook_normalized")

    @property
    def _hook_points(self) -> dict[str, HookPoint]:  # every name that can be hooked
        return {"hook_tokens": self.hook_tokens, **self.model._hook_points, **self._aliases}

    def _listed(self, name: str) -> bool:
        """Whether ``name`` is listed (and so hooked by ``run_with_cache()`` without a filter); TL's switches."""
        cfg = self.cfg
        if name.endswith("attn.hook_result"):
            return cfg.use_attn_result
        if name.endswith(("hook_q_input", "hook_k_input", "hook_v_input")):
            return cfg.use_split_qkv_input
        if name.endswith("hook_attn_in"):
            return cfg.use_attn_in
        if name.endswith("hook_mlp_in"):
            return cfg.use_hook_mlp_in
        return True

    def hook_names(self) -> list[str]:
        """The listed hook names in the order they fire (TL's names after the point they are read from)."""
        order = ["hook_tokens"]
        for name in self.model.hook_names():
            if name.endswith(".hook_resid_pre"):
                order.append(name)
                order += [f"{name[:-len('hook_resid_pre')]}hook_{k}" for k in ("attn_in", "q_input", "k_input", "v_input")]
            elif name.endswith(".hook_resid_mid"):
                order += [name, f"{name[:-len('hook_resid_mid')]}hook_mlp_in"]
            elif name.endswith(".hook_inv_rms"):
                order += [name, name[: -len("hook_inv_rms")] + "hook_scale"]
            elif name == "ln_final.hook_normalized":
                order += [name, "unembed.hook_in"]
            else:
                order.append(name)
        return [name for name in order if self._listed(name)]

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        points = self._hook_points
        return {name: points[name] for name in self.hook_names()}

    def resolve_hook_names(self, names: NameFilter) -> list[str]:
        if names is None or callable(names):
            return [n for n in self.hook_names() if names is None or names(n)]
        return super().resolve_hook_names(names)

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """List ``attn.hook_result`` (so ``run_with_cache()`` stores each head's output)."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """List ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (per-head attention inputs)."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """List ``hook_attn_in``."""
        self.cfg.use_attn_in = use_attn_in

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """List ``hook_mlp_in``."""
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
              reset_hooks_end: bool = True, clear_contexts: bool = False) -> Iterator["HookedGemma"]:
        """As ``HookedModule.hooks``: attach for the block, remove on exit. Alias hooks are attached
        after the others of the same call, so they see the activations those hooks edited, as
        TransformerLens's later hook points would."""
        attached: list[tuple[HookPoint, HookFn, str]] = []
        try:
            for specs, direction in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                specs = list(specs)
                is_alias = [isinstance(name, str) and name in self._aliases for name, _ in specs]
                ordered = [s for s, a in zip(specs, is_alias) if not a] + [s for s, a in zip(specs, is_alias) if a]
                for name_or_predicate, fn in ordered:
                    for name in self.resolve_hook_names(name_or_predicate):
                        point = self._hook_points[name]
                        point.add_hook(fn, direction)
                        attached.append((point, fn, direction))
                        self._scoped.append((point, fn, direction))
            yield self
        finally:
            for entry in attached:
                self._scoped.remove(entry)
            if reset_hooks_end:
                for point, fn, direction in reversed(attached):
                    point.remove_hook(fn, direction)

    def run_with_hooks(self, *args, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
                       reset_hooks_end: bool = True, clear_contexts: bool = False, **kwargs):
        """One forward pass with these hooks. As in TransformerLens, ``reset_hooks_end`` also removes
        hooks attached outside any ``hooks()`` block (``add_hook``, ``HookPoint.add_hook``) unless
        they are permanent; hooks of enclosing ``hooks()`` blocks stay."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end):
            out = self(*args, **kwargs)
        if reset_hooks_end:
            self._remove_unscoped_hooks()
        return out

    def _remove_unscoped_hooks(self) -> None:
        keep = {(id(point), id(fn), direction) for point, fn, direction in self._scoped + self._permanent}
        kept_adapters = set()
        for alias in self._aliases.values():
            for fn, direction, adapters in list(alias._attached):
                if (id(alias), id(fn), direction) in keep:
                    kept_adapters.update((id(point), id(adapter), direction) for point, adapter in adapters)
                else:
                    alias.remove_hook(fn, direction)
        for name, point in self._hook_points.items():
            if isinstance(point, AliasHookPoint):
                continue
            for direction in ("fwd", "bwd"):
                for fn in list(point._fns(direction)):
                    entry = (id(point), id(fn), direction)
                    if entry not in keep and entry not in kept_adapters:
                        point.remove_hook(fn, direction)

    def run_with_cache(self, *args, names_filter: NameFilter = None, device: torch.device | str | None = None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False, return_cache_object: bool = True,
                       reset_hooks_end: bool = True, clear_contexts: bool = False, **kwargs):
        """TransformerLens's ``run_with_cache``: the forward pass's output (``return_type`` etc. in
        ``kwargs``) and a ``TLActivationCache`` (a dict with ``return_cache_object=False``).
        ``incl_bwd`` calls ``backward()`` on the output, as TransformerLens does (so ask for
        ``return_type="loss"`` or another scalar), and stores the gradients as ``name + "_grad"``."""
        if incl_bwd and not torch.is_grad_enabled():
            raise RuntimeError("incl_bwd=True needs gradients; call run_with_cache outside torch.no_grad()")
        names = self.resolve_hook_names(names_filter)
        store: dict[str, torch.Tensor] = {}
        saver = _Saver(store, device, remove_batch_dim)
        points = self._hook_points
        fwd = [(name, saver.save) for name in names]
        bwd = [(name, saver.save_grad) for name in names
               if incl_bwd and getattr(points[name], "supports_backward", True)]
        with self.hooks(fwd, bwd, reset_hooks_end):
            out = self(*args, **kwargs)
            if incl_bwd:
                out.backward()
        if reset_hooks_end:
            self._remove_unscoped_hooks()
        cache = TLActivationCache(store, self, has_batch_dim=not remove_batch_dim)
        return out, (cache if return_cache_object else store)

    def add_hook(self, name: str | callable, hook: HookFn, dir: str = "fwd", is_permanent: bool = False,
                 prepend: bool = False) -> None:
        """Attach ``hook`` until ``reset_hooks()`` or the end of the next ``run_with_hooks`` /
        ``run_with_cache`` (TransformerLens's unscoped form; prefer ``hooks()``).
        ``is_permanent`` hooks stay until ``reset_hooks(including_permanent=True)``."""
        for hook_name in self.resolve_hook_names(name):
            point = self._hook_points[hook_name]
            point.add_hook(hook, dir)
            if prepend and not isinstance(point, AliasHookPoint):
                fns = point._fns(dir)
                fns.insert(0, fns.pop())
            if is_permanent:
                self._permanent.append((point, hook, dir))

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both",
                    including_permanent: bool = False) -> None:
        """Remove every hook (permanent ones too with ``including_permanent``)."""
        keep = [] if including_permanent else list(self._permanent)
        for point in self._hook_points.values():
            point.remove_hooks(direction)
        self._permanent = []
        for point, fn, dir in keep:
            if direction not in (dir, "both"):
                point.remove_hook(fn, dir)  # not removed above; avoid a double attachment
            point.add_hook(fn, dir)
            self._permanent.append((point, fn, dir))

    # ---- text ------------------------------------------------------------------------------
    def to_tokens(self, input: str | Sequence[str], prepend_bos: bool | None = None,
                  padding_side: str | None = None, move_to_device: bool = True, truncate: bool = True) -> torch.Tensor:
        """``[batch, pos]`` token ids; ``<bos>`` first unless ``prepend_bos=False``; a list of strings
        is padded with ``<pad>`` on ``padding_side`` (default: the object's, "right" as in TL)."""
        tokens, _ = self._encode(input, prepend_bos, padding_side, truncate)
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def _encode(self, input, prepend_bos, padding_side, truncate=True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens and, when a batch needed padding, its attention mask."""
        texts = [input] if isinstance(input, str) else list(input)
        if not texts or not all(isinstance(text, str) for text in texts):
            raise TypeError("to_tokens takes a string or a list of strings")
        add_bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        rows = [self.gemma_tokenizer.encode(text, add_bos=add_bos) for text in texts]
        if truncate:
            rows = [row[: self.cfg.n_ctx] for row in rows]
        width = max(len(row) for row in rows)
        if width == 0:
            raise ValueError("to_tokens: the input encodes to no tokens (pass prepend_bos=True or some text)")
        side = self._padding_side(padding_side)
        tokens = torch.full((len(rows), width), self.gemma_tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            tokens[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return tokens, (None if bool(mask.all()) else mask)

    def _padding_side(self, padding_side: str | None) -> str:
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        return side

    def _token_str(self, token_id: int) -> str:
        """One token as its own text (special tokens by name, "▁" as a space), as TL shows it."""
        tokenizer = self.gemma_tokenizer
        if token_id in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id):
            return tokenizer.id_to_piece(token_id)
        return tokenizer.decode([token_id])

    def to_str_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = None):
        """One string per token, for text (encoded first) or token ids; a batch gives a list per row."""
        if isinstance(input, str):
            return self.to_str_tokens(self.to_tokens(input, prepend_bos, padding_side)[0])
        if isinstance(input, (list, tuple)) and input and isinstance(input[0], str):
            return [self.to_str_tokens(text, prepend_bos, padding_side) for text in input]
        ids = input.tolist() if hasattr(input, "tolist") else list(input)
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(ids[0], list):
            if len(ids) == 1:
                ids = ids[0]
            else:
                return [[self._token_str(t) for t in row] for row in ids]
        return [self._token_str(t) for t in ids]

    def to_string(self, tokens):
        """Text of token ids; special tokens kept by name (``<bos>``), as transformers' decode does.
        A ``[batch, pos]`` tensor (or list of lists) gives one string per row."""
        ids = tokens.tolist() if hasattr(tokens, "tolist") else tokens
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(ids[0], list):
            return [self.to_string(row) for row in ids]
        boundary = {self.gemma_tokenizer.bos_id, self.gemma_tokenizer.eos_id, self.gemma_tokenizer.pad_id}
        parts, run = [], []
        for token_id in ids:
            if token_id in boundary:
                parts += [self.gemma_tokenizer.decode(run), self.gemma_tokenizer.id_to_piece(token_id)]
                run = []
            else:
                run.append(token_id)
        return "".join(parts) + self.gemma_tokenizer.decode(run)

    def to_single_token(self, string: str) -> int:
        """The id of ``string``, which must be exactly one token (without ``<bos>``)."""
        ids = self.gemma_tokenizer.encode(string, add_bos=False)
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens, not one: {self.to_str_tokens(ids)}")
        return ids[0]

    def get_token_position(self, single_token: str | int, input: str | torch.Tensor, mode: str = "first",
                           prepend_bos: bool | None = None, padding_side: str | None = None) -> int:
        """Index of the first (``mode="first"``) or last occurrence of a token in one sequence."""
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos, padding_side)
        tokens = input[0] if input.ndim == 2 else input
        if input.ndim == 2 and input.shape[0] != 1:
            raise ValueError(f"get_token_position takes one sequence, got a batch of {input.shape[0]}")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        found = (tokens == token).nonzero()[:, 0].tolist()
        if not found:
            raise ValueError(f"token {self._token_str(token)!r} ({token}) is not in {self.to_str_tokens(tokens)}")
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', got {mode!r}")
        return found[0] if mode == "first" else found[-1]

    # ---- the forward pass ----------------------------------------------------------------------
    def forward(self, input, return_type: str | None = "logits", loss_per_token: bool = False,
                prepend_bos: bool | None = None, padding_side: str | None = None,
                start_at_layer: int | None = None, tokens: torch.Tensor | None = None,
                stop_at_layer: int | None = None, attention_mask: torch.Tensor | None = None,
                past_kv_cache=None):
        """TransformerLens's forward: text or tokens in; ``return_type`` "logits" ``[batch, pos, d_vocab]``,
        "loss" (mean next-token loss, or ``[batch, pos - 1]`` with ``loss_per_token``), "both"
        (logits, loss) or None. ``stop_at_layer=L`` returns the residual stream entering block ``L``
        (negative counts from the end) instead. Padded text batches get their attention mask; so
        do token batches when padding is on the left (positions then count real tokens only).
        """
        if start_at_layer is not None:
            raise NotImplementedError("start_at_layer is not supported; replace blocks.{L}.hook_resid_pre with "
                                      "your residual stream in a hook instead (docs/transformerlens.md)")
        if past_kv_cache is not None:
            raise NotImplementedError("past_kv_cache: use gemma_lab.prefill / decode_step with a KVCache")
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            input, mask = self._encode(input, prepend_bos, padding_side)
            input = input.to(self.cfg.device)
        else:
            mask = None
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input must be text or a tensor of token ids, got {type(input).__name__}")
            if input.ndim == 1:
                input = input[None]
            if self._padding_side(padding_side) == "left" and attention_mask is None:
                mask = self._left_padding_mask(input)
        if attention_mask is not None:
            mask = attention_mask
        tokens = self.hook_tokens(input)
        if stop_at_layer is not None:
            return self._run_until(tokens, mask, stop_at_layer)
        logits = self.model(tokens, attention_mask=mask)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss_fn(logits, tokens, attention_mask=mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def _left_padding_mask(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """0 on the leading ``<pad>`` tokens of each row (None when there are none)."""
        real = (tokens != self.gemma_tokenizer.pad_id).long().cummax(dim=-1).values
        return None if bool(real.all()) else real

    def _run_until(self, tokens: torch.Tensor, mask: torch.Tensor | None, stop_at_layer: int) -> torch.Tensor:
        n_layers = self.cfg.n_layers
        layer = stop_at_layer + n_layers if stop_at_layer < 0 else stop_at_layer
        if not 0 <= layer <= n_layers:
            raise ValueError(f"stop_at_layer must be in [-{n_layers}, {n_layers}], got {stop_at_layer}")
        name = f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
        point = self.model._hook_points[name]
        stopper = _Stopper()
        point.add_hook(stopper)  # last: the residual stream as every other hook there left it
        try:
            self.model(tokens, attention_mask=mask)
        except _StopForward as stop:
            return stop.resid
        finally:
            point.remove_hook(stopper)
        raise RuntimeError(f"the forward pass never reached {name}")

    def loss_fn(self, logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy (``tl_utils.lm_cross_entropy_loss``)."""
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    # ---- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input: str | Sequence[str] | torch.Tensor = "", max_new_tokens: int = 10,
                 stop_at_eos: bool = True, eos_token_id: int | Sequence[int] | None = None,
                 do_sample: bool = True, top_k: int | None = None, top_p: float | None = None,
                 temperature: float = 1.0, freq_penalty: float = 0.0, use_past_kv_cache: bool = True,
                 prepend_bos: bool | None = None, padding_side: str | None = None,
                 return_type: str = "input", verbose: bool = True, seed: int | None = None):
        """TransformerLens's ``generate`` on ``gemma_lab.generate``: samples by default (``do_sample``,
        ``temperature=1``), stops at ``<eos>``; returns text for text input (prompt + continuation,
        without ``<bos>``), else ``[batch, pos + new]`` tokens (finished rows padded with ``<eos>``).
        ``return_type``: "input" (as the input), "str" or "tokens". Always uses the KV cache."""
        if freq_penalty:
            raise ValueError("freq_penalty is not supported; gemma_lab.generate has repetition_penalty")
        if return_type not in ("input", "str", "tokens"):
            raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        if isinstance(input, torch.Tensor):
            prompt = input[None] if input.ndim == 1 else input
            text_in = False
        else:
            prompt = self.to_tokens(input, prepend_bos, padding_side="left")
            text_in = True
        mask = self._left_padding_mask(prompt)
        rows = [row[m.bool()].tolist() for row, m in zip(prompt, mask)] if mask is not None else prompt.tolist()
        eos = self.gemma_tokenizer.eos_id
        if not stop_at_eos:
            stop = []
        elif eos_token_id is not None:
            stop = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
            eos = stop[0]
        else:
            stop = [eos]
        result = generate_tokens(self.model, rows, tokenizer=self.gemma_tokenizer, max_new_tokens=max_new_tokens,
                                 temperature=temperature if do_sample else 0.0, top_k=top_k, top_p=top_p,
                                 stop=stop, seed=seed)
        width = max(map(len, result.token_ids))
        new = torch.tensor([list(ids) + [eos] * (width - len(ids)) for ids in result.token_ids], dtype=torch.long)
        if return_type == "tokens" or (return_type == "input" and not text_in):
            return torch.cat([prompt.cpu(), new.reshape(len(rows), width)], dim=1).to(self.cfg.device)
        bos = self.gemma_tokenizer.bos_id
        texts = [self.to_string((row[1:] if row and row[0] == bos else row) + list(ids))
                 for row, ids in zip(rows, result.token_ids)]
        return texts[0] if isinstance(input, str) else texts

    # ---- weights in TransformerLens's shapes ---------------------------------------------------
    @property
    def blocks(self) -> list[_BlockView]:
        return self._blocks

    @property
    def embed(self) -> _EmbedView:
        return self._embed

    @property
    def unembed(self) -> _UnembedView:
        return self._unembed

    @property
    def ln_final(self) -> _NormView:
        return self._ln_final

    @property
    def W_E(self) -> torch.Tensor:
        """``[d_vocab, d_model]``: embedding rows times sqrt(d_model) (rounded to the weight dtype, as the model does)."""
        weight = self.model.embed.weight
        scale = torch.tensor(self.model.cfg.embed_scale, dtype=torch.float32).to(weight.dtype)
        return weight * scale

    @property
    def W_U(self) -> torch.Tensor:
        """``[d_model, d_vocab]``: the tied embedding, transposed, unscaled."""
        return self.model.embed.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        """``[d_vocab]`` zeros: Gemma's unembedding has no bias."""
        weight = self.model.embed.weight
        return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)

    def _stacked(self, part: str, name: str) -> torch.Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self._blocks])

    W_Q = property(lambda self: self._stacked("attn", "W_Q"), doc="[layer, head, d_model, d_head]")
    W_K = property(lambda self: self._stacked("attn", "W_K"), doc="[layer, head, d_model, d_head], kv heads repeated")
    W_V = property(lambda self: self._stacked("attn", "W_V"), doc="[layer, head, d_model, d_head], kv heads repeated")
    W_O = property(lambda self: self._stacked("attn", "W_O"), doc="[layer, head, d_head, d_model]")
    b_Q = property(lambda self: self._stacked("attn", "b_Q"), doc="[layer, head, d_head] zeros (no bias)")
    b_K = property(lambda self: self._stacked("attn", "b_K"), doc="[layer, head, d_head] zeros (no bias)")
    b_V = property(lambda self: self._stacked("attn", "b_V"), doc="[layer, head, d_head] zeros (no bias)")
    b_O = property(lambda self: self._stacked("attn", "b_O"), doc="[layer, d_model] zeros (no bias)")
    W_in = property(lambda self: self._stacked("mlp", "W_in"), doc="[layer, d_model, d_mlp] up (linear) branch")
    W_gate = property(lambda self: self._stacked("mlp", "W_gate"), doc="[layer, d_model, d_mlp] GELU branch")
    W_out = property(lambda self: self._stacked("mlp", "W_out"), doc="[layer, d_mlp, d_model]")
    b_in = property(lambda self: self._stacked("mlp", "b_in"), doc="[layer, d_mlp] zeros (no bias)")
    b_out = property(lambda self: self._stacked("mlp", "b_out"), doc="[layer, d_model] zeros (no bias)")

    @property
    def OV(self) -> FactoredMatrix:
        """``[layer, head, d_model, d_model]`` ``W_V @ W_O`` (before Gemma 2/3's post-attention norm)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """``[layer, head, d_model, d_model]`` ``W_Q @ W_K.T`` (without RoPE, Gemma 3's q/k norms or the scale)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        """Unembedding directions ``W_U[:, token]``: ``tokens.shape + [d_model]`` (a string must be one token)."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.W_U.device)
        return self.W_U[:, tokens].movedim(0, -1)

    def all_head_labels(self) -> list[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    # ---- everything else: the model's ------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # registered submodules and parameters
        except AttributeError:
            if name == "model":
                raise
            if name == "W_pos":
                raise AttributeError("Gemma has no learned positional embedding W_pos: positions enter as RoPE "
                                     "rotations of queries and keys (blocks.L.attn.hook_rot_q / hook_rot_k)") from None
            return getattr(self._modules["model"], name)

    def extra_repr(self) -> str:
        return f"tokenizer={self.gemma_tokenizer.source}"
