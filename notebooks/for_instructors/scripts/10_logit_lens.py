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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/10_logit_lens.ipynb)**
#
# # 10 · The logit lens
#
# **Time:** about 35 minutes. **Before this:** notebook 08 (hooks and caching).
#
# The model turns its last residual stream state into logits with two steps: the final RMSNorm
# (`model.ln_final`) and the unembedding (Gemma's is the embedding matrix itself, transposed), plus
# Gemma 2's final softcap. Nothing stops us from applying those same steps to the residual stream
# after an *earlier* layer. The result, the *logit lens* (nostalgebraist, 2020), is a rough picture
# of what the model "would predict" if it stopped there, and of the layer where the answer appears.
#
# **Learning goals.** By the end you can
#
# 1. say what the logit lens computes, with shapes: `[layer, pos, d_model] -> [layer, pos, vocab]`;
# 2. write it yourself for one position, and check it against the package;
# 3. read a logit-lens heatmap and follow one token's probability through the layers;
# 4. use the `LogitLensExplorer` widget, and name the lens's limits.

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

import gemma_lab.exercises.lesson10_logit_lens  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp, viz
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import LogitLensExplorer

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## 1. The residual stream, layer by layer
#
# We collect the stream at `n_layers + 1` points: the embedding (`hook_embed`), then after each
# block (`blocks.{l}.hook_resid_post`). Stacked, for one prompt, that is `resid_stack`
# `[layer, pos, d_model]` with `layer` running over those `n_layers + 1` points.

# %%
prompt = "The capital of France is"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]
str_tokens = tokenizer.to_str_tokens(tokens[0])
logits, cache = model.run_with_cache(
    tokens, names_filter=lambda name: name == "hook_embed" or name.endswith("hook_resid_post"))

resid_stack = torch.stack([cache["hook_embed"][0]]
                          + [cache["resid_post", layer][0] for layer in range(model.cfg.n_layers)])
print("resid_stack:", tuple(resid_stack.shape), "= [layer (embed, 0, 1, ...), pos, d_model]")

# %% [markdown]
# ## 2. Exercise: the logit lens at one position
#
# Write `logit_lens_for_position(model, resid_stack, pos)`: take the stream at position `pos` after
# every layer (`[layer, d_model]`) and return next-token probabilities `[layer, vocab]` (float32),
# computed as the model computes its output:
#
# 1. the final norm, `model.ln_final(...)`;
# 2. the unembedding, `... @ model.embed.weight.T` (`[vocab, d_model]` transposed);
# 3. Gemma 2 only: the final softcap, `cap * tanh(logits / cap)` with `cap = model.cfg.final_softcap`
#    (it is `None` for Gemma 1 and 3);
# 4. a softmax over the vocabulary.

# %% exercise="logit_lens_for_position" tags=["exercise"]
def logit_lens_for_position(model, resid_stack, pos):
    """[layer, pos, d_model], pos -> [layer, vocab]: next-token probabilities read after each layer."""
    raise NotImplementedError  # your code here


# %%
result = check("logit_lens_for_position", logit_lens_for_position)
display(result)

# %% [markdown]
# The last row reads the stream after the last block, which is exactly what the model outputs.
# From here on the notebook uses your function if it passed, and the reference otherwise.

# %%
if not result.passed:
    logit_lens_for_position = get_exercise("logit_lens_for_position").reference

last_pos = tokens.shape[1] - 1
lens_probs = logit_lens_for_position(model, resid_stack, last_pos)  # [layer, vocab]
torch.testing.assert_close(lens_probs[-1], logits[0, last_pos].float().softmax(-1), rtol=1e-4, atol=1e-6)
for label, probs in zip(["embed"] + list(range(model.cfg.n_layers)), lens_probs):
    top = int(probs.argmax())
    print(f"after {label!s:>5}: top token {tokenizer.decode([top])!r:>12} with p = {probs[top]:.3f}")

# %% [markdown]
# ## 3. Every position at once
#
# `interp.logit_lens` does the same for every position (and keeps only the top `k` tokens, since a
# `[layer, pos, vocab]` tensor for a real vocabulary of 256 000 is large). In the heatmap, each cell
# is one (layer, position): the colour is the top token's probability, the text is that token. The
# prediction in column `pos` is for the token *after* `pos`.

# %%
lens = interp.logit_lens(model, tokens, k=5)
top_names = [tokenizer.to_str_tokens(row) for row in lens.top_tokens[..., 0].tolist()]  # one label per [layer, pos]
viz.logit_lens_heatmap(lens.top_probs[..., 0], top_names, str_tokens, layer_labels=lens.labels)

# %% [markdown]
# ## 4. Following one token
#
# Instead of the top token we can follow a token we care about: here the correct answer. Its
# probability after each layer shows where the answer appears. `interp.logit_lens(..., targets=...)`
# takes one target per position; we care about the last.

# %%
answer = " Paris"
answer_id = tokenizer.encode(answer, add_bos=False)[0]  # its first token, if the tokenizer splits it
targets = torch.full((tokens.shape[1],), answer_id)
tracked = interp.logit_lens(model, tokens, targets=targets)

with plt.ioff():
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
plt.close(fig)
ax.plot(tracked.labels, tracked.target_probs[:, -1], marker="o")
ax.set(xlabel="read after layer", ylabel=f"p({tokenizer.decode([answer_id])!r})", ylim=(0, 1),
       title=f"logit lens at the last position of {prompt!r}")
display(fig)

# %% [markdown]
# ## 5. Explore
#
# Type your own prompts. The `track token` box follows one token (one token exactly: mind the
# leading space, `" Mary"` not `"Mary"`). Try a repeated sequence, a fact, an IOI sentence.

# %%
LogitLensExplorer(model, tokenizer, text="When Mary and John went to the store, John gave a drink to",
                  track=" Mary")

# %% [markdown]
# ## 6. What the lens can and cannot tell you
#
# * The unembedding was trained on the *last* layer's output. Early layers need not use the same
#   "language"; a blank early row means the lens cannot read them, not that nothing is there.
#   Learned per-layer translators (the *tuned lens*, Belrose et al., 2023) read early layers better.
# * Gemma's embedding and unembedding are the same matrix, so at the `embed` row the lens mostly
#   predicts the input token itself.
# * The final RMSNorm divides by the stream's size, so the lens reads the *direction* of the residual
#   stream, never its length: a small early component can still dominate the readout.
#
# ## Summary
#
# * Logit lens: `softmax(softcap(ln_final(resid) @ W_E.T))` applied to the stream after every layer,
#   `[layer, pos, d_model] -> [layer, pos, vocab]`.
# * Its last row is the model's output; earlier rows show when a prediction forms.
#
# **Next:** notebook 11 moves from watching to intervening: activation patching on indirect-object
# identification.
