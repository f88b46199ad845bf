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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/08_hooks_and_caching.ipynb)**
#
# # 08 · Hooks and caching
#
# **Time:** about 50 minutes. **Before this:** notebooks 04 to 06 (attention, the MLP and the block, the full forward pass).
#
# Every intermediate tensor of `gemma_lab`'s Gemma passes through a *hook point*: a named identity
# function where you can read the tensor, store it, or replace it. Everything in the rest of the
# course (attention patterns, the logit lens, patching, steering) is built from these two moves:
# **record** activations and **edit** them.
#
# **Learning goals.** By the end you can
#
# 1. find any activation by its hook name (`blocks.{layer}.attn.hook_pattern`) and say its shape in
#    the axis vocabulary (`batch`, `pos`, `head`, `d_head`, `d_model`, ...);
# 2. record activations with `run_with_cache` and read them back with `cache["pattern", layer]`;
# 3. change a forward pass with a hook function `fn(activation, hook)`, knowing that hooks are
#    *scoped*: they are removed when the block ends, even after an error;
# 4. write a hook that silences one attention head, and use zero- and mean-ablation with a logit
#    difference to find the heads a prediction needs (and see why a saturated probability hides them).

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

import gemma_lab.exercises.lesson08_hooks_and_caching  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp, viz
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model

torch.set_grad_enabled(False)  # we only look at the model: no gradients, less memory
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## 1. The hook points
#
# A hook point is named by where it sits in the module tree, so the names read like an address:
# `blocks.2.attn.hook_pattern` is the attention pattern of block 2. The names (and the shorthand
# below) follow TransformerLens, so its tutorials and tools carry over. Here are the hook points
# outside the blocks and those of block 0; every block has the same ones.

# %%
names = model.hook_names()
print(f"{len(names)} hook points in {model.cfg.n_layers} blocks; outside the blocks and in block 0:")
for name in names:
    if name.startswith("blocks.0.") or not name.startswith("blocks."):
        print("   ", name)

# %% [markdown]
# The ones you will use most, with their shapes in the package's axis vocabulary
# (`docs/hooks.md` has the full table):
#
# | hook name | shape | what it holds |
# |---|---|---|
# | `hook_embed` | `[batch, pos, d_model]` | token embeddings times `sqrt(d_model)`: the start of the residual stream |
# | `blocks.{l}.hook_resid_pre` | `[batch, pos, d_model]` | the residual stream entering block `l` |
# | `blocks.{l}.attn.hook_q` | `[batch, pos, head, d_head]` | queries (`hook_k`, `hook_v` have `kv_head` instead of `head`) |
# | `blocks.{l}.attn.hook_pattern` | `[batch, head, q_pos, k_pos]` | where each query looks: rows sum to 1 |
# | `blocks.{l}.attn.hook_z` | `[batch, pos, head, d_head]` | each head's output: the pattern-weighted values, before `o_proj` mixes the heads |
# | `blocks.{l}.hook_attn_out` | `[batch, pos, d_model]` | what attention adds to the stream (after Gemma 2/3's post-norm) |
# | `blocks.{l}.mlp.hook_post` | `[batch, pos, d_mlp]` | the MLP's neurons, `gelu(gate) * up` |
# | `blocks.{l}.hook_mlp_out` | `[batch, pos, d_model]` | what the MLP adds to the stream |
# | `blocks.{l}.hook_resid_post` | `[batch, pos, d_model]` | the residual stream leaving block `l` |
# | `hook_logits` | `[batch, pos, vocab]` | the output |

# %% [markdown]
# ## 2. Recording: `run_with_cache`
#
# `run_with_cache` runs the model once and returns the logits together with an `ActivationCache`
# holding the activation at every hook point. Index it by full name, or by TransformerLens's
# shorthand `(name, layer)`.

# %%
prompt = "The capital of France is"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]
str_tokens = tokenizer.to_str_tokens(tokens[0])
logits, cache = model.run_with_cache(tokens)

print(cache)
print("tokens:", str_tokens)
print("cache['pattern', 0]:", tuple(cache["pattern", 0].shape), "= [batch, head, q_pos, k_pos]")
assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
assert torch.equal(cache["hook_logits"], logits)

# %% [markdown]
# Each head's pattern is a `[q_pos, k_pos]` matrix: row `q` says how much the token at `q` reads
# from each earlier key position `k`. Here are all heads of block 0.

# %%
viz.attention_heads_grid(cache["pattern", 0][0], str_tokens, layer=0)

# %% [markdown]
# Storing everything costs memory: for a real model, one cache of a long prompt can be larger than
# the model. `names_filter` keeps only what you ask for: a name, a list of names, or a predicate on
# names.

# %%
def is_residual(name):
    return name.endswith("hook_resid_post")


_, small_cache = model.run_with_cache(tokens, names_filter=is_residual)


def megabytes(activations):
    return sum(t.numel() * t.element_size() for t in activations.values()) / 2**20


print(f"everything: {len(cache)} tensors, {megabytes(cache):.2f} MiB")
print(f"only resid_post: {len(small_cache)} tensors, {megabytes(small_cache):.3f} MiB")

# %% [markdown]
# ## 3. Hooks that read
#
# A hook is a function `fn(activation, hook)`. `hook` is the hook point itself: `hook.name` and
# `hook.layer` say where you are. A hook that returns `None` leaves the activation as it is;
# this one just records the length of the residual stream vector at every position.

# %%
resid_norms = {}


def record_norm(resid, hook):  # resid: [batch, pos, d_model]
    resid_norms[hook.layer] = resid[0].norm(dim=-1)  # [pos]


model.run_with_hooks(tokens, fwd_hooks=[(is_residual, record_norm)])
norms = torch.stack([resid_norms[layer] for layer in range(model.cfg.n_layers)])  # [layer, pos]
viz.residual_norms(norms, str_tokens, title="‖resid_post‖ at each layer")

# %% [markdown]
# ## 4. Hooks that write
#
# A hook that *returns* a tensor of the same shape replaces the activation; the rest of the forward
# pass runs on the replacement. Here we remove everything block 0's MLP adds to the residual stream
# and compare the next-token predictions with and without it.

# %%
def zero_out(activation, hook):
    return torch.zeros_like(activation)


ablated_logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", zero_out)])

with plt.ioff():  # made with interactive mode off: shown once, by display() below
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
plt.close(fig)
# [vocab] probabilities, cut to the ids the tokenizer has pieces for (some checkpoints have spare rows)
probs = logits[0, -1].softmax(-1)[: tokenizer.vocab_size]
ablated_probs = ablated_logits[0, -1].softmax(-1)[: tokenizer.vocab_size]
viz.top_k_bars(probs, tokenizer.id_to_piece, k=8, title="normal run", ax=left)
viz.top_k_bars(ablated_probs, tokenizer.id_to_piece, k=8, title="block 0's MLP removed", ax=right)
display(fig)

# %% [markdown]
# ## 5. Hooks are scoped
#
# A hook left attached by accident would silently change every later result. So hooks are only
# ever attached inside a `with model.hooks(...)` block (`run_with_hooks` and `run_with_cache` use
# one), and they are removed when the block ends, also when something inside it raises.

# %%
def attached_hooks():
    return [name for name, point in model.hook_dict.items() if point.has_hooks]


try:
    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", zero_out)]):
        print("inside the block:", attached_hooks())
        raise RuntimeError("something went wrong in the middle of an experiment")
except RuntimeError as error:
    print("caught:", error)
print("after the block:", attached_hooks())
assert attached_hooks() == []

# %% [markdown]
# ## 6. Exercise: silence one attention head
#
# Attention's output is `o_proj(z)`, where `z` is `[batch, pos, head, d_head]` flattened to
# `[batch, pos, (head d_head)]`. `o_proj` is linear, so each head's share of the output comes only
# from its own slice `z[:, :, head]`: setting that slice to zero removes exactly that head's term
# from `o_proj(z)` (this is *zero-ablation*). In Gemma 1, `o_proj(z)` is what attention adds to the
# stream, so that is the whole story. In Gemma 2 and 3, `hook_attn_out` comes *after* the
# post-attention norm, which divides the sum of all heads' terms by its RMS: zeroing one head also
# rescales what the other heads of the layer write. An ablation there removes a head *and* changes
# the size of its neighbours; direct logit attribution (lesson 11, section 6) deals with that norm explicitly.
#
# Write `run_with_head_ablated(model, tokens, layer, head)`: run the model with a hook on
# `blocks.{layer}.attn.hook_z` that zeros head `head`, and return the logits `[batch, pos, vocab]`.
# `check` compares your function with the package's own ablation on small random Gemma 1, 2 and 3
# models.

# %% exercise="run_with_head_ablated" tags=["exercise"]
def run_with_head_ablated(model, tokens, layer, head):
    """Logits [batch, pos, vocab] of `model` on `tokens` with head `head` of block `layer` zeroed."""
    raise NotImplementedError  # your code here: a hook function, then model.run_with_hooks(...)


# %%
check("run_with_head_ablated", run_with_head_ablated)

# %%
# solution("run_with_head_ablated")  # uncomment to see one way to write it

# %% [markdown]
# ## 7. Which heads does this prediction need?
#
# With that one move we can ask every head in turn: how much does the log-probability of the
# model's prediction drop when this head is silenced? Below, the package's `interp.ablate_heads`
# does the ablation (it is a context manager built on the same hook). That is one forward pass
# per head: instant for the tiny model, a few minutes for a 2B model on a CPU.

# %%
log_probs = logits[0, -1].log_softmax(-1)
predicted = int(log_probs.argmax())
effect = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)  # [layer, head]
for layer in range(model.cfg.n_layers):
    for head in range(model.cfg.n_heads):
        with interp.ablate_heads(model, [(layer, head)]):
            ablated = model(tokens)[0, -1].log_softmax(-1)
        effect[layer, head] = ablated[predicted] - log_probs[predicted]

print(f"prediction after {prompt!r}: {tokenizer.decode([predicted])!r} "
      f"with probability {float(log_probs[predicted].exp()):.4f}")
print(f"largest change in its log-prob from silencing one head: {float(effect.abs().max()):.3f} nats")

# %% [markdown]
# On the tiny model this scan shows almost nothing: the prediction is *saturated* (probability near
# 1), so its log-probability sits on the flat top of the softmax, and no single head moves it by
# more than a few hundredths of a nat (the line above). That is a property of the metric, not
# proof that heads do not matter. Two fixes, both standard:
#
# 1. **A prompt the model is less sure about**, and the **logit difference** between its answer and
#    its runner-up as the metric: a difference of logits is linear in the final residual stream
#    and does not flatten out near probability 1.
# 2. **Mean-ablation beside zero-ablation.** A head never outputs exactly zero on real text, so
#    zeroing it puts the next layers off their training distribution. Mean-ablation replaces the
#    head's output by its average over reference text: "this head tells us nothing about *this*
#    prompt", which is closer to the question we mean to ask.

# %%
prompt2 = "Paris is the capital of"
tokens2 = torch.tensor([tokenizer.encode(prompt2)])
logits2 = model(tokens2)[0, -1]
answer, runner_up = logits2.topk(2).indices.tolist()
print(f"after {prompt2!r}: {tokenizer.decode([answer])!r} (p = {float(logits2.softmax(-1)[answer]):.2f}), "
      f"runner-up {tokenizer.decode([runner_up])!r}")


def logit_diff(logits):  # [batch, pos, vocab] -> the answer's logit minus the runner-up's, at the last position
    return float(logits[0, -1, answer] - logits[0, -1, runner_up])


# The mean-ablation reference: the same kind of text, on other facts (one row; positions are averaged too).
reference_text = " ".join(f"The capital of {country} is {city}." for country, city in
                          [("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Japan", "Tokyo"),
                           ("Peru", "Lima"), ("Norway", "Oslo"), ("Germany", "Berlin")])
reference = torch.tensor([tokenizer.encode(reference_text)])

clean_diff = logit_diff(model(tokens2))
change = {}
for mode in ("zero", "mean"):
    change[mode] = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)  # [layer, head]
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            with interp.ablate_heads(model, [(layer, head)], mode=mode, reference_tokens=reference):
                change[mode][layer, head] = logit_diff(model(tokens2)) - clean_diff

with plt.ioff():
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
plt.close(fig)
for ax, mode in zip(axes, ("zero", "mean")):
    viz.patching_heatmap(change[mode], kind="layer x head", value_label="change in logit difference",
                         title=f"{mode}-ablating each head", ax=ax)
display(fig)
print(f"logit difference without ablation: {clean_diff:.2f}")
for mode in ("zero", "mean"):
    values = change[mode]
    print(f"{mode}-ablation: {int((values.abs() > 1).sum())} of {values.numel()} heads move it by more than 1; "
          f"range {float(values.min()):+.2f} to {float(values.max()):+.2f}")
agree = float(torch.corrcoef(torch.stack([change["zero"].flatten(), change["mean"].flatten()]))[0, 1])
print(f"correlation between the zero- and mean-ablation maps: {agree:.2f}")

# %% [markdown]
# Read the two maps together. On the tiny model many heads move the logit difference, in *both*
# directions (red: removing the head lowers the difference, so the head was helping the answer;
# blue: removing it raises the difference, so the head was helping the runner-up), and
# the two kinds of ablation disagree on several heads: zeroing a head is a bigger, stranger
# intervention than replacing it by its average, and on Gemma 3 the post-attention norm then
# rescales the rest of the layer. "Only a few heads matter" is what a clean textbook circuit looks
# like; a four-layer model trained for minutes spreads a fact over many heads and the MLPs. On
# random weights the maps are noise. Lesson 11 turns this into a method: patching, where the
# replacement comes from a *specific* other prompt instead of zero or an average.
#
# ## Summary
#
# * Every activation has a name; `model.hook_names()` lists them and `cache[name, layer]` reads them.
# * `run_with_cache(tokens, names_filter=...)` records, `run_with_hooks(tokens, fwd_hooks=[(name, fn)])`
#   edits; `fn(activation, hook)` returns `None` to read or a tensor to replace.
# * Hooks live only inside `with model.hooks(...)`.
#
# **Next:** notebook 09 uses the cached attention patterns to find previous-token and induction heads.
