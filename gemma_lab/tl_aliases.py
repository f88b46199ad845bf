"""Alias hook points: the hook names TransformerLens users type that gemma_lab spells differently
or computes elsewhere, hooked through adapters on the model's real hook points.

    blocks.L.ln1.hook_scale (any norm)   TL's RMS = 1 / hook_inv_rms             (ScaleAlias)
    blocks.L.hook_attn_in                per-head copies of resid_pre, before ln1 (SplitInputAlias)
    blocks.L.hook_q_input / k / v        the same, per query head / kv head       (SplitInputAlias)
    blocks.L.hook_mlp_in                 the MLP's input before ln2 (= resid_mid) (MLPInAlias)
    unembed.hook_in                      ln_final.hook_normalized, renamed        (RenameAlias)

An alias point is never called by the model: the forward pass is untouched, and costs nothing,
when nobody hooks it. Attaching ``fn`` to an alias attaches adapters to the real points it is
computed from; they show ``fn`` TransformerLens's tensor and, if ``fn`` changes it (returning a
new tensor or editing in place), carry exactly that change into the model, recomputing only what
the change touches (so an unchanged alias leaves the logits bit-identical).

Imports: torch, einops, the hook points and the model's RMSNorm type; nothing above the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from einops import einsum, rearrange, repeat

from gemma_lab.hooks import HookFn, HookPoint, LayerIndex
from gemma_lab.model import RMSNorm

if TYPE_CHECKING:
    from gemma_lab.hooks import HookedModule  # the HookedGemma that owns these (not imported: it imports us)


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

    def __init__(self, name: str, owner: HookedModule, layer: int | None) -> None:
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

    def __init__(self, name: str, owner: HookedModule, layer: int | None, target: str) -> None:
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

    def __init__(self, name: str, owner: HookedModule, layer: int | None, inv_rms: str) -> None:
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

    TARGETS: ClassVar[dict[str, tuple[str, ...]]] = {"attn_in": ("q", "k", "v"), "q_input": ("q",), "k_input": ("k",), "v_input": ("v",)}

    def __init__(self, name: str, owner: HookedModule, layer: int, kind: str) -> None:
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
