"""The transformers checkpoint format, in one place: ``config.json`` <-> ``GemmaConfig`` fields, and
the tensor-name table, both directions.

    config_fields_from_hf(d)  config.json dict -> GemmaConfig fields   (GemmaConfig.from_hf uses it)
    hf_config_dict(cfg)       GemmaConfig -> config.json dict          (what save_pretrained would write)
    hf_name_table(cfg)        transformers tensor name -> ours, for every parameter (loading, saving)

Both config spellings are read: the current one (``rope_parameters``, ``layer_types``) and the legacy
one the published checkpoints carry (``rope_theta``, ``rope_local_base_freq``, ``rope_scaling``,
``sliding_window_pattern``). A new checkpoint generation adds its keys and names here: Gemma 4's
(``gemma4_text``, ``gemma4``) and Gemma 3n's (``gemma3n_text``, ``gemma3n``) have blocks of their own below.

Imports the standard library only: this is the bottom of the package, below ``config.py`` (which
builds ``GemmaConfig`` from these fields and takes the layer vocabulary ``GLOBAL``/``LOCAL`` from
here). Configs are read by attribute, described by the ``ConfigLike`` Protocol, never imported.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Protocol

GLOBAL, LOCAL = "global", "local"

# Sanity bounds: far above every published Gemma (62 layers, 32 heads), far below what would make
# building the model take minutes before anything could go wrong visibly.
MAX_LAYERS = 1024
MAX_HEADS = 1024

# transformers' layer_types values -> ours.
_LAYER_TYPE_NAMES = {"sliding_attention": LOCAL, "full_attention": GLOBAL}


class ConfigLike(Protocol):
    """The ``GemmaConfig`` fields this module reads (``config.py`` defines the class)."""

    family: int
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    max_seq_len: int
    norm_eps: float
    activation: str
    sandwich_norms: bool
    qk_norm: bool
    query_pre_attn_scalar: float | None
    attn_softcap: float | None
    final_softcap: float | None
    sliding_window: int | None
    layer_types: tuple[str, ...]
    rope_theta: float
    rope_theta_local: float
    rope_scale: float


# ---- config.json -> GemmaConfig fields ----------------------------------------------------------

def read_config_json(config: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """``(dict, source)`` from a ``config.json`` given as a dict, the file, or the checkpoint folder."""
    if not isinstance(config, (str, Path)):
        if not isinstance(config, Mapping):
            raise ValueError(f"config: a config must be a JSON object, got {type(config).__name__}")
        return dict(config), "config"
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a config must be a JSON object, got {type(content).__name__}")
    return content, str(path)


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


def config_fields_from_hf(d: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """``GemmaConfig`` fields from a transformers ``config.json`` dict (``source`` names it in errors)."""
    d = dict(d)
    model_type = d.get("model_type")
    if not isinstance(model_type, str):  # set lookups below would fail on a list with an unhashable-type error
        raise ValueError(f"{source}: model_type must be a string such as 'gemma2', got {model_type!r}")
    if model_type in _GEMMA4_TYPES:  # Gemma 4 has its own reader (below): different fields throughout
        return gemma4_config_fields(d, source)
    if model_type in _GEMMA3N_TYPES:  # so has Gemma 3n
        return gemma3n_config_fields(d, source)
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
            f"(supported: gemma, gemma2, gemma3_text, gemma3, gemma3n_text, gemma3n, gemma4_text, gemma4); "
            f"architectures={d.get('architectures')}"
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
    if not isinstance(act_name, str) or act_name not in activations:
        raise ValueError(f"{source}: unsupported activation {act_name!r} (Gemma uses GELU)")

    layer_types = _hf_layer_types(d, family, n_layers, source)
    rope_theta, rope_theta_local, rope_scale = _hf_rope(d, family, source)
    return dict(
        family=family,
        **_shared_fields(d, n_layers, source),
        activation=activations[act_name],
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
    )


def _shared_fields(d: Mapping[str, Any], n_layers: int, source: str) -> dict[str, Any]:
    """The fields every generation's config.json spells the same way."""
    return dict(
        vocab_size=_hf_int(d, "vocab_size", source),
        d_model=_hf_int(d, "hidden_size", source),
        n_layers=n_layers,
        n_heads=_hf_int(d, "num_attention_heads", source),
        n_kv_heads=_hf_int(d, "num_key_value_heads", source),
        d_head=_hf_int(d, "head_dim", source),
        d_mlp=_hf_int(d, "intermediate_size", source),
        max_seq_len=_hf_int(d, "max_position_embeddings", source),
        norm_eps=_hf_float(d, "rms_norm_eps", source),
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
    """``d[key]`` as a positive finite float (None allowed when ``optional``); else an error naming the field."""
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
    names = _LAYER_TYPE_NAMES
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
    return layer_pattern(family, n_layers, period)


def layer_pattern(family: int, n_layers: int, period: int = 6) -> tuple[str, ...]:
    """The published local/global layout: Gemma 2 local on even layers; Gemma 3 five local, one global."""
    if family == 1:
        return (GLOBAL,) * n_layers
    if family == 2:
        return tuple(LOCAL if i % 2 == 0 else GLOBAL for i in range(n_layers))
    types = tuple(GLOBAL if (i + 1) % period == 0 else LOCAL for i in range(n_layers))
    if family == 4:  # Gemma 4 forces its last layer global
        types = types[:-1] + (GLOBAL,)
    return types


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


# ---- Gemma 4 config.json (model_type gemma4_text, or gemma4 with the text tower under text_config) ----

_GEMMA4_TYPES = {"gemma4_text", "gemma4"}
# Gemma4TextConfig's defaults (transformers 5.24): save_pretrained leaves out keys that equal them.
_GEMMA4_DEFAULTS: dict[str, Any] = dict(
    vocab_size=262144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072,
    rms_norm_eps=1e-6, sliding_window=512, final_logit_softcapping=None, vocab_size_per_layer_input=262144,
    hidden_size_per_layer_input=256, attention_k_eq_v=False, num_kv_shared_layers=0, enable_moe_block=False,
    use_double_wide_mlp=False, num_experts=None, top_k_experts=None, moe_intermediate_size=None,
    global_head_dim=512, num_global_key_value_heads=None, use_bidirectional_attention=None,
)
_GEMMA4_ROPE_DEFAULTS = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                            "rope_theta": 1_000_000.0}}


def _gemma3_style_fields(d: Mapping[str, Any], layer_types: tuple, source: str) -> dict[str, Any]:
    """What Gemma 4 and Gemma 3n keep from Gemma 3's block: tanh GELU, sandwich and q/k norms, an
    optional final softcap, and the sliding window of their local layers."""
    return dict(
        activation="gelu_tanh",
        sandwich_norms=True,
        qk_norm=True,
        final_softcap=_hf_float(d, "final_logit_softcapping", source, optional=True),
        sliding_window=_hf_int(d, "sliding_window", source) if LOCAL in layer_types else None,
        layer_types=layer_types,
    )


def gemma4_config_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``GemmaConfig`` fields from a Gemma 4 ``config.json`` (``gemma4_text``, or ``gemma4`` with a text tower)."""
    d = dict(d)
    if d.get("model_type") == "gemma4":  # multimodal: the text tower's config sits under text_config
        if not isinstance(d.get("text_config", {}), Mapping):
            raise ValueError(f"{source}: text_config must be an object holding the text model's config, "
                             f"got {d.get('text_config')!r}")
        d = dict(d.get("text_config") or {})
    given = {k: v for k, v in d.items() if v is not None or k == "final_logit_softcapping"}
    d = {**_GEMMA4_DEFAULTS, **given}
    if d["use_bidirectional_attention"] == "all":
        raise ValueError(f"{source}: use_bidirectional_attention='all' (a non-causal Gemma 4) is not supported")
    # ("vision" makes image tokens attend both ways; text-only runs are causal, as here.)
    if d["hidden_activation"] not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_accurate"):
        raise ValueError(f"{source}: unsupported activation {d['hidden_activation']!r} (Gemma 4 uses tanh GELU)")
    n_layers = _hf_int(d, "num_hidden_layers", source)
    if n_layers > MAX_LAYERS:  # before anything is built per layer
        raise ValueError(f"{source}: num_hidden_layers = {n_layers} exceeds the limit of {MAX_LAYERS}")
    names = _LAYER_TYPE_NAMES
    if d.get("layer_types"):
        unknown = sorted(set(d["layer_types"]) - set(names))
        if unknown or len(d["layer_types"]) != n_layers:
            raise ValueError(f"{source}: layer_types must name {n_layers} layers as sliding_attention or "
                             f"full_attention, got {len(d['layer_types'])} entries {unknown or ''}")
        layer_types = tuple(names[t] for t in d["layer_types"])[:-1] + (GLOBAL,)  # transformers forces the last global
    else:
        layer_types = layer_pattern(4, n_layers)
    d_head_global, n_kv_global = _gemma4_global_shapes(d, layer_types, source)
    rope = {**_GEMMA4_ROPE_DEFAULTS, **(d.get("rope_parameters") or {})}
    local, full = rope.get("sliding_attention") or {}, rope.get("full_attention") or {}
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"{source}: RoPE type {local.get('rope_type')!r} on sliding layers is not supported")
    full_type = full.get("rope_type", "default")
    if full_type not in ("default", "proportional"):
        raise ValueError(f"{source}: RoPE type {full_type!r} on global layers is not supported "
                         "(Gemma 4 uses proportional)")
    moe = bool(d["enable_moe_block"])
    d_per_layer = int(d["hidden_size_per_layer_input"] or 0)
    return dict(
        family=4,
        **_shared_fields(d, n_layers, source),
        **_gemma3_style_fields(d, layer_types, source),
        rope_theta=_hf_float({"rope_theta": 1_000_000.0, **full}, "rope_theta", source),
        rope_theta_local=_hf_float({"rope_theta": 10_000.0, **local}, "rope_theta", source),
        rope_scale=_hf_float({"factor": 1.0, **full}, "factor", source),
        d_head_global=d_head_global,
        n_kv_heads_global=n_kv_global,
        # "default" RoPE ignores partial_rotary_factor in transformers; only "proportional" reads it.
        rope_fraction_global=float(full.get("partial_rotary_factor", 1.0)) if full_type == "proportional" else 1.0,
        k_eq_v=bool(d["attention_k_eq_v"]),
        n_kv_shared_layers=int(d["num_kv_shared_layers"] or 0),
        double_wide_mlp=bool(d["use_double_wide_mlp"]),
        d_per_layer=d_per_layer,
        vocab_per_layer=_hf_int(d, "vocab_size_per_layer_input", source) if d_per_layer else 0,
        n_experts=_hf_int(d, "num_experts", source) if moe else 0,
        n_experts_active=_hf_int(d, "top_k_experts", source) if moe else 0,
        d_expert=_hf_int(d, "moe_intermediate_size", source) if moe else 0,
    )


def _gemma4_global_shapes(d: dict[str, Any], layer_types: tuple[str, ...], source: str) -> tuple[int, int | None]:
    """(head width, kv heads or None) of the global layers, from either spelling.

    Hub configs say ``global_head_dim`` and ``num_global_key_value_heads`` (the latter used only when
    ``attention_k_eq_v``, as transformers does); transformers >= 5.24 saves ``per_layer_config``,
    ``{layer: {"head_dim": ..., "num_key_value_heads": ...}}`` for each global layer.
    """
    per_layer = d.get("per_layer_config")
    if not per_layer:
        n_kv = d["num_global_key_value_heads"] if d["attention_k_eq_v"] else None
        return _hf_int(d, "global_head_dim", source), (int(n_kv) if n_kv is not None else None)
    overrides = {}
    for key, values in per_layer.items():
        if not str(key).isdigit() or int(key) >= len(layer_types):
            raise ValueError(f"{source}: per_layer_config key {key!r} is not a layer index")
        unknown = sorted(set(values) - {"head_dim", "num_key_value_heads"})
        if unknown or layer_types[int(key)] != GLOBAL:
            raise ValueError(f"{source}: per_layer_config[{key}] = {values}: only head_dim and num_key_value_heads "
                             "of global layers are supported")
        overrides[int(key)] = (values.get("head_dim"), values.get("num_key_value_heads"))
    distinct = {overrides.get(i, (None, None)) for i, kind in enumerate(layer_types) if kind == GLOBAL}
    if len(distinct) != 1:
        raise ValueError(f"{source}: per_layer_config gives global layers different shapes {sorted(map(str, distinct))}")
    head_dim, n_kv = distinct.pop()
    return int(head_dim or d["head_dim"]), (int(n_kv) if n_kv is not None else None)


# ---- Gemma 3n config.json (model_type gemma3n_text, or gemma3n with the text tower under text_config) ----

_GEMMA3N_TYPES = {"gemma3n_text", "gemma3n"}
# Gemma3nTextConfig's defaults (transformers 5.24, "E4B style"): save_pretrained leaves out keys equal to them.
_GEMMA3N_DEFAULTS: dict[str, Any] = dict(
    vocab_size=262400, hidden_size=2048, intermediate_size=16384, num_hidden_layers=35, num_attention_heads=8,
    num_key_value_heads=2, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
    rms_norm_eps=1e-6, sliding_window=512, final_logit_softcapping=30.0, vocab_size_per_layer_input=262144,
    hidden_size_per_layer_input=256, altup_active_idx=0, altup_coef_clip=120.0, altup_correct_scale=True,
    altup_num_inputs=4, num_kv_shared_layers=15, laurel_rank=64, activation_sparsity_pattern=None,
)


def gemma3n_config_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``GemmaConfig`` fields from a Gemma 3n ``config.json`` (``gemma3n_text``, or ``gemma3n`` with a text tower)."""
    d = dict(d)
    if d.get("model_type") == "gemma3n":  # multimodal: the text tower's config sits under text_config
        if not isinstance(d.get("text_config", {}), Mapping):
            raise ValueError(f"{source}: text_config must be an object holding the text model's config, "
                             f"got {d.get('text_config')!r}")
        d = dict(d.get("text_config") or {})
    given = {k: v for k, v in d.items() if v is not None or k in ("final_logit_softcapping", "altup_coef_clip")}
    d = {**_GEMMA3N_DEFAULTS, **given}
    if d["hidden_activation"] not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_accurate"):
        raise ValueError(f"{source}: unsupported activation {d['hidden_activation']!r} (Gemma 3n uses tanh GELU)")
    n_layers = _hf_int(d, "num_hidden_layers", source)
    if n_layers > MAX_LAYERS:
        raise ValueError(f"{source}: num_hidden_layers = {n_layers} exceeds the limit of {MAX_LAYERS}")
    widths = d["intermediate_size"]
    mlp_widths: list[int] = []
    if isinstance(widths, list):  # transformers saves one width per layer: the released models have one width,
        # MatFormer mix-n-match sub-models (Google's MatFormer Lab, gemma_lab.matformer) one of their own per layer
        if len(widths) != n_layers or not widths or not all(type(w) is int and w > 0 for w in widths):
            raise ValueError(f"{source}: intermediate_size must be one positive width or one per layer "
                             f"({n_layers}), got {widths!r}")
        mlp_widths = widths if len(set(widths)) > 1 else []
        d["intermediate_size"] = max(widths)
    if d.get("layer_types"):
        types = d["layer_types"]
        if not isinstance(types, list) or len(types) != n_layers or not all(isinstance(t, str) for t in types) \
                or set(types) - set(_LAYER_TYPE_NAMES):
            raise ValueError(f"{source}: layer_types must name {n_layers} layers as sliding_attention or "
                             f"full_attention, got {types!r}")
        layer_types = tuple(_LAYER_TYPE_NAMES[t] for t in types)
    else:
        layer_types = layer_pattern(3, n_layers, 5)
    rope = d.get("rope_parameters") or {}
    if not isinstance(rope, Mapping):
        raise ValueError(f"{source}: rope_parameters must be an object, got {rope!r}")
    full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
    for kind, params in (("full_attention", full), ("sliding_attention", local)):
        if not isinstance(params, Mapping):
            raise ValueError(f"{source}: rope_parameters[{kind!r}] must be an object, got {params!r}")
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"{source}: RoPE type {params.get('rope_type')!r} on {kind} layers is not supported "
                             "(Gemma 3n uses default)")
    if _hf_int(d, "altup_num_inputs", source) < 1:
        raise ValueError(f"{source}: altup_num_inputs must be at least 1 (Gemma 3n: 4), got {d['altup_num_inputs']}")
    sparsity = d["activation_sparsity_pattern"]
    if sparsity is None:  # transformers' default: the first 10 layers 95% sparse (when there are more than 10)
        sparsity = [0.95] * 10 + [0.0] * (n_layers - 10) if n_layers > 10 else [0.0] * n_layers
    elif isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool):
        sparsity = [float(sparsity)] * n_layers
    if not isinstance(sparsity, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in sparsity):
        raise ValueError(f"{source}: activation_sparsity_pattern must be a list of numbers, got {sparsity!r}")
    return dict(
        family=3,
        **_shared_fields(d, n_layers, source),
        **_gemma3_style_fields(d, layer_types, source),
        rope_theta=_hf_float({"rope_theta": d.get("rope_theta", 1_000_000.0), **full}, "rope_theta", source),
        rope_theta_local=_hf_float({"rope_theta": d.get("rope_local_base_freq", 10_000.0), **local}, "rope_theta",
                                   source),
        n_kv_shared_layers=_hf_int(d, "num_kv_shared_layers", source),
        d_per_layer=_hf_int(d, "hidden_size_per_layer_input", source),
        vocab_per_layer=_hf_int(d, "vocab_size_per_layer_input", source),
        altup_num_inputs=_hf_int(d, "altup_num_inputs", source),
        altup_active_idx=_hf_int(d, "altup_active_idx", source),
        altup_coef_clip=_hf_float(d, "altup_coef_clip", source, optional=True),
        altup_correct_scale=bool(d["altup_correct_scale"]),
        laurel_rank=_hf_int(d, "laurel_rank", source),
        activation_sparsity=tuple(float(v) for v in sparsity) if any(sparsity) else (),
        d_mlp_per_layer=tuple(mlp_widths),
    )


def _gemma3n_config_dict(cfg: Any, *, bos_id: int, eos_id: int, pad_id: int, dtype: str) -> dict[str, Any]:
    """Gemma 3n's ``config.json`` as ``Gemma3nTextConfig.save_pretrained`` writes it."""
    ours_to_theirs = {ours: theirs for theirs, ours in _LAYER_TYPE_NAMES.items()}
    return {
        "architectures": ["Gemma3nForCausalLM"],
        "model_type": "gemma3n_text",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": [cfg.d_mlp_for(layer) for layer in range(cfg.n_layers)],
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "sliding_window": cfg.sliding_window or 512,
        "layer_types": [ours_to_theirs[t] for t in cfg.layer_types],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_local}},
        "final_logit_softcapping": cfg.final_softcap,
        "num_kv_shared_layers": cfg.n_kv_shared_layers,
        "hidden_size_per_layer_input": cfg.d_per_layer,
        "vocab_size_per_layer_input": cfg.vocab_per_layer,
        "altup_num_inputs": cfg.altup_num_inputs,
        "altup_active_idx": cfg.altup_active_idx,
        "altup_coef_clip": cfg.altup_coef_clip,
        "altup_correct_scale": cfg.altup_correct_scale,
        "laurel_rank": cfg.laurel_rank,
        "activation_sparsity_pattern": [cfg.sparsity_for(layer) for layer in range(cfg.n_layers)],
        **_written_by_every_generation(bos_id, eos_id, pad_id, dtype),
    }


# ---- GemmaConfig -> config.json ------------------------------------------------------------------

_MODEL_TYPES = {1: ("gemma", "GemmaForCausalLM"), 2: ("gemma2", "Gemma2ForCausalLM"),
                3: ("gemma3_text", "Gemma3ForCausalLM")}


def hf_config_dict(cfg: ConfigLike, *, bos_id: int = 2, eos_id: int = 1, pad_id: int = 0,
                   dtype: str = "float32") -> dict[str, Any]:
    """``config.json`` as transformers writes it for this architecture (read back by ``from_hf`` unchanged).

    The token ids default to Gemma's (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2).
    """
    if cfg.family == 4:
        return _gemma4_config_dict(cfg, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, dtype=dtype)
    if getattr(cfg, "altup_num_inputs", 0):
        return _gemma3n_config_dict(cfg, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, dtype=dtype)
    model_type, architecture = _MODEL_TYPES[cfg.family]
    ours_to_theirs = {ours: theirs for theirs, ours in _LAYER_TYPE_NAMES.items()}
    d: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        # Gemma 1 spells the activation hidden_act, Gemma 2/3 hidden_activation.
        ("hidden_act" if cfg.family == 1 else "hidden_activation"):
            "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "gelu_python",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
    }
    if cfg.family >= 2:
        d.update({
            "query_pre_attn_scalar": int(cfg.query_pre_attn_scalar or cfg.d_head),  # transformers insists on an int
            "sliding_window": cfg.sliding_window,
            "layer_types": [ours_to_theirs[t] for t in cfg.layer_types],
            "attn_logit_softcapping": cfg.attn_softcap,
            "final_logit_softcapping": cfg.final_softcap,
        })
    if cfg.family == 3:
        full = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
        if cfg.rope_scale != 1.0:
            full = {"rope_theta": cfg.rope_theta, "rope_type": "linear", "factor": cfg.rope_scale}
        d["rope_parameters"] = {"full_attention": full,
                                "sliding_attention": {"rope_theta": cfg.rope_theta_local, "rope_type": "default"}}
        d["use_bidirectional_attention"] = False
    else:
        d["rope_theta"] = cfg.rope_theta
    d.update(_written_by_every_generation(bos_id, eos_id, pad_id, dtype))
    return d


def _written_by_every_generation(bos_id: int, eos_id: int, pad_id: int, dtype: str) -> dict[str, Any]:
    """The keys transformers writes alike for every Gemma: tied embeddings, no biases, token ids."""
    return {"attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            "tie_word_embeddings": True, "use_cache": True, "pad_token_id": pad_id, "eos_token_id": eos_id,
            "bos_token_id": bos_id, "dtype": dtype}


def _gemma4_config_dict(cfg: Any, *, bos_id: int, eos_id: int, pad_id: int, dtype: str) -> dict[str, Any]:
    """Gemma 4's ``config.json`` in the hub's spelling (``global_head_dim``, ``num_global_key_value_heads``)."""
    ours_to_theirs = {ours: theirs for theirs, ours in _LAYER_TYPE_NAMES.items()}
    global_layer = cfg.layer_types.index(GLOBAL)
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_fraction_global != 1.0:
        full = {"rope_type": "proportional", "partial_rotary_factor": cfg.rope_fraction_global,
                "rope_theta": cfg.rope_theta}
    if cfg.rope_scale != 1.0:
        full["factor"] = cfg.rope_scale
    return {
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": "gemma4_text",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "global_head_dim": cfg.d_head_for(global_layer),
        "num_global_key_value_heads": cfg.n_kv_heads_global,
        "attention_k_eq_v": cfg.k_eq_v,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "sliding_window": cfg.sliding_window or 512,
        "layer_types": [ours_to_theirs[t] for t in cfg.layer_types],
        "rope_parameters": {"full_attention": full,
                            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_local}},
        "final_logit_softcapping": cfg.final_softcap,
        "num_kv_shared_layers": cfg.n_kv_shared_layers,
        "use_double_wide_mlp": cfg.double_wide_mlp,
        "hidden_size_per_layer_input": cfg.d_per_layer,  # 0 (no per-layer embeddings) must be written: the default is 256
        "vocab_size_per_layer_input": cfg.vocab_per_layer or cfg.vocab_size,
        "enable_moe_block": bool(cfg.n_experts),
        "num_experts": cfg.n_experts or None,
        "top_k_experts": cfg.n_experts_active or None,
        "moe_intermediate_size": cfg.d_expert or None,
        **_written_by_every_generation(bos_id, eos_id, pad_id, dtype),
    }


# ---- tensor names ---------------------------------------------------------------------------------

# Prefixes in front of the text model's names, by checkpoint kind.
TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Multimodal Gemma 3 files also hold the vision tower and projector; the text model skips them.
NON_TEXT = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")


def hf_name_table(config: ConfigLike) -> dict[str, str]:
    """transformers' name (without the ``model.`` prefix) -> ours, for every parameter."""
    if config.family == 4:
        return gemma4_name_table(config)
    if getattr(config, "altup_num_inputs", 0):
        return gemma3n_name_table(config)
    table = {"embed_tokens.weight": "embed.weight", "norm.weight": "ln_final.weight"}
    # Gemma 1's post_attention_layernorm is the pre-MLP norm; in Gemma 2/3 it normalises the attention output.
    norms = {"input_layernorm": "ln1", "post_attention_layernorm": "ln2"}
    if config.sandwich_norms:
        norms = {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post",
                 "pre_feedforward_layernorm": "ln2", "post_feedforward_layernorm": "ln2_post"}
    for layer in range(config.n_layers):
        theirs, ours = f"layers.{layer}.", f"blocks.{layer}."
        for hf_norm, our_norm in norms.items():
            table[f"{theirs}{hf_norm}.weight"] = f"{ours}{our_norm}.weight"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            table[f"{theirs}self_attn.{proj}.weight"] = f"{ours}attn.{proj}.weight"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            table[f"{theirs}mlp.{proj}.weight"] = f"{ours}mlp.{proj}.weight"
        if config.qk_norm:
            table[f"{theirs}self_attn.q_norm.weight"] = f"{ours}attn.q_norm.weight"
            table[f"{theirs}self_attn.k_norm.weight"] = f"{ours}attn.k_norm.weight"
    return table


# ---- Gemma 4 tensor names ------------------------------------------------------------------------

# Gemma4ForConditionalGeneration files also hold these towers; the text model skips them (saying so).
GEMMA4_NON_TEXT = re.compile(r"^(model\.)?(vision_tower|audio_tower|embed_vision|embed_audio)\.")
_GEMMA4_NORMS = {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post",
                 "pre_feedforward_layernorm": "ln2", "post_feedforward_layernorm": "ln2_post"}
_GEMMA4_MOE = {"router.proj.weight": "moe.router.proj.weight", "router.scale": "moe.router.scale",
               "router.per_expert_scale": "moe.router.per_expert_scale",
               "experts.gate_up_proj": "moe.experts.gate_up_proj", "experts.down_proj": "moe.experts.down_proj",
               "post_feedforward_layernorm_1.weight": "moe.post_norm_dense.weight",
               "pre_feedforward_layernorm_2.weight": "moe.pre_norm.weight",
               "post_feedforward_layernorm_2.weight": "moe.post_norm.weight"}
_GEMMA4_PER_LAYER = {"per_layer_input_gate.weight": "per_layer.gate.weight",
                     "per_layer_projection.weight": "per_layer.projection.weight",
                     "post_per_layer_input_norm.weight": "per_layer.post_norm.weight"}


def gemma4_name_table(config: Any) -> dict[str, str]:
    """transformers' Gemma 4 text names (without the prefix) -> ours, for every parameter and buffer."""
    table = {"embed_tokens.weight": "embed.weight", "norm.weight": "ln_final.weight"}
    if config.d_per_layer:
        table.update({"embed_tokens_per_layer.weight": "per_layer_embed.embed.weight",
                      "per_layer_model_projection.weight": "per_layer_embed.model_projection.weight",
                      "per_layer_projection_norm.weight": "per_layer_embed.projection_norm.weight"})
    for layer in range(config.n_layers):
        theirs, ours = f"layers.{layer}.", f"blocks.{layer}."
        table[f"{theirs}layer_scalar"] = f"{ours}layer_scalar"
        for hf_norm, our_norm in _GEMMA4_NORMS.items():
            table[f"{theirs}{hf_norm}.weight"] = f"{ours}{our_norm}.weight"
        projections = ["q_proj", "o_proj", "q_norm"]
        if not config.is_kv_shared(layer):  # shared layers have no keys or values of their own
            projections += ["k_proj", "k_norm"] + (["v_proj"] if config.has_v_proj(layer) else [])
        for part in projections:
            table[f"{theirs}self_attn.{part}.weight"] = f"{ours}attn.{part}.weight"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            table[f"{theirs}mlp.{proj}.weight"] = f"{ours}mlp.{proj}.weight"
        groups = ([_GEMMA4_MOE] if config.n_experts else []) + ([_GEMMA4_PER_LAYER] if config.d_per_layer else [])
        for group in groups:
            table.update({theirs + name: ours + mine for name, mine in group.items()})
    return table


# ---- Gemma 3n tensor names ------------------------------------------------------------------------

_GEMMA3N_LAYER = {"altup.router_norm.weight": "altup_predict.router.norm_weight",
                  "altup.modality_router.weight": "altup_predict.router.proj.weight",
                  "altup.prediction_coefs.weight": "altup_predict.coefs.weight",
                  "altup.correction_coefs.weight": "altup_correct.coefs.weight",
                  "altup.correct_output_scale": "altup_correct.output_scale",
                  "laurel.linear_left.weight": "laurel.down.weight",
                  "laurel.linear_right.weight": "laurel.up.weight",
                  "laurel.post_laurel_norm.weight": "laurel.post_norm.weight"}


def gemma3n_name_table(config: Any) -> dict[str, str]:
    """transformers' Gemma 3n text names (without the prefix) -> ours: Gemma 4's layout without
    ``layer_scalar``, plus AltUp's stream projections and, per layer, AltUp and LAuReL."""
    table = {theirs: ours for theirs, ours in gemma4_name_table(config).items() if not theirs.endswith("layer_scalar")}
    for i in range(1, config.altup_num_inputs):
        table[f"altup_projections.{i - 1}.weight"] = f"altup_stack.projections.{i - 1}.weight"
        table[f"altup_unembed_projections.{i - 1}.weight"] = f"altup_unstack.projections.{i - 1}.weight"
    for layer in range(config.n_layers):
        table.update({f"layers.{layer}.{name}": f"blocks.{layer}.{mine}" for name, mine in _GEMMA3N_LAYER.items()})
    return table


def gemma4_skip_reason(name: str, config: Any) -> str | None:
    """Why a tensor of a Gemma 4 file is not loaded (None: it is loaded or unexpected)."""
    if GEMMA4_NON_TEXT.match(name):
        return "vision/audio tower tensors (gemma_lab loads the text model only)"
    match = re.search(r"layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm)\.weight$", name)
    if match and int(match.group(1)) < config.n_layers and config.is_kv_shared(int(match.group(1))):
        return "key/value weights of KV-shared layers (unused: those layers read an earlier layer's keys and values)"
    return None


def our_name_table(config: ConfigLike) -> dict[str, str]:
    """Ours -> transformers' full name (with the ``model.`` prefix): the names a saved checkpoint uses."""
    return {ours: f"model.{theirs}" for theirs, ours in hf_name_table(config).items()}


def strip_text_prefix(name: str) -> str | None:
    """A checkpoint name without the text model's prefix, or None when it has none of them."""
    for prefix in TEXT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return None
