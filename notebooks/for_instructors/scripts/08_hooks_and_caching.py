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
# **Time:** about 40 minutes. **Before this:** notebooks 04 to 06 (attention, the MLP and the block, the full forward pass).
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
# 4. write a hook that silences one attention head, and use it to find the heads a prediction needs.

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
# from its own slice `z[:, :, head]`: setting that slice to zero removes exactly that head's
# contribution (this is *zero-ablation*).
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

print(f"prediction after {prompt!r}: {tokenizer.decode([predicted])!r}")
viz.patching_heatmap(effect, kind="layer x head", value_label="change in log-prob when ablated",
                     title=f"zero-ablating each head: effect on {tokenizer.decode([predicted])!r}")

# %% [markdown]
# Red cells are heads whose removal hurts the prediction. On a trained model only a few heads
# matter for any one prediction; on random weights the picture is noise.
#
# ## Summary
#
# * Every activation has a name; `model.hook_names()` lists them and `cache[name, layer]` reads them.
# * `run_with_cache(tokens, names_filter=...)` records, `run_with_hooks(tokens, fwd_hooks=[(name, fn)])`
#   edits; `fn(activation, hook)` returns `None` to read or a tensor to replace.
# * Hooks live only inside `with model.hooks(...)`.
#
# **Next:** notebook 09 uses the cached attention patterns to find previous-token and induction heads.
