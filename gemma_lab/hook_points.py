"""Every hook point once: its name, its axes and what it is. One table, and what derives from it.

    HOOKS                     "blocks.{layer}.attn.hook_pattern" -> (axes, meaning)
    act_name("pattern", 3)    the cache shorthand -> "blocks.3.attn.hook_pattern" (``cache["pattern", 3]``)
    hook_axes(name)           ("batch", "head", "q_pos", "k_pos"): the widgets' axis labels
    head_axis(short)          where the head (or kv_head) axis sits: what interp patches per head
    shape_string(axes)        "[batch, head, q_pos, k_pos]": the shapes in docs/hooks.md

The axis vocabulary is the model's (``model.py``'s docstring, ``docs/architecture.md``). Which
families have a hook point is read off the model itself by ``tools/hook_table.py``, which writes
the table of ``docs/hooks.md`` from ``HOOKS``; ``tests/test_hooks.py`` checks that every hook point
of Gemma 1, 2 and 3 has an entry here and that every activation has the shape its axes say.

Imports the standard library only: hooks, the activation cache, interp and the widgets read it.
"""

from __future__ import annotations

import re

_EXPLICIT = " Explicit attention path only: hooking it switches attention from the fused kernel to the einsum path."

# name with {layer} -> (axes, what it is), in the order the activations are computed.
HOOKS: dict[str, tuple[tuple[str, ...], str]] = {
    "hook_embed": (
        ("batch", "pos", "d_model"),
        "Token embeddings times sqrt(d_model) (rounded to the weight dtype): the stream's starting point. "
        "TL: `hook_embed` (TL bakes the scale into `W_E`)."),
    "blocks.{layer}.hook_resid_pre": (
        ("batch", "pos", "d_model"), "Residual stream entering the block. TL: same name."),
    "blocks.{layer}.ln1.hook_inv_rms": (
        ("batch", "pos", "1"),
        "1 / root-mean-square of `resid_pre`, in fp32: the pre-attention norm's scale factor. "
        "TL's `ln1.hook_scale` is its reciprocal."),
    "blocks.{layer}.ln1.hook_normalized": (
        ("batch", "pos", "d_model"),
        "Attention input: `resid_pre * inv_rms * (1 + w)`. TL's `hook_normalized` is before the gain."),
    "blocks.{layer}.attn.hook_q": (("batch", "pos", "head", "d_head"), "Queries, before q_norm and RoPE. TL: same name."),
    "blocks.{layer}.attn.hook_k": (
        ("batch", "pos", "kv_head", "d_head"), "Keys, before k_norm and RoPE; one per kv_head. TL: same name."),
    "blocks.{layer}.attn.hook_v": (("batch", "pos", "kv_head", "d_head"), "Values; one per kv_head. TL: same name."),
    "blocks.{layer}.attn.q_norm.hook_inv_rms": (("batch", "pos", "head", "1"), "Gemma 3 query norm: 1 / rms of each query head."),
    "blocks.{layer}.attn.q_norm.hook_normalized": (("batch", "pos", "head", "d_head"), "Gemma 3: queries after q_norm, before RoPE."),
    "blocks.{layer}.attn.k_norm.hook_inv_rms": (("batch", "pos", "kv_head", "1"), "Gemma 3 key norm: 1 / rms of each key head."),
    "blocks.{layer}.attn.k_norm.hook_normalized": (("batch", "pos", "kv_head", "d_head"), "Gemma 3: keys after k_norm, before RoPE."),
    "blocks.{layer}.attn.hook_rot_q": (("batch", "pos", "head", "d_head"), "Queries after RoPE. TL: same name."),
    "blocks.{layer}.attn.hook_rot_k": (("batch", "pos", "kv_head", "d_head"), "Keys after RoPE (what the KV cache stores). TL: same name."),
    "blocks.{layer}.attn.hook_attn_scores_pre_softcap": (
        ("batch", "head", "q_pos", "k_pos"),
        "`q . k * attn_scale`, before Gemma 2's softcap and before the mask." + _EXPLICIT),
    "blocks.{layer}.attn.hook_attn_scores": (
        ("batch", "head", "q_pos", "k_pos"),
        "Scores after the softcap (Gemma 2) and the causal / sliding-window mask; masked entries hold "
        "the dtype's lowest value. TL: same name (TL masks with -inf)." + _EXPLICIT),
    "blocks.{layer}.attn.hook_pattern": (
        ("batch", "head", "q_pos", "k_pos"),
        "Attention weights (softmax of the scores, in fp32, cast back); rows sum to 1. Equals transformers' "
        "`output_attentions`. TL: same name." + _EXPLICIT),
    "blocks.{layer}.attn.hook_z": (
        ("batch", "pos", "head", "d_head"),
        "Each query head's pattern-weighted values (GQA: a head reads its kv_head's values). TL: same name."),
    "blocks.{layer}.attn.hook_result": (
        ("batch", "pos", "head", "d_model"),
        "Each head's output `z @ W_O[head]` (before Gemma 2/3's post-attention norm); the heads sum to the "
        "attention output. Opt-in: computed only when hooked. TL: same name (`use_attn_result`)."),
    "blocks.{layer}.ln1_post.hook_inv_rms": (
        ("batch", "pos", "1"), "Gemma 2/3 post-attention norm: 1 / rms of the attention output."),
    "blocks.{layer}.ln1_post.hook_normalized": (
        ("batch", "pos", "d_model"), "Gemma 2/3: the normalised attention output (the same tensor as `hook_attn_out`)."),
    "blocks.{layer}.hook_attn_out": (
        ("batch", "pos", "d_model"),
        "What attention adds to the stream (Gemma 2/3: after `ln1_post`). TL: same name."),
    "blocks.{layer}.hook_resid_mid": (
        ("batch", "pos", "d_model"), "Residual stream between attention and MLP. TL: same name."),
    "blocks.{layer}.ln2.hook_inv_rms": (("batch", "pos", "1"), "Pre-MLP norm: 1 / rms of `resid_mid`."),
    "blocks.{layer}.ln2.hook_normalized": (("batch", "pos", "d_model"), "MLP input: `resid_mid * inv_rms * (1 + w)`."),
    "blocks.{layer}.mlp.hook_pre": (("batch", "pos", "d_mlp"), "Gate branch `x @ W_gate`, before GELU. TL: same name."),
    "blocks.{layer}.mlp.hook_pre_linear": (("batch", "pos", "d_mlp"), "Up branch `x @ W_up`. TL: same name."),
    "blocks.{layer}.mlp.hook_post": (
        ("batch", "pos", "d_mlp"), "The neurons: `gelu_tanh(gate) * up`, the input of `down_proj`. TL: same name."),
    "blocks.{layer}.ln2_post.hook_inv_rms": (("batch", "pos", "1"), "Gemma 2/3 post-MLP norm: 1 / rms of the MLP output."),
    "blocks.{layer}.ln2_post.hook_normalized": (
        ("batch", "pos", "d_model"), "Gemma 2/3: the normalised MLP output (the same tensor as `hook_mlp_out`)."),
    "blocks.{layer}.hook_mlp_out": (
        ("batch", "pos", "d_model"), "What the MLP adds to the stream (Gemma 2/3: after `ln2_post`). TL: same name."),
    "blocks.{layer}.hook_resid_post": (
        ("batch", "pos", "d_model"), "Residual stream leaving the block (= next block's `resid_pre`). TL: same name."),
    "ln_final.hook_inv_rms": (("batch", "pos", "1"), "Final norm: 1 / rms of the last `resid_post`. TL's `ln_final.hook_scale` is its reciprocal."),
    "ln_final.hook_normalized": (
        ("batch", "pos", "d_model"),
        "Normalised final stream, the unembedding's input; equals transformers' last `hidden_states` entry."),
    "hook_logits": (
        ("batch", "pos", "vocab"), "Logits, after Gemma 2's final softcap; the model's return value."),
}


# Cache shorthands follow TransformerLens's get_act_name; these spellings name the same points.
ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "scores": "attn_scores", "neurons": "post"}

# "blocks.{layer}.attn.hook_z" -> "z": every point of the block, its attention and its MLP, and the
# two outside the blocks ("embed", "logits"); the norms' points are named with their norm instead.
_SHORT = re.compile(r"^(?:blocks\.\{layer\}\.(?:attn\.|mlp\.)?)?hook_(\w+)$")
SHORT_NAMES: dict[str, str] = {m.group(1): name for name in HOOKS if (m := _SHORT.match(name))}


def generic_name(name: str) -> str:
    """``blocks.3.attn.hook_z`` -> ``blocks.{layer}.attn.hook_z``."""
    return re.sub(r"^blocks\.\d+\.", "blocks.{layer}.", name)


def act_name(name: str, layer: int | None = None, sublayer: str | None = None) -> str:
    """Full hook name from a shorthand: ``act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``.

    Norms: ``act_name("normalized", 3, "ln1")`` -> ``blocks.3.ln1.hook_normalized``;
    ``act_name("normalized", None, "ln_final")`` -> ``ln_final.hook_normalized``.
    """
    if "." in name or name.startswith("hook_"):
        return name
    name = ALIASES.get(name, name)
    if name in ("normalized", "inv_rms"):
        if sublayer is None:
            raise KeyError(f"norm activation {name!r} needs the norm's name, e.g. ('{name}', 3, 'ln1')")
        if sublayer == "ln_final":
            return f"ln_final.hook_{name}"
        if sublayer in ("q_norm", "k_norm"):
            return f"blocks.{layer}.attn.{sublayer}.hook_{name}"
        return f"blocks.{layer}.{sublayer}.hook_{name}"
    if name not in SHORT_NAMES:
        raise KeyError(f"unknown activation shorthand {name!r}")
    template = SHORT_NAMES[name]
    if "{layer}" not in template:
        return template
    if layer is None:
        raise KeyError(f"activation {name!r} needs a layer index, e.g. cache[{name!r}, 0]")
    return template.format(layer=layer)


def hook_axes(name: str) -> tuple[str, ...]:
    """Axis names of the activation at hook ``name``, e.g. ``("batch", "pos", "head", "d_head")``.

    ``name`` is a full name (``blocks.3.attn.hook_z``), a generic one, or its tail (``attn.hook_z``,
    ``ln_final.hook_normalized``) when every point it can mean has the same axes.
    """
    generic = generic_name(name)
    if generic in HOOKS:
        return HOOKS[generic][0]
    found = {HOOKS[full][0] for full in HOOKS if full.endswith("." + name)}
    if len(found) != 1:
        raise KeyError(f"no axis names known for hook {name!r}" + (" (ambiguous)" if found else ""))
    return found.pop()


def head_axis(short: str) -> int:
    """Index of the ``head`` (or ``kv_head``) axis in the activation ``short`` (``"z"`` -> 2)."""
    axes = hook_axes(act_name(short, 0))
    for axis in ("head", "kv_head"):
        if axis in axes:
            return axes.index(axis)
    raise ValueError(f"activation {short!r} has no head axis (its axes: {', '.join(axes)})")


def shape_string(axes: tuple[str, ...]) -> str:
    """``("batch", "pos", "d_model")`` -> ``"[batch, pos, d_model]"``."""
    return "[" + ", ".join(axes) + "]"
