"""GemmaConfig: every number that shapes a Gemma 1, 2, 3, 3n or 4 text model, in one frozen dataclass.

Presets reproduce the published architectures (figures from Google's model cards and the configs
shipped with the checkpoints; see ``docs/architecture.md``). ``GemmaConfig.from_hf`` reads a
transformers ``config.json``; how transformers spells each field lives in ``hf_format.py``.

Imports the standard library and ``hf_format`` (itself standard library only): the bottom of the
package, with no torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from gemma_lab.hf_format import (
    GLOBAL,
    LOCAL,
    MAX_HEADS,
    MAX_LAYERS,
    config_fields_from_hf,
    hf_config_dict,
    layer_pattern,
    read_config_json,
)


@dataclass(frozen=True)
class GemmaConfig:
    """The architecture of one Gemma text model (no weights, no tokenizer, no file paths)."""

    family: int  # Gemma generation: 1 (Gemma, 1.1, CodeGemma), 2, 3 or 4
    vocab_size: int  # rows of the (tied) embedding matrix
    d_model: int  # width of the residual stream
    n_layers: int  # transformer blocks
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads; 1 = multi-query, n_heads = multi-head, else grouped-query
    d_head: int  # width of one head (Gemma sets it explicitly: 7B has 16 x 256 != 3072)
    d_mlp: int  # width of ONE branch (gate or up) of the GeGLU MLP
    max_seq_len: int = 8192  # context length the model was trained for
    norm_eps: float = 1e-6  # epsilon inside the RMSNorm square root
    activation: str = "gelu_tanh"  # "gelu_tanh" (what every Gemma was trained with) or "gelu" (exact erf)
    sandwich_norms: bool = False  # Gemma 2/3: RMSNorm also on the attention and MLP outputs
    qk_norm: bool = False  # Gemma 3: RMSNorm over d_head on queries and keys, before RoPE
    query_pre_attn_scalar: float | None = None  # scores are scaled by this**-0.5 (None: d_head)
    attn_softcap: float | None = None  # Gemma 2: scores -> cap * tanh(scores / cap), cap = 50
    final_softcap: float | None = None  # Gemma 2: logits -> cap * tanh(logits / cap), cap = 30
    sliding_window: int | None = None  # keys a local layer's query sees, itself included
    layer_types: tuple[str, ...] = ()  # "global" or "local" per layer (empty: all global)
    rope_theta: float = 10_000.0  # RoPE base on global layers
    rope_theta_local: float = 10_000.0  # RoPE base on local (sliding-window) layers
    rope_scale: float = 1.0  # linear position interpolation on global layers (Gemma 3 4B+: 8)
    # ---- Gemma 4 (all off by default: Gemma 1-3 never see them) ----
    d_head_global: int | None = None  # Gemma 4: head width on global layers (512; None: d_head)
    n_kv_heads_global: int | None = None  # Gemma 4 K=V models: kv heads on global layers (None: n_kv_heads)
    rope_fraction_global: float = 1.0  # Gemma 4 "proportional" RoPE: share of a global head that rotates
    k_eq_v: bool = False  # Gemma 4 (31B, 26B-A4B): global layers have no v_proj; values are the keys' projection
    n_kv_shared_layers: int = 0  # Gemma 4 E2B/E4B: the last layers reuse another layer's keys and values
    double_wide_mlp: bool = False  # Gemma 4 E2B: the KV-shared layers have an MLP twice as wide
    d_per_layer: int = 0  # Gemma 4 E2B/E4B: width of the per-layer embeddings (PLE); 0 = none
    vocab_per_layer: int = 0  # rows of the per-layer embedding table
    n_experts: int = 0  # Gemma 4 26B-A4B: experts per layer (mixture of experts beside the MLP); 0 = none
    n_experts_active: int = 0  # experts each token is routed to (top-k)
    d_expert: int = 0  # width of one branch of one expert's GeGLU
    # ---- Gemma 3n (family 3; all off by default). Its per-layer inputs, KV sharing and norms are Gemma 4's
    # fields above (d_per_layer, vocab_per_layer, n_kv_shared_layers; gains w, see norm_gain_offset) ----
    altup_num_inputs: int = 0  # Gemma 3n AltUp: parallel copies of the residual stream (4); 0 = one plain stream
    altup_active_idx: int = 0  # the copy that the block's attention and MLP read and write ("active")
    altup_coef_clip: float | None = None  # training only: AltUp coefficient weights clipped to +-this (120)
    altup_correct_scale: bool = False  # the corrected active copy is scaled by a learned vector before the per-layer gate
    laurel_rank: int = 0  # Gemma 3n LAuReL: rank of the low-rank branch beside attention (64); 0 = none
    activation_sparsity: tuple[float, ...] = ()  # per layer: share of MLP gate values cut (gaussian top-k); () = none
    # MatFormer "mix-n-match" sub-models (gemma_lab.matformer): one MLP width per layer, d_mlp the widest;
    # () = d_mlp on every layer
    d_mlp_per_layer: tuple[int, ...] = ()
    name: str = ""  # preset or checkpoint this config came from, for display only

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (GLOBAL,) * self.n_layers)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "activation_sparsity", tuple(float(v) for v in self.activation_sparsity))
        object.__setattr__(self, "d_mlp_per_layer", tuple(self.d_mlp_per_layer))
        if self.d_mlp_per_layer and set(self.d_mlp_per_layer) == {self.d_mlp}:
            object.__setattr__(self, "d_mlp_per_layer", ())  # one width everywhere: the plain form, so configs compare equal
        self._validate()

    def _validate(self) -> None:
        if type(self.family) is not int or self.family not in (1, 2, 3, 4):
            raise ValueError(f"GemmaConfig.family must be 1, 2, 3 or 4, got {self.family!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp",
                     "max_seq_len"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:  # bool is an int to Python, not to us
                raise ValueError(f"GemmaConfig.{name} must be a positive integer, got {value!r}")
        for name, limit in (("n_layers", MAX_LAYERS), ("n_heads", MAX_HEADS), ("n_kv_heads", MAX_HEADS)):
            if getattr(self, name) > limit:
                raise ValueError(f"GemmaConfig.{name} = {getattr(self, name)} exceeds the limit of {limit} "
                                 f"(the largest Gemma has 62 layers and 32 heads)")
        for name in ("norm_eps", "rope_theta", "rope_theta_local", "rope_scale", "query_pre_attn_scalar",
                     "attn_softcap", "final_softcap"):
            value = getattr(self, name)
            if value is None and name in ("query_pre_attn_scalar", "attn_softcap", "final_softcap"):
                continue  # None means "not used" (softcaps) or "d_head" (query scale)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                hint = " (use None for no softcap)" if name.endswith("softcap") else ""
                raise ValueError(f"GemmaConfig.{name} must be a positive finite number, got {value!r}{hint}")
        if self.sliding_window is not None and (type(self.sliding_window) is not int or self.sliding_window < 1):
            raise ValueError(f"GemmaConfig.sliding_window must be a positive integer or None, "
                             f"got {self.sliding_window!r}")
        # Values that pass the checks above but make every forward pass overflow to inf/NaN (found by
        # tests/test_fuzz.py): a RoPE base or linear factor below 1, a query scalar below 1 (a scale
        # above 1), or a count beyond what index arithmetic holds.
        for name, low in (("rope_theta", 1.0), ("rope_theta_local", 1.0), ("rope_scale", 1.0),
                          ("query_pre_attn_scalar", 1.0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"GemmaConfig.{name} must be at least {low:g}, got {value!r}")
        for name in ("vocab_size", "d_model", "d_head", "d_mlp", "max_seq_len", "sliding_window"):
            value = getattr(self, name)
            if value is not None and value > 2**31 - 1:
                raise ValueError(f"GemmaConfig.{name} = {value} exceeds 2**31 - 1")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"GemmaConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.d_head % 2:
            raise ValueError(f"GemmaConfig.d_head must be even for rotary embeddings, got {self.d_head}")
        if len(self.layer_types) != self.n_layers:
            raise ValueError(
                f"GemmaConfig.layer_types has {len(self.layer_types)} entries for n_layers={self.n_layers}"
            )
        unknown = sorted(set(self.layer_types) - {GLOBAL, LOCAL})
        if unknown:
            raise ValueError(f"GemmaConfig.layer_types may hold 'global' or 'local', got {unknown}")
        if LOCAL in self.layer_types and not self.sliding_window:
            raise ValueError("GemmaConfig has local layers but no sliding_window")
        if self.activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"GemmaConfig.activation must be 'gelu_tanh' or 'gelu', got {self.activation!r}")
        self._validate_gemma4()
        self._validate_gemma3n()

    def _validate_gemma3n(self) -> None:
        used = [name for name in ("altup_active_idx", "altup_coef_clip", "altup_correct_scale", "laurel_rank",
                                  "activation_sparsity", "d_mlp_per_layer") if getattr(self, name)]
        if type(self.altup_num_inputs) is not int or self.altup_num_inputs < 0:
            raise ValueError(f"GemmaConfig.altup_num_inputs must be a whole number >= 0, got {self.altup_num_inputs!r}")
        if used and not self.is_gemma3n:
            raise ValueError(f"GemmaConfig.{used[0]} is a Gemma 3n feature; set altup_num_inputs (Gemma 3n: 4)")
        if not self.is_gemma3n:
            return
        if self.family != 3:
            raise ValueError(f"GemmaConfig: Gemma 3n (altup_num_inputs) is family 3, got {self.family}")
        if not 0 <= self.altup_active_idx < self.altup_num_inputs:
            raise ValueError(f"GemmaConfig.altup_active_idx must be in [0, {self.altup_num_inputs}), got {self.altup_active_idx}")
        if type(self.laurel_rank) is not int or self.laurel_rank < 1:
            raise ValueError(f"GemmaConfig.laurel_rank must be a positive integer for Gemma 3n, got {self.laurel_rank!r}")
        if not self.d_per_layer:
            raise ValueError("GemmaConfig: Gemma 3n needs per-layer inputs (d_per_layer > 0)")
        if self.activation_sparsity and len(self.activation_sparsity) != self.n_layers:
            raise ValueError(f"GemmaConfig.activation_sparsity has {len(self.activation_sparsity)} entries for "
                             f"n_layers={self.n_layers}")
        if any(not 0 <= v < 1 for v in self.activation_sparsity):
            raise ValueError(f"GemmaConfig.activation_sparsity values must lie in [0, 1), got {self.activation_sparsity}")
        if self.d_mlp_per_layer:
            if len(self.d_mlp_per_layer) != self.n_layers:
                raise ValueError(f"GemmaConfig.d_mlp_per_layer has {len(self.d_mlp_per_layer)} entries for "
                                 f"n_layers={self.n_layers}")
            if any(type(width) is not int or not 0 < width <= self.d_mlp for width in self.d_mlp_per_layer):
                raise ValueError(f"GemmaConfig.d_mlp_per_layer must hold positive integers up to d_mlp "
                                 f"({self.d_mlp}, the widest layer), got {self.d_mlp_per_layer}")

    def _validate_gemma4(self) -> None:
        gemma4_only = dict(d_head_global=self.d_head_global, n_kv_heads_global=self.n_kv_heads_global,
                           k_eq_v=self.k_eq_v, n_kv_shared_layers=self.n_kv_shared_layers,
                           double_wide_mlp=self.double_wide_mlp, d_per_layer=self.d_per_layer,
                           n_experts=self.n_experts, rope_fraction_global=self.rope_fraction_global != 1.0)
        used = [name for name, value in gemma4_only.items() if value]
        if self.is_gemma3n:  # Gemma 3n has per-layer inputs and KV sharing as Gemma 4 does
            used = [name for name in used if name not in ("d_per_layer", "n_kv_shared_layers")]
        if used and self.family != 4:
            raise ValueError(f"GemmaConfig.{used[0]} is a Gemma 4 feature; family is {self.family}")
        if not 0 < self.rope_fraction_global <= 1:
            raise ValueError(f"GemmaConfig.rope_fraction_global must be in (0, 1], got {self.rope_fraction_global}")
        for name in ("d_head_global", "n_kv_heads_global"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1 or (name == "d_head_global" and value % 2)):
                raise ValueError(f"GemmaConfig.{name} must be a positive (even) integer or None, got {value!r}")
        if self.n_heads % self.n_kv_heads_for(self.n_layers - 1 if GLOBAL in self.layer_types else 0):
            raise ValueError(f"GemmaConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads_global "
                             f"({self.n_kv_heads_global})")
        if not 0 <= self.n_kv_shared_layers < self.n_layers:
            raise ValueError(f"GemmaConfig.n_kv_shared_layers must be in [0, n_layers), got {self.n_kv_shared_layers}")
        if self.n_kv_shared_layers:
            producers = set(self.layer_types[: self.n_layers - self.n_kv_shared_layers])
            consumers = set(self.layer_types[self.n_layers - self.n_kv_shared_layers:])
            if not consumers <= producers:
                raise ValueError("GemmaConfig: a KV-shared layer has no earlier non-shared layer of its kind "
                                 f"({sorted(consumers - producers)}) to read keys and values from")
        if self.d_per_layer and self.vocab_per_layer < 1:
            raise ValueError("GemmaConfig.d_per_layer is set but vocab_per_layer is not")
        if self.n_experts and not (0 < self.n_experts_active <= self.n_experts and self.d_expert > 0):
            raise ValueError(f"GemmaConfig: {self.n_experts} experts need 0 < n_experts_active <= n_experts "
                             f"and d_expert > 0 (got {self.n_experts_active}, {self.d_expert})")

    # ---- derived quantities -------------------------------------------------------------
    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head (the ``group`` axis)."""
        return self.n_heads // self.n_kv_heads

    @property
    def attention_kind(self) -> str:
        """'multi-query', 'grouped-query' or 'multi-head'."""
        if self.n_kv_heads == 1:
            return "multi-query"
        return "multi-head" if self.n_kv_heads == self.n_heads else "grouped-query"

    @property
    def is_gemma3n(self) -> bool:
        """Gemma 3n (E2B, E4B): AltUp's parallel streams, LAuReL, activation sparsity (see gemma3n_parts.py)."""
        return self.altup_num_inputs > 0

    @property
    def attn_scale(self) -> float:
        """Factor applied to q.k: ``query_pre_attn_scalar ** -0.5`` (Gemma 1: ``d_head ** -0.5``).

        Gemma 3n and 4: 1.0. Their q_norm and k_norm gains are learned with the scale folded in.
        """
        if self.family == 4 or self.is_gemma3n:
            return 1.0
        return (self.query_pre_attn_scalar or self.d_head) ** -0.5

    @property
    def norm_gain_offset(self) -> bool:
        """True when RMSNorm gains are stored as offsets from 1 (``1 + w``, Gemma 1-3); Gemma 3n and 4 store ``w``."""
        return self.family < 4 and not self.is_gemma3n

    @property
    def values_normed(self) -> bool:
        """Gemma 3n and 4 normalise each value head (RMSNorm without a gain) before attending."""
        return self.family == 4 or self.is_gemma3n

    def sparsity_for(self, layer: int) -> float:
        """Share of the MLP gate that Gemma 3n's gaussian top-k cuts on ``layer`` (0: dense)."""
        return self.activation_sparsity[layer] if self.activation_sparsity else 0.0

    @property
    def embed_scale(self) -> float:
        """``sqrt(d_model)``; the model rounds it to the weight dtype before multiplying."""
        return math.sqrt(self.d_model)

    def is_local(self, layer: int) -> bool:
        """True when ``layer`` uses sliding-window attention."""
        return self.layer_types[layer] == LOCAL

    def rope_for_layer(self, layer: int) -> tuple[float, float]:
        """(theta, linear position scale) of the rotary embedding on ``layer``."""
        if self.is_local(layer):
            return self.rope_theta_local, 1.0
        return self.rope_theta, self.rope_scale

    # ---- per-layer shapes (they differ between layers only in Gemma 4) ----------------------
    def d_head_for(self, layer: int) -> int:
        """Head width on ``layer``: Gemma 4's global layers have wider heads (``d_head_global``)."""
        if self.d_head_global is not None and not self.is_local(layer):
            return self.d_head_global
        return self.d_head

    def n_kv_heads_for(self, layer: int) -> int:
        """Key/value heads on ``layer`` (Gemma 4 K=V models have fewer on global layers)."""
        if self.n_kv_heads_global is not None and not self.is_local(layer):
            return self.n_kv_heads_global
        return self.n_kv_heads

    def rope_fraction_for(self, layer: int) -> float:
        """Share of each head's dimensions that RoPE rotates on ``layer`` (Gemma 4 global: 0.25)."""
        return 1.0 if self.is_local(layer) else self.rope_fraction_global

    def has_v_proj(self, layer: int) -> bool:
        """False on Gemma 4 K=V global layers, whose values come from the key projection."""
        return not (self.k_eq_v and not self.is_local(layer))

    def kv_source(self, layer: int) -> int:
        """The layer whose keys and values ``layer`` attends to: itself, or for Gemma 4's KV-shared
        layers (the last ``n_kv_shared_layers``) the last non-shared layer of the same kind."""
        first_shared = self.n_layers - self.n_kv_shared_layers
        if layer < first_shared:
            return layer
        return max(i for i in range(first_shared) if self.layer_types[i] == self.layer_types[layer])

    def is_kv_shared(self, layer: int) -> bool:
        return self.kv_source(layer) != layer

    def d_mlp_for(self, layer: int) -> int:
        """MLP width on ``layer``: the layer's own in a MatFormer sub-model (``d_mlp_per_layer``, Gemma 3n),
        doubled on Gemma 4 E2B's KV-shared layers (``double_wide_mlp``), else ``d_mlp``."""
        if self.d_mlp_per_layer:
            return self.d_mlp_per_layer[layer]
        return self.d_mlp * (2 if self.double_wide_mlp and self.is_kv_shared(layer) else 1)

    def kv_numbers_per_token(self) -> int:
        """Numbers the KV cache holds per token per layer, summed over the layers that store keys
        and values (KV-shared layers store nothing; K=V layers store values anyway, see kv_cache)."""
        return sum(2 * self.n_kv_heads_for(layer) * self.d_head_for(layer)
                   for layer in range(self.n_layers) if not self.is_kv_shared(layer))

    def n_params(self) -> int:
        """Parameter count with the tied embedding counted once (matches published figures)."""
        if self.family == 4 or self.is_gemma3n:
            return self._n_params_gemma4() + self._n_params_gemma3n()
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.d_model * self.d_mlp
        norms = self.d_model * (4 if self.sandwich_norms else 2) + (2 * self.d_head if self.qk_norm else 0)
        return self.vocab_size * self.d_model + self.n_layers * (attn + mlp + norms) + self.d_model

    def _n_params_gemma4(self) -> int:
        total = self.vocab_size * self.d_model + self.d_model  # tied embedding, final norm
        if self.d_per_layer:  # per-layer embedding table, its projection from the stream, its norm
            width = self.n_layers * self.d_per_layer
            total += self.vocab_per_layer * width + self.d_model * width + self.d_per_layer
            total += self.n_layers * (2 * self.d_model * self.d_per_layer + self.d_model)
        for layer in range(self.n_layers):
            d_head, n_kv = self.d_head_for(layer), self.n_kv_heads_for(layer)
            total += 2 * self.d_model * self.n_heads * d_head + d_head  # q_proj, o_proj, q_norm
            if not self.is_kv_shared(layer):
                total += self.d_model * n_kv * d_head * (2 if self.has_v_proj(layer) else 1) + d_head
            total += 3 * self.d_model * self.d_mlp_for(layer) + 4 * self.d_model
            if self.n_experts:  # router (proj, scale, per-expert scale), experts, three more norms
                total += self.d_model * self.n_experts + self.d_model + self.n_experts
                total += 3 * self.n_experts * self.d_model * self.d_expert + 3 * self.d_model
        return total

    def _n_params_gemma3n(self) -> int:
        """What Gemma 3n adds to the Gemma 4 count: AltUp (its stream projections and, per layer, router,
        coefficients and output scale) and LAuReL."""
        if not self.is_gemma3n:
            return 0
        n, d = self.altup_num_inputs, self.d_model
        total = 2 * (n - 1) * d * d  # projections into and out of the extra streams
        per_layer = d * n + d + n * n * n + n * n + d  # router, router norm, prediction, correction, output scale
        per_layer += 2 * d * self.laurel_rank + d  # LAuReL's two low-rank matrices and its norm
        return total + self.n_layers * per_layer

    def replace(self, **changes: Any) -> "GemmaConfig":
        """A copy with some fields changed (layer_types is rebuilt when n_layers changes)."""
        if "n_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = layer_pattern(self.family, changes["n_layers"], 5 if self.is_gemma3n else 6)
        if "n_layers" in changes and self.activation_sparsity and "activation_sparsity" not in changes:
            n = changes["n_layers"]  # the first layers keep their sparsity, added ones are dense
            changes["activation_sparsity"] = (self.activation_sparsity + (0.0,) * n)[:n]
        if "n_layers" in changes and self.d_mlp_per_layer and "d_mlp_per_layer" not in changes:
            n = changes["n_layers"]  # the first layers keep their widths, added ones get d_mlp
            changes["d_mlp_per_layer"] = (self.d_mlp_per_layer + (self.d_mlp,) * n)[:n]
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_hf(self, **token_ids: int) -> dict[str, Any]:
        """The transformers ``config.json`` of this architecture (``from_hf`` reads it back unchanged).

        ``token_ids``: ``bos_id``, ``eos_id``, ``pad_id`` when they differ from Gemma's 2, 1, 0.
        """
        return hf_config_dict(self, **token_ids)

    # ---- constructors ---------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> "GemmaConfig":
        """A published architecture (``gemma-2b``, ``gemma2-9b``, ``gemma3-1b``, ...) or a test size."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | str | Path) -> "GemmaConfig":
        """Read a transformers ``config.json`` (a dict, the file, or the checkpoint folder)."""
        d, source = read_config_json(config)
        fields = config_fields_from_hf(d, source)
        try:
            return cls(**fields)
        except ValueError as error:  # GemmaConfig's own checks: say which file they are about
            raise ValueError(f"{source}: {error}") from None


# ---- presets -------------------------------------------------------------------------------------

def _gemma1(name: str, **kw: Any) -> GemmaConfig:
    return GemmaConfig(family=1, vocab_size=256000, max_seq_len=8192, name=name, **kw)


def _gemma2(name: str, n_layers: int, **kw: Any) -> GemmaConfig:
    return GemmaConfig(family=2, vocab_size=256000, n_layers=n_layers, max_seq_len=8192, sandwich_norms=True,
                       attn_softcap=50.0, final_softcap=30.0, sliding_window=4096,
                       layer_types=layer_pattern(2, n_layers), name=name, **kw)


def _gemma3(name: str, n_layers: int, *, vocab_size: int = 262208, window: int = 1024,
            max_seq_len: int = 131072, rope_scale: float = 8.0, **kw: Any) -> GemmaConfig:
    return GemmaConfig(family=3, vocab_size=vocab_size, n_layers=n_layers, max_seq_len=max_seq_len,
                       sandwich_norms=True, qk_norm=True, sliding_window=window,
                       layer_types=layer_pattern(3, n_layers), rope_theta=1_000_000.0,
                       rope_theta_local=10_000.0, rope_scale=rope_scale, name=name, **kw)


def _gemma4(name: str, n_layers: int, *, window: int, max_seq_len: int, period: int = 6,
            **kw: Any) -> GemmaConfig:
    return GemmaConfig(family=4, vocab_size=262144, n_layers=n_layers, max_seq_len=max_seq_len,
                       sandwich_norms=True, qk_norm=True, final_softcap=30.0, sliding_window=window,
                       layer_types=layer_pattern(4, n_layers, period), rope_theta=1_000_000.0,
                       rope_theta_local=10_000.0, d_head=256, d_head_global=512, rope_fraction_global=0.25,
                       name=name, **kw)


def _gemma3n(name: str, n_layers: int, d_mlp: int, n_kv_shared_layers: int) -> GemmaConfig:
    return GemmaConfig(family=3, vocab_size=262400, d_model=2048, n_layers=n_layers, n_heads=8, n_kv_heads=2,
                       d_head=256, d_mlp=d_mlp, max_seq_len=32768, sandwich_norms=True, qk_norm=True,
                       final_softcap=30.0, sliding_window=512, layer_types=layer_pattern(3, n_layers, 5),
                       rope_theta=1_000_000.0, rope_theta_local=10_000.0, n_kv_shared_layers=n_kv_shared_layers,
                       d_per_layer=256, vocab_per_layer=262144, altup_num_inputs=4, altup_coef_clip=120.0,
                       altup_correct_scale=True, laurel_rank=64,
                       activation_sparsity=(0.95,) * 10 + (0.0,) * (n_layers - 10), name=name)


PRESETS: dict[str, GemmaConfig] = {
    # Gemma 1. Gemma 1.1 and CodeGemma (2b/7b) share these architectures exactly.
    "gemma-2b": _gemma1("gemma-2b", d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, d_head=256,
                        d_mlp=16384),
    "gemma-7b": _gemma1("gemma-7b", d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, d_head=256,
                        d_mlp=24576),
    # Gemma 2: 9B scales queries by 256 (the hub config since July 2024), 27B by d_model / n_heads.
    "gemma2-2b": _gemma2("gemma2-2b", 26, d_model=2304, n_heads=8, n_kv_heads=4, d_head=256, d_mlp=9216,
                         query_pre_attn_scalar=256.0),
    "gemma2-9b": _gemma2("gemma2-9b", 42, d_model=3584, n_heads=16, n_kv_heads=8, d_head=256, d_mlp=14336,
                         query_pre_attn_scalar=256.0),
    "gemma2-27b": _gemma2("gemma2-27b", 46, d_model=4608, n_heads=32, n_kv_heads=16, d_head=128,
                          d_mlp=36864, query_pre_attn_scalar=144.0),
    # Gemma 3 text models; 4b/12b/27b are the text towers of the multimodal checkpoints.
    "gemma3-270m": _gemma3("gemma3-270m", 18, vocab_size=262144, window=512, max_seq_len=32768,
                           rope_scale=1.0, d_model=640, n_heads=4, n_kv_heads=1, d_head=256, d_mlp=2048,
                           query_pre_attn_scalar=256.0),
    "gemma3-1b": _gemma3("gemma3-1b", 26, vocab_size=262144, window=512, max_seq_len=32768, rope_scale=1.0,
                         d_model=1152, n_heads=4, n_kv_heads=1, d_head=256, d_mlp=6912,
                         query_pre_attn_scalar=256.0),
    "gemma3-4b": _gemma3("gemma3-4b", 34, d_model=2560, n_heads=8, n_kv_heads=4, d_head=256, d_mlp=10240,
                         query_pre_attn_scalar=256.0),
    "gemma3-12b": _gemma3("gemma3-12b", 48, d_model=3840, n_heads=16, n_kv_heads=8, d_head=256,
                          d_mlp=15360, query_pre_attn_scalar=256.0),
    "gemma3-27b": _gemma3("gemma3-27b", 62, d_model=5376, n_heads=32, n_kv_heads=16, d_head=128,
                          d_mlp=21504, query_pre_attn_scalar=168.0),
    # Gemma 4 text models (text towers of the multimodal checkpoints google/gemma-4-{E2B,E4B,31B,26B-A4B}).
    # Numbers from the published config.json files (text_config), as transcribed in their model cards and
    # in several public loaders; the 26B-A4B ones also match its GGUF metadata. The configs set
    # final_logit_softcapping 30 (transformers' default is None). Heads: 256 wide on sliding layers,
    # 512 on global ones, a quarter of which rotates.
    "gemma4-e2b": _gemma4("gemma4-e2b", 35, window=512, max_seq_len=131072, period=5, d_model=1536,
                          n_heads=8, n_kv_heads=1, d_mlp=6144, n_kv_shared_layers=20, double_wide_mlp=True,
                          d_per_layer=256, vocab_per_layer=262144),
    "gemma4-e4b": _gemma4("gemma4-e4b", 42, window=512, max_seq_len=131072, d_model=2560, n_heads=8,
                          n_kv_heads=2, d_mlp=10240, n_kv_shared_layers=18, d_per_layer=256,
                          vocab_per_layer=262144),
    "gemma4-31b": _gemma4("gemma4-31b", 60, window=1024, max_seq_len=262144, d_model=5376, n_heads=32,
                          n_kv_heads=16, n_kv_heads_global=4, k_eq_v=True, d_mlp=21504),
    "gemma4-26b-a4b": _gemma4("gemma4-26b-a4b", 30, window=1024, max_seq_len=262144, d_model=2816,
                              n_heads=16, n_kv_heads=8, n_kv_heads_global=2, k_eq_v=True, d_mlp=2112,
                              n_experts=128, n_experts_active=8, d_expert=704),
    # Gemma 3n text towers (google/gemma-3n-E2B, -E4B): 4 AltUp streams, LAuReL rank 64, the first 10 MLPs 95%
    # sparse, per-layer inputs 256 wide, global attention every fifth layer. E4B's numbers are transformers'
    # Gemma3nTextConfig defaults ("E4B style"); E2B differs in depth, MLP width and shared layers (published config).
    "gemma3n-e2b": _gemma3n("gemma3n-e2b", 30, d_mlp=8192, n_kv_shared_layers=10),
    "gemma3n-e4b": _gemma3n("gemma3n-e4b", 35, d_mlp=16384, n_kv_shared_layers=15),
    # Small random-weight sizes for tests and quick experiments (same code paths, seconds on a CPU).
    "test-gemma": GemmaConfig(
        family=1, vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, d_head=16, d_mlp=128,
        max_seq_len=256, name="test-gemma"),
    "test-gemma2": GemmaConfig(
        family=2, vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_head=16, d_mlp=128,
        max_seq_len=256, sandwich_norms=True, query_pre_attn_scalar=16.0, attn_softcap=50.0,
        final_softcap=30.0, sliding_window=8, layer_types=layer_pattern(2, 4), name="test-gemma2"),
    "test-gemma3": GemmaConfig(
        family=3, vocab_size=512, d_model=64, n_layers=6, n_heads=4, n_kv_heads=2, d_head=16, d_mlp=128,
        max_seq_len=256, sandwich_norms=True, qk_norm=True, query_pre_attn_scalar=16.0, sliding_window=8,
        layer_types=layer_pattern(3, 6), rope_theta=1_000_000.0, rope_theta_local=10_000.0,
        rope_scale=8.0, name="test-gemma3"),
    # Every Gemma 4 feature at once (no published size has them all): per-layer embeddings, K=V
    # global layers, two KV-shared layers with a double-wide MLP, and 4 experts, 2 per token.
    "test-gemma4": GemmaConfig(
        family=4, vocab_size=512, d_model=64, n_layers=6, n_heads=4, n_kv_heads=2, d_head=16, d_mlp=128,
        max_seq_len=256, sandwich_norms=True, qk_norm=True, sliding_window=8,
        layer_types=(LOCAL, LOCAL, GLOBAL) * 2, rope_theta=1_000_000.0, rope_theta_local=10_000.0,
        d_head_global=32, n_kv_heads_global=1, rope_fraction_global=0.25, k_eq_v=True, n_kv_shared_layers=2,
        double_wide_mlp=True, d_per_layer=8, vocab_per_layer=512, n_experts=4, n_experts_active=2, d_expert=32,
        name="test-gemma4"),
    # Every Gemma 3n feature: 4 AltUp streams, LAuReL, sparse first MLPs, per-layer inputs, 2 KV-shared layers.
    "test-gemma3n": GemmaConfig(
        family=3, vocab_size=512, d_model=64, n_layers=6, n_heads=4, n_kv_heads=2, d_head=16, d_mlp=128,
        max_seq_len=256, sandwich_norms=True, qk_norm=True, final_softcap=30.0, sliding_window=8,
        layer_types=(LOCAL, LOCAL, GLOBAL) * 2, rope_theta=1_000_000.0, rope_theta_local=10_000.0,
        n_kv_shared_layers=2, d_per_layer=8, vocab_per_layer=480, altup_num_inputs=4, altup_coef_clip=120.0,
        altup_correct_scale=True, laurel_rank=8, activation_sparsity=(0.95, 0.95, 0.5, 0.0, 0.0, 0.0),
        name="test-gemma3n"),
}
