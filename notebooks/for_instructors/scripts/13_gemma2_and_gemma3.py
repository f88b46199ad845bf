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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/13_gemma2_and_gemma3.ipynb)**
#
# # 13 · Gemma 2 and Gemma 3: what changed and why
#
# **Time:** about 45 minutes. **Before this:** notebooks 04 to 06 (attention, the block, the full forward pass).
#
# Gemma 1 (February 2024) is a plain pre-norm decoder. Gemma 2 (June 2024) and Gemma 3 (March
# 2025) keep its skeleton and change a handful of things, each to make a bigger model train
# stably or run long contexts cheaply. In `gemma_lab` they are not subclasses: each change is one
# field of `GemmaConfig`, used at one place in `model.py`.
#
# | change | Gemma 1 | Gemma 2 | Gemma 3 | config field |
# |---|---|---|---|---|
# | norm on each block's *output* too ("sandwich") | no | yes | yes | `sandwich_norms` |
# | attention score softcap, `50 tanh(s / 50)` | no | yes | no | `attn_softcap` |
# | final logit softcap, `30 tanh(z / 30)` | no | yes | no | `final_softcap` |
# | local (sliding-window) layers | none | every other layer, window 4096 | 5 of every 6, window 512 or 1024 | `sliding_window`, `layer_types` |
# | RMSNorm on each query and key head | no | no | yes | `qk_norm` |
# | RoPE base | 10 000 | 10 000 | 10 000 local, 1 000 000 global | `rope_theta_local`, `rope_theta` |
# | score scale `query_pre_attn_scalar ** -0.5` | `d_head` | set per size | set per size | `query_pre_attn_scalar` |
#
# **Learning goals.** By the end you can
#
# 1. name each change, find it in the config and in `model.py`, and say what problem it addresses;
# 2. draw the softcap curve and write the function yourself;
# 3. build a sliding-window mask and see it in a real attention pattern;
# 4. see why q/k norm keeps attention scores bounded, and what the two RoPE bases do;
# 5. compare the parameter counts of the full-size models without allocating a single weight.

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
# "" keeps the default: the bundled tiny Gemma, or the model $GEMMA_LAB_MODEL names.
# Real weights: a model id such as "google/gemma-2-2b" (downloaded once into the Hugging Face cache;
# accept its licence first, see notebook 14) or a checkpoint folder such as "/models/gemma-2-2b".
import os

MODEL = ""
if MODEL:
    os.environ["GEMMA_LAB_MODEL"] = MODEL

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import gemma_lab.exercises.lesson13_gemma2_and_gemma3  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import PRESETS, Gemma, init_weights, viz
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.model import attention_mask
from gemma_lab.notebook import describe, load_lesson_model

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## 1. Three small models, one per generation
#
# The presets `test-gemma`, `test-gemma2` and `test-gemma3` are the three architectures at toy size
# (random weights, instant to build). Printing one block of each shows the new modules:
# `ln1_post`/`ln2_post` (sandwich norms) from Gemma 2 on, and `q_norm`/`k_norm` in Gemma 3.

# %%
small = {family: init_weights(Gemma(PRESETS[name]), seed=0, std=0.1).eval()
         for family, name in ((1, "test-gemma"), (2, "test-gemma2"), (3, "test-gemma3"))}
for family, small_model in small.items():
    cfg = small_model.cfg
    print(f"--- Gemma {family}: sandwich_norms={cfg.sandwich_norms}, qk_norm={cfg.qk_norm}, "
          f"attn_softcap={cfg.attn_softcap}, final_softcap={cfg.final_softcap}, "
          f"sliding_window={cfg.sliding_window}")
    print(small_model.blocks[0])

# %% [markdown]
# ## 2. Sandwich norms
#
# In Gemma 1 a block adds whatever attention and the MLP produce: `x + Attn(RMSNorm(x))`. Gemma 2
# and 3 normalise that output before adding it: `x + RMSNorm(Attn(RMSNorm(x)))`. What a block can
# add is then bounded by the norm's learned gain, whatever happens inside, which keeps the residual
# stream from growing layer after layer and makes deep models train more stably. With equal random
# weights, compare what each block adds (`hook_attn_out`, `[batch, pos, d_model]`):

# %%
random_tokens = torch.randint(3, 512, (1, 24), generator=torch.Generator().manual_seed(0))  # [batch, pos]
for family in (1, 2):
    _, cache = small[family].run_with_cache(random_tokens, names_filter=lambda name: name.endswith("hook_attn_out"))
    sizes = [f"{cache['attn_out', layer][0].norm(dim=-1).mean():.2f}" for layer in range(small[family].cfg.n_layers)]
    print(f"Gemma {family}: mean |attn_out| per layer: {', '.join(sizes)}  (sqrt(d_model) = {64 ** 0.5:.0f})")

# %% [markdown]
# With the post-norm (gain `1 + w`, here `w = 0`) every vector Gemma 2 adds has norm `sqrt(d_model)`
# exactly, whatever the attention weights are.
#
# ## 3. Softcaps (Gemma 2)
#
# Gemma 2 bounds attention scores and final logits *smoothly*: `cap * tanh(x / cap)` is almost `x`
# for small `x` and never leaves `(-cap, cap)`. Scores use `cap = 50`, logits `cap = 30`. A hard
# clamp would also bound them, but its gradient is zero beyond the cap; tanh keeps a gradient.
# Gemma 3 dropped the score softcap in favour of q/k norm (section 5).
#
# **Exercise.** Write `softcap(x, cap)`.

# %% tags=["exercise"] exercise="softcap"
def softcap(x, cap):
    """cap * tanh(x / cap): about x near zero, never beyond ±cap. Keeps x's shape and dtype."""
    raise NotImplementedError  # your code here


# %%
check("softcap", softcap)

# %%
x = torch.linspace(-150, 150, 601)
with plt.ioff():
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
plt.close(fig)
ax.plot(x, x, color="0.7", linestyle="--", label="no cap")
for cap, what in ((50.0, "attention scores, cap 50"), (30.0, "final logits, cap 30")):
    ax.plot(x, cap * torch.tanh(x / cap), label=what)
ax.set(xlim=(-150, 150), ylim=(-80, 80), xlabel="x", ylabel="cap · tanh(x / cap)", title="Gemma 2's softcaps")
ax.legend()
display(fig)

# %% [markdown]
# Softcapping the logits never changes which token is most likely (tanh is increasing), but it does
# flatten the distribution when logits are large: the top probability shrinks. Softcapping scores
# is why Gemma 2 cannot use the fused attention kernel (it has no softcap): `gemma_lab` switches
# to the explicit einsum path, `hook_attn_scores_pre_softcap` then `hook_attn_scores`.
#
# ## 4. Sliding-window attention (Gemma 2 and 3)
#
# On a *local* layer a query sees only the last `sliding_window` positions, itself included:
# key `k` is visible from query `q` when `k <= q` and `q - k < window`. A local layer can be computed
# in `O(pos x window)` instead of `O(pos²)` and their KV cache holds at most `window` tokens; the
# *global* layers in between still see everything, so information can travel any distance.
#
# **Exercise.** Write `sliding_window_mask(n_pos, window)`: a bool `[q_pos, k_pos]` tensor, True
# where a query may attend. (`check` compares it with the mask the model itself uses.)

# %% tags=["exercise"] exercise="sliding_window_mask"
def sliding_window_mask(n_pos, window):
    """[q_pos, k_pos] bool: True where query q may attend to key k on a local layer."""
    raise NotImplementedError  # your code here


# %%
check("sliding_window_mask", sliding_window_mask)

# %% [markdown]
# Here is the mask in a real pattern: layer 0 of `test-gemma3` is local with a window of 8; its
# last layer is global. Grey cells are masked.

# %%
cfg3 = small[3].cfg
_, cache3 = small[3].run_with_cache(random_tokens, names_filter=lambda name: name.endswith("hook_pattern"))
positions = torch.arange(random_tokens.shape[1])[None]
every_key = torch.ones_like(positions, dtype=torch.bool)
labels = [str(p) for p in range(random_tokens.shape[1])]
with plt.ioff():
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
plt.close(fig)
for ax, layer in zip(axes, (0, cfg3.n_layers - 1)):
    window = cfg3.sliding_window if cfg3.is_local(layer) else None
    allowed = attention_mask(positions, positions, every_key, window)[0]  # [q_pos, k_pos]
    viz.attention_pattern(cache3["pattern", layer][0, 0], labels, mask=~allowed, ax=ax,
                          title=f"test-gemma3 layer {layer}: {cfg3.layer_types[layer]}"
                                + (f", window {window}" if window else ""))
display(fig)

# %% [markdown]
# ## 5. The layer pattern
#
# Gemma 2 alternates local and global layers, starting with a local one. Gemma 3 has five local
# layers for every global one: a 128k-token context then needs a full KV cache on only one layer in
# six. Your lesson model's pattern is in the last row.

# %%
shown = ["gemma2-2b", "gemma2-9b", "gemma3-1b", "gemma3-4b", "gemma3-27b"]
rows = [(name, PRESETS[name].layer_types) for name in shown] + [("lesson model", model.cfg.layer_types)]
longest = max(len(types) for _, types in rows)
grid = np.full((len(rows), longest), np.nan)
for row, (_, types) in enumerate(rows):
    grid[row, : len(types)] = [1.0 if kind == "local" else 0.0 for kind in types]

with plt.ioff():
    fig, ax = plt.subplots(figsize=(11, 2.8), layout="constrained")
plt.close(fig)
ax.imshow(np.ma.masked_invalid(grid), cmap="coolwarm", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
ax.set_yticks(range(len(rows)), [name for name, _ in rows])
ax.set_xlabel("layer")
ax.set_title("layer types: red = local (sliding window), blue = global")
display(fig)

# %% [markdown]
# ## 6. q/k norm (Gemma 3)
#
# Attention scores are dot products `q · k`. If training makes queries or keys large, scores grow
# without bound, the softmax saturates, and training becomes unstable; Gemma 2's softcap limited
# the *scores*. Gemma 3 instead applies RMSNorm to every query and key head (over `d_head`)
# before RoPE, so each has norm about `sqrt(d_head)` times its gain. Below we multiply the query
# weights of both small models by 20 and look at the largest score.

# %%
for family in (1, 3):
    scaled = init_weights(Gemma(small[family].cfg), seed=0, std=0.1).eval()
    for block in scaled.blocks:
        block.attn.q_proj.weight.mul_(20)
    for name, m in (("as trained", small[family]), ("queries x 20", scaled)):
        _, cache = m.run_with_cache(random_tokens, names_filter=lambda n: n.endswith("hook_attn_scores_pre_softcap"))
        top = cache["attn_scores_pre_softcap", 0].abs().max()
        print(f"Gemma {family} {name:>13}: largest |score| in layer 0 = {top:8.2f}")

# %% [markdown]
# ## 7. Two RoPE bases (Gemma 3)
#
# RoPE rotates each pair of dimensions `(i, i + d_head/2)` of queries and keys by
# `pos * theta ** (-2i / d_head)`. With `theta = 10 000` the slowest pair turns a full circle every
# ~60 000 positions; with `theta = 1 000 000` (Gemma 3's global layers) every ~6 million, so
# positions far apart stay distinguishable in a 128k context. Local layers never look further than
# their window and keep `theta = 10 000`. The 4B, 12B and 27B models also divide global positions
# by 8 (`rope_scale`), stretching a context trained at 32k to 128k.

# %%
display(viz.rotary_illustration(d_head=256, positions=range(0, 4096, 512), theta=10_000, pairs=[0, 64, 127]))
display(viz.rotary_illustration(d_head=256, positions=range(0, 4096, 512), theta=1_000_000, pairs=[0, 64, 127]))

# %% [markdown]
# ## 8. How big are the real models?
#
# Building a model on PyTorch's `meta` device creates every module and parameter *shape* but no
# data, so even the 27B models are instant and take no memory. `model.n_params()` counts the
# parameters (the tied embedding once) and matches `GemmaConfig.n_params()`.

# %%
full_size = [name for name in PRESETS if not name.startswith("test-")]
counts = {}
for name in full_size:
    cfg = PRESETS[name]
    with torch.device("meta"):
        meta_model = Gemma(cfg)
    counts[name] = (meta_model.n_params(), cfg.vocab_size * cfg.d_model)
    assert counts[name][0] == cfg.n_params()
    print(f"{name:>12}: {counts[name][0] / 1e9:6.2f} B parameters, of which embedding "
          f"{counts[name][1] / counts[name][0]:5.1%}; bf16 weights {2 * counts[name][0] / 2**30:6.1f} GiB")

with plt.ioff():
    fig, ax = plt.subplots(figsize=(9, 3.5), layout="constrained")
plt.close(fig)
embedding = np.array([counts[name][1] for name in full_size]) / 1e9
rest = np.array([counts[name][0] for name in full_size]) / 1e9 - embedding
ax.bar(full_size, embedding, label="embedding (vocab x d_model)")
ax.bar(full_size, rest, bottom=embedding, label="everything else")
ax.set(ylabel="parameters (billions)", title="full-size presets, counted on the meta device")
ax.tick_params(axis="x", rotation=45)
ax.legend()
display(fig)

# %% [markdown]
# The small models are mostly embedding: Gemma's vocabulary is 256k (Gemma 3: 262k) tokens, so
# `gemma3-270m` spends nearly two thirds of its parameters on it.
#
# ## Summary
#
# * Sandwich norms bound what each block adds; softcaps bound scores and logits smoothly (Gemma 2);
#   q/k norm bounds scores by normalising queries and keys (Gemma 3).
# * Local layers see a sliding window; Gemma 2 alternates them with global layers, Gemma 3 uses 5:1.
# * Gemma 3's global layers use RoPE base 1 000 000 for long contexts.
# * All of it is configuration: `GemmaConfig` fields, one model file.
#
# **Next:** notebook 14 runs all of this on real weights.
