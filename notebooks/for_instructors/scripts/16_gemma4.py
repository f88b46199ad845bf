# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/16_gemma4.ipynb)**
#
# # 16 · What changed in Gemma 4
#
# **Time:** about 45 minutes. **Before this:** notebook 13 (Gemma 2 and 3); notebook 03 (RoPE) helps.
#
# Gemma 4 (April 2026) keeps Gemma 3's block (sandwich norms, q/k norm, five local layers to one
# global) and adds five things, each aimed at running on less memory: small models for phones
# and laptops (E2B, E4B), a dense 31B and a mixture of experts (26B-A4B). As before, each is a
# `GemmaConfig` field used at one place in `model.py`; the two new modules are in `gemma4_parts.py`.
#
# | change | config field |
# |---|---|
# | per-layer embeddings (PLE): a second, narrow embedding per layer | `d_per_layer`, `vocab_per_layer` |
# | global layers with wider heads, "proportional" RoPE on part of each | `d_head_global`, `rope_fraction_global` |
# | K=V global layers: no `v_proj`, the keys' projection serves as values | `k_eq_v`, `n_kv_heads_global` |
# | KV sharing: the last layers reuse an earlier layer's keys and values | `n_kv_shared_layers` |
# | mixture of experts beside the dense MLP | `n_experts`, `n_experts_active`, `d_expert` |
#
# Smaller changes: every RMSNorm multiplies by its weight `w` (not `1 + w`), values get a
# gain-free RMSNorm, attention scores are not scaled (q/k norms carry the scale), and each block's
# output is multiplied by a fixed `layer_scalar`.
#
# **Learning goals.** By the end you can
#
# 1. follow a token's per-layer inputs from the second embedding table to the gate inside each block;
# 2. say which dimensions proportional RoPE rotates and write it;
# 3. say which layer's keys a KV-shared layer reads and compute the KV cache memory sharing saves;
# 4. take the router apart: logits, softmax, top-k, renormalisation, per-expert scale; and read
#    router choices per token in a widget.
#
# No Gemma 4 weights are needed: the lesson builds a small Gemma 4 with random weights and every
# feature at once. If `GEMMA_LAB_MODEL` names a Gemma 4 checkpoint, the sections its architecture
# has run on it instead.

# %%
# Set-up. On Google Colab this installs gemma_lab (keeping Colab's own torch) and turns on its
# widgets; anywhere else it does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    import torch  # Colab's build: pinned below, so pip keeps it instead of installing another

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"torch=={torch.__version__}",
                    "gemma_lab @ git+https://github.com/gemma-lab/gemma_lab"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()

# %%
# Configuration: which model this lesson runs on.
# "" keeps the default: the bundled tiny Gemma, or the checkpoint folder in $GEMMA_LAB_MODEL.
# A Gemma 4 checkpoint (e.g. "/models/gemma-4-E2B") is used wherever its architecture has the feature shown.
import os

MODEL = ""
if MODEL:
    os.environ["GEMMA_LAB_MODEL"] = MODEL

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import gemma_lab.exercises.lesson16_gemma4  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import PRESETS, Gemma, init_weights, viz
from gemma_lab.cli import describe_config
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.kv_cache import KVCache
from gemma_lab.model import rotary_cos_sin
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import RouterExplorer

torch.set_grad_enabled(False)
lesson_model, tokenizer = load_lesson_model()
print(describe(lesson_model))

# %% [markdown]
# Which published size has what, read from the presets (`gemma-lab info gemma4-e2b` prints one in full):

# %%
print(f"{'preset':>15} {'layers':>6} {'PLE':>9} {'global d_head':>13} {'rotates':>7} {'K=V':>4} {'KV-shared':>9} {'experts':>8}")
for name in ("gemma4-e2b", "gemma4-e4b", "gemma4-31b", "gemma4-26b-a4b"):
    c = PRESETS[name]
    g = c.layer_types.index("global")
    print(f"{name:>15} {c.n_layers:>6} {c.d_per_layer or '-':>9} {c.d_head_for(g):>13} {c.rope_fraction_for(g):>7.2f} "
          f"{'yes' if c.k_eq_v else 'no':>4} {c.n_kv_shared_layers or '-':>9} "
          f"{f'{c.n_experts_active} of {c.n_experts}' if c.n_experts else '-':>8}")

# %% [markdown]
# ## 1. A small Gemma 4 with everything
#
# The preset `test-gemma4` has every Gemma 4 feature at toy size: 6 layers (local, local, global,
# twice), per-layer embeddings, K=V global layers, the last two layers KV-shared, and experts. We
# give it the lesson tokenizer's vocabulary and 8 experts (2 per token), and random weights from a
# fixed seed. Its learned per-expert scales are drawn at random too (a fresh model has them all 1),
# and its router's weights are made larger (see the comment in the cell).
#
# **These weights are random.** What it computes is exactly what a Gemma 4 of this shape computes,
# so every shape, hook and identity below holds for real weights too; but which expert a token is
# routed to, or how strongly a gate opens, means nothing here. A trained model's routing is not
# this one's.

# %%
vocab = tokenizer.vocab_size
random_cfg = PRESETS["test-gemma4"].replace(vocab_size=vocab, vocab_per_layer=vocab, n_experts=8,
                                            name="random test-gemma4, 8 experts")
random_model = init_weights(Gemma(random_cfg), seed=0, std=0.1).eval()
scales = torch.Generator().manual_seed(0)
for block in random_model.blocks:
    block.moe.router.per_expert_scale.copy_(torch.rand(random_cfg.n_experts, generator=scales) + 0.5)
    # Weights this small make a router that cannot decide (all probabilities near 1 / n_experts); a trained
    # one is far more decided. Scaled up 10 times, the random router's choices are distinct (still random).
    block.moe.router.proj.weight.mul_(10)


def lesson_or_random(has_it, what: str):
    """The lesson model when it is a Gemma 4 with ``what``, else the random Gemma 4 (saying why)."""
    cfg = lesson_model.cfg
    if cfg.family == 4 and has_it(cfg):
        print(f"{what}: shown on the lesson model ({describe(lesson_model)})")
        return lesson_model
    why = f"the lesson model is Gemma {cfg.family}" if cfg.family != 4 else f"the lesson model has no {what}"
    print(f"{what}: shown on the random Gemma 4 ({why})")
    return random_model


print(describe(random_model, source="random weights, seed 0"))
text = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(text)])  # [batch, pos]
str_tokens = tokenizer.to_str_tokens(tokens[0].tolist())

# %% [markdown]
# Each layer's shape is read off the config: the kind of attention, the head width, the kv heads,
# whether it has a `v_proj`, whose keys it reads (`kv_source`), how much of each head rotates, and
# the MLP width (doubled on KV-shared layers: `double_wide_mlp`, as in E2B).

# %%
cfg = random_cfg
print(f"{'layer':>5}  {'kind':<6} {'d_head':>6} {'kv heads':>8} {'v_proj':>6} {'kv from':>7} {'rotates':>7} {'d_mlp':>5}")
for block in random_model.blocks:
    layer, attn = block.layer, block.attn
    print(f"{layer:>5}  {cfg.layer_types[layer]:<6} {attn.d_head:>6} {attn.n_kv_heads:>8} "
          f"{'-' if attn.kv_source != layer else ('yes' if attn.v_proj is not None else 'no'):>6} "
          f"{attn.kv_source:>7} {cfg.rope_fraction_for(layer):>7.2f} {block.mlp.up_proj.out_features:>5}")

# %% [markdown]
# ## 2. Per-layer embeddings (PLE)
#
# Besides the main embedding (`vocab x d_model`), E2B and E4B have a second table with one row per
# token, `n_layers x d_per_layer` wide: every token brings a small vector *for each layer*. It is combined with a projection of the main embedding, so each layer's input
# depends on the token and on its context-free embedding:
#
# ```text
# token   = table[token] * sqrt(d_per_layer)                        -> [batch, pos, layer, d_per_layer]
# context = RMSNorm(W_proj @ embedded / sqrt(d_model))  (per layer) -> [batch, pos, layer, d_per_layer]
# inputs  = (token + context) / sqrt(2)
# ```
#
# `PerLayerEmbedding` computes all layers' at once, before the first block; the hook points
# `per_layer_embed.hook_token`, `hook_context` and `hook_inputs` show the three.

# %%
ple_model = lesson_or_random(lambda c: c.d_per_layer > 0, "per-layer embeddings")
ple_cfg = ple_model.cfg
ple_tokens = torch.tensor([tokenizer.encode(text)])
_, ple_cache = ple_model.run_with_cache(ple_tokens)
ple = ple_model.per_layer_embed
print("table:", tuple(ple.embed.weight.shape), " projection:", tuple(ple.model_projection.weight.shape))
for name in ("hook_token", "hook_context", "hook_inputs"):
    print(f"per_layer_embed.{name}: {tuple(ple_cache['per_layer_embed.' + name].shape)}  [batch, pos, layer, d_per_layer]")
combined = (ple_cache["per_layer_embed.hook_token"] + ple_cache["per_layer_embed.hook_context"]) * 2 ** -0.5
print("(token + context) / sqrt(2) equals hook_inputs:", torch.equal(combined, ple_cache["per_layer_embed.hook_inputs"]))

# %% [markdown]
# Why two parts of unit scale and a `1 / sqrt(2)`? Each part has a root-mean-square of about 1 per
# number (the table rows times `sqrt(d_per_layer)`, as the main embedding is scaled by
# `sqrt(d_model)`; the projection after its norm), and the sum of two such independent vectors
# has about `sqrt(2)`. The norm here is Gemma 4's: it multiplies by `w`, not `1 + w`.
#
# **Exercise.** Write `combine_per_layer(table_rows, embedded, projection, norm_weight, eps)`:
# `table_rows [batch, pos, layer * d_per_layer]` (the token's rows of the table, unscaled),
# `embedded [batch, pos, d_model]` (the scaled main embedding, `hook_embed`), `projection
# [layer * d_per_layer, d_model]`, `norm_weight [d_per_layer]`. Return `[batch, pos, layer,
# d_per_layer]`. The norm is taken over each layer's `d_per_layer` numbers.

# %% exercise="combine_per_layer" tags=["exercise"]
def combine_per_layer(table_rows, embedded, projection, norm_weight, eps):
    """[batch, pos, layer, d_per_layer] per-layer inputs from the table rows and the scaled main embedding."""
    raise NotImplementedError  # your code here


# %%
check("combine_per_layer", combine_per_layer)

# %%
# solution("combine_per_layer")  # uncomment to see one way to write it

# %%
try:
    mine = combine_per_layer(ple.embed.weight[ple_tokens], ple_cache["hook_embed"], ple.model_projection.weight,
                             ple.projection_norm.weight, ple_cfg.norm_eps)
    gap = (mine - ple_cache["per_layer_embed.hook_inputs"]).abs().max()
    print(f"yours vs the model's per_layer_embed.hook_inputs: max |difference| {gap:.2e}")
except NotImplementedError:
    print("(write combine_per_layer above to compare it with the model's own per-layer inputs)")

# %% [markdown]
# ### Inside each block: the gate
#
# Layer `l` receives its slice `inputs[:, :, l]`. After attention and the MLP, the block computes a
# gate from its residual stream, multiplies the slice by it, projects the result up to `d_model`,
# normalises it and adds it to the stream:
#
# ```text
# resid = resid + RMSNorm(W_up @ (gelu(W_gate @ resid) * inputs[:, :, l]))
# ```
#
# So the token's per-layer vector only gets in as far as the context opens the gate. The hooks
# `per_layer.hook_input` (before gating), `hook_gate` and `hook_gated` (after) show it:

# %%
layer = ple_cfg.n_layers // 2
before = ple_cache[f"blocks.{layer}.per_layer.hook_input"][0]  # [pos, d_per_layer]
gate = ple_cache[f"blocks.{layer}.per_layer.hook_gate"][0]
after = ple_cache[f"blocks.{layer}.per_layer.hook_gated"][0]
print(f"layer {layer}: hook_input is slice {layer} of hook_inputs:",
      torch.equal(before, ple_cache["per_layer_embed.hook_inputs"][0, :, layer]))
print("hook_gated == hook_gate * hook_input:", torch.equal(after, gate * before))

shown_dims = min(ple_cfg.d_per_layer, 64)
fig, axes = viz.new_subplots((12, 0.25 * len(str_tokens) + 1.8), 1, 3)
for ax, (title, values) in zip(axes[0], (("per-layer input (before gating)", before), ("gate gelu(W_gate @ resid)", gate),
                                         ("gated input (after)", after))):
    values = values[:, :shown_dims].float().numpy()
    limit = float(np.abs(values).max()) or 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_title(f"layer {layer}: {title}", fontsize=9)
    ax.set_xlabel(f"d_per_layer (first {shown_dims})")
    fig.colorbar(image, ax=ax, shrink=0.7)
axes[0, 0].set_yticks(range(len(str_tokens)), [viz.readable_token(t) for t in str_tokens], fontsize=8)
for ax in axes[0, 1:]:
    ax.set_yticks([])
display(fig)

# %% [markdown]
# What each part of each block adds to the residual stream (mean norm over the prompt's positions):
# attention, the MLP, and the per-layer input. (Random weights: compare the sizes, not the story.)

# %%
parts = ("attn_out", "mlp_out", "per_layer_out")
sizes = np.array([[float(ple_cache[f"blocks.{i}.hook_{part}"][0].norm(dim=-1).mean()) for part in parts]
                  for i in range(ple_cfg.n_layers)])
fig, axes = viz.new_subplots((9, 3))
for j, part in enumerate(parts):
    axes[0, 0].bar(np.arange(ple_cfg.n_layers) + (j - 1) * 0.27, sizes[:, j], width=0.27, label=f"hook_{part}")
axes[0, 0].set(xlabel="layer", ylabel="mean |vector|", title=f"what each block adds ({ple_cfg.name or 'lesson model'})")
axes[0, 0].legend(fontsize=8)
display(fig)

# %% [markdown]
# Where the "E" in E2B comes from: the per-layer table is a lookup (one row per token, nothing
# multiplied), so it can stay in slower memory or on disk while the rest runs on the accelerator.
# Counted from the configs:

# %%
for name in ("gemma4-e2b", "gemma4-e4b"):
    preset = PRESETS[name]
    table = preset.vocab_per_layer * preset.n_layers * preset.d_per_layer
    total = preset.n_params()
    print(f"{name}: {total / 1e9:.2f} B parameters, of which the per-layer table {table / 1e9:.2f} B "
          f"({table / total:.0%}); without it {(total - table) / 1e9:.2f} B")

# %% [markdown]
# ## 3. Two kinds of attention layer, K=V and proportional RoPE
#
# Local (sliding-window) layers are Gemma 3's: RoPE with base `rope_theta_local` on every dimension.
# Global layers differ (the numbers of each size are in the table of section 1):
#
# * **wider heads** (`d_head_global`), so the few layers that see the whole context see it in
#   more detail;
# * **K=V** (31B and 26B-A4B, `k_eq_v`): no `v_proj`. The key projection is the value too: the
#   key then goes through `k_norm` and RoPE, the value through a gain-free `v_norm`. Fewer kv heads
#   on those layers (`n_kv_heads_global`);
# * **proportional RoPE** (`rope_fraction_global`): only part of each head rotates, with base
#   `rope_theta`; the rest carries no position at all.

# %%
kv_model = lesson_or_random(lambda c: c.k_eq_v, "K=V global layers")
kv_cfg = kv_model.cfg
_, kv_cache = kv_model.run_with_cache(torch.tensor([tokenizer.encode(text)]))
g = kv_cfg.layer_types.index("global")
attn = kv_model.blocks[g].attn
print(f"layer {g} ({kv_cfg.layer_types[g]}): v_proj is {attn.v_proj}, d_head {attn.d_head}, {attn.n_kv_heads} kv heads")
k_raw, v_raw = kv_cache[f"blocks.{g}.attn.hook_k"], kv_cache[f"blocks.{g}.attn.hook_v"]
print("hook_v is hook_k (the same projection):", torch.equal(k_raw, v_raw))
k_final, v_final = kv_cache[f"blocks.{g}.attn.hook_rot_k"], kv_cache[f"blocks.{g}.attn.v_norm.hook_normalized"]
print("after k_norm + RoPE and v_norm they differ: max |k - v| =", f"{(k_final - v_final).abs().max():.3f}")

# %% [markdown]
# **Which dimensions rotate.** RoPE rotates pairs `(i, i + d_head/2)` by `position * theta **
# (-2i / d_head)`. Proportional RoPE keeps exactly these frequencies for the first `fraction *
# d_head / 2` pairs and gives the others angle 0. The picture is the angle (mod 2π) the model's own
# `rotary_cos_sin` gives each dimension at each position: a local layer, a global layer of the
# random model, and a global layer of the E2B preset.

# %%
positions = torch.arange(48)[None]  # [batch, pos]
panels = []
for label, c, layer_of_kind in (("random model, local layer", random_cfg, random_cfg.layer_types.index("local")),
                                ("random model, global layer", random_cfg, random_cfg.layer_types.index("global")),
                                ("gemma4-e2b, global layer", PRESETS["gemma4-e2b"], PRESETS["gemma4-e2b"].layer_types.index("global"))):
    d_head = c.d_head_for(layer_of_kind)
    theta, scale = c.rope_for_layer(layer_of_kind)
    cos, sin = rotary_cos_sin(positions, d_head, theta, scale, torch.float32, fraction=c.rope_fraction_for(layer_of_kind))
    angle = torch.atan2(sin, cos)[0] % (2 * np.pi)  # [pos, d_head]
    rotating = int((angle != 0).any(dim=0).sum())
    panels.append((f"{label}: {rotating} of {d_head} dims rotate", angle))

fig, axes = viz.new_subplots((13, 3.4), 1, 3)
for ax, (title, angle) in zip(axes[0], panels):
    image = ax.imshow(angle.numpy(), cmap="twilight", vmin=0, vmax=2 * np.pi, aspect="auto", interpolation="nearest")
    ax.set(title=title, xlabel="dimension of a head", ylabel="position")
    ax.title.set_fontsize(9)
fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="angle (rad), 0 = not rotated")
display(fig)

e2b = PRESETS["gemma4-e2b"]
g_e2b = e2b.layer_types.index("global")
d_head, n_pairs = e2b.d_head_for(g_e2b), e2b.d_head_for(g_e2b) // 2
n_rotated = int(e2b.rope_fraction_for(g_e2b) * n_pairs)
frequency = lambda i: e2b.rope_theta ** (-2 * i / d_head)  # radians per token of pair i in a full head
for i in (n_rotated - 1, n_rotated, n_pairs - 1):
    turns = frequency(i) * e2b.max_seq_len / (2 * np.pi)
    print(f"gemma4-e2b global, pair {i:>3}{' (rotates)' if i < n_rotated else ' (left out)':>11}: "
          f"{frequency(i):.2e} rad per token, {turns:10.2f} turns over {e2b.max_seq_len} tokens")

# %% [markdown]
# The pairs left out are the slower ones (the numbers above): the slowest would not turn once over
# the whole context. Left unrotated, those dimensions carry no position at all: queries and keys
# match there on content alone, whatever the distance, while the rotating part carries position.
#
# **Exercise.** Write `partial_rotary(x, positions, theta, fraction)`: rotate `x [batch, pos, head,
# d_head]` with Gemma's pairing `(i, i + d_head/2)`, only the first `int(fraction * d_head / 2)`
# pairs, each with its full-head frequency `theta ** (-2i / d_head)`.

# %% exercise="partial_rotary" tags=["exercise"]
def partial_rotary(x, positions, theta, fraction):
    """x [batch, pos, head, d_head] rotated by RoPE on only the first fraction * d_head / 2 pairs."""
    raise NotImplementedError  # your code here


# %%
check("partial_rotary", partial_rotary)

# %%
# solution("partial_rotary")  # uncomment to see one way to write it

# %%
try:
    # The keys of the global layer after k_norm, rotated by you, against the model's hook_rot_k.
    k_normed = kv_cache[f"blocks.{g}.attn.k_norm.hook_normalized"]
    theta, _ = kv_cfg.rope_for_layer(g)
    mine = partial_rotary(k_normed, torch.arange(k_normed.shape[1])[None], theta, kv_cfg.rope_fraction_for(g))
    print(f"yours vs the model's hook_rot_k on layer {g}: max |difference| {(mine - k_final).abs().max():.2e}")
except NotImplementedError:
    print("(write partial_rotary above to compare it with the model's rotated keys)")

# %% [markdown]
# ## 4. KV sharing
#
# In E2B and E4B the last `n_kv_shared_layers` layers compute no keys or values: each attends to those of the last
# earlier layer *of its own kind* that has them (`cfg.kv_source(layer)`, `block.attn.kv_source`).
# They have no `k_proj`/`v_proj`, store nothing in the KV cache, and their hook points
# `attn.hook_shared_k` / `hook_shared_v` show what they read.

# %%
share_model = lesson_or_random(lambda c: c.n_kv_shared_layers > 0, "KV sharing")
share_cfg = share_model.cfg
_, share_cache = share_model.run_with_cache(torch.tensor([tokenizer.encode(text)]))
for block in share_model.blocks:
    if block.attn.kv_source != block.layer:
        source = block.attn.kv_source
        same = torch.equal(share_cache[f"blocks.{block.layer}.attn.hook_shared_k"],
                           share_cache[f"blocks.{source}.attn.hook_rot_k"])
        print(f"layer {block.layer} ({share_cfg.layer_types[block.layer]}) reads layer {source}'s keys: "
              f"hook_shared_k equals layer {source}'s hook_rot_k: {same}; k_proj: {block.attn.k_proj}")

# %% [markdown]
# The same picture for the real presets: each layer coloured by kind, the KV-shared ones paler,
# with the number of the layer they read.

# %%
shown = [("gemma4-e2b", PRESETS["gemma4-e2b"]), ("gemma4-e4b", PRESETS["gemma4-e4b"]), ("this lesson", share_cfg)]
longest = max(c.n_layers for _, c in shown)
fig, axes = viz.new_subplots((13, 2.6))
ax = axes[0, 0]
for row, (name, c) in enumerate(shown):
    for layer in range(c.n_layers):
        local, shared = c.is_local(layer), c.is_kv_shared(layer)
        colour = ("#d6604d" if local else "#4393c3") if not shared else ("#f4a582" if local else "#92c5de")
        ax.add_patch(plt.Rectangle((layer - 0.5, row - 0.45), 1, 0.9, color=colour))
        if shared:
            ax.text(layer, row, str(c.kv_source(layer)), ha="center", va="center", fontsize=6)
ax.set(xlim=(-0.5, longest - 0.5), ylim=(len(shown) - 0.5, -0.5), xlabel="layer")
ax.set_yticks(range(len(shown)), [name for name, _ in shown])
ax.set_title("red = local, blue = global; pale = KV-shared, labelled with the layer whose keys it reads", fontsize=9)
display(fig)

# %% [markdown]
# **What it saves.** A layer that stores keys and values keeps, per token, `2 (k and v) x kv_heads x
# d_head` numbers, 2 bytes each in bf16; a local layer keeps only its last `sliding_window` tokens.
#
# **Exercise.** Write `kv_cache_bytes(cfg, n_tokens, share_kv)`: the bytes of bf16 keys and values
# a `GemmaConfig`'s KV cache holds after `n_tokens` tokens of one sequence; with `share_kv=False`,
# as if every layer stored its own. Use `cfg.n_layers`, `cfg.is_local(layer)`,
# `cfg.sliding_window`, `cfg.is_kv_shared(layer)`, `cfg.n_kv_heads_for(layer)` and
# `cfg.d_head_for(layer)`. (`check` compares with the package's `KVCache`, built on the meta
# device: shapes without memory.)

# %% exercise="kv_cache_bytes" tags=["exercise"]
def kv_cache_bytes(cfg, n_tokens, share_kv):
    """Bytes of bf16 keys and values cached after n_tokens tokens of one sequence."""
    raise NotImplementedError  # your code here


# %%
check("kv_cache_bytes", kv_cache_bytes)

# %%
# solution("kv_cache_bytes")  # uncomment to see one way to write it

# %% [markdown]
# The package's `KVCache` on the meta device gives the same numbers for every Gemma 4 preset. Per
# token, global layers grow by the same amount forever; local layers only until the window is
# full. The last column is what `gemma-lab info <preset>` prints (its `kv cache` row); the figures
# agree.

# %%
def cache_bytes(c, n_tokens, share_kv=True):
    """What the package's KVCache holds (bf16, one sequence), built on the meta device."""
    c = c if share_kv else c.replace(n_kv_shared_layers=0)
    return KVCache(c, 1, n_tokens, dtype=torch.bfloat16, device="meta").nbytes()


for name in ("gemma4-e2b", "gemma4-e4b", "gemma4-31b", "gemma4-26b-a4b"):
    c = PRESETS[name]
    window = c.sliding_window
    global_per_token = cache_bytes(c, window + 1) - cache_bytes(c, window)  # past the window, only global layers grow
    local_per_token = cache_bytes(c, window) // window - global_per_token
    info_row = next(line for line in describe_config(c, name) if line.strip().startswith("kv cache"))
    assert f"{global_per_token / 1024:.2f} KiB per token (global" in info_row
    with_sharing, without = cache_bytes(c, 131072), cache_bytes(c, 131072, share_kv=False)
    print(f"{name:>15}: per token {global_per_token / 1024:6.2f} KiB global + {local_per_token / 1024:6.2f} KiB local; "
          f"128k context: {with_sharing / 2**30:5.2f} GiB with sharing, {without / 2**30:5.2f} GiB without "
          f"(saves {1 - with_sharing / without:4.0%})")
    print(f"{'':>15}  gemma-lab info: {info_row.strip()}")

# %% [markdown]
# And on the model of this lesson, a real `KVCache` after a prefill: the KV-shared layers got
# buffers of capacity 0.

# %%
cache = KVCache.for_model(share_model, batch_size=1, max_len=32)
share_model(torch.tensor([tokenizer.encode(text)]), kv_cache=cache)
print("capacity per layer:", cache.capacity, f"-> {cache.nbytes():,} bytes "
      f"({cache.keys[0].dtype}); layers that read another's: {[i for i in range(share_cfg.n_layers) if share_cfg.is_kv_shared(i)]}")

# %% [markdown]
# ## 5. The mixture of experts (26B-A4B)
#
# 26B-A4B has many small GeGLU experts per layer beside its dense MLP and each token uses a few of
# them (the table of section 1; the active parameters are counted at the end of this section). A router reads the stream after attention
# (`resid_mid`) and decides, per token:
#
# ```text
# logits  = W_router @ (RMSNorm(resid_mid) * scale / sqrt(d_model))   [batch, pos, expert]
# probs   = softmax(logits)                                            (fp32)
# chosen  = the top-k experts by probability                          [batch, pos, top_k]
# weights = probs[chosen] / sum(probs[chosen]) * per_expert_scale[chosen]
# experts = sum over the chosen of weight * expert(RMSNorm(resid_mid))
# ```
#
# and the block's feed-forward output is `RMSNorm(dense MLP out) + RMSNorm(experts)`. Every step
# has a hook: `moe.router.hook_logits`, `hook_probs`, `hook_chosen`, `hook_weights`,
# `moe.experts.hook_expert_out` (each chosen expert's weighted output), `moe.hook_dense_out` and
# `moe.hook_experts_out`.

# %%
moe_model = lesson_or_random(lambda c: c.n_experts > 0, "experts")
moe_cfg = moe_model.cfg
_, moe_cache = moe_model.run_with_cache(torch.tensor([tokenizer.encode(text)]))
layer = 1
router = f"blocks.{layer}.moe.router."
pos = len(str_tokens) - 1
print(f"layer {layer}, token {viz.readable_token(str_tokens[pos])!r} (pos {pos}), {moe_cfg.n_experts} experts, "
      f"top {moe_cfg.n_experts_active}:")
print("  logits ", np.round(moe_cache[router + "hook_logits"][0, pos].tolist(), 3))
print("  probs  ", np.round(moe_cache[router + "hook_probs"][0, pos].tolist(), 3))
print("  chosen ", moe_cache[router + "hook_chosen"][0, pos].tolist())
print("  weights", np.round(moe_cache[router + "hook_weights"][0, pos].tolist(), 4))
expert_sum = moe_cache[f"blocks.{layer}.moe.experts.hook_expert_out"].sum(dim=2)  # [batch, pos, d_model]
normed = moe_model.blocks[layer].moe.post_norm(expert_sum)
print("experts' share = post_norm(sum of hook_expert_out):",
      torch.allclose(normed, moe_cache[f"blocks.{layer}.moe.hook_experts_out"], atol=1e-6))
total = moe_cache[f"blocks.{layer}.moe.hook_dense_out"] + moe_cache[f"blocks.{layer}.moe.hook_experts_out"]
print("dense share + experts' share, then ln2_post, = hook_mlp_out:",
      torch.allclose(moe_model.blocks[layer].ln2_post(total), moe_cache[f"blocks.{layer}.hook_mlp_out"], atol=1e-6))

# %% [markdown]
# **Exercise.** Write `route_tokens(logits, k, per_expert_scale)`: from router logits `[batch, pos,
# expert]` (any float dtype), return `(chosen, weights)`, both `[batch, pos, k]`: the `k` most
# probable experts (int64, most probable first) and their weights in fp32: softmax in fp32, top-k,
# renormalise the chosen probabilities to sum 1, multiply each by its expert's `per_expert_scale`.

# %% exercise="route_tokens" tags=["exercise"]
def route_tokens(logits, k, per_expert_scale):
    """(chosen [batch, pos, k] int64, weights [batch, pos, k] fp32) from router logits [batch, pos, expert]."""
    raise NotImplementedError  # your code here


# %%
check("route_tokens", route_tokens)

# %%
# solution("route_tokens")  # uncomment to see one way to write it

# %%
try:
    all_equal = True
    for i, block in enumerate(moe_model.blocks):
        prefix = f"blocks.{i}.moe.router."
        chosen, weights = route_tokens(moe_cache[prefix + "hook_logits"], moe_cfg.n_experts_active,
                                       block.moe.router.per_expert_scale)
        all_equal &= torch.equal(chosen, moe_cache[prefix + "hook_chosen"])
        all_equal &= torch.allclose(weights, moe_cache[prefix + "hook_weights"], atol=1e-6)
    print("your routing equals the model's hook_chosen and hook_weights on every layer:", all_equal)
except NotImplementedError:
    print("(write route_tokens above to compare it with the model's router on every layer)")

# %% [markdown]
# ### Router choices per token
#
# The widget shows one layer's routing as tokens x experts: the colour is the weight each token
# gives each expert (0 for the experts it did not choose), the chosen ones outlined (red: the most
# probable). Switch to the router probabilities to see how sure the router was, pick another layer,
# or type another text. On the random model the choices are arbitrary: a trained router learns to
# send different kinds of tokens to different experts, which is what one studies on real weights.

# %%
explorer = RouterExplorer(moe_model, tokenizer, text=text, layer=1)
print(f"layer {explorer.layer_select.value}: expert load {explorer.load.tolist()} "
      f"({'random weights: not a trained router' if moe_model is random_model else moe_cfg.name or 'the lesson model'})")
explorer

# %% [markdown]
# Active versus total parameters of 26B-A4B, from its config: every expert exists, a few run per token.

# %%
c = PRESETS["gemma4-26b-a4b"]
per_expert = 3 * c.d_model * c.d_expert  # gate, up and down of one expert
idle = c.n_layers * (c.n_experts - c.n_experts_active) * per_expert
print(f"gemma4-26b-a4b: {c.n_params() / 1e9:.2f} B parameters; per token {(c.n_params() - idle) / 1e9:.2f} B are used "
      f"(the embedding included), the experts a token skips hold {idle / 1e9:.2f} B")

# %% [markdown]
# ## Summary
#
# * **Per-layer embeddings**: a second table gives every token a small vector per layer, combined
#   with a projection of the main embedding, `(token + context) / sqrt(2)`, and let into each block
#   through a gate computed from the stream. The table is a lookup, so it can live off the accelerator.
# * **Global layers** have wider heads; only part of each rotates (proportional RoPE, full-head
#   frequencies); in 31B and 26B-A4B the key projection is also the value (K=V).
# * **KV sharing**: E2B's and E4B's last layers read the keys and values of an earlier layer of their
#   kind and store none, which makes their KV cache much smaller.
# * **Mixture of experts**: softmax, top-k, renormalise, per-expert scale; experts beside the dense MLP.
#
# **Next:** with a Gemma 4 checkpoint, set `GEMMA_LAB_MODEL` and run this lesson again, or
# notebooks 08 to 11 (hooks, attention patterns, logit lens, patching) on it: every tool works
# on Gemma 4, and the router's hooks can be patched and ablated like any other activation.
