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
# **Time:** about 105 minutes. **Before this:** notebooks 08 (hooks) and 10 (the logit lens).
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
# 3. read a `[layer, pos]` residual patching heatmap and a `[layer, head]` head patching heatmap,
#    each computed both ways: denoising (is this activation *sufficient*?) and noising (is it
#    *necessary*?);
# 4. write the head-patching loop yourself, hooks and all;
# 5. split the logit difference into what each head and MLP writes directly (direct logit
#    attribution, with the final and post-attention norms held at their cached scale);
# 6. estimate every head's effect at once with attribution patching (gradients), and judge the
#    estimate against real patching in a scatter plot;
# 7. write path patching (a head's effect along one route only) and read which routes carry the
#    effect of the head that patching found;
# 8. run your own experiments with the `PatchingExplorer` widget.

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
# solution("logit_difference")  # uncomment to see one way to write it

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

# %%
# solution("patch_residual")  # uncomment to see one way to write it

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


def fraction_restored(values):
    """0 = the corrupted run's logit difference, 1 = the clean run's (raw differences if the two are equal)."""
    return (values - corrupted_diff) / gap if abs(gap) > 1e-6 else values - corrupted_diff


restored = fraction_restored(by_pos)

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
# **Denoising and noising.** What we did is *denoising*: run the corrupted prompts and restore one
# clean activation. A cell near 1 says that activation is *sufficient* to bring the clean behaviour
# back (given the corrupted rest). The reverse, *noising*, runs the clean prompts and copies in one
# corrupted activation; a cell whose patch destroys the clean behaviour is *necessary* for it. The
# two can disagree (Heimersheim & Nanda, 2024, "How to use and interpret activation patching"):
#
# * an **OR**: two components each carry the information. Restoring either is enough (denoising
#   finds both), corrupting either alone breaks nothing (noising finds neither);
# * an **AND**: the behaviour needs both. Corrupting either breaks it (noising finds both),
#   restoring either alone brings nothing back (denoising finds neither).
#
# So compute both. `interp.activation_patching` takes both prompts and a `direction`; we draw the
# noising map as the fraction of the logit difference *lost*, so that in both maps colour means
# "this activation matters".

# %%
noised_by_pos = interp.activation_patching(model, clean_tokens, corrupted_tokens, ioi_metric, direction="noise",
                                           by="layer_pos", progress=show_progress)  # [layer, pos]
lost = 1 - fraction_restored(noised_by_pos)  # noising: 0 = nothing lost, 1 = all of the clean behaviour gone

with plt.ioff():
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 3.6), layout="constrained")
plt.close(fig)
viz.patching_heatmap(restored, columns, kind="layer x position", value_label="fraction restored",
                     title="denoising: corrupted run, one clean activation", ax=left)
viz.patching_heatmap(lost, columns, kind="layer x position", value_label="fraction lost",
                     title="noising: clean run, one corrupted activation", ax=right)
display(fig)
print(f"largest difference between the two maps: {float((restored - lost).abs().max()):.3f}")

# %% [markdown]
# On the tiny model the two maps are the same picture: at every depth there is exactly one place
# the name information lives (the S2 position before layer 0, the last position after it), and the
# stream there is both sufficient and necessary; everywhere else is 0 in both. The residual stream
# at one position is a bottleneck, so no OR or AND can show at this grain. Heads are another matter:
# section 5 computes both directions per head.
#
# ## 5. Exercise: which heads? Write the patching loop
#
# Patching each head's output `z` (`[batch, pos, head, d_head]`, all positions at once) asks which
# heads carry the difference. This time you write the loop that `interp.patch_by_head` runs: for
# every layer and head, run the corrupted prompts with a hook on `blocks.{layer}.attn.hook_z` that
# copies in that one head's clean `z`, and record `metric(logits)`.
#
# Write `patch_heads(model, corrupted_tokens, clean_cache, metric)` returning a `[layer, head]`
# float tensor. Three things trip people up: `z[:, head]` indexes a *position* (the head axis is
# the third); a hook must not edit the tensor it is given in place (clone it first); and a hook
# defined in a loop sees the loop variable's *last* value unless you bind it (`head=head`).
# `check` compares with `interp.patch_by_head` on small random models.

# %% exercise="patch_heads" tags=["exercise"]
def patch_heads(model, corrupted_tokens, clean_cache, metric):
    """[layer, head]: the metric of the corrupted run with one head's z taken from the clean run."""
    raise NotImplementedError  # your code here: two loops, a hook, model.run_with_hooks(...)


# %%
result = check("patch_heads", patch_heads)
display(result)

# %%
# solution("patch_heads")  # uncomment to see one way to write it

# %%
if not result.passed:
    patch_heads = get_exercise("patch_heads").reference

by_head = patch_heads(model, corrupted_tokens, clean_cache, ioi_metric)  # [layer, head]
restored_by_head = fraction_restored(by_head)
best_layer, best_head = divmod(int(restored_by_head.argmax()), model.cfg.n_heads)
print(f"the head whose clean output restores most: layer {best_layer}, head {best_head} "
      f"({float(restored_by_head[best_layer, best_head]):.0%} of the gap)")

# The same grid the other way round: the clean run with one head's z from the corrupted run.
noised_by_head = interp.activation_patching(model, clean_tokens, corrupted_tokens, ioi_metric, direction="noise",
                                            by="head", progress=show_progress)  # [layer, head]
lost_by_head = 1 - fraction_restored(noised_by_head)
print(f"noising that head's z loses {float(lost_by_head[best_layer, best_head]):.0%} of the logit difference")
for layer in range(model.cfg.n_layers):
    pairs_text = "  ".join(f"{float(restored_by_head[layer, head]):+.2f}/{float(lost_by_head[layer, head]):+.2f}"
                           for head in range(model.cfg.n_heads))
    print(f"  layer {layer} (restored/lost per head): {pairs_text}")

with plt.ioff():
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
plt.close(fig)
viz.patching_heatmap(restored_by_head, kind="layer x head", value_label="fraction restored",
                     title="denoising each head's z", ax=left)
viz.patching_heatmap(lost_by_head, kind="layer x head", value_label="fraction lost",
                     title="noising each head's z", ax=right)
display(fig)

# %% [markdown]
# On the tiny model one head is both: restoring its clean `z` brings back the whole logit
# difference, and corrupting it alone loses all of it. That is layer 0 head 0: sufficient and
# necessary, no backup head and no partner. Every other head moves either number by a few percent
# at most (read the printout). Keep this head in mind: section 8 asks *how* its effect reaches the
# answer.

# %% [markdown]
# ## 6. Direct logit attribution: who writes the answer?
#
# Patching says which heads *carry* the difference. A different question: which components *write*
# the final logit difference directly? The residual stream at the end is a sum: the embedding plus
# what every head and every MLP added. The logit difference reads that sum through the final
# RMSNorm and the unembedding, `(ln_final(resid) @ (W_U[IO] - W_U[S]))`. The norm divides the whole
# stream by one number, its RMS in this run; holding that number at its cached value makes the
# readout linear, so each component's share is its own vector, scaled the same way, dotted with
# `W_U[IO] - W_U[S]`. Gemma 2 and 3 add one more norm after attention: each head's share of
# `hook_attn_out` is its `o_proj` term scaled by that layer's cached `ln1_post` factor, which is how
# the heads of a layer still sum to what the layer wrote. `interp.direct_logit_attribution` does
# both and returns `heads [layer, head]`, `mlps [layer]`, `embed` and their `total`.

# %%
dla = interp.direct_logit_attribution(model, clean_tokens, io_ids, incorrect=s_ids)
parts = float(dla.embed + dla.heads.sum() + dla.mlps.sum())
print(f"logit difference before any final softcap: {float(dla.total):+.2f}; "
      f"embed + heads + MLPs = {parts:+.2f}")
print(f"all heads together {float(dla.heads.sum()):+.2f}, all MLPs {float(dla.mlps.sum()):+.2f}, "
      f"embedding {float(dla.embed):+.2f}")
for layer in range(model.cfg.n_layers):
    heads = ", ".join(f"{float(v):+.2f}" for v in dla.heads[layer])
    print(f"  layer {layer}: heads [{heads}]  sum {float(dla.heads[layer].sum()):+.2f} · MLP {float(dla.mlps[layer]):+.2f}")

with plt.ioff():
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
plt.close(fig)
viz.patching_heatmap(dla.heads, kind="layer x head", value_label="direct effect on logit(IO) - logit(S)",
                     title="what each head writes directly", ax=left)
right.bar(range(model.cfg.n_layers), dla.mlps.numpy(), color="C2")
right.axhline(0, color="0.5", linewidth=0.8)
right.set(xlabel="layer", ylabel="direct effect", title="what each MLP writes directly",
          xticks=range(model.cfg.n_layers))
display(fig)

# %% [markdown]
# Compare the two views on the tiny model. Patching found one early head that moves "which name was
# repeated" to the end; that head writes under one nat of the logit difference itself (most of its
# effect is *indirect*, through later layers). The direct writers are elsewhere: read the printout. On the
# tiny model the last layer's heads write large contributions of both signs that largely cancel,
# and the MLPs write most of the net answer. That is not the textbook GPT-2 circuit (name movers,
# S-inhibition heads), and it does not have to be: this is what a four-layer model trained for
# minutes found. Rerun this lesson on real weights and compare. Two cautions: direct attribution
# misses everything indirect (a head that only feeds later layers scores 0), and the frozen norm
# factor makes it exact for *this* run only.
#
# %% [markdown]
# ## 7. Attribution patching: every head from one backward pass
#
# Real patching costs one forward pass per cell. *Attribution patching* (Nanda, 2023; Syed et al.,
# 2023) estimates all cells at once with a first-order Taylor expansion: run the corrupted prompts
# once with gradients on, take the gradient of the metric with respect to each head's `z`, and
# estimate the effect of patching as
#
#     (clean z - corrupted z) . d metric / d z          summed over batch, pos and d_head  ->  [layer, head]
#
# It is exact when the metric is linear in `z`, and only an estimate otherwise: attention patterns,
# norms and MLPs downstream all bend the line. The scatter plot compares it with the real patching
# you just computed. (This is the one place in the course where gradients are turned on.)

# %%
z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
corrupted_z = {}


def keep_z(z, hook):
    """Swap z for an equal leaf tensor that asks for its gradient (the weights need none), and keep it."""
    leaf = z.detach().requires_grad_(True)
    corrupted_z[hook.name] = leaf
    return leaf


with torch.enable_grad():
    corrupted_run = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, keep_z) for name in z_names])
    ioi_metric(corrupted_run).backward()
estimate = torch.stack([
    ((clean_cache[name] - corrupted_z[name].detach()) * corrupted_z[name].grad).sum(dim=(0, 1, 3))  # [head]
    for name in z_names])  # [layer, head]
real = by_head - corrupted_diff  # the real change of the metric, [layer, head]

with plt.ioff():
    fig, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
plt.close(fig)
ax.scatter(real.flatten(), estimate.flatten(), s=18)
for layer in range(model.cfg.n_layers):
    for head in range(model.cfg.n_heads):
        if abs(float(real[layer, head])) > 0.2 * float(real.abs().max()):
            ax.annotate(f"L{layer}H{head}", (float(real[layer, head]), float(estimate[layer, head])), fontsize=8)
ax.axline((0, 0), slope=1, color="0.5", linewidth=0.8, linestyle="--")
ax.set(xlabel="real patching: change in logit difference", ylabel="attribution patching estimate",
       title="attribution vs real patching, per head")
display(fig)
correlation = float(torch.corrcoef(torch.stack([real.flatten(), estimate.flatten()]))[0, 1])
print(f"correlation over {real.numel()} heads: {correlation:.2f}")
print(f"largest real effect {float(real.abs().max()):.2f}, its estimate "
      f"{float(estimate.flatten()[real.abs().argmax()]):.2f}")

# %% [markdown]
# Points on the dashed line are heads the linear estimate gets right. Heads with small effects
# usually sit near it; a head whose patch changes the metric by many nats often does not: the
# estimate knows only the slope at the corrupted run, and a big change walks far along a curved
# function. Use attribution patching to *rank* thousands of components cheaply (on a 2B model it is
# one forward and one backward pass instead of thousands), then confirm the top of the ranking
# with real patching.
#
# %% [markdown]
# ## 8. Path patching: which routes carry a head's effect?
#
# Patching a head's `z` changes everything downstream of it at once: what the head writes is read
# by every later head (as queries, keys and values), by every MLP, and by the unembedding directly.
# *Path patching* (Wang et al., 2022; ARENA 1.4) asks which of those routes carry the effect: the
# **sender** head gets its corrupted output, but the change may reach only a chosen **receiver**.
# We do it as Wang et al. do, by noising: the base run is the clean prompts. Two forward passes:
#
# 1. **The path run.** Clean prompts; every attention head's `z` is *frozen* at its clean value
#    except the sender's, which gets its corrupted `z`. MLPs are recomputed (not frozen), so routes
#    sender -> MLP -> receiver count, as in Wang et al. and ARENA. Record the receiver's input, e.g.
#    its queries at `blocks.{layer}.attn.hook_q`: what it *would* read if only these routes
#    carried the change.
# 2. **The measured run.** Clean prompts again, with only the receiver's queries replaced by what
#    run 1 recorded. Everything after the receiver is recomputed. The metric of this run is the
#    answer.
#
# With the logits as receiver, run 1 alone is the answer: its final stream carries the sender's
# change along every route that avoids other heads.
#
# **A Gemma detail.** Gemma 2 and 3 sum a layer's heads and then apply the post-attention norm
# before the sum joins the stream. So swapping one head's `z` also rescales what the *other* heads
# of its layer write: a head's contribution is not a vector of its own that could be added to the
# stream. Hooking `z` and letting the norm recompute keeps path patching exact; any method that
# adds "the head's vector" would have to linearise the norm, as direct logit attribution does.
# How big is that rescaling here? The next cell swaps the sender's `z` alone and measures the
# post-attention norm's scale.

# %%
_, corrupted_cache = model.run_with_cache(corrupted_tokens)
sender = (best_layer, best_head)  # the head that patching found
norm_scale = {}


def swap_sender(z, hook):
    z = z.clone()
    z[:, :, best_head] = corrupted_cache[hook.name][:, :, best_head]
    return z


def keep_scale(inv_rms, hook):
    norm_scale["swapped"] = inv_rms


if model.blocks[best_layer].ln1_post is not None:
    model.run_with_hooks(clean_tokens, fwd_hooks=[(f"blocks.{best_layer}.attn.hook_z", swap_sender),
                                                  (f"blocks.{best_layer}.ln1_post.hook_inv_rms", keep_scale)])
    ratio = norm_scale["swapped"] / clean_cache[f"blocks.{best_layer}.ln1_post.hook_inv_rms"]  # [batch, pos, 1]
    print(f"swapping L{best_layer}H{best_head}'s z alone rescales what the other heads of layer {best_layer} "
          f"write at the last position by factors {float(ratio[:, -1].min()):.3f} to {float(ratio[:, -1].max()):.3f}")
else:
    print("this model has no post-attention norm: each head's write is its own vector, added to the stream")

# %% [markdown]
# ## 9. Exercise: path patching into a receiver's queries
#
# Write both runs. `path_patch_queries(model, clean_tokens, clean_cache, corrupted_cache, metric,
# sender, receiver)`: `sender` and `receiver` are `(layer, head)`, the receiver in a later layer;
# return `float(metric(logits))` of run 2. Run 1 needs a hook on *every* layer's `attn.hook_z`
# (start from `clean_cache[hook.name]`, put in the sender's slice from `corrupted_cache`) and one
# that records the receiver layer's `attn.hook_q`; run 2 needs one hook that replaces the
# receiver's slice `q[:, :, head]`. `check` compares with `interp.path_patch` on small random
# models.

# %% exercise="path_patch_queries" tags=["exercise"]
def path_patch_queries(model, clean_tokens, clean_cache, corrupted_cache, metric, sender, receiver):
    """The metric of the clean run when the sender's corrupted output reaches only the receiver's queries."""
    raise NotImplementedError  # your code here: run 1 (freeze, swap the sender, record q), run 2 (replace q)


# %%
result = check("path_patch_queries", path_patch_queries)
display(result)

# %%
# solution("path_patch_queries")  # uncomment to see one way to write it

# %% [markdown]
# The package's `interp.path_patch(model, clean, corrupted, metric, senders, receivers, ...)` does
# the same for any set of senders and receivers (`"logits"`, or heads with `receiver_input` `"q"`,
# `"k"` or `"v"`), and `interp.path_patch_heads` tries every head as the sender. Its `freeze` says
# what else is held at the clean run: `"heads"` (above), `"all"` (heads and MLPs: only the direct
# route to the logits) or `"none"` (nothing: ordinary activation patching, a check). We measure the
# *share* of the logit difference a route carries: 0 = patching along it changes nothing, 1 = it
# loses all of the clean behaviour, as noising the head outright does.

# %%
if not result.passed:
    path_patch_queries = get_exercise("path_patch_queries").reference


def share_lost(values):
    return 1 - fraction_restored(values)


later = [(layer, head) for layer in range(best_layer + 1, model.cfg.n_layers) for head in range(model.cfg.n_heads)]
if later:  # your function, for one receiver: the first head after the sender
    mine = path_patch_queries(model, clean_tokens, clean_cache, corrupted_cache, ioi_metric, sender, later[0])
    package = interp.path_patch(model, clean_tokens, corrupted_tokens, ioi_metric, sender, [later[0]])
    print(f"L{sender[0]}H{sender[1]} -> queries of L{later[0][0]}H{later[0][1]}: yours {mine:+.4f}, "
          f"interp.path_patch {package:+.4f}")

routes = {"every route (noising the head's z)": float(noised_by_head[sender]),
          "all routes that avoid later heads (direct + MLPs)": interp.path_patch(
              model, clean_tokens, corrupted_tokens, ioi_metric, sender),
          "the direct route to the logits only": interp.path_patch(
              model, clean_tokens, corrupted_tokens, ioi_metric, sender, freeze="all")}
kv_later = [(layer, kv) for layer in range(best_layer + 1, model.cfg.n_layers) for kv in range(model.cfg.n_kv_heads)
            if model.blocks[layer].attn.kv_source == layer]  # Gemma 4's KV-shared layers compute no keys or values
for receiver_input, receivers in (("q", later), ("k", kv_later), ("v", kv_later)):
    if receivers:
        routes[f"into the {receiver_input} of every later head"] = interp.path_patch(
            model, clean_tokens, corrupted_tokens, ioi_metric, sender, receivers, receiver_input=receiver_input)
print(f"share of the logit difference lost when only these routes carry L{sender[0]}H{sender[1]}'s corrupted output:")
for route, value in routes.items():
    print(f"  {route:52s} {float(share_lost(torch.tensor(value))):6.3f}")

# %% [markdown]
# Now every head as a sender, into the logits: with the other heads frozen (left: direct and
# through the MLPs) and with everything frozen (middle: direct only). On the right, your
# `path_patch_queries`: the head from section 5 as the sender, into each later head's queries one
# by one (on small models only: two forward passes per bar).

# %%
via_mlps = share_lost(interp.path_patch_heads(model, clean_tokens, corrupted_tokens, ioi_metric,
                                              progress=show_progress))  # [layer, head]
direct = share_lost(interp.path_patch_heads(model, clean_tokens, corrupted_tokens, ioi_metric, freeze="all",
                                            progress=show_progress))  # [layer, head]
bars = {}
if later and len(later) <= 48:
    for receiver in later:
        value = path_patch_queries(model, clean_tokens, clean_cache, corrupted_cache, ioi_metric, sender, receiver)
        bars[f"L{receiver[0]}H{receiver[1]}"] = float(share_lost(torch.tensor(value)))

with plt.ioff():
    fig, axes = plt.subplots(1, 3, figsize=(16.5, 3.8), layout="constrained", width_ratios=[1, 1, 1.6])
plt.close(fig)
viz.patching_heatmap(via_mlps, kind="layer x head", value_label="share lost",
                     title="sender -> logits, other heads frozen", ax=axes[0])
viz.patching_heatmap(direct, kind="layer x head", value_label="share lost",
                     title="sender -> logits, direct route only", ax=axes[1])
if bars:
    axes[2].bar(range(len(bars)), list(bars.values()), color="C0")
    axes[2].set_xticks(range(len(bars)), list(bars), rotation=90, fontsize=7)
    axes[2].axhline(0, color="0.5", linewidth=0.8)
    axes[2].set(ylabel="share lost", title=f"L{sender[0]}H{sender[1]} -> one later head's queries")
else:
    axes[2].set_axis_off()
    axes[2].set_title("(no per-receiver bars: none later, or too many for a quick run)")
display(fig)

# %% [markdown]
# What this shows on the tiny model (read the printout above for the numbers): the effect of
# layer 0 head 0 reaches the answer almost entirely along routes that avoid every later head.
# With all other heads frozen, noising it alone still loses about nine tenths of the logit
# difference; the direct route to the logits carries only about a tenth. The rest goes **through
# the MLPs**, which section 6 found writing most of the net answer. Into the later heads' queries
# goes a few percent (the layer-3 heads' among them), into their keys and values less still, and
# no single receiver takes more than a few percent. And patching any layer-3 head's `z`, either
# way, moves the logit difference by a few percent at most (section 5): the large layer-3 writes
# that nearly cancel barely differ between the clean and the corrupted prompts, and this head's
# information does not travel through them. The routes roughly add up to the whole here, but path
# patching does not promise that: with norms and MLPs in between, effects along routes need not
# sum.
#
# This is the tiny model's own circuit: one moving head and the MLPs that read it, not the
# name movers and S-inhibition heads of GPT-2 small. Rerun on real weights and compare.
#
# %% [markdown]
# ## 10. Explore
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
#   `[layer, head]` shows *who* moves it. You wrote that loop: a hook per (layer, head), one forward
#   pass each.
# * Denoising (corrupted run, clean activation) tests sufficiency; noising (clean run, corrupted
#   activation) tests necessity. Compute both: they disagree on OR and AND structures.
# * Direct logit attribution splits the final logit difference into each component's direct share;
#   an early head that patching finds can write nothing directly (its effect is indirect).
# * Attribution patching estimates every cell from one forward and one backward pass; it ranks
#   components cheaply but misjudges large, non-linear effects: confirm with real patching.
# * Path patching lets a head's change travel along chosen routes only (two runs: freeze the rest
#   and record the receiver's input, then patch just that input). On the tiny model it shows the
#   early head's effect travelling through the MLPs, not through later heads.
#
# **Next:** notebook 12 adds a direction to the residual stream on purpose: steering.
