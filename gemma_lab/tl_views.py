"""TransformerLens's names over gemma_lab's objects: ``model.cfg``, ``model.tokenizer``, the
weight views (``W_Q``, ``blocks[L].attn.OV``, ``ln1.w``) and the cache's key spellings.

Used by ``HookedGemma`` (``hooked_gemma.py``); each class reads through to the gemma_lab object it
wraps and adds only names. Shapes follow TransformerLens: per-head weights are
``[head, d_model, d_head]`` (``W_O``: ``[head, d_head, d_model]``), grouped-query key/value
weights are repeated per query head (head ``h`` reads kv head ``h // group``), biases Gemma does
not have are zeros, and every view is of the unprocessed weights (no norm gains folded).

Imports: the model's config and cache types, the factored matrix; no plotting, widgets or tokenizer loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import einsum, rearrange, repeat
from torch import nn

from gemma_lab.activation_cache import ActivationCache
from gemma_lab.config import GemmaConfig
from gemma_lab.factored_matrix import FactoredMatrix
from gemma_lab.tl_utils import get_act_name

if TYPE_CHECKING:
    from gemma_lab.hooks import HookedModule  # the HookedGemma that owns these (not imported: it imports us)
    from gemma_lab.model import Gemma
    from gemma_lab.tokenizer import GemmaTokenizer

_ARCHITECTURES = {1: "GemmaForCausalLM", 2: "Gemma2ForCausalLM", 3: "Gemma3ForCausalLM", 4: "Gemma4ForCausalLM"}


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
    original_architecture = property(lambda self: "Gemma3nForCausalLM" if self.gemma.is_gemma3n
                                     else _ARCHITECTURES[self.gemma.family])
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

    def __init__(self, tokenizer: GemmaTokenizer, owner: HookedModule) -> None:
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

    def __init__(self, module: nn.Module, owner: HookedModule, prefix: str) -> None:
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

    def __init__(self, module: nn.Module, owner: HookedModule, prefix: str) -> None:
        super().__init__(module, owner, prefix)
        self.attn = _AttnView(module.attn, owner, f"{prefix}.attn")
        self.mlp = _MLPView(module.mlp, owner, f"{prefix}.mlp")
        for norm in ("ln1", "ln2", "ln1_post", "ln2_post"):
            real = getattr(module, norm)
            setattr(self, norm, None if real is None else _NormView(real, owner, f"{prefix}.{norm}"))


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

    def to(self, device: torch.device | str, move_model: bool = False) -> TLActivationCache:
        if move_model and self.model is not None:
            self.model.to(device)
        return TLActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> TLActivationCache:
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
