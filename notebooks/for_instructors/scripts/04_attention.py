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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/04_attention.ipynb)**
#
# # 04 · Attention and multi-query attention
#
# **Time:** about 50 minutes. **Before this:** notebook 03 (rotary embeddings).
#
# Attention is the only place where tokens exchange information. Each token asks a question (its
# **query**), every earlier token offers a label (its **key**) and a message (its **value**); the
# better a key matches the query, the more of that token's value is copied over. Gemma adds its own
# details: a scale set by `query_pre_attn_scalar`, a softcap on the scores (Gemma 2), sliding-window
# layers that only look back a fixed distance, and key/value heads shared by groups of query heads.
#
# **Learning goals.** By the end you can
#
# 1. follow the shapes from the residual stream to `q [batch, pos, head, d_head]`, `k`, `v`
#    `[batch, pos, kv_head, d_head]` and on to scores `[batch, head, q_pos, k_pos]`;
# 2. build the causal and sliding-window masks from positions, and draw them;
# 3. compute an attention pattern: scale, softcap, mask, softmax over the keys;
# 4. write grouped-query attention with the `group` axis, `head = (kv_head group)`, and say why it saves memory;
# 5. read the model's real attention patterns, and explore them with the `AttentionExplorer`.

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
import torch
from einops import einsum, rearrange, repeat  # noqa: F401  (einsum and rearrange: for your exercises)

from gemma_lab import model as gemma_model
from gemma_lab import viz
from gemma_lab.config import PRESETS
from gemma_lab.exercises import check, lesson04_attention, solution  # noqa: F401  (lesson04_attention: the package's answers)
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import AttentionExplorer

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
cfg = model.cfg
print(describe(model))

prompt = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]
str_tokens = tokenizer.to_str_tokens(prompt)
logits, cache = model.run_with_cache(tokens, names_filter=lambda name: ".attn." in name)

# %% [markdown]
# ## 1. Queries, keys and values
#
# Attention reads the normalised residual stream `x [batch, pos, d_model]` and projects it three
# times. The query projection makes `n_heads` heads of width `d_head`; keys and values get only
# `n_kv_heads` heads. The split into heads is a named reshape:
#
# ```python
# q = rearrange(q_proj(x), "batch pos (head d_head) -> batch pos head d_head", head=cfg.n_heads)
# k = rearrange(k_proj(x), "batch pos (kv_head d_head) -> batch pos kv_head d_head", kv_head=cfg.n_kv_heads)
# ```
#
# Queries and keys are then rotated by position (lesson 03); values are not.

# %%
attn0 = model.blocks[0].attn
print(f"{cfg.attention_kind}: {cfg.n_heads} query heads, {cfg.n_kv_heads} key/value heads, "
      f"group = {cfg.group_size}, d_head = {cfg.d_head}")
for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    print(f"  {name}.weight {tuple(getattr(attn0, name).weight.shape)}")
for hook in ("hook_rot_q", "hook_rot_k", "hook_v"):
    print(f"  blocks.0.attn.{hook:<11} {tuple(cache[f'blocks.0.attn.{hook}'].shape)}")

# %% [markdown]
# ## 2. Scores and their scale
#
# The score of query position `q_pos` for key position `k_pos` in head `head` is the dot product over
# `d_head`, times a scale:
#
# ```python
# scores = einsum(q, k, "batch q_pos head d_head, batch k_pos head d_head -> batch head q_pos k_pos") * scale
# ```
#
# Dot products of random vectors grow like `sqrt(d_head)`, so the classic scale is `d_head ** -0.5`
# (Gemma 1). Gemma 2 and 3 make it a config number: `query_pre_attn_scalar ** -0.5`. Mostly
# `query_pre_attn_scalar = d_head = 256`, but the 27B models use `d_model / n_heads` (144 and 168)
# while their heads are 128 wide: scaling by `sqrt(d_head)` there is a real, silent bug.
#
# **Softcap (Gemma 2 only).** Before masking, Gemma 2 squashes the scores smoothly into `(-50, 50)`:
# `scores = 50 * tanh(scores / 50)`, so no single score can dominate too extremely. Gemma 3 dropped it
# and normalises queries and keys instead (`q_norm`, `k_norm`).

# %%
print("query_pre_attn_scalar:", cfg.query_pre_attn_scalar, "  scale:", cfg.attn_scale,
      "  attention softcap:", cfg.attn_softcap)
for name in ("gemma-7b", "gemma2-9b", "gemma2-27b", "gemma3-27b"):
    preset = PRESETS[name]
    print(f"  {name:<11} d_head {preset.d_head}, scale = {preset.attn_scale:.5f} "
          f"(1/sqrt(d_head) = {preset.d_head ** -0.5:.5f})")

# %% [markdown]
# ## 3. The mask
#
# A token may not look at the future: the text after it is what the model must predict. So a query
# may attend to a key only if `k_pos <= q_pos` (the **causal** mask). On **sliding-window** layers
# (Gemma 2's even layers, five of every six layers in Gemma 3) a query also ignores keys `window` or
# more positions back: it sees itself and the `window - 1` tokens before it, so its cost stays fixed
# however long the text grows. Global layers see everything before them.
#
# Masks are built from **absolute positions**, not from indices: during generation with a key/value
# cache (lesson 07) a single new query at position 7 meets cached keys at positions 0 to 7.
#
# ### Exercise: attention_mask
#
# Write `attention_mask(q_positions, k_positions, window)`: for `q_positions [batch, q_pos]` and
# `k_positions [batch, k_pos]`, a bool tensor `[batch, q_pos, k_pos]`, True where the query may attend
# to the key. `window` is an int, or None on global layers. (Hint: give the positions axes of size 1
# so they broadcast against each other.)

# %% exercise="attention_mask" tags=["exercise"]
def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """[batch, q_pos, k_pos] bool, True where the query may attend to the key (causal, and within window)."""
    raise NotImplementedError  # your code here


# %%
check("attention_mask", attention_mask)

# %%
# solution("attention_mask")  # uncomment to see one way to write it

# %% [markdown]
# Drawn as a grid (rows are queries, columns keys, ■ allowed), with the package's own function:

# %%
def draw_mask(allowed):
    """Print a [q_pos, k_pos] bool mask as a grid: ■ allowed, · masked."""
    for row in allowed.tolist():
        print(" ".join("■" if keep else "·" for keep in row))


positions = torch.arange(8)[None]  # [batch=1, pos=8]
everyone = torch.ones_like(positions, dtype=torch.bool)
print("causal (global layer):")
draw_mask(gemma_model.attention_mask(positions, positions, everyone, None)[0])
print("\nsliding window of 3:")
draw_mask(gemma_model.attention_mask(positions, positions, everyone, 3)[0])
print("\none new token at position 7 against 8 cached keys, window of 4:")
draw_mask(gemma_model.attention_mask(torch.tensor([[7]]), positions, everyone, 4)[0])

# %% [markdown]
# ## 4. From scores to a pattern
#
# Masked scores are set to a very negative number (the package uses `torch.finfo(dtype).min`; `-inf`
# works too), then a **softmax over the keys** (`k_pos`, the last axis) turns each query's row into
# weights that are positive and sum to one: the **attention pattern** `[batch, head, q_pos, k_pos]`.
# The softmax runs in float32 and the pattern is cast back to the model's dtype.
#
# ### Exercise: attention_pattern
#
# Write `attention_pattern(q, k, allowed, query_pre_attn_scalar, softcap=None)` for
# `q [batch, q_pos, head, d_head]` and `k [batch, k_pos, head, d_head]` (one key head per query head
# here; grouping comes next) and `allowed [batch, q_pos, k_pos]` from your mask: scores, scale,
# softcap if one is given, mask, softmax. Return `[batch, head, q_pos, k_pos]` in `q`'s dtype.

# %% exercise="attention_pattern" tags=["exercise"]
def attention_pattern(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, query_pre_attn_scalar: float,
                      softcap: float | None = None) -> torch.Tensor:
    """Attention weights [batch, head, q_pos, k_pos]: softmax over k_pos of the scaled, capped, masked scores."""
    raise NotImplementedError  # your code here


# %%
check("attention_pattern", attention_pattern)

# %%
# solution("attention_pattern")  # uncomment to see one way to write it

# %% [markdown]
# The pattern then weights the values: `z = einsum(pattern, v, "... q_pos k_pos, ... k_pos d_head ->
# ... q_pos d_head")` per head, so `z [batch, pos, head, d_head]` is a weighted average of the values
# the query attended to. The heads are concatenated and projected back: `o_proj(z)` is what attention
# adds to the residual stream (after Gemma 2/3's post-attention norm, lesson 05).
#
# ## 5. Grouped-query attention
#
# Gemma shares key/value heads between query heads. With `n_kv_heads` key/value heads and
# `group = n_heads / n_kv_heads`, query head `h` uses key/value head `h // group`: consecutive query
# heads form a group. In einops this is the definition `head = (kv_head group)`:
#
# ```python
# q = rearrange(q, "batch q_pos (kv_head group) d_head -> batch q_pos kv_head group d_head", kv_head=n_kv_heads)
# scores = einsum(q, k, "batch q_pos kv_head group d_head, batch k_pos kv_head d_head "
#                       "-> batch kv_head group q_pos k_pos")
# ```
#
# One key/value head per query head is **multi-head** attention (Gemma 7B); a single one shared by all
# is **multi-query** (Gemma 2B, Gemma 3 1B); in between is **grouped-query**. The saving is memory:
# during generation every layer keeps the keys and values of every token (lesson 07), and that cache
# shrinks by the group size.

# %%
print(f"{'model':<12} {'kind':<14} {'heads':>5} {'kv':>3} {'group':>5}   KV cache per token, all layers, bf16")
for name in ("gemma-2b", "gemma-7b", "gemma2-2b", "gemma2-27b", "gemma3-1b", "gemma3-27b"):
    preset = PRESETS[name]
    per_token = 2 * preset.n_kv_heads * preset.d_head * 2 * preset.n_layers  # keys and values, 2 bytes each
    print(f"{name:<12} {preset.attention_kind:<14} {preset.n_heads:>5} {preset.n_kv_heads:>3} "
          f"{preset.group_size:>5}   {per_token / 1024:,.0f} KiB")

# %% [markdown]
# ### Exercise: grouped_attention
#
# Write `grouped_attention(q, k, v, allowed, query_pre_attn_scalar, softcap=None)` for
# `q [batch, q_pos, head, d_head]`, `k, v [batch, k_pos, kv_head, d_head]`: the scores per group as
# above, then scale, softcap, mask and softmax as before, then the pattern-weighted values. Return
# `z [batch, q_pos, head, d_head]` with the heads back in the order `(kv_head group)`, in `v`'s dtype.

# %% exercise="grouped_attention" tags=["exercise"]
def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                      query_pre_attn_scalar: float, softcap: float | None = None) -> torch.Tensor:
    """z [batch, q_pos, head, d_head]: each group of query heads attends with its own kv_head."""
    raise NotImplementedError  # your code here


# %%
check("grouped_attention", grouped_attention)

# %%
# solution("grouped_attention")  # uncomment to see one way to write it

# %% [markdown]
# ## 6. The model's attention
#
# `run_with_cache` kept every attention tensor of the prompt. Recomputing layer 0's pattern from its
# rotated queries and keys (each key head repeated for its group) gives the hooked pattern:

# %%
q0 = cache["blocks.0.attn.hook_rot_q"]  # [batch, pos, head, d_head]
k0 = repeat(cache["blocks.0.attn.hook_rot_k"], "batch pos kv_head d_head -> batch pos (kv_head group) d_head",
            group=cfg.group_size)
positions = torch.arange(tokens.shape[1])[None]
allowed0 = gemma_model.attention_mask(positions, positions, torch.ones_like(positions, dtype=torch.bool),
                                      attn0.window)
scalar = cfg.query_pre_attn_scalar or cfg.d_head
expected = cache["pattern", 0]  # shorthand for blocks.0.attn.hook_pattern
package = lesson04_attention.attention_pattern(q0, k0, allowed0, scalar, cfg.attn_softcap)
print(f"package pieces vs hook_pattern: max |difference| {(package - expected).abs().max().item():.2g}")
try:
    mine = attention_pattern(q0, k0, allowed0, scalar, cfg.attn_softcap)
    print(f"your attention_pattern vs hook_pattern: max |difference| {(mine - expected).abs().max().item():.2g}")
except NotImplementedError:
    print("(write attention_pattern above to compare it with the model)")

# %% [markdown]
# One head's pattern: each row is a query and shows how it spreads its attention over the keys up to
# itself (grey: masked). Tokens attending heavily to `<bos>` are "resting": lesson 09 explains why.

# %%
mask0 = ~allowed0[0]  # [q_pos, k_pos] True where masked (covers sliding windows too)
viz.attention_pattern(expected[0, 0], str_tokens, mask=mask0, title="layer 0, head 0")

# %%
last = cfg.n_layers - 1
allowed_last = gemma_model.attention_mask(positions, positions, torch.ones_like(positions, dtype=torch.bool),
                                          model.blocks[last].attn.window)
viz.attention_heads_grid(cache["pattern", last][0], str_tokens, layer=last, mask=~allowed_last[0])

# %% [markdown]
# ## 7. Explore
#
# The `AttentionExplorer` shows one layer's heads for any prompt. Pick a token to see what it attends
# to (its row) and which later tokens attend to it (its column). Look for heads that attend to the
# previous token, to `<bos>`, or to an earlier copy of the current token.

# %%
AttentionExplorer(model, tokenizer, text=prompt)

# %% [markdown]
# **Takeaways.** Scores are scaled dot products of rotated queries and keys, `[batch, head, q_pos,
# k_pos]`; Gemma scales by `query_pre_attn_scalar ** -0.5`, softcaps in Gemma 2, masks causally and
# (on local layers) to a window, and softmaxes over the keys in float32. Query heads come in groups
# sharing one key/value head, `head = (kv_head group)`. Next, lesson 05: the MLP, and how attention and
# MLP sit together in a block.
