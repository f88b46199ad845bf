"""Every hook point once: its name, its axes and what it is. One table, and what derives from it.

    HOOKS                     "blocks.{layer}.attn.hook_pattern" -> (axes, meaning)
    act_name("pattern", 3)    the cache shorthand -> "blocks.3.attn.hook_pattern" (``cache["pattern", 3]``)
    hook_axes(name)           ("batch", "head", "q_pos", "k_pos"): the widgets' axis labels
    head_axis(short)          where the head (or kv_head) axis sits: what interp patches per head
    shape_string(axes)        "[batch, head, q_pos, k_pos]": the shapes in docs/hooks.md

The axis vocabulary is the model's (``model.py``'s docstring, ``docs/architecture.md``). Which
families have a hook point is read off the model itself by ``tools/hook_table.py``, which writes
the table of ``docs/hooks.md`` from ``HOOKS``; ``tests/test_hooks.py`` checks that every hook point
of Gemma 1, 2 and 3 has an entry here and that every activation has the shape its axes say, and
``tests/test_gemma4.py`` the same for Gemma 4.

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
        ("batch", "pos", "d_model"),
        "Residual stream entering the block (Gemma 3n: the predicted active AltUp copy). TL: same name."),
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
        ("batch", "pos", "d_model"), "Residual stream leaving the block (= next block's `resid_pre`; Gemma 3n: the active copy's "
        "output before AltUp's correction, not the next `resid_pre`). TL: same name."),
    "ln_final.hook_inv_rms": (("batch", "pos", "1"), "Final norm: 1 / rms of the last `resid_post`. TL's `ln_final.hook_scale` is its reciprocal."),
    "ln_final.hook_normalized": (
        ("batch", "pos", "d_model"),
        "Normalised final stream, the unembedding's input; equals transformers' last `hidden_states` entry."),
    "hook_logits": (
        ("batch", "pos", "vocab"), "Logits, after Gemma 2's final softcap; the model's return value."),
}


# ---- Gemma 4 (test-gemma4 has every feature: per-layer embeddings, K=V, KV sharing, experts) ----
# d_head, kv_head and d_mlp are the layer's own: global layers have wider heads (d_head_global)
# and K=V models fewer kv heads there; KV-shared layers of E2B have a double-wide MLP.
_GEMMA4_ONLY = " Gemma 4 E2B/E4B and Gemma 3n only."
HOOKS.update({
    "per_layer_embed.hook_token": (
        ("batch", "pos", "layer", "d_per_layer"),
        "Per-layer embeddings (PLE): each token's row of the per-layer table, times sqrt(d_per_layer), one "
        "slice per layer." + _GEMMA4_ONLY),
    "per_layer_embed.projection_norm.hook_inv_rms": (("batch", "pos", "layer", "1"), "1 / rms of each layer's projection."),
    "per_layer_embed.projection_norm.hook_normalized": (
        ("batch", "pos", "layer", "d_per_layer"), "The projection after its norm (gain `w`): the same tensor as `hook_context`."),
    "per_layer_embed.hook_context": (
        ("batch", "pos", "layer", "d_per_layer"),
        "The main embedding projected to every layer's slice, times d_model^-1/2, RMS-normed."),
    "per_layer_embed.hook_inputs": (
        ("batch", "pos", "layer", "d_per_layer"),
        "What the blocks receive: `(context + token) / sqrt(2)`; block `layer` reads slice `layer`."),
    "blocks.{layer}.attn.v_norm.hook_inv_rms": (("batch", "pos", "kv_head", "1"), "Gemma 4 value norm: 1 / rms of each value head."),
    "blocks.{layer}.attn.v_norm.hook_normalized": (
        ("batch", "pos", "kv_head", "d_head"), "Gemma 4: values after their gain-free RMSNorm (what attention averages)."),
    "blocks.{layer}.attn.hook_shared_k": (
        ("batch", "k_pos", "kv_head", "d_head"),
        "Gemma 4 KV-shared layers only (the last `n_kv_shared_layers`): the keys this layer attends to, read "
        "from layer `cfg.kv_source(layer)` (the last non-shared layer of its kind; `attn.kv_source`), after "
        "that layer's k_norm and RoPE; KV cache included. Such layers have no `hook_k`/`hook_v`/`hook_rot_k`."),
    "blocks.{layer}.attn.hook_shared_v": (
        ("batch", "k_pos", "kv_head", "d_head"), "Gemma 4 KV-shared layers: the values read from layer `kv_source`."),
    "blocks.{layer}.moe.post_norm_dense.hook_inv_rms": (("batch", "pos", "1"), "Gemma 4 MoE: 1 / rms of the dense MLP's output."),
    "blocks.{layer}.moe.post_norm_dense.hook_normalized": (
        ("batch", "pos", "d_model"), "Gemma 4 MoE: the normalised dense MLP output (the same tensor as `moe.hook_dense_out`)."),
    "blocks.{layer}.moe.hook_dense_out": (
        ("batch", "pos", "d_model"),
        "Gemma 4 26B-A4B: the dense MLP's share of the feed-forward output, beside the experts' "
        "(`mlp_out = ln2_post(dense_out + experts_out)`)."),
    "blocks.{layer}.moe.router.norm.hook_inv_rms": (("batch", "pos", "1"), "Router: 1 / rms of `resid_mid`."),
    "blocks.{layer}.moe.router.norm.hook_normalized": (("batch", "pos", "d_model"), "Router: `resid_mid` normalised, no gain."),
    "blocks.{layer}.moe.router.hook_logits": (
        ("batch", "pos", "expert"), "Router logits: `proj(norm(resid_mid) * scale / sqrt(d_model))`."),
    "blocks.{layer}.moe.router.hook_probs": (
        ("batch", "pos", "expert"), "Softmax of the router logits, fp32 (transformers' `output_router_logits`)."),
    "blocks.{layer}.moe.router.hook_chosen": (
        ("batch", "pos", "top_k"), "The chosen experts (int64), most probable first. A hook may choose others."),
    "blocks.{layer}.moe.router.hook_weights": (
        ("batch", "pos", "top_k"), "Their weights: top-k probabilities renormalised to sum 1, times `per_expert_scale`; fp32."),
    "blocks.{layer}.moe.pre_norm.hook_inv_rms": (("batch", "pos", "1"), "Experts' input norm: 1 / rms of `resid_mid`."),
    "blocks.{layer}.moe.pre_norm.hook_normalized": (("batch", "pos", "d_model"), "The experts' input."),
    "blocks.{layer}.moe.experts.hook_expert_out": (
        ("batch", "pos", "top_k", "d_model"),
        "Each chosen expert's output times its weight (fp32); summed over top_k it is the experts' output."),
    "blocks.{layer}.moe.post_norm.hook_inv_rms": (("batch", "pos", "1"), "1 / rms of the experts' summed output."),
    "blocks.{layer}.moe.post_norm.hook_normalized": (
        ("batch", "pos", "d_model"), "The normalised experts' output (the same tensor as `moe.hook_experts_out`)."),
    "blocks.{layer}.moe.hook_experts_out": (("batch", "pos", "d_model"), "Gemma 4 26B-A4B: the experts' share, beside `hook_dense_out`."),
    "blocks.{layer}.per_layer.hook_input": (
        ("batch", "pos", "d_per_layer"), "This layer's per-layer input (its slice of `per_layer_embed.hook_inputs`), before gating." + _GEMMA4_ONLY),
    "blocks.{layer}.per_layer.hook_gate": (("batch", "pos", "d_per_layer"), "The gate the stream opens: `gelu_tanh(resid @ W_gate)` (Gemma 3n: resid is the corrected active copy times "
        "`altup_correct.output_scale`)."),
    "blocks.{layer}.per_layer.hook_gated": (("batch", "pos", "d_per_layer"), "After gating: `gate * input`, the projection's input."),
    "blocks.{layer}.per_layer.post_norm.hook_inv_rms": (("batch", "pos", "1"), "1 / rms of the projected per-layer input."),
    "blocks.{layer}.per_layer.post_norm.hook_normalized": (
        ("batch", "pos", "d_model"), "The normalised per-layer contribution (the same tensor as `hook_per_layer_out`)."),
    "blocks.{layer}.hook_per_layer_out": (
        ("batch", "pos", "d_model"),
        "What the per-layer input adds to the stream, after the MLP. Gemma 4 then multiplies the whole stream by "
        "the block's `layer_scalar` (so `resid_post = (resid_mid + mlp_out + per_layer_out) * layer_scalar`). Gemma 3n adds it, after AltUp's "
        "correction, to copies 1.. of the stream only." + _GEMMA4_ONLY),
})


# ---- Gemma 3n (test-gemma3n has every feature). `stream` is AltUp's axis of parallel copies of the
# residual stream (4 in E2B/E4B); the block's resid_pre/mid/post hooks are on the active copy. ----
_GEMMA3N_ONLY = " Gemma 3n only."
HOOKS.update({
    "altup_stack.hook_streams": (
        ("batch", "pos", "stream", "d_model"),
        "The copies entering layer 0: the embedding, and learned projections of it rescaled to its magnitude."
        + _GEMMA3N_ONLY),
    "blocks.{layer}.hook_streams_pre": (
        ("batch", "pos", "stream", "d_model"), "The copies entering the block (= the previous block's `hook_streams_post`)."),
    "blocks.{layer}.altup_predict.hook_router": (
        ("batch", "pos", "stream"), "AltUp router on the active copy: `tanh(W rmsnorm(x) / d_model)`, one number per copy."),
    "blocks.{layer}.altup_predict.hook_coefs": (
        ("batch", "pos", "stream", "stream"),
        "Prediction mixing weights `[out copy, in copy]`: `predicted[out] = streams[out] + sum_in coefs[out, in] * streams[in]`."),
    "blocks.{layer}.altup_predict.hook_predicted": (
        ("batch", "pos", "stream", "d_model"),
        "Every copy before the block's correction; the active one is `hook_resid_pre`."),
    "blocks.{layer}.laurel.post_norm.hook_inv_rms": (("batch", "pos", "1"), "LAuReL: 1 / rms of the low-rank branch."),
    "blocks.{layer}.laurel.post_norm.hook_normalized": (
        ("batch", "pos", "d_model"), "LAuReL: the normalised branch (the same tensor as `laurel.hook_branch`)."),
    "blocks.{layer}.laurel.hook_branch": (
        ("batch", "pos", "d_model"),
        "LAuReL's low-rank branch `norm(up(down(ln1(resid_pre))))`: `resid_mid = (resid_pre + attn_out + "
        "ln1(resid_pre) + branch) / sqrt(2)`." + _GEMMA3N_ONLY),
    "blocks.{layer}.mlp.sparsify.hook_cutoff": (
        ("batch", "pos", "1"),
        "Gaussian top-k (layers with `activation_sparsity`): the per-token cutoff `mean + std * Phi^-1(sparsity)` "
        "of the gate; the neurons kept are those whose `hook_pre` exceeds it." + _GEMMA3N_ONLY),
    "blocks.{layer}.altup_correct.hook_router": (
        ("batch", "pos", "stream"), "AltUp router on the block's output (`hook_resid_post`), same weights as the prediction's."),
    "blocks.{layer}.altup_correct.hook_coefs": (
        ("batch", "pos", "stream"), "How much of the innovation each copy takes (`1 + c`)."),
    "blocks.{layer}.altup_correct.hook_innovation": (
        ("batch", "pos", "d_model"), "What the block changed on the active copy: `resid_post - resid_pre`."),
    "blocks.{layer}.altup_correct.hook_corrected": (
        ("batch", "pos", "stream", "d_model"), "Every copy after correction: `predicted + coefs * innovation`."),
    "blocks.{layer}.hook_streams_post": (
        ("batch", "pos", "stream", "d_model"),
        "The copies leaving the block: corrected, with `hook_per_layer_out` added to copies 1.. (not copy 0)."
        + _GEMMA3N_ONLY),
    "altup_unstack.hook_streams": (
        ("batch", "pos", "stream", "d_model"),
        "After the last block: copy 0, and copies 1.. mapped back by their own projections and rescaled to copy 0's magnitude."),
    "altup_unstack.hook_out": (
        ("batch", "pos", "d_model"), "Their mean: the one stream the final norm reads." + _GEMMA3N_ONLY),
})

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
