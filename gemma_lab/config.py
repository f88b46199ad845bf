"""GemmaConfig: every number that shapes a Gemma 1, 2 or 3 text model, in one frozen dataclass.

Presets reproduce the published architectures (figures from Google's model cards and the configs
shipped with the checkpoints; see ``docs/architecture.md``). ``GemmaConfig.from_hf`` reads a
transformers ``config.json``, in both the current spelling (``rope_parameters``, ``layer_types``)
and the legacy one the published checkpoints carry (``rope_theta``, ``rope_local_base_freq``,
``rope_scaling``, ``sliding_window_pattern``).

This module imports nothing but the standard library: it is the bottom layer of the package.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

GLOBAL, LOCAL = "global", "local"

# Sanity bounds: far above every published Gemma (62 layers, 32 heads), far below what would make
# building the model take minutes before anything could go wrong visibly.
MAX_LAYERS = 1024
MAX_HEADS = 1024


@dataclass(frozen=True)
class GemmaConfig:
    """The architecture of one Gemma text model (no weights, no tokenizer, no file paths)."""

    family: int  # Gemma generation: 1 (Gemma, 1.1, CodeGemma), 2 or 3
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
    name: str = ""  # preset or checkpoint this config came from, for display only

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (GLOBAL,) * self.n_layers)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self._validate()

    def _validate(self) -> None:
        if type(self.family) is not int or self.family not in (1, 2, 3):
            raise ValueError(f"GemmaConfig.family must be 1, 2 or 3, got {self.family!r}")
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
    def attn_scale(self) -> float:
        """Factor applied to q.k: ``query_pre_attn_scalar ** -0.5`` (Gemma 1: ``d_head ** -0.5``)."""
        return (self.query_pre_attn_scalar or self.d_head) ** -0.5

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

    def n_params(self) -> int:
        """Parameter count with the tied embedding counted once (matches published figures)."""
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.d_model * self.d_mlp
        norms = self.d_model * (4 if self.sandwich_norms else 2) + (2 * self.d_head if self.qk_norm else 0)
        return self.vocab_size * self.d_model + self.n_layers * (attn + mlp + norms) + self.d_model

    def replace(self, **changes: Any) -> "GemmaConfig":
        """A copy with some fields changed (layer_types is rebuilt when n_layers changes)."""
        if "n_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = _layer_pattern(self.family, changes["n_layers"])
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        source = "config"
        if isinstance(config, (str, Path)):
            path = Path(config)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such config file")
            source = str(path)
            try:
                config = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(config, Mapping):
            raise ValueError(f"{source}: a config must be a JSON object, got {type(config).__name__}")
        return _config_from_hf_dict(dict(config), source)


# ---- transformers config.json ------------------------------------------------------------

# Defaults of the transformers config classes: save_pretrained may leave out keys that equal them.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, max_position_embeddings=8192,
                  rms_norm_eps=1e-6, rope_theta=10000.0),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                   rms_norm_eps=1e-6, rope_theta=10000.0, query_pre_attn_scalar=256, sliding_window=4096,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                        rope_local_base_freq=10_000.0, query_pre_attn_scalar=256, sliding_window=4096,
                        sliding_window_pattern=6, attn_logit_softcapping=None, final_logit_softcapping=None),
}
_FAMILY = {"gemma": 1, "gemma2": 2, "gemma3_text": 3}
_MULTIMODAL = {"gemma3"}  # top-level model_type whose text tower sits under text_config


def _config_from_hf_dict(d: dict[str, Any], source: str) -> GemmaConfig:
    model_type = d.get("model_type")
    if model_type in _MULTIMODAL:
        if not isinstance(d.get("text_config", {}), Mapping):
            raise ValueError(f"{source}: text_config must be an object holding the text model's config, "
                             f"got {d.get('text_config')!r}")
        text = dict(d.get("text_config") or {})
        text.setdefault("model_type", "gemma3_text")
        d = text
        model_type = "gemma3_text"
    if model_type not in _FAMILY:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not a Gemma text model "
            f"(supported: gemma, gemma2, gemma3_text, gemma3); architectures={d.get('architectures')}"
        )
    family = _FAMILY[model_type]
    d = {**_HF_DEFAULTS[model_type], **{k: v for k, v in d.items() if v is not None or k.endswith("softcapping")}}
    n_layers = _hf_int(d, "num_hidden_layers", source)
    if n_layers > MAX_LAYERS:  # before anything is built per layer
        raise ValueError(f"{source}: num_hidden_layers = {n_layers} exceeds the limit of {MAX_LAYERS} "
                         f"(the largest Gemma has 62)")

    # Gemma 1 reads hidden_act, Gemma 2/3 hidden_activation. The first releases of Gemma 1 say
    # "gelu", which meant the tanh approximation they were trained with (transformers >= 5.24
    # rewrites it the same way); "gelu_exact"-style names mean the erf form.
    act_name = d.get("hidden_act" if family == 1 else "hidden_activation") or d.get("hidden_act") or "gelu"
    activations = {"gelu": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                   "gelu_fast": "gelu_tanh", "gelu_python": "gelu", "gelu_accurate": "gelu_tanh"}
    if act_name not in activations:
        raise ValueError(f"{source}: unsupported activation {act_name!r} (Gemma uses GELU)")

    layer_types = _hf_layer_types(d, family, n_layers, source)
    rope_theta, rope_theta_local, rope_scale = _hf_rope(d, family, source)
    try:
        return _build_from_hf(d, family, n_layers, activations[act_name], layer_types,
                              (rope_theta, rope_theta_local, rope_scale), source)
    except ValueError as error:  # GemmaConfig's own checks: say which file they are about
        raise ValueError(f"{source}: {error}") from None


def _build_from_hf(d: dict[str, Any], family: int, n_layers: int, activation: str, layer_types: tuple[str, ...],
                   rope: tuple[float, float, float], source: str) -> GemmaConfig:
    rope_theta, rope_theta_local, rope_scale = rope
    return GemmaConfig(
        family=family,
        vocab_size=_hf_int(d, "vocab_size", source),
        d_model=_hf_int(d, "hidden_size", source),
        n_layers=n_layers,
        n_heads=_hf_int(d, "num_attention_heads", source),
        n_kv_heads=_hf_int(d, "num_key_value_heads", source),
        d_head=_hf_int(d, "head_dim", source),
        d_mlp=_hf_int(d, "intermediate_size", source),
        max_seq_len=_hf_int(d, "max_position_embeddings", source),
        norm_eps=_hf_float(d, "rms_norm_eps", source),
        activation=activation,
        sandwich_norms=family >= 2,
        qk_norm=family == 3,
        query_pre_attn_scalar=_hf_float(d, "query_pre_attn_scalar", source) if family >= 2 else None,
        attn_softcap=_hf_float(d, "attn_logit_softcapping", source, optional=True) if family >= 2 else None,
        final_softcap=_hf_float(d, "final_logit_softcapping", source, optional=True) if family >= 2 else None,
        sliding_window=_hf_int(d, "sliding_window", source) if LOCAL in layer_types else None,
        layer_types=layer_types,
        rope_theta=rope_theta,
        rope_theta_local=rope_theta_local,
        rope_scale=rope_scale,
        name=str(d.get("_name_or_path") or ""),
    )


def _hf_int(d: Mapping[str, Any], key: str, source: str) -> int:
    """``d[key]`` as a whole number; a fraction, a string or a bool is an error naming the field."""
    value = d.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4.0 written by a JSON tool is still four layers
    if type(value) is not int:
        raise ValueError(f"{source}: {key} must be a whole number, got {value!r}")
    return value


def _hf_float(d: Mapping[str, Any], key: str, source: str, optional: bool = False) -> float | None:
    """``d[key]`` as a float (None allowed when ``optional``); other types are an error naming the field."""
    value = d.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{source}: {key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        extra = " (null means no softcap)" if optional else ""
        raise ValueError(f"{source}: {key} must be a positive finite number, got {value!r}{extra}")
    return value


def _hf_layer_types(d: dict[str, Any], family: int, n_layers: int, source: str) -> tuple[str, ...]:
    names = {"sliding_attention": LOCAL, "full_attention": GLOBAL}
    if d.get("layer_types"):
        types = d["layer_types"]
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise ValueError(f"{source}: layer_types must be a list of strings, got {types!r}")
        if len(types) != n_layers:
            raise ValueError(f"{source}: layer_types has {len(types)} entries, num_hidden_layers={n_layers}")
        unknown = sorted(set(types) - set(names))
        if unknown:
            raise ValueError(f"{source}: unsupported layer_types {unknown}")
        return tuple(names[t] for t in types)
    period = _hf_int({"sliding_window_pattern": 6, **{k: v for k, v in d.items() if v is not None}},
                     "sliding_window_pattern", source)
    return _layer_pattern(family, n_layers, period)


def _layer_pattern(family: int, n_layers: int, period: int = 6) -> tuple[str, ...]:
    """The published local/global layout: Gemma 2 local on even layers; Gemma 3 five local, one global."""
    if family == 1:
        return (GLOBAL,) * n_layers
    if family == 2:
        return tuple(LOCAL if i % 2 == 0 else GLOBAL for i in range(n_layers))
    return tuple(GLOBAL if (i + 1) % period == 0 else LOCAL for i in range(n_layers))


def _hf_rope(d: dict[str, Any], family: int, source: str) -> tuple[float, float, float]:
    """(global theta, local theta, global linear scale) from either config spelling."""
    params = d.get("rope_parameters")
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"{source}: rope_parameters must be an object, got {params!r}")
    if params:
        if "full_attention" in params or "sliding_attention" in params:
            full = params.get("full_attention") or {}
            local = params.get("sliding_attention") or full
        else:
            full = local = params
        theta = _hf_float({"rope_theta": d["rope_theta"], **full}, "rope_theta", source)
        theta_local = _hf_float({"rope_theta": d.get("rope_local_base_freq", theta), **local}, "rope_theta", source)
        scale = _linear_factor(full, source)
        if _linear_factor(local, source) != 1.0:
            raise ValueError(f"{source}: RoPE scaling on sliding-window layers is not supported")
        return theta, theta_local, scale
    theta = _hf_float(d, "rope_theta", source)
    theta_local = _hf_float({"rope_local_base_freq": theta, **d}, "rope_local_base_freq", source) if family == 3 \
        else theta
    return theta, theta_local, _linear_factor(d.get("rope_scaling") or {}, source)


def _linear_factor(rope: Mapping[str, Any], source: str) -> float:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in ("default", None):
        return 1.0
    if kind == "linear":
        return _hf_float(rope, "factor", source)
    raise ValueError(f"{source}: RoPE type {kind!r} is not supported (Gemma uses default or linear)")


# ---- presets -------------------------------------------------------------------------------------

def _gemma1(name: str, **kw: Any) -> GemmaConfig:
    return GemmaConfig(family=1, vocab_size=256000, max_seq_len=8192, name=name, **kw)


def _gemma2(name: str, n_layers: int, **kw: Any) -> GemmaConfig:
    return GemmaConfig(family=2, vocab_size=256000, n_layers=n_layers, max_seq_len=8192, sandwich_norms=True,
                       attn_softcap=50.0, final_softcap=30.0, sliding_window=4096,
                       layer_types=_layer_pattern(2, n_layers), name=name, **kw)


def _gemma3(name: str, n_layers: int, *, vocab_size: int = 262208, window: int = 1024,
            max_seq_len: int = 131072, rope_scale: float = 8.0, **kw: Any) -> GemmaConfig:
    return GemmaConfig(family=3, vocab_size=vocab_size, n_layers=n_layers, max_seq_len=max_seq_len,
                       sandwich_norms=True, qk_norm=True, sliding_window=window,
                       layer_types=_layer_pattern(3, n_layers), rope_theta=1_000_000.0,
                       rope_theta_local=10_000.0, rope_scale=rope_scale, name=name, **kw)


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
    # Small random-weight sizes for tests and quick experiments (same code paths, seconds on a CPU).
    "test-gemma": GemmaConfig(
        family=1, vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, d_head=16, d_mlp=128,
        max_seq_len=256, name="test-gemma"),
    "test-gemma2": GemmaConfig(
        family=2, vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_head=16, d_mlp=128,
        max_seq_len=256, sandwich_norms=True, query_pre_attn_scalar=16.0, attn_softcap=50.0,
        final_softcap=30.0, sliding_window=8, layer_types=_layer_pattern(2, 4), name="test-gemma2"),
    "test-gemma3": GemmaConfig(
        family=3, vocab_size=512, d_model=64, n_layers=6, n_heads=4, n_kv_heads=2, d_head=16, d_mlp=128,
        max_seq_len=256, sandwich_norms=True, qk_norm=True, query_pre_attn_scalar=16.0, sliding_window=8,
        layer_types=_layer_pattern(3, 6), rope_theta=1_000_000.0, rope_theta_local=10_000.0,
        rope_scale=8.0, name="test-gemma3"),
}
