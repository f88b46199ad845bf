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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/02_embeddings_and_rmsnorm.ipynb)**
#
# # 02 · Embeddings and RMSNorm
#
# **Time:** about 35 minutes. **Before this:** notebook 01 (tokenization).
#
# The first thing the model does with token ids is look up one vector per id: the **embedding**.
# From then on each token is a vector of `d_model` numbers, the *residual stream*, which every
# layer reads from and adds to. Before each layer reads the stream it is normalised, and Gemma
# normalises with **RMSNorm**. Both steps are short, and both carry a numerical detail that the
# reference implementation gets exactly right and that a first attempt usually gets slightly wrong.
#
# **Learning goals.** By the end you can
#
# 1. explain the embedding lookup as picking rows of `W_E [vocab, d_model]` (and as a one-hot matmul);
# 2. explain Gemma's `sqrt(d_model)` scale, and why it is rounded to the weight dtype before multiplying;
# 3. write RMSNorm the Gemma way: epsilon inside the square root, gain `(1 + w)`, computed in float32
#    and cast back once;
# 4. check both against the activations of the real forward pass.

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
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import gemma_lab.exercises.lesson02_embeddings_and_rmsnorm  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import viz
from gemma_lab.config import PRESETS
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
cfg = model.cfg
print(describe(model))

prompt = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]
logits, cache = model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.ln1.hook_normalized"])

# %% [markdown]
# ## 1. The embedding matrix
#
# The embedding is a matrix `W_E` of shape `[vocab, d_model]`: row `i` is the vector of token `i`.
# Embedding a sequence `tokens [batch, pos]` means picking rows, giving `[batch, pos, d_model]`.
# Equivalently, it is a matrix product with one-hot vectors: `one_hot(tokens) [batch, pos, vocab] @ W_E`
# (the same numbers, computed the slow way, which is why nobody does it).

# %%
W_E = model.embed.weight  # [vocab, d_model]
print("W_E:", tuple(W_E.shape), "= [vocab, d_model]", W_E.dtype)
picked = W_E[tokens]  # [batch, pos, d_model]
first = tokens[:, :3]  # the one-hot product is costly with a real vocabulary: three tokens are enough
one_hot = F.one_hot(first, cfg.vocab_size).to(W_E.dtype)  # [batch, pos, vocab]
print("rows picked:", tuple(picked.shape), "   one-hot product equal:", torch.equal(one_hot @ W_E, W_E[first]))

# %% [markdown]
# Gemma **ties** its embeddings: the same matrix turns the final residual stream back into logits
# (`logits = x @ W_E.T`, lesson 06). There is no separate output matrix.
#
# ## 2. The `sqrt(d_model)` scale
#
# Gemma multiplies the embedded vectors by `sqrt(d_model)`. The entries of `W_E` are small (it also
# serves as the unembedding, where large entries would mean huge logits); the scale brings the
# stream to a size comparable with what the layers add to it.
#
# The detail: the scale is first **rounded to the weight dtype**, then multiplied in that dtype. In
# a bfloat16 model `sqrt(1152) = 33.94` becomes `34.0`, and that is the number Gemma was trained
# with. (The reference implementation makes the same choice; an implementation that multiplies by
# the Python float gets slightly different embeddings, and slightly different logits.) The scales of
# the published sizes:

# %%
print(f"{'d_model':>8} {'sqrt (exact)':>13} {'bfloat16':>9} {'float16':>10}   models")
for d_model in sorted({preset.d_model for name, preset in PRESETS.items() if not name.startswith("test")}):
    exact = math.sqrt(d_model)
    as_bf16 = torch.tensor(exact).to(torch.bfloat16).item()
    as_fp16 = torch.tensor(exact).to(torch.float16).item()
    names = ", ".join(name for name, preset in PRESETS.items() if preset.d_model == d_model)
    print(f"{d_model:>8} {exact:>13.5f} {as_bf16:>9.4g} {as_fp16:>10.7g}   {names}")

# %% [markdown]
# ### Exercise: embed
#
# Write `embed(tokens, weight)`: the rows of `weight [vocab, d_model]` for `tokens [batch, pos]`,
# times `sqrt(d_model)`, with the scale made a tensor **in `weight.dtype`** before multiplying. The
# result has the weight's dtype and shape `[batch, pos, d_model]`. The check includes bfloat16
# weights, where the rounding is visible, and compares bit for bit: there is exactly one right answer.

# %% exercise="embed" tags=["exercise"]
def embed(tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """weight[tokens] * sqrt(d_model), the scale rounded to weight.dtype: [batch, pos, d_model]."""
    raise NotImplementedError  # your code here


# %%
check("embed", embed)

# %%
# solution("embed")  # uncomment to see one way to write it

# %% [markdown]
# The model's own embedding of the prompt was stored by `run_with_cache` under `hook_embed`. Your
# function should reproduce it exactly:

# %%
try:
    print("equal to the model's hook_embed:", torch.equal(embed(tokens, W_E), cache["hook_embed"]))
except NotImplementedError:
    print("(write embed above to compare it with the model)")
resid = cache["hook_embed"]  # [batch, pos, d_model]: where the residual stream starts

# %% [markdown]
# ## 3. RMSNorm
#
# Before attention and before the MLP, each token's vector is normalised on its own. Gemma uses
# **RMSNorm**: divide the vector by its root-mean-square, then multiply by a learned gain per
# coordinate. For one vector `x` of length `d_model` with gain offsets `w [d_model]`:
#
# $$\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{d_{model}}\sum_i x_i^2 + \epsilon}} \odot (1 + w)$$
#
# Compared with LayerNorm there is no mean subtraction and no bias. Three details:
#
# * **epsilon sits inside the square root** (`cfg.norm_eps`, 1e-6): it only matters for tiny vectors,
#   where it keeps the division finite;
# * the gain is **`1 + w`**: Gemma stores the *offset* from one, initialised to zero, so a freshly
#   initialised norm is the identity gain. Forget the `1 +` and every trained gain is off by one;
# * it is computed in **float32** whatever the model's dtype, and cast back to the input dtype **once,
#   at the end**. In bfloat16 the mean of squares and the division lose too many bits.
#
# In the axis vocabulary: `x [batch, pos, d_model]`, the mean runs over `d_model` (the last axis, with
# `keepdim=True` so it broadcasts), `w [d_model]`, and the output has the shape and dtype of `x`.
#
# ### Exercise: rms_norm

# %% exercise="rms_norm" tags=["exercise"]
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm of x [..., d_model] with gain offsets weight [d_model]; same shape and dtype as x."""
    raise NotImplementedError  # your code here


# %%
check("rms_norm", rms_norm)

# %%
# solution("rms_norm")  # uncomment to see one way to write it

# %% [markdown]
# Block 0 normalises the embedded prompt with its pre-attention norm `model.blocks[0].ln1`; the hook
# `blocks.0.ln1.hook_normalized` holds the result. Your version should agree to the last bit or two:
# `x / torch.sqrt(...)` and `x * torch.rsqrt(...)` (what the package and transformers use) round
# differently in the last bit, and either is a correct RMSNorm.

# %%
ln1 = model.blocks[0].ln1
try:
    mine = rms_norm(resid, ln1.weight, cfg.norm_eps)
    expected = cache["blocks.0.ln1.hook_normalized"]
    print(f"max |difference| from blocks.0.ln1.hook_normalized: {(mine - expected).abs().max().item():.2g}"
          f"   (bit for bit: {torch.equal(mine, expected)})")
except NotImplementedError:
    print("(write rms_norm above to compare it with the model)")

# %% [markdown]
# What the norm does to the prompt: on the left, the root-mean-square of each token's vector before
# and after `ln1`. Whatever size a vector had, afterwards its size is set by the gains alone. On the
# right, the gains `1 + w` of that norm, one per coordinate of `d_model`: a trained model learns to
# amplify some coordinates and silence others (a freshly initialised one has all gains at 1).

# %%
before = resid[0].float().pow(2).mean(-1).sqrt()  # [pos]
after = cache["blocks.0.ln1.hook_normalized"][0].float().pow(2).mean(-1).sqrt()  # [pos]
labels = [viz.readable_token(s) for s in tokenizer.to_str_tokens(prompt)]

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
x = torch.arange(len(labels))
left.bar(x - 0.2, before, width=0.4, label="before ln1 (embedding)")
left.bar(x + 0.2, after, width=0.4, label="after ln1")
left.set_xticks(x, labels, rotation=90, fontsize=8)
left.set_ylabel("root-mean-square")
left.legend(loc="lower right")
right.hist((1 + ln1.weight.float()).numpy(), bins=40, color="C2")
right.set_xlabel("gain 1 + w")
right.set_ylabel("coordinates")
right.set_title("blocks.0.ln1 gains")
plt.show()

# %% [markdown]
# ## 4. Why float32?
#
# Here is the same RMSNorm on the same bfloat16 input, once computed in bfloat16 throughout and once
# the Gemma way (float32 inside, one cast at the end). The inputs are large, as the residual stream of
# a real Gemma is after a few layers. The two results differ in many entries: errors of one or two
# bfloat16 steps, which after dozens of layers become different logits.

# %%
generator = torch.Generator().manual_seed(0)
x16 = (torch.randn(8, 2048, generator=generator) * 300).to(torch.bfloat16)  # [pos, d_model]
gain = (torch.randn(2048, generator=generator) * 0.5).to(torch.bfloat16)
in_bf16 = x16 * torch.rsqrt(x16.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + gain)
x32 = x16.float()
in_fp32 = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + gain.float())).to(torch.bfloat16)
differs = (in_bf16 != in_fp32).float().mean().item()
print(f"bfloat16-throughout differs from float32-inside in {differs:.0%} of the entries")

# %% [markdown]
# **Takeaways.** The embedding picks rows of `W_E [vocab, d_model]` and scales them by `sqrt(d_model)`
# rounded to the weight dtype. RMSNorm divides each vector by its root-mean-square (epsilon inside the
# root) and multiplies by `1 + w`, in float32, cast back once. Next, lesson 03: how Gemma tells
# positions apart, by rotating queries and keys.
