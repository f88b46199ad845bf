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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/07_generation_and_sampling.ipynb)**
#
# # 07 · Generation, the key/value cache and sampling
#
# **Time:** about 45 minutes. **Before this:** notebook 06 (the full forward pass).
#
# A forward pass gives one distribution over the next token. Text comes from a loop: choose a token,
# append it, run again. Two questions make that loop practical and useful. How not to recompute the
# whole prefix at every step? With a **key/value cache**. And which token to choose? The most likely
# one (greedy), or a random draw from a distribution reshaped by **temperature**, **top-k** and **top-p**.
#
# **Learning goals.** By the end you can
#
# 1. write the generation loop by hand, and say what each step recomputes;
# 2. explain the key/value cache (prefill, then one token per step) and verify that cached decoding
#    gives the same logits as recomputing everything;
# 3. explain temperature, top-k and top-p, and write the top-k and top-p filters yourself;
# 4. sample reproducibly with seeds, and explore the filters in the `SamplingPlayground`.

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

from gemma_lab import sampling, viz
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.generation import decode_step, generate, prefill
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import SamplingPlayground

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
cfg = model.cfg
print(describe(model))

prompt = "The capital of France is"
prompt_ids = tokenizer.encode(prompt)  # <bos> first
N_NEW = 10

# %% [markdown]
# ## 1. The loop, by hand
#
# Greedy decoding: run the model on everything so far, take the most likely next token, append it,
# repeat. Each step runs the *whole* sequence through the model again, although only the last
# position's logits are used.

# %%
ids = list(prompt_ids)
for step in range(N_NEW):
    logits = model(torch.tensor([ids]))  # [batch=1, pos, vocab]: pos grows by one each step
    ids.append(int(logits[0, -1].argmax()))
by_hand = ids[len(prompt_ids):]
print(repr(tokenizer.decode(by_hand)))

reference = generate(model, prompt, tokenizer=tokenizer, max_new_tokens=N_NEW, stop=[])
print("same tokens as generate():", reference.token_ids == by_hand)

# %% [markdown]
# ## 2. The key/value cache
#
# In a step, what does the new token need from the earlier ones? Only their **keys and values**, in
# every layer: queries are only needed for the position being predicted, and the earlier positions'
# keys and values do not change when a token is appended (attention is causal). So keep them:
#
# * **prefill**: run the prompt once, storing every layer's keys and values `[batch, kv_head, pos, d_head]`;
# * **decode step**: run only the new token (`pos = 1`); its attention reads the cached keys and
#   values plus its own, and appends its own to the cache.
#
# The positions continue from the cache, so the rotation (lesson 03) and the mask (lesson 04) see
# absolute positions. On sliding-window layers the cache only needs the last `window` tokens.

# %%
logits, cache = prefill(model, torch.tensor([prompt_ids]), max_len=len(prompt_ids) + N_NEW)  # [batch, vocab]
cached_ids, gaps = list(prompt_ids), []
for step in range(N_NEW):
    token = int(logits[0].argmax())
    full = model(torch.tensor([cached_ids]))[0, -1]  # the same logits, recomputed from scratch, to compare
    gaps.append((logits[0] - full).abs().max().item())
    cached_ids.append(token)
    logits = decode_step(model, [token], cache)  # [batch, vocab], one position through the model
print("same tokens as the loop by hand:", cached_ids[len(prompt_ids):] == by_hand)
print(f"largest |difference| between cached and recomputed logits over {N_NEW} steps: {max(gaps):.2g}")
print(f"{cache}: {cache.nbytes() / 1024:,.1f} KiB of keys and values")

# %% [markdown]
# With the tiny model both loops take milliseconds per step; with a real model and a long text, the
# cache turns each step from work proportional to the whole text into work for one token. The memory
# the cache costs is what grouped-query attention reduces (lesson 04): per token and layer,
# `2 · n_kv_heads · d_head` numbers.
#
# ## 3. From logits to a choice: temperature
#
# The model's distribution is `softmax(logits)`. **Temperature** `T` divides the logits first:
# `softmax(logits / T)`. `T < 1` sharpens the distribution towards the most likely tokens, `T > 1`
# flattens it; `T → 0` is greedy decoding.

# %%
last_logits = model(torch.tensor([prompt_ids]))[0, -1]  # [vocab]
temperatures = (0.5, 1.0, 2.0)
fig, axes = plt.subplots(1, len(temperatures), figsize=(15, 3.6))
for ax, temperature in zip(axes, temperatures):
    probs = sampling.logits_to_probs(last_logits, temperature=temperature)
    viz.top_k_bars(probs, tokenizer.id_to_piece, k=8, title=f"temperature {temperature}", ax=ax)
plt.show()

# %% [markdown]
# ## 4. Exercise: top-k
#
# Even at a sensible temperature, the many unlikely tokens together hold real probability, and one
# bad draw can derail a text. **Top-k** keeps only the `k` most likely tokens: every logit below the
# `k`-th largest becomes `-inf`, so its probability after the softmax is exactly 0 (logits tied with the
# `k`-th largest stay). `k` larger than the vocabulary keeps everything.
#
# Write `top_k_filter(logits, k)` for `logits [..., vocab]` (any leading axes, such as `batch`):
# return the filtered logits, same shape. (`torch.topk` or `torch.sort` along the last axis.)

# %% exercise="top_k_filter" tags=["exercise"]
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th included); set the others to -inf."""
    raise NotImplementedError  # your code here


# %%
check("top_k_filter", top_k_filter)

# %%
# solution("top_k_filter")  # uncomment to see one way to write it

# %% [markdown]
# ## 5. Exercise: top-p (nucleus sampling)
#
# A fixed `k` is too many when the model is sure and too few when it is not. **Top-p** keeps the
# smallest set of most likely tokens whose probabilities add up to at least `p` (Holtzman et al. 2019):
# sort the probabilities in descending order, and keep a token if the tokens *before* it hold less than
# `p`. So the token that carries the running total past `p` stays, and so does the most likely token,
# always. `p = 1` keeps everything.
#
# Write `top_p_filter(logits, p)` for `logits [..., vocab]`: compute the probabilities in float32, sort,
# take the cumulative sum, decide which sorted tokens to remove, put that decision back in vocabulary
# order (`scatter` with the sort's indices), and set the removed logits to `-inf`.

# %% exercise="top_p_filter" tags=["exercise"]
def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens holding at least p of the probability; the rest -inf."""
    raise NotImplementedError  # your code here


# %%
check("top_p_filter", top_p_filter)

# %%
# solution("top_p_filter")  # uncomment to see one way to write it

# %% [markdown]
# The package applies the filters in the order transformers does: repetition penalty, temperature,
# top-k, top-p, min-p (`sampling.FILTER_ORDER`). `sampling.filter_report` says which tokens each step
# removed. On the model's distribution after the prompt:

# %%
report = sampling.filter_report(last_logits, temperature=1.0, top_k=20, top_p=0.9)
for step in sampling.FILTER_ORDER:
    print(f"{step:>18} removed {int(report.removed[step].sum()):>7} tokens")
print(f"{int((report.probs > 0).sum())} of {cfg.vocab_size} tokens can still be drawn")
try:
    mine = top_p_filter(top_k_filter(last_logits, 20), 0.9)
    print("your filters keep the same tokens:", torch.equal(torch.isfinite(mine), report.probs > 0))
except NotImplementedError:
    print("(write top_k_filter and top_p_filter above to compare them with the package)")

# %% [markdown]
# ## 6. Explore, then sample reproducibly
#
# The `SamplingPlayground` shows the next-token distribution for a prompt and what each filter does to
# it: drag temperature, top-k, top-p and min-p, and draw samples with the seed shown.

# %%
SamplingPlayground(model, tokenizer, text=prompt, temperature=1.0, top_k=20)

# %% [markdown]
# Sampling uses a random generator; a **seed** fixes it, so the same seed gives the same text, and
# different seeds give different continuations of the same prompt.

# %%
for seed in (0, 1, 0):
    result = generate(model, prompt, tokenizer=tokenizer, max_new_tokens=N_NEW, temperature=0.8, top_p=0.9,
                      seed=seed)
    print(f"seed {seed}: {result.text!r}")

# %% [markdown]
# **Takeaways.** Generation is a loop of forward passes; the key/value cache makes each step process
# one token, with logits equal to recomputing everything. Temperature reshapes the distribution, top-k
# and top-p cut its tail by setting logits to `-inf`, and a seed makes a draw reproducible. With lesson
# 07 the model is complete; lessons 08 to 14 use hooks to look at what it computes.
