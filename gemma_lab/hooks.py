"""Hook points: named identities at every activation, where functions can read or replace it.

The vocabulary follows TransformerLens (``blocks.3.attn.hook_pattern``, ``run_with_cache``,
``cache["pattern", 3]``) so that courses and sparse-autoencoder tooling carry over. A hook is
``fn(activation, hook)``; it may return a replacement. ``hook`` is the ``HookPoint`` itself and
tells the name, the layer and, during generation, the absolute positions and the decode step.

Hooks are only ever attached inside ``HookedModule.hooks(...)``, a context manager that removes
them again on exit, also when the body raises, so no hook can leak into a later forward pass.

Imports: torch only. The model builds on this module; nothing here knows about Gemma.
"""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, Union

import torch
from torch import nn

if TYPE_CHECKING:
    from gemma_lab.cache import ActivationCache

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]
HookSpec = tuple[Union[str, Callable[[str], bool]], HookFn]


@dataclass
class RunContext:
    """What a hook may want to know about the current forward pass beyond its activation."""

    positions: torch.Tensor | None = None  # [batch, pos] absolute positions of the tokens being run
    step: int | None = None  # decode step during generation (0 = the prompt); None outside generation


class HookPoint(nn.Module):
    """An identity placed at an activation; hooks attached to it see (and may edit) the tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # full dotted name, set by HookedModule.setup_hooks
        self.layer: int | None = None  # block index, None outside the blocks
        self.context = RunContext()
        self.fwd_fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []
        self._grad_handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_fns or self.bwd_fns)

    @property
    def positions(self) -> torch.Tensor | None:
        """Absolute positions ``[batch, pos]`` of the tokens in this forward pass."""
        return self.context.positions

    @property
    def step(self) -> int | None:
        """Generation step (0 = prompt), or None outside generation."""
        return self.context.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fwd_fns:
            replacement = fn(x, self)
            if replacement is not None:
                if not isinstance(replacement, torch.Tensor) or replacement.shape != x.shape:
                    got = tuple(replacement.shape) if isinstance(replacement, torch.Tensor) else type(replacement)
                    raise ValueError(f"hook on {self.name} returned {got}; expected a tensor of shape {tuple(x.shape)}")
                x = replacement
        if self.bwd_fns and x.requires_grad:
            for fn in self.bwd_fns:
                self._grad_handles.append(x.register_hook(self._gradient_hook(fn)))
        return x

    def _gradient_hook(self, fn: HookFn) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def call(grad: torch.Tensor) -> torch.Tensor | None:
            return fn(grad, self)

        return call

    def remove_hooks(self) -> None:
        self.fwd_fns.clear()
        self.bwd_fns.clear()
        for handle in self._grad_handles:
            handle.remove()
        self._grad_handles.clear()

    def extra_repr(self) -> str:
        return self.name


class HookedModule(nn.Module):
    """Mixin for a root module: names its hook points and attaches hooks in a scoped way."""

    run_context: RunContext

    def setup_hooks(self) -> None:
        """Give every HookPoint its dotted name, its layer and the shared run context."""
        self.run_context = RunContext()
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                match = re.match(r"blocks\.(\d+)\.", name)
                module.layer = int(match.group(1)) if match else None
                module.context = self.run_context
                self._hook_points[name] = module

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        return dict(self._hook_points)

    def hook_names(self) -> list[str]:
        """Every hook point name, in the order activations are computed."""
        return list(self._hook_points)

    def resolve_hook_names(self, names: NameFilter) -> list[str]:
        """A name, a list of names, or a predicate -> the matching hook point names."""
        if names is None:
            return self.hook_names()
        if callable(names):
            return [n for n in self._hook_points if names(n)]
        if isinstance(names, str):
            names = [names]
        for name in names:
            if name not in self._hook_points:
                close = difflib.get_close_matches(name, self._hook_points, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise KeyError(f"no hook point named {name!r}{hint}")
        return list(names)

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = ()) -> Iterator["HookedModule"]:
        """Attach hooks for the duration of the block; they are removed on exit, also on error."""
        attached: list[HookPoint] = []
        try:
            for specs, direction in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for name_or_predicate, fn in specs:
                    for name in self.resolve_hook_names(name_or_predicate):
                        point = self._hook_points[name]
                        (point.fwd_fns if direction == "fwd" else point.bwd_fns).append(fn)
                        attached.append(point)
            yield self
        finally:
            for point in attached:
                point.remove_hooks()

    def reset_hooks(self) -> None:
        """Remove every hook (a safety net; hooks attached with ``hooks()`` never outlive it)."""
        for point in self._hook_points.values():
            point.remove_hooks()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
                       **kwargs) -> torch.Tensor:
        """One forward pass with the given hooks attached (removed afterwards)."""
        with self.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter: NameFilter = None, device: torch.device | str | None = None,
                       incl_bwd: bool = False, **kwargs) -> tuple[torch.Tensor, "ActivationCache"]:
        """Forward pass that also returns the activations at the requested hook points.

        ``names_filter``: a name, a list of names, or a predicate on names (default: every point).
        Only the requested activations are stored (detached, moved to ``device`` if given). With
        ``incl_bwd=True`` the gradients arriving at those points are stored as ``name + "_grad"``
        once the caller runs ``backward`` on something computed from the returned logits.
        """
        from gemma_lab.cache import ActivationCache

        names = self.resolve_hook_names(names_filter)
        store: dict[str, torch.Tensor] = {}

        def save(tensor: torch.Tensor, hook: HookPoint) -> None:
            tensor = tensor.detach()
            store[hook.name] = tensor.to(device) if device is not None else tensor

        def save_grad(grad: torch.Tensor, hook: HookPoint) -> None:
            grad = grad.detach()
            store[hook.name + "_grad"] = grad.to(device) if device is not None else grad

        fwd = [(name, save) for name in names]
        if incl_bwd:
            # Gradient hooks live on the tensors of this pass; keep them attached for backward().
            for name in names:
                self._hook_points[name].bwd_fns.append(save_grad)
            try:
                logits = self.run_with_hooks(*args, fwd_hooks=fwd, **kwargs)
            finally:
                for name in names:
                    point = self._hook_points[name]
                    point.bwd_fns.remove(save_grad)
            return logits, ActivationCache(store, self)
        logits = self.run_with_hooks(*args, fwd_hooks=fwd, **kwargs)
        return logits, ActivationCache(store, self)
