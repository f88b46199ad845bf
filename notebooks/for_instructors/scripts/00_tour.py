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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/00_tour.ipynb)**
#
# # 00 · A tour of gemma_lab
#
# **Time:** about 20 minutes. **Before this:** some Python and PyTorch; no transformer knowledge needed.
#
# `gemma_lab` is Gemma, Google's open language model, written out so that you can read it: one
# model file in plain PyTorch whose outputs equal those of the reference implementation (Hugging
# Face transformers), with a *hook* on every intermediate tensor so you can look inside while it runs.
# The lessons run on a **tiny Gemma** trained in this repository (a few hundred thousand
# parameters, seconds on a laptop CPU); one setting switches every lesson to real Gemma weights.
#
# **Learning goals.** By the end of this tour you can
#
# 1. load the lesson model and its tokenizer, and say what its configuration numbers mean;
# 2. turn text into token ids and run one forward pass to get `logits [batch, pos, vocab]`;
# 3. read the model's prediction for the next token, and generate text greedily and by sampling;
# 4. step through one forward pass in the `InferenceStepper` widget, and find your way around the course.

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

from gemma_lab import viz
from gemma_lab.generation import generate
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import InferenceStepper

torch.set_grad_enabled(False)  # we only run the model here: no gradients, less memory
model, tokenizer = load_lesson_model()
cfg = model.cfg
print(describe(model))

# %% [markdown]
# ## 1. The model is a handful of numbers
#
# Everything that shapes a Gemma is in one frozen dataclass, `model.cfg`. The names of its sizes
# are the **axis vocabulary** used everywhere in the course (in code, shapes and prose):
#
# | axis | meaning |
# |---|---|
# | `batch` | sequences processed together |
# | `pos` | token positions (`q_pos`, `k_pos` inside attention) |
# | `vocab` | token ids: `cfg.vocab_size` of them |
# | `d_model` | width of the residual stream, the vector each token carries through the layers |
# | `head`, `kv_head` | query heads, and key/value heads (fewer in Gemma: they are shared) |
# | `group` | query heads per key/value head, so `head = (kv_head group)` |
# | `d_head` | width of one attention head |
# | `d_mlp` | width of one branch of the MLP |

# %%
for field in ("family", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp",
              "sliding_window", "layer_types"):
    print(f"{field:>15}: {getattr(cfg, field)}")
print(f"{'parameters':>15}: {model.n_params():,}")

# %% [markdown]
# The same code runs Gemma 1, 2 and 3: the differences between the generations are config fields
# (`family`, `sandwich_norms`, `qk_norm`, the softcaps, the sliding window and the layer types),
# not separate classes. Lessons 02 to 06 take these numbers apart one by one.
#
# ## 2. Text in, token ids out
#
# The model never sees characters. The tokenizer cuts text into **pieces** from a fixed vocabulary
# and the model reads their ids. Gemma starts every sequence with the special `<bos>` token
# ("beginning of sequence"). Lesson 01 is all about this step.

# %%
prompt = "The capital of France is"
ids = tokenizer.encode(prompt)  # a list of ints, <bos> first
tokens = torch.tensor([ids])  # [batch=1, pos]
print(tokens.shape)
print(ids)
print(tokenizer.to_str_tokens(prompt))

# %% [markdown]
# ## 3. One forward pass: logits
#
# `model(tokens)` returns **logits** of shape `[batch, pos, vocab]`: at every position, one score per
# token of the vocabulary for *what comes next*. A softmax turns the scores at the last position into
# the model's probabilities for the token after the prompt.

# %%
logits = model(tokens)
print("logits:", tuple(logits.shape), "= [batch, pos, vocab]")
probs = logits[0, -1].softmax(dim=-1)  # [vocab]
viz.top_k_bars(probs, tokenizer.id_to_piece, k=10, title="next token after the prompt")

# %% [markdown]
# The tiny model was trained on a small synthetic world of short stories, facts like this one, name
# games and chats, so it knows this answer. (A model with random weights, if you pointed
# `GEMMA_LAB_MODEL` at one, has no idea what comes next: its bars are flat.)
#
# ## 4. Generating text
#
# Generation repeats the forward pass: choose a token, append it, run again. `generate` does that
# with a key/value cache so each step only processes the new token (lesson 07 builds it by hand).
# Temperature 0 is **greedy** decoding, always the most likely token; a positive temperature
# **samples**, and a seed makes the draw reproducible.

# %%
greedy = generate(model, prompt, tokenizer=tokenizer, max_new_tokens=12)
print("greedy:  ", repr(greedy.text))
for seed in range(3):
    sampled = generate(model, prompt, tokenizer=tokenizer, max_new_tokens=12, temperature=1.0, seed=seed)
    print(f"seed {seed}:  ", repr(sampled.text))

# %% [markdown]
# ## 5. Inside one forward pass
#
# The `InferenceStepper` walks through one forward pass stage by stage: the tokens, the embedding,
# and in each layer the queries and keys, the rotation by position, the attention scores, the mask,
# the attention pattern, the MLP, down to the logits and the sampled token. **Next ▶** and
# **◀ Back** move between stages; the sliders pick the layer, the head and the position; **Append
# token** feeds the chosen token back in through the key/value cache. Every tensor it shows is
# read from a hook of the real forward pass, with its shape in the axis vocabulary.

# %%
stepper = InferenceStepper(model, tokenizer, text=prompt)
stepper

# %% [markdown]
# ## 6. Hooks in one line
#
# Each of those tensors has a name. `run_with_cache` runs the model once and keeps the activations
# you ask for, so you can look at any of them afterwards; lesson 08 is about hooks in depth.

# %%
logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.0."))
for name in list(cache)[:8]:
    print(f"{name:<40} {tuple(cache[name].shape)}")
print(f"... {len(model.hook_names())} hook points in all")

# %% [markdown]
# ## 7. The course
#
# | lesson | what you build or measure |
# |---|---|
# | 00 | this tour |
# | 01 tokenization | pieces, byte fallback, `<bos>`, chat templates; you decode pieces yourself |
# | 02 embeddings and RMSNorm | the embedding lookup and its `sqrt(d_model)` scale; Gemma's RMSNorm |
# | 03 rotary embeddings | how RoPE rotates queries and keys by position |
# | 04 attention | scores, scale, causal and sliding-window masks, grouped-query attention |
# | 05 MLP and block | the GeGLU MLP; the transformer block with Gemma 2/3's sandwich norms |
# | 06 full forward pass | assemble your pieces into Gemma and match the package's logits |
# | 07 generation and sampling | the generation loop, the key/value cache, temperature, top-k, top-p |
# | 08 to 14 | interpretability: hooks, attention patterns and induction heads, the logit lens, activation patching, and more |
#
# **Exercises.** From lesson 01 on, you write functions yourself. An exercise cell holds a stub that
# raises `NotImplementedError`; the cell below it calls `check("name", your_function)`, which runs
# your function and the package's own implementation on several random inputs (different shapes,
# float32 and bfloat16, edge cases) and says ✔ or ✘. When an answer is wrong in a familiar way, for
# instance an epsilon outside a square root, the check says which: it knows the usual mistakes. A
# commented `solution("name")` cell shows one way to write it, folded away until you ask.
#
# **Real weights.** Set `MODEL` in the configuration cell (or `GEMMA_LAB_MODEL` before starting
# Jupyter) to a downloaded Gemma checkpoint folder, and every lesson runs on it unchanged; with a
# large model, `GEMMA_LAB_DTYPE=bfloat16` halves the memory.
