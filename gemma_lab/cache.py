"""ActivationCache: the activations one forward pass stored, looked up by hook name or shorthand.

``cache["blocks.3.attn.hook_pattern"]`` and ``cache["pattern", 3]`` are the same tensor; the
shorthand follows TransformerLens's ``get_act_name`` so its tutorials read unchanged.

Imports: torch only (the model is passed in, never imported).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Mapping

import torch

if TYPE_CHECKING:
    from gemma_lab.hooks import HookedModule

# Shorthand -> where the hook point sits: "block" (blocks.{i}.hook_X), "attn", "mlp", or a norm.
_BLOCK_LEVEL = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
_ATTN_LEVEL = {"q", "k", "v", "rot_q", "rot_k", "attn_scores", "attn_scores_pre_softcap", "pattern", "z",
               "result"}
_MLP_LEVEL = {"pre", "pre_linear", "post"}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "scores": "attn_scores", "neurons": "post"}


def act_name(name: str, layer: int | None = None, sublayer: str | None = None) -> str:
    """Full hook name from a shorthand: ``act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``.

    Norms: ``act_name("normalized", 3, "ln1")`` -> ``blocks.3.ln1.hook_normalized``;
    ``act_name("normalized", None, "ln_final")`` -> ``ln_final.hook_normalized``.
    """
    if "." in name or name.startswith("hook_"):
        return name
    name = _ALIASES.get(name, name)
    if name in ("embed", "logits"):
        return f"hook_{name}"
    if name in ("normalized", "inv_rms"):
        if sublayer is None:
            raise KeyError(f"norm activation {name!r} needs the norm's name, e.g. ('{name}', 3, 'ln1')")
        if sublayer == "ln_final":
            return f"ln_final.hook_{name}"
        if sublayer in ("q_norm", "k_norm"):
            return f"blocks.{layer}.attn.{sublayer}.hook_{name}"
        return f"blocks.{layer}.{sublayer}.hook_{name}"
    if layer is None:
        raise KeyError(f"activation {name!r} needs a layer index, e.g. cache[{name!r}, 0]")
    if name in _BLOCK_LEVEL:
        return f"blocks.{layer}.hook_{name}"
    if name in _ATTN_LEVEL:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP_LEVEL:
        return f"blocks.{layer}.mlp.hook_{name}"
    raise KeyError(f"unknown activation shorthand {name!r}")


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations from one run, keyed by hook name; ``cache["pattern", 3]`` shorthand works too."""

    def __init__(self, store: dict[str, torch.Tensor], model: "HookedModule | None" = None) -> None:
        self._store = store
        self.model = model

    def _key(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            return act_name(*key)
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
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self._store)} activations: {', '.join(list(self._store)[:4])}, ...)"

    def to(self, device: torch.device | str) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model)
