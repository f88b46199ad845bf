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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/09_attention_patterns_and_induction.ipynb)**
#
# # 09 · Attention patterns, previous-token heads and induction heads
#
# **Time:** about 45 minutes. **Before this:** notebook 08 (hooks and caching).
#
# An attention pattern shows, for every query position, how much it reads from each earlier key
# position. Some heads do one recognisable job everywhere. Two of them, working together, let a
# model continue a pattern it has seen once in its context: *previous-token heads* and *induction
# heads* (Olsson et al., 2022, "In-context Learning and Induction Heads").
#
# **Learning goals.** By the end you can
#
# 1. read a head's pattern `[q_pos, k_pos]` and explore every head with the `AttentionExplorer` widget;
# 2. explain why repeated random tokens are the standard test for induction, and see the loss drop
#    on the second copy;
# 3. compute previous-token and induction scores from a pattern `[batch, head, q_pos, k_pos]`;
# 4. find the induction heads of the model in a `[layer, head]` heatmap.

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
from IPython.display import display

import gemma_lab.exercises.lesson09_attention_patterns_and_induction  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp, viz
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import AttentionExplorer

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## 1. Reading a pattern
#
# `cache["pattern", layer]` is `[batch, head, q_pos, k_pos]`. One head's slice `[q_pos, k_pos]` is a
# lower-triangular matrix (a token never sees the future); each row sums to 1. Gemma 2 and 3 also
# have *local* layers that only see the last `sliding_window` keys (notebook 13).

# %%
prompt = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]
str_tokens = tokenizer.to_str_tokens(tokens[0])
_, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))

last_layer = model.cfg.n_layers - 1
viz.attention_heads_grid(cache["pattern", last_layer][0], str_tokens, layer=last_layer)

# %% [markdown]
# The `AttentionExplorer` widget shows the same patterns for any prompt, layer and head: type a
# prompt, move the sliders, and look for heads that do one thing (attend to `<bos>`, to the
# previous token, to the same token earlier, to names...).

# %%
AttentionExplorer(model, tokenizer, text=prompt, layer=last_layer)

# %% [markdown]
# ## 2. Repeated random tokens
#
# On ordinary text, a head that attends to an earlier position might be doing many things at once.
# Random tokens strip that away: the first copy of a random sequence is unpredictable, so a model
# can only predict the second copy *by looking back at the first*. The sequence is
#
#     <bos>, r_0, r_1, ..., r_{n-1}, r_0, r_1, ..., r_{n-1}        shape [batch, 1 + 2n]
#
# `interp.repeated_tokens` builds it. We keep `n` below the sliding window, so that local layers
# can see the whole first copy too, and draw ids the tokenizer can show (some checkpoints, such as
# Gemma 3 4B, have more embedding rows than their tokenizer has pieces).

# %%
window = model.cfg.sliding_window or model.cfg.max_seq_len
seq_len = min(20, window - 1)
n_ids = min(model.cfg.vocab_size, tokenizer.vocab_size)
repeated = interp.repeated_tokens(n_ids, seq_len, batch=4, seed=0, bos=tokenizer.bos_id)
print("tokens:", tuple(repeated.shape), "= [batch, 1 + 2 * seq_len]")
print("first row:", tokenizer.to_str_tokens(repeated[0])[: seq_len + 4], "...")

loss = interp.in_context_loss(model, seq_len, batch=4, seed=0, bos=tokenizer.bos_id)
first, second = float(loss["first_copy"]), float(loss["second_copy"])
print(f"mean loss on the first copy: {first:.2f} nats, on the second copy: {second:.2f} nats")
if second < 0.5 * first:
    print("-> the loss drops on the second copy: this model copies from its context.")
else:
    print("-> no clear drop: this model does not (yet) copy random tokens from its context.")

with plt.ioff():
    fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
plt.close(fig)
ax.plot(range(1, len(loss["per_position"]) + 1), loss["per_position"], marker=".")
ax.axvline(seq_len + 1, color="0.5", linestyle="--", label="second copy starts")
ax.set(xlabel="pos of the predicted token", ylabel="loss (nats)", title="next-token loss on repeated random tokens")
ax.legend()
display(fig)

# %% [markdown]
# A model with induction heads has a much lower loss on the second copy: it has learned to copy
# from context, as every real Gemma does. A model with random weights shows no drop, and neither
# does a model trained too briefly: induction heads appear suddenly during training, after a plateau
# (Olsson et al. call it a *phase change*). Whatever your model does, the tools below show which
# heads attend where.

# %%
_, rep_cache = model.run_with_cache(repeated, names_filter=lambda name: name.endswith("hook_pattern"))
rep_patterns = torch.stack([rep_cache["pattern", layer] for layer in range(model.cfg.n_layers)])
print("rep_patterns:", tuple(rep_patterns.shape), "= [layer, batch, head, q_pos, k_pos]")

# %% [markdown]
# ## 3. Exercise: a previous-token score
#
# A *previous-token head* attends from each position to the one just before it: in its pattern, the
# weight sits on the diagonal just below the main one, at `[q, q - 1]`. Write
# `prev_token_score(pattern)`: for a pattern `[batch, head, q_pos, k_pos]`, the mean of
# `pattern[b, h, q, q - 1]` over the batch and over every query `q >= 1`, per head: `[head]`.
#
# Hint: `tensor.diagonal(offset=..., dim1=-2, dim2=-1)` takes a diagonal of the last two axes.

# %% exercise="prev_token_score" tags=["exercise"]
def prev_token_score(pattern):
    """[batch, head, q_pos, k_pos] -> [head]: mean attention from each query to the key just before it."""
    raise NotImplementedError  # your code here


# %%
check("prev_token_score", prev_token_score)

# %% [markdown]
# ## 4. Exercise: an induction score
#
# An induction head at position `q` of the second copy (token `r_i`) looks for the earlier occurrence
# of `r_i` and attends to the token *after* it, `r_{i+1}`: that is the token to predict next. With
# one `<bos>` in front, `r_i` is at positions `1 + i` and `1 + n + i`, so the head attends from
# `q` to `q - n + 1`.
#
# Write `induction_score(pattern, seq_len)`: the mean of `pattern[b, h, q, q - seq_len + 1]` over the
# batch and the queries of the second copy (the last `seq_len` positions), per head: `[head]`.

# %% exercise="induction_score" tags=["exercise"]
def induction_score(pattern, seq_len):
    """[batch, head, q_pos, k_pos], n -> [head]: mean attention to the token after the earlier copy."""
    raise NotImplementedError  # your code here


# %%
check("induction_score", induction_score)

# %%
# solution("induction_score")  # uncomment to see one way to write it

# %% [markdown]
# ## 5. Every head at once
#
# `interp.head_scores` computes both scores (plus the *duplicate-token* score, attention to the
# earlier copy of the same token) for every layer and head on repeated random tokens. Its
# previous-token score, like the other two, averages over the queries of the second copy.

# %%
scores = interp.head_scores(model, seq_len, batch=4, seed=0, bos=tokenizer.bos_id)  # kind -> [layer, head]

with plt.ioff():
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), layout="constrained")
plt.close(fig)
for ax, (kind, values) in zip(axes, scores.items()):
    viz.patching_heatmap(values, kind="layer x head", value_label="score", title=kind.replace("_", " "), ax=ax)
display(fig)

# %% [markdown]
# Now the patterns of the best-scoring heads on the repeated sequence. A real induction head draws
# a stripe `seq_len - 1` positions below the diagonal, in the second copy; a previous-token head
# draws the stripe just below the diagonal. (If all scores above are near zero, the "strongest" head
# is only the least weak, and there is no stripe to see.) In a model that has both, the
# previous-token head sits in an *earlier* layer than the induction head: the induction head's keys
# carry "the token before me was ...", written by the previous-token head, and its query matches
# that against its own token.

# %%
def strongest(values):
    layer, head = divmod(int(values.argmax()), values.shape[1])
    return layer, head


with plt.ioff():
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
plt.close(fig)
rep_tokens = tokenizer.to_str_tokens(repeated[0])
for ax, kind in zip(axes, ("previous_token", "induction")):
    layer, head = strongest(scores[kind])
    viz.attention_pattern(rep_patterns[layer, 0, head], rep_tokens, ax=ax,
                          title=f"strongest {kind.replace('_', ' ')} head: L{layer} H{head} "
                                f"(score {scores[kind][layer, head]:.2f})")
display(fig)

# %% [markdown]
# ## Summary
#
# * A pattern `[q_pos, k_pos]` is where each token reads from; heads that do one job show it as a
#   stripe: just below the diagonal (previous token), `seq_len - 1` below it on repeated text (induction).
# * Repeated random tokens isolate in-context copying: loss on the second copy drops only if the
#   model has induction heads.
# * `interp.head_scores` scores every head at once.
#
# **Next:** notebook 10 reads the residual stream itself, layer by layer, with the logit lens.
