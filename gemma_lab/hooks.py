"""Hook points: named identities at every activation, where functions can read or replace it.

The vocabulary follows TransformerLens (``blocks.3.attn.hook_pattern``, ``run_with_hooks``,
``run_with_cache``, ``cache["pattern", 3]``) so that courses and sparse-autoencoder tooling carry
over. A hook is ``fn(activation, hook)``; it may return a replacement of the same shape. ``hook``
is the ``HookPoint`` itself and tells the name, the layer and, during generation, the absolute
positions of the tokens in this pass and the decode step (``hook.positions``, ``hook.step``).

Hooks are only ever attached inside ``HookedModule.hooks(...)``, a context manager that removes
exactly what it attached on exit, also when the body raises, so no hook leaks into a later
forward pass. Backward hooks are registered on the tensors of the forward passes run while they
are attached: they fire when ``backward`` reaches those tensors, inside the block or after it
(``run_with_hooks(..., bwd_hooks=...)`` followed by ``loss.backward()`` works), and never touch a
forward pass run after the block.

Imports: torch only. The model builds on this module; nothing here knows about Gemma, and nothing
here imports plotting, widgets or a tokenizer.
"""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]
HookSpec = tuple[Union[str, Callable[[str], bool]], HookFn]


class LayerIndex(int):
    """A block index that is also callable: ``hook.layer == 3`` and ``hook.layer() == 3``.

    TransformerLens spells it ``hook.layer()`` (a method); plain code here reads the int. Both work.
    """

    def __call__(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return int.__repr__(self)


@dataclass
class RunContext:
    """What a hook may want to know about the current forward pass beyond its activation.

    One instance is shared by every HookPoint of a model (``model.run_context``). The model sets
    ``positions`` at the start of each forward pass; generation code sets ``step``.
    """

    positions: torch.Tensor | None = None  # [batch, pos] absolute positions of the tokens being run
    step: int | None = None  # decode step during generation (0 = the prompt); None outside generation


class HookPoint(nn.Module):
    """An identity placed at an activation; hooks attached to it see (and may edit) the tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # full dotted name, set by HookedModule.setup_hooks
        self.layer: LayerIndex | None = None  # block index (an int, also callable), None outside the blocks
        self.context = RunContext()
        self.fwd_fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []
        # Tensor parallelism: this rank holds a slice of the activation; ``sharding.full`` gathers
        # it from every rank, ``sharding.local`` takes this rank's slice back (tensor_parallel.py).
        self.sharding = None

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_fns or self.bwd_fns)

    @property
    def positions(self) -> torch.Tensor | None:
        """Absolute positions ``[batch, pos]`` of the tokens in this forward pass."""
        return self.context.positions

    @property
    def step(self) -> int | None:
        """Generation step (0 = the prompt), or None outside generation."""
        return self.context.step

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> None:
        """Attach ``fn``; prefer ``model.hooks(...)``, which also removes it again."""
        self._fns(dir).append(fn)

    def remove_hook(self, fn: HookFn, dir: str = "fwd") -> None:
        """Detach one attachment of ``fn`` (others, e.g. from an enclosing ``hooks()`` block, stay)."""
        fns = self._fns(dir)
        for i, attached in enumerate(fns):
            if attached is fn:
                del fns[i]
                return

    def remove_hooks(self, dir: str = "both") -> None:
        """Detach every hook in direction ``dir`` ("fwd", "bwd" or "both")."""
        if dir in ("fwd", "both"):
            self.fwd_fns.clear()
        if dir in ("bwd", "both"):
            self.bwd_fns.clear()

    def _fns(self, dir: str) -> list[HookFn]:
        if dir == "fwd":
            return self.fwd_fns
        if dir == "bwd":
            return self.bwd_fns
        raise ValueError(f"hook direction must be 'fwd' or 'bwd', got {dir!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fwd_fns or self.bwd_fns):  # the usual case: nobody is looking
            return x
        if self.sharding is not None:  # hooks see the whole activation, as on one device
            return self.sharding.local(self._run_hooks(self.sharding.full(x)))
        return self._run_hooks(x)

    def _run_hooks(self, x: torch.Tensor) -> torch.Tensor:
        for fn in list(self.fwd_fns):
            replacement = fn(x, self)
            if replacement is not None:
                if not isinstance(replacement, torch.Tensor) or replacement.shape != x.shape:
                    got = tuple(replacement.shape) if isinstance(replacement, torch.Tensor) else type(replacement)
                    raise ValueError(f"hook on {self.name} returned {got}; "
                                     f"expected a tensor of shape {tuple(x.shape)}")
                if replacement.dtype != x.dtype or replacement.device != x.device:
                    raise ValueError(f"hook on {self.name} returned a {replacement.dtype} tensor on "
                                     f"{replacement.device}; expected {x.dtype} on {x.device}")
                x = replacement
        if self.bwd_fns and x.requires_grad:
            # The gradient hook belongs to this pass's graph: it is gone once the graph is.
            for fn in list(self.bwd_fns):
                x.register_hook(_GradientHook(fn, self))
        return x

    def extra_repr(self) -> str:
        return self.name


class _GradientHook:
    """``fn(grad, hook)`` in the form ``Tensor.register_hook`` wants (a plain class, not a closure)."""

    def __init__(self, fn: HookFn, hook: HookPoint) -> None:
        self.fn = fn
        self.hook = hook

    def __call__(self, grad: torch.Tensor) -> torch.Tensor | None:
        return self.fn(grad, self.hook)


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
                module.layer = LayerIndex(match.group(1)) if match else None
                module.context = self.run_context
                self._hook_points[name] = module

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every hook point by name (a copy: adding to it changes nothing)."""
        return dict(self._hook_points)

    def hook_names(self) -> list[str]:
        """Every hook point name, in the order the activations are computed."""
        return list(self._hook_points)

    def resolve_hook_names(self, names: NameFilter) -> list[str]:
        """A name, a list of names, or a predicate ``fn(name) -> bool`` -> the matching hook point names."""
        if names is None:
            return self.hook_names()
        if callable(names):
            return [n for n in self._hook_points if names(n)]
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"names_filter must be a hook name, a list of names or a predicate fn(name) -> bool, "
                            f"got {names!r}")
        for name in names:
            if name not in self._hook_points:
                close = difflib.get_close_matches(name, self._hook_points, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise KeyError(f"no hook point named {name!r}{hint}")
        return list(names)

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
              reset_hooks_end: bool = True, saes: Sequence["HookedModule"] = ()) -> Iterator["HookedModule"]:
        """Attach hooks for the duration of the block; on exit (also on error) remove what was attached.

        Each spec is ``(name_or_predicate, fn)``. Hooks attached by an enclosing block stay.
        ``reset_hooks_end=False`` keeps them attached afterwards (TransformerLens's escape hatch;
        call ``model.reset_hooks()`` yourself). ``saes``: sparse autoencoders spliced in for the
        block (see ``spliced``), always removed on exit; ``fwd_hooks`` may name their hook points.
        """
        attached: list[tuple[HookPoint, HookFn, str]] = []
        with self.spliced(saes):
            try:
                for specs, direction in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                    specs = _checked_specs(specs, f"{direction}_hooks")
                    for name_or_predicate, fn in specs:
                        for name in self.resolve_hook_names(name_or_predicate):
                            point = self._hook_points[name]
                            point.add_hook(fn, direction)
                            attached.append((point, fn, direction))
                yield self
            finally:
                if reset_hooks_end:
                    for point, fn, direction in reversed(attached):
                        point.remove_hook(fn, direction)

    @contextmanager
    def spliced(self, modules: Sequence["HookedModule"] = ()) -> Iterator["HookedModule"]:
        """Splice hooked modules (sparse autoencoders, transcoders) into the forward pass for the block.

        Each module gives the hooks that put it in place (``module.splice_hooks(self)``, which also
        checks that it fits) and, while spliced, its own hook points are listed among this model's,
        right after its site, as ``{module.splice_prefix}.{name}`` (e.g.
        ``blocks.2.hook_resid_post.hook_sae_acts_post``): ``run_with_cache`` stores them and
        ``hooks`` can edit them. On exit, also on error, the hooks are removed and the names,
        layers and run contexts of those points restored.
        """
        saved_points = self._hook_points
        renamed: list[tuple[HookPoint, str, int | None, RunContext]] = []
        attached: list[tuple[HookPoint, HookFn]] = []
        extra: dict[str, dict[str, HookPoint]] = {}  # site -> the spliced points listed after it
        try:
            for module in modules:
                specs = module.splice_hooks(self)
                site = module.splice_prefix
                if site in extra:
                    raise ValueError(f"two modules spliced at {site}: only one SAE per hook point")
                extra[site] = {}
                for local_name, point in module.hook_dict.items():
                    renamed.append((point, point.name, point.layer, point.context))
                    point.name = f"{site}.{local_name}"
                    point.layer, point.context = saved_points[site].layer, self.run_context
                    extra[site][point.name] = point
                for name, fn in specs:
                    saved_points[name].add_hook(fn)
                    attached.append((saved_points[name], fn))
            if extra:
                points: dict[str, HookPoint] = {}
                for name, point in saved_points.items():
                    points[name] = point
                    points.update(extra.get(name, {}))
                self._hook_points = points
            yield self
        finally:
            for point, fn in reversed(attached):
                point.remove_hook(fn)
            for point, name, layer, context in renamed:
                point.name, point.layer, point.context = name, layer, context
            self._hook_points = saved_points

    def reset_hooks(self) -> None:
        """Remove every hook (a safety net; hooks attached with ``hooks()`` never outlive it)."""
        for point in self._hook_points.values():
            point.remove_hooks()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
                       reset_hooks_end: bool = True, saes: Sequence["HookedModule"] = (), **kwargs) -> torch.Tensor:
        """One forward pass with the given hooks attached (and ``saes`` spliced in), removed afterwards.

        Backward hooks fire when you later call ``backward`` on something computed from the result.
        """
        with self.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, reset_hooks_end=reset_hooks_end, saes=saes):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter: NameFilter = None, device: torch.device | str | None = None,
                       incl_bwd: bool = False, remove_batch_dim: bool = False, saes: Sequence["HookedModule"] = (),
                       **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass that also returns the activations at the requested hook points, by name.

        names_filter: a name, a list of names, or a predicate on names (default: every point).
            Only the requested activations are stored (detached, moved to ``device`` if given).
        incl_bwd: also store the gradient arriving at each of those points, as ``name + "_grad"``,
            once you call ``backward`` on something computed from the returned logits (the model
            returns logits, not a loss, so the choice of what to differentiate is yours).
        remove_batch_dim: for a batch of one, store ``[pos, ...]`` instead of ``[1, pos, ...]``.
        saes: sparse autoencoders spliced in for this run (see ``spliced``); their activations are
            stored as ``{hook_name}.hook_sae_acts_post`` and so on.

        Returns the output and a plain dict; ``Gemma.run_with_cache`` wraps it in an ``ActivationCache``.
        """
        if incl_bwd and not torch.is_grad_enabled():
            raise RuntimeError("incl_bwd=True needs gradients; call run_with_cache outside torch.no_grad()")
        if incl_bwd and not any(p.requires_grad for p in self.parameters()):
            raise RuntimeError("incl_bwd=True needs gradients, but every parameter is frozen (load_pretrained "
                               "freezes them): call model.requires_grad_(True) first")
        store: dict[str, torch.Tensor] = {}
        saver = _Saver(store, device, remove_batch_dim)
        with self.spliced(saes):  # first, so that names_filter can name the spliced points
            names = self.resolve_hook_names(names_filter)
            fwd = [(name, saver.save) for name in names]
            bwd = [(name, saver.save_grad) for name in names] if incl_bwd else []
            logits = self.run_with_hooks(*args, fwd_hooks=fwd, bwd_hooks=bwd, **kwargs)
        return logits, store


def _checked_specs(specs, argument: str) -> list[tuple]:
    """``specs`` as a list of (name_or_predicate, fn) pairs, or a TypeError saying what was expected."""
    expected = f'{argument} takes a list of (name, fn) pairs, e.g. [("blocks.0.hook_resid_post", fn)]'
    if isinstance(specs, tuple) and len(specs) == 2 and callable(specs[1]) and not isinstance(specs[0], tuple):
        raise TypeError(f"{expected}; got one bare pair: wrap it in a list")
    try:
        specs = list(specs)
    except TypeError:
        raise TypeError(f"{expected}; got {type(specs).__name__}") from None
    for spec in specs:
        if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and callable(spec[1])):
            raise TypeError(f"{expected}; got the entry {spec!r}")
    return specs


class _Saver:
    """The hook functions ``run_with_cache`` attaches: copy each activation (or gradient) into a dict."""

    def __init__(self, store: dict[str, torch.Tensor], device: torch.device | str | None,
                 remove_batch_dim: bool) -> None:
        self.store = store
        self.device = device
        self.remove_batch_dim = remove_batch_dim

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.remove_batch_dim:
            if tensor.shape[0] != 1:
                raise ValueError(f"remove_batch_dim=True needs a batch of one, got {tuple(tensor.shape)}")
            tensor = tensor[0]
        return tensor.to(self.device) if self.device is not None else tensor

    def save(self, tensor: torch.Tensor, hook: HookPoint) -> None:
        self.store[hook.name] = self._keep(tensor)

    def save_grad(self, grad: torch.Tensor, hook: HookPoint) -> None:
        self.store[hook.name + "_grad"] = self._keep(grad)
