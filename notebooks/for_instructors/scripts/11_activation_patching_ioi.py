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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/11_activation_patching_ioi.ipynb)**
#
# # 11 · Activation patching on indirect-object identification
#
# **Time:** about 50 minutes. **Before this:** notebooks 08 (hooks) and 10 (the logit lens).
#
# *"When Mary and John went to the store, John gave a drink to"* ... **Mary**. Choosing the name that
# is *not* repeated is the indirect-object identification (IOI) task, whose circuit in GPT-2 small
# was mapped by Wang et al. (2022, "Interpretability in the Wild"). The tool they used is
# *activation patching*: run the model on a **corrupted** prompt, copy in one activation from the
# **clean** run, and measure how much of the clean behaviour comes back. Where it comes back, that
# activation carries the information that matters.
#
# **Learning goals.** By the end you can
#
# 1. build matched clean and corrupted prompts through the tokenizer (names of one token each);
# 2. write the logit-difference metric and a residual-stream patch;
# 3. read a `[layer, pos]` residual patching heatmap and a `[layer, head]` head patching heatmap;
# 4. run your own experiments with the `PatchingExplorer` widget.

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
from IPython.display import display

import gemma_lab.exercises.lesson11_activation_patching_ioi  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp, viz
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import PatchingExplorer

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## 1. Clean and corrupted prompts
#
# Patching copies activations *position by position*, so the clean and corrupted prompts must have
# the same number of tokens, and every name must be exactly one token. Whether `" Mary"` is one
# token depends on the tokenizer, so we ask it. (Mind the leading space: inside a sentence a name is
# the piece `"▁Mary"`, a different token from `"Mary"`.)

# %%
CANDIDATE_NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Anna", "James", "Kate", "David",
                   "Emma", "Paul", "Lucy", "Mark", "Jane", "Peter", "Laura", "Sam", "Rachel", "Ben"]
# If the tokenizer splits every name, any one-token words keep the lesson running (less natural text).
FALLBACK_WORDS = ["cat", "dog", "man", "king", "sun", "car", "tree", "ball", "box", "cup"]


def one_token_words(words):
    """The words w for which " w" is a single token, with that token's id."""
    found = {}
    for word in words:
        ids = tokenizer.encode(" " + word, add_bos=False)
        if len(ids) == 1:
            found[word] = ids[0]
    return found


names = one_token_words(CANDIDATE_NAMES)
if len(names) < 2:
    print(f"Only {len(names)} of the candidate names is a single token for this tokenizer; "
          "using other one-token words instead.")
    names = one_token_words(FALLBACK_WORDS)
assert len(names) >= 2, "this tokenizer has no two one-token words to build IOI prompts from"
print(f"{len(names)} one-token names:", list(names)[:10])

# %% [markdown]
# Each clean prompt names two people and repeats one of them, the subject **S**; the answer is the
# other one, the indirect object **IO**. The corrupted prompt repeats the IO name instead, so there
# the right answer flips to S. Everything else, including the number of tokens, is the same.
#
#     clean:      When {IO} and {S} went to the store, {S} gave a drink to      -> " {IO}"
#     corrupted:  When {IO} and {S} went to the store, {IO} gave a drink to     -> " {S}"
#
# We use a small batch of name pairs: one pair can be a fluke.

# %%
TEMPLATE = "When {a} and {b} went to the store, {c} gave a drink to"
name_list = list(names)
pairs = [(name_list[i], name_list[(i + 1) % len(name_list)]) for i in range(min(4, len(name_list)))]

clean_text = [TEMPLATE.format(a=io, b=s, c=s) for io, s in pairs]
corrupted_text = [TEMPLATE.format(a=io, b=s, c=io) for io, s in pairs]
clean_tokens = torch.tensor([tokenizer.encode(text) for text in clean_text])  # [batch, pos]
corrupted_tokens = torch.tensor([tokenizer.encode(text) for text in corrupted_text])  # [batch, pos]
io_ids = torch.tensor([names[io] for io, _ in pairs])  # [batch]
s_ids = torch.tensor([names[s] for _, s in pairs])  # [batch]

print("clean tokens:", tuple(clean_tokens.shape), "= [batch, pos]")
for clean, corrupted, (io, s) in zip(clean_text, corrupted_text, pairs):
    print(f"  {clean!r} -> {io!r}\n  {corrupted!r} -> {s!r}")

# %% [markdown]
# ## 2. Exercise: the logit difference
#
# Our measure of "the model does IOI" is the **logit difference** at the last position:
# `logit(IO) - logit(S)`, averaged over the batch. Positive means the model prefers the right name.
# It is better than a probability here because it is linear in the residual stream's final state
# (up to the final norm, and Gemma 2's softcap), and it ignores every other token.
#
# Write `logit_difference(logits, io_ids, s_ids)`: `logits` `[batch, pos, vocab]`, `io_ids` and
# `s_ids` `[batch]`; return a 0-d float32 tensor.

# %% exercise="logit_difference" tags=["exercise"]
def logit_difference(logits, io_ids, s_ids):
    """[batch, pos, vocab], [batch], [batch] -> []: mean of logit(IO) - logit(S) at the last position."""
    raise NotImplementedError  # your code here


# %%
result = check("logit_difference", logit_difference)
display(result)

# %%
# From here on: your function if it passed, otherwise the reference implementation.
if not result.passed:
    logit_difference = get_exercise("logit_difference").reference

clean_logits, clean_cache = model.run_with_cache(clean_tokens)
corrupted_logits = model(corrupted_tokens)
clean_diff = float(logit_difference(clean_logits, io_ids, s_ids))
corrupted_diff = float(logit_difference(corrupted_logits, io_ids, s_ids))
print(f"logit difference, clean:     {clean_diff:+.3f}")
print(f"logit difference, corrupted: {corrupted_diff:+.3f}")


def ioi_metric(logits):
    """Logit difference of a run on the corrupted prompts (a patched run); the patching functions call it."""
    return logit_difference(logits, io_ids, s_ids)


# %% [markdown]
# ## 3. Exercise: patch one position of the residual stream
#
# Patching the residual stream at (layer `l`, position `p`) means: run the corrupted prompts, and at
# `blocks.{l}.hook_resid_pre` replace position `p` of the activation (`[batch, pos, d_model]`) by its
# value in the clean run. Write the replacement, `patch_residual(corrupted, clean, pos)`, returning a
# new tensor.

# %% exercise="patch_residual" tags=["exercise"]
def patch_residual(corrupted, clean, pos):
    """[batch, pos, d_model] x 2 -> the corrupted activation with position `pos` taken from the clean one."""
    raise NotImplementedError  # your code here


# %%
result = check("patch_residual", patch_residual)
display(result)

# %% [markdown]
# Used in a hook, one patch is one forward pass. Here we patch the position of the second S (the
# repeated name) entering the last block, and compare with the package's `interp.patch_by_layer_pos`,
# which loops over every layer and position.

# %%
if not result.passed:
    patch_residual = get_exercise("patch_residual").reference

s2_pos = int((clean_tokens[0] != corrupted_tokens[0]).nonzero()[0])  # the one position where they differ
layer = model.cfg.n_layers - 1


def patch_hook(resid, hook):
    return patch_residual(resid, clean_cache["resid_pre", layer], s2_pos)


patched = ioi_metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch_hook)]))
print(f"patching resid_pre of block {layer} at the S2 position ({s2_pos}): {float(patched):+.3f}")

# %% [markdown]
# ## 4. Every layer and position
#
# The result is easiest to read normalised: 0 is the corrupted run, 1 the clean run, so a cell says
# what fraction of the clean behaviour that one patch restores. That is `n_layers x pos` forward
# passes: instant on the tiny model, several minutes for a 2B model on a CPU (progress bars then
# show how far it is).

# %%
show_progress = model.n_params() > 100_000_000  # only real models take long enough to need it
by_pos = interp.patch_by_layer_pos(model, corrupted_tokens, clean_cache, ioi_metric,
                                   activation="resid_pre", progress=show_progress)  # [layer, pos]
assert torch.isclose(by_pos[layer, s2_pos], torch.as_tensor(float(patched)), atol=1e-4)
gap = clean_diff - corrupted_diff
restored = (by_pos - corrupted_diff) / gap if abs(gap) > 1e-6 else by_pos - corrupted_diff

columns = [c if c == k else f"{c}→{k}" for c, k in zip(tokenizer.to_str_tokens(clean_tokens[0]),
                                                     tokenizer.to_str_tokens(corrupted_tokens[0]))]
viz.patching_heatmap(restored, columns, kind="layer x position",
                     value_label="fraction of the logit difference restored",
                     title="patching resid_pre: clean → corrupted")

# %% [markdown]
# How to read it, for a trained model: in early layers only the S2 position matters (that is where
# the prompts differ); in later layers the information has moved to the last position, where the
# answer is predicted. Some layer in between is where attention heads *moved* it. (With random
# weights there is no such story: every cell is noise.)
#
# ## 5. Which heads?
#
# Patching each head's output `z` (`[batch, pos, head, d_head]`, all positions at once) asks which
# heads carry the difference. `interp.patch_by_head` does `n_layers x n_heads` forward passes.

# %%
by_head = interp.patch_by_head(model, corrupted_tokens, clean_cache, ioi_metric, activation="z",
                               progress=show_progress)  # [layer, head]
restored_by_head = (by_head - corrupted_diff) / gap if abs(gap) > 1e-6 else by_head - corrupted_diff
best_layer, best_head = divmod(int(restored_by_head.argmax()), model.cfg.n_heads)
print(f"the head whose clean output restores most: layer {best_layer}, head {best_head} "
      f"({float(restored_by_head[best_layer, best_head]):.0%} of the gap)")
viz.patching_heatmap(restored_by_head, kind="layer x head",
                     value_label="fraction of the logit difference restored", title="patching each head's z")

# %% [markdown]
# ## 6. Explore
#
# The `PatchingExplorer` widget runs both patching experiments for prompts you type. Try other
# templates, other names (one token each), or a corrupted prompt that changes a different word.
# (It runs both experiments when it is created: a while on a CPU with real weights.)

# %%
io, s = pairs[0]
PatchingExplorer(model, tokenizer, clean=clean_text[0], corrupted=corrupted_text[0], answer=" " + io, wrong=" " + s)

# %% [markdown]
# ## Summary
#
# * Clean and corrupted prompts differ in one thing and match token by token.
# * Metric: logit difference `logit(IO) - logit(S)` at the last position; normalise patched values so
#   0 = corrupted and 1 = clean.
# * Residual patching `[layer, pos]` shows *where* the information is at each depth; head patching
#   `[layer, head]` shows *who* moves it.
#
# **Next:** notebook 12 adds a direction to the residual stream on purpose: steering.
