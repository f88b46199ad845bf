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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/03_rotary_embeddings.ipynb)**
#
# # 03 · Rotary position embeddings
#
# **Time:** about 35 minutes. **Before this:** notebook 02 (embeddings and RMSNorm).
#
# Attention compares a query with keys by a dot product, and a dot product does not know where the
# two vectors came from: without help, "John gave Mary" and "Mary gave John" would look the same to
# it. Gemma tells positions apart with **rotary position embeddings** (RoPE, Su et al. 2021): before
# the comparison, each query and key is *rotated* by an angle that grows with its position. Rotations
# have one lovely property: the dot product of two rotated vectors depends only on the *difference*
# of their angles, so attention sees relative positions.
#
# **Learning goals.** By the end you can
#
# 1. explain RoPE as rotating `d_head/2` pairs of coordinates, pair `i` at `theta ** (-2i / d_head)`
#    radians per position, and why low pairs turn fast and high pairs slowly;
# 2. say which coordinates form a pair in Gemma, `(i, i + d_head/2)` ("rotate-half"), and why that matters;
# 3. compute the angles' cos and sin, and apply the rotation to queries and keys yourself;
# 4. show that the rotated dot product depends only on the offset, and match the model's rotated queries.

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
import torch
from einops import rearrange

import gemma_lab.exercises.lesson03_rotary_embeddings  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import model as gemma_model
from gemma_lab import viz
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
cfg = model.cfg
print(describe(model))

# %% [markdown]
# ## 1. One pair, one rotation
#
# Take two coordinates `(a, b)` of a query and turn them, as a 2-D vector, by an angle `φ`:
#
# $$(a, b) \mapsto (a\cos\varphi - b\sin\varphi,\; a\sin\varphi + b\cos\varphi)$$
#
# Rotate a query at position `m` by `m·ω` and a key at position `n` by `n·ω`. Their dot product is the
# dot product of the unrotated vectors *with one of them turned by `(n - m)·ω`*: only the offset
# `n - m` survives. RoPE does this for `d_head/2` pairs at once, each pair `i` with its own speed
#
# $$\omega_i = \theta^{-2i/d_{head}}, \qquad i = 0, \dots, d_{head}/2 - 1$$
#
# Pair 0 turns one radian per position (it distinguishes neighbours); the last pair turns about
# `1/theta` radians per position (it changes slowly over thousands of tokens). `theta` is 10 000 in
# Gemma 1 and 2; Gemma 3 uses 10 000 on its sliding-window ("local") layers and 1 000 000 on its
# global layers, and its larger models also stretch positions on global layers by a factor (`scale`,
# dividing every position by 8).
#
# **Which coordinates form a pair?** In Gemma (as in the reference implementation), coordinate `i` pairs
# with `i + d_head/2`: the vector is split into two halves, and the first half rotates against the
# second ("rotate-half"). Some other models pair neighbours `(2i, 2i+1)`. Both are valid RoPE, but the
# weights were trained with one of them: use the other and the model breaks.
#
# This model's RoPE, layer by layer:

# %%
for layer in range(cfg.n_layers):
    theta, scale = cfg.rope_for_layer(layer)
    print(f"layer {layer:>2} ({cfg.layer_types[layer]:>6}): theta = {theta:>11,.0f}   position scale = {scale:g}")

# %% [markdown]
# Each panel below is one pair of coordinates of a head, seen as a 2-D vector starting at `(1, 0)`,
# and the arrows show where it has turned to at positions 0 to 7: the first pair turns fast, the last
# barely moves.

# %%
theta0, _ = cfg.rope_for_layer(0)
viz.rotary_illustration(d_head=cfg.d_head, theta=theta0)

# %% [markdown]
# ## 2. Exercise: the angles
#
# Write `rotary_cos_sin(positions, d_head, theta)`. For `positions [batch, pos]` (integers), compute the
# angles `position * theta ** (-2i / d_head)` for `i = 0 .. d_head/2 - 1` in float32, shape
# `[batch, pos, d_head/2]`; then repeat them **as two halves** (`torch.cat([angles, angles], -1)`) so
# that coordinate `i` and coordinate `i + d_head/2` share an angle. Return `(cos, sin)`, each
# `[batch, pos, d_head]`, float32.

# %% exercise="rotary_cos_sin" tags=["exercise"]
def rotary_cos_sin(positions: torch.Tensor, d_head: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [batch, pos, d_head] (float32) of the angles position * theta ** (-2i / d_head), as two halves."""
    raise NotImplementedError  # your code here


# %%
check("rotary_cos_sin", rotary_cos_sin)

# %%
# solution("rotary_cos_sin")  # uncomment to see one way to write it

# %% [markdown]
# ## 3. Exercise: the rotation
#
# With `x1, x2` the two halves of a head vector, the rotation of every pair at once is
#
# $$x \mapsto x \odot \cos + \mathrm{rotate\_half}(x) \odot \sin, \qquad \mathrm{rotate\_half}(x) = [-x_2,\; x_1]$$
#
# (check one pair against the 2-D formula above: the first half gets `x1·cos − x2·sin`, the second
# `x2·cos + x1·sin`).
#
# Write `apply_rotary(x, cos, sin)` for `x [batch, pos, head, d_head]` and `cos, sin [batch, pos, d_head]`.
# Every head at a position turns by the same angles, so give `cos` and `sin` a `head` axis of size 1
# (`rearrange(cos, "batch pos d_head -> batch pos 1 d_head")`) and let broadcasting do the rest.
# Return the shape and dtype of `x`.

# %% exercise="apply_rotary" tags=["exercise"]
def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (i, i + d_head/2) of x [batch, pos, head, d_head] by its angle."""
    raise NotImplementedError  # your code here


# %%
check("apply_rotary", apply_rotary)

# %%
# solution("apply_rotary")  # uncomment to see one way to write it

# %% [markdown]
# ## 4. Only the offset matters
#
# The package has both functions (`gemma_lab.model.rotary_cos_sin` also takes the position scale and
# the dtype). With them, rotate one query and one key to many pairs of positions: the scores for
# `(m, n)` and `(m + 100, n + 100)` agree, because only `n - m` matters.

# %%
generator = torch.Generator().manual_seed(0)
q = torch.randn(1, 1, 1, cfg.d_head, generator=generator)  # [batch, pos, head, d_head]
k = torch.randn(1, 1, 1, cfg.d_head, generator=generator)


def rotated(x, position, theta):
    cos, sin = gemma_model.rotary_cos_sin(torch.tensor([[position]]), cfg.d_head, theta, 1.0, torch.float32)
    return gemma_model.apply_rotary(x, cos, sin)


for m, n in [(3, 1), (103, 101), (1003, 1001), (10, 10), (510, 510)]:
    score = (rotated(q, m, theta0) * rotated(k, n, theta0)).sum().item()
    print(f"query at {m:>4}, key at {n:>4} (offset {m - n}): score {score:+.5f}")

# %% [markdown]
# How does the score of a vector with *itself* change with the offset? The pairs turn at different
# speeds and soon fall out of step, so on average the score drops with distance, with ripples from
# the fast pairs: nearby tokens look alike to a head unless its weights say otherwise. A larger
# `theta` (Gemma 3's global layers) keeps vectors similar over longer distances. (Averaged over 64
# random vectors, at Gemma's usual `d_head = 256`.)

# %%
offsets = torch.arange(0, 400)
vectors = torch.randn(64, 256, generator=generator)  # [sample, d_head]
fig, ax = plt.subplots(figsize=(8, 3.2))
for theta in sorted({10_000.0, 1_000_000.0, cfg.rope_theta_local, cfg.rope_theta}):
    cos, sin = gemma_model.rotary_cos_sin(offsets[None], 256, theta, 1.0, torch.float32)  # [1, offset, d_head]
    turned = gemma_model.apply_rotary(vectors[None, None].expand(1, len(offsets), 64, 256), cos, sin)
    similarity = (turned[0] * vectors).sum(-1) / vectors.pow(2).sum(-1)  # [offset, sample]
    ax.plot(offsets, similarity.mean(-1), label=f"theta = {theta:,.0f}")
ax.set_xlabel("offset n - m (positions)")
ax.set_ylabel("score / score at offset 0")
ax.set_title("a vector against itself, rotated (mean of 64 vectors, d_head = 256)")
ax.legend()
plt.show()

# %% [markdown]
# ## 5. In the model
#
# The hooks `hook_q` and `hook_rot_q` hold each layer's queries before and after the rotation,
# `[batch, pos, head, d_head]`. (Gemma 3 normalises each query head with `q_norm` between the two: an
# RMSNorm over `d_head`, like lesson 02's.) Rotating `hook_q` by the positions of the prompt gives
# `hook_rot_q` exactly.

# %%
prompt = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(prompt)])
_, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_q", "blocks.0.attn.hook_rot_q"])
attn = model.blocks[0].attn
q0 = cache["blocks.0.attn.hook_q"]  # [batch, pos, head, d_head]
if attn.q_norm is not None:
    q0 = attn.q_norm(q0)  # Gemma 3: RMSNorm over d_head, before the rotation
positions = torch.arange(tokens.shape[1])[None]  # [batch, pos]
theta, scale = cfg.rope_for_layer(0)
cos, sin = gemma_model.rotary_cos_sin(positions, cfg.d_head, theta, scale, q0.dtype)
print("package apply_rotary equals hook_rot_q:",
      torch.equal(gemma_model.apply_rotary(q0, cos, sin), cache["blocks.0.attn.hook_rot_q"]))
try:
    yours = apply_rotary(q0, cos, sin)
    gap = (yours - cache["blocks.0.attn.hook_rot_q"]).abs().max().item()
    print(f"your apply_rotary: max |difference| {gap:.2g}")
except NotImplementedError:
    print("(write apply_rotary above to compare it with the model)")

# %% [markdown]
# Keys are rotated the same way (`hook_k` → `hook_rot_k`). Values are not rotated: position should
# decide *where* a head looks, not *what* it reads there.
#
# **Takeaways.** RoPE rotates `d_head/2` pairs of each query and key, pair `i` at
# `theta ** (-2i / d_head)` radians per position; in Gemma the pairs are `(i, i + d_head/2)`. The
# scores then depend only on relative positions. Gemma 3 uses two thetas (local and global layers).
# Next, lesson 04 puts rotated queries and keys to work: attention.
