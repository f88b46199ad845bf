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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from gemma_lab.factored_matrix import FactoredMatrix
from gemma_lab.generation import generate as generate_tokens
from gemma_lab.hooks import HookedModule, HookFn, HookPoint, HookSpec, NameFilter, _Saver
from gemma_lab.model import Gemma
from gemma_lab.tl_aliases import AliasHookPoint, MLPInAlias, RenameAlias, ScaleAlias, SplitInputAlias
from gemma_lab.tl_utils import lm_cross_entropy_loss
from gemma_lab.tl_views import (
    TLActivationCache,
    TLConfig,
    TLTokenizer,
    _BlockView,
    _EmbedView,
    _NormView,
    _UnembedView,
)
from gemma_lab.tokenizer import GemmaTokenizer

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
                        **load_kwargs) -> HookedGemma:
        """Load a checkpoint (``"tiny"``, a folder or a model id) and its tokenizer, as
        ``load_pretrained`` and ``load_tokenizer`` do. ``dtype`` / ``device`` go to the loader.

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
              reset_hooks_end: bool = True, clear_contexts: bool = False) -> Iterator[HookedGemma]:
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
        for point in self._hook_points.values():
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
        if start_at_layer is not None or tokens is not None:
            raise NotImplementedError("start_at_layer (and its tokens=) is not supported; replace blocks.{L}.hook_resid_pre with "
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
        ``return_type``: "input" (as the input), "str" or "tokens". ``seed`` makes sampling repeatable.

        Accepted for TransformerLens's signature, without changing the result: ``use_past_kv_cache``
        (the KV cache is always used; the tokens are the same), ``verbose`` (no progress bar) and
        ``padding_side`` (a batch of prompts is always left-padded, so each row continues as it
        would alone)."""
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
