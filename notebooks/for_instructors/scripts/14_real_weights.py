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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/14_real_weights.ipynb)**
#
# # 14 · Real weights
#
# **Time:** about 30 minutes, plus the download. **Before this:** notebook 13 (the model sizes).
#
# Every lesson runs on the bundled tiny Gemma by default; one setting, `GEMMA_LAB_MODEL`, switches
# it to a real checkpoint. This notebook explains where to get one, how much memory it needs, how to
# point the lessons at it, and what changes between bf16 and fp32. It runs as it is with the tiny
# model, and unchanged with a real one.
#
# **Learning goals.** By the end you can
#
# 1. download a Gemma checkpoint (after accepting its licence) and point the lessons at it;
# 2. estimate the memory a model needs, weights and KV cache, from its configuration;
# 3. choose between bf16 and fp32, and measure what bf16 changes in the logits.

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
import numpy as np
import torch
from IPython.display import display

import gemma_lab.exercises.lesson14_real_weights  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import PRESETS, viz
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.generation import generate
from gemma_lab.notebook import describe, lesson_model_path, load_lesson_model

torch.set_grad_enabled(False)

# %% [markdown]
# ## 1. Where to get the weights
#
# Gemma's weights are free to download, but each family sits behind a licence click-through
# (the *Gemma Terms of Use* and its prohibited-use policy): sign in, open the model's page, read
# and accept the terms once. Then:
#
# **Hugging Face** (the transformers layout `gemma_lab` reads directly: `config.json`,
# `*.safetensors`, `tokenizer.model` or `tokenizer.json`). Accept the licence on the model page
# (for example `huggingface.co/google/gemma-2-2b`), create an access token in your account
# settings, then in a terminal:
#
# ```bash
# hf auth login                           # paste the token (or set HF_TOKEN)
# gemma-lab download google/gemma-2-2b    # shows the size and the memory it needs, then downloads
# ```
#
# The files land in the Hugging Face cache (`~/.cache/huggingface`, or `$HF_HOME`), shared with
# transformers. From then on the id works wherever a path does, offline too:
# `GEMMA_LAB_MODEL=google/gemma-2-2b`, `MODEL = "google/gemma-2-2b"` in the configuration cell,
# `load_pretrained("google/gemma-2-2b")`. (Without the download step, the first use downloads it.)
#
# Repository names: `google/gemma-2b`, `google/gemma-7b` (and `-it` for instruction-tuned),
# `google/gemma-1.1-2b-it`, `google/gemma-2-2b`, `google/gemma-2-9b`, `google/gemma-2-27b`,
# `google/gemma-3-270m`, `google/gemma-3-1b-pt`, `google/gemma-3-4b-pt`, ... (`-it` variants too).
# For Gemma 3 4B and larger the checkpoint is multimodal; `gemma_lab` loads its text model and
# skips the vision tower.
#
# **Kaggle** (`kaggle.com/models/google/gemma`, `.../gemma-2`, `.../gemma-3`): accept the licence on
# the model page, choose the *Transformers* variation (or the *PyTorch* one: Google's gemma_pytorch
# `.ckpt`, which `gemma_lab` also reads), and download it from the page, or give its handle
# (`google/gemma-2/transformers/gemma-2-2b`) wherever an id goes, with `kagglehub` installed.
#
# The weights are the same on both sites. Download once, before the lesson; every lesson then
# reads the files from disk, offline.

# %% [markdown]
# ## 2. How much memory?
#
# Weights take `n_params x bytes per parameter`: 4 bytes in fp32, 2 in bf16. On top come the
# activations of one forward pass (small for short prompts) and, when generating, the KV cache. A
# rule of thumb: have free RAM (or GPU memory) of at least 1.2 times the weights.
#
# **Exercise.** Write `weight_memory_gib(cfg, dtype)`: the weights' size in GiB (`2**30` bytes), for a
# `GemmaConfig` and a torch dtype. `cfg.n_params()` counts parameters (the tied embedding once);
# `torch.finfo(dtype).bits` gives the bits per number.

# %% exercise="weight_memory_gib" tags=["exercise"]
def weight_memory_gib(cfg, dtype):
    """GiB of memory the weights of a model with config `cfg` take in `dtype`."""
    raise NotImplementedError  # your code here


# %%
result = check("weight_memory_gib", weight_memory_gib)
display(result)

# %%
# solution("weight_memory_gib")  # uncomment to see one way to write it

# %% [markdown]
# **Exercise.** Generation also keeps the keys and values of every token seen so far, per layer: the
# KV cache. Write `kv_cache_bytes(cfg, n_tokens, dtype)`: bytes for one sequence of `n_tokens`
# tokens. Per layer and kept token it stores a key and a value of `n_kv_heads x d_head` numbers each.
# A global layer keeps every token; a local layer (`cfg.is_local(layer)`) keeps at most
# `cfg.sliding_window`.

# %% exercise="kv_cache_bytes" tags=["exercise"]
def kv_cache_bytes(cfg, n_tokens, dtype):
    """Bytes of the KV cache of one sequence of `n_tokens` tokens, summed over layers."""
    raise NotImplementedError  # your code here


# %%
kv_result = check("kv_cache_bytes", kv_cache_bytes)
display(kv_result)

# %%
# solution("kv_cache_bytes")  # uncomment to see one way to write it

# %%
# From here on: your functions if they passed, otherwise the reference implementations.
if not result.passed:
    weight_memory_gib = get_exercise("weight_memory_gib").reference
if not kv_result.passed:
    kv_cache_bytes = get_exercise("kv_cache_bytes").reference

full_size = [name for name in PRESETS if not name.startswith("test-")]
print(f"{'model':>12} {'params':>8} {'fp32 GiB':>9} {'bf16 GiB':>9} {'KV cache, 8k tokens, bf16':>27}")
for name in full_size:
    cfg = PRESETS[name]
    print(f"{name:>12} {cfg.n_params() / 1e9:7.2f}B {weight_memory_gib(cfg, torch.float32):9.1f} "
          f"{weight_memory_gib(cfg, torch.bfloat16):9.1f} {kv_cache_bytes(cfg, 8192, torch.bfloat16) / 2**30:23.2f} GiB")

with plt.ioff():
    fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
plt.close(fig)
x = np.arange(len(full_size))
ax.bar(x - 0.2, [weight_memory_gib(PRESETS[n], torch.float32) for n in full_size], 0.4, label="fp32")
ax.bar(x + 0.2, [weight_memory_gib(PRESETS[n], torch.bfloat16) for n in full_size], 0.4, label="bf16")
for size, where in ((16, "16 GiB laptop"), (80, "80 GiB GPU")):
    ax.axhline(size, color="0.5", linestyle=":", linewidth=1)
    ax.text(len(full_size) - 0.5, size, where, ha="right", va="bottom", fontsize=8)
ax.set_xticks(x, full_size, rotation=45)
ax.set(ylabel="GiB for the weights", yscale="log", title="memory for the weights alone")
ax.legend()
display(fig)

# %% [markdown]
# Practical choices: on a laptop CPU with 16 GiB, `gemma3-270m`, `gemma3-1b`, `gemma-2b` and
# `gemma2-2b` are comfortable in bf16 (and the small ones in fp32). The 7B to 9B models want 32 GiB
# or a GPU; 27B wants a large GPU.
#
# ## 3. Pointing the lessons at a checkpoint
#
# Either before starting Jupyter, for every notebook at once:
#
# ```bash
# export GEMMA_LAB_MODEL=~/models/gemma-2-2b
# export GEMMA_LAB_DTYPE=bfloat16        # optional: half the memory of fp32
# jupyter lab
# ```
#
# or in the configuration cell at the top of a notebook: `MODEL = "/home/me/models/gemma-2-2b"`.
# `load_lesson_model()` reads the folder (transformers safetensors, sharded or not, or a
# gemma_pytorch `.ckpt`), strictly: a missing or mis-shaped tensor is an error naming it. Nothing
# in the lessons assumes the tiny model's sizes, so they run unchanged, only slower. Loops that do
# one forward pass per layer and head (ablation in 08, patching in 11) take minutes on a CPU for a
# 2B model.

# %%
print("this notebook runs on:", lesson_model_path())
model, tokenizer = load_lesson_model()
print(describe(model))
print(f"dtype {model.dtype}, weights {model.n_params() * model.embed.weight.element_size() / 2**30:.3f} GiB in memory")

# %% [markdown]
# A first check that the weights loaded correctly: sensible next-token predictions for a plain
# prompt, and a short greedy continuation. (The tiny model knows capitals from its training text;
# a random-weight model predicts noise.)

# %%
prompt = "The capital of France is"
tokens = torch.tensor([tokenizer.encode(prompt)])
logits = model(tokens)
print(repr(prompt), "->", repr(generate(model, prompt, tokenizer=tokenizer, max_new_tokens=8).text))
probs = logits[0, -1].float().softmax(-1)[: tokenizer.vocab_size]  # ids the tokenizer has pieces for
viz.top_k_bars(probs, tokenizer.id_to_piece, k=10, title=f"next token after {prompt!r}")

# %% [markdown]
# Instruction-tuned (`-it`) checkpoints expect the chat format. The tokenizer renders it (the turn
# markers differ between Gemma 1/2 and Gemma 3); with a base model the same text is just a prompt.

# %%
chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
print(chat)

# %% [markdown]
# ## 4. bf16 or fp32?
#
# bfloat16 keeps fp32's 8 bits of exponent (the same range) but only 8 significant bits instead of
# 24: `8 * log10(2)`, about 2.4 decimal digits (the cell below computes it). Which dtype a checkpoint
# is *stored* in differs between releases. On Hugging Face, Gemma 2's pretrained checkpoints
# (`google/gemma-2-2b`, `-9b`, `-27b`) are float32 and its instruction-tuned ones (`-2b-it`, `-9b-it`,
# `-27b-it`) bfloat16: 4 bytes a parameter against 2, so `gemma-2-2b` is a 10.5 GB download and
# `gemma-2-2b-it` 5.2 GB. Gemma 3's instruction-tuned checkpoints (`gemma-3-1b-it` to `-27b-it`) are
# bfloat16. For any other, don't guess: `gemma-lab download ID --dry-run` prints the download size
# beside the parameter count (about 4 bytes a parameter is float32, 2 is bfloat16), and the header of
# each `.safetensors` file lists every tensor's dtype; the next cell reads it for the checkpoint this
# lesson runs on. Whatever the file holds, `load_pretrained(..., dtype=...)` converts it on
# loading. Loading in bf16 halves the memory and, on hardware
# with bf16 units, speeds things up; the price is rounding in every matrix multiply. `gemma_lab`
# keeps the numerically delicate steps in fp32 either way (RMSNorm statistics, RoPE angles,
# softmax). Float16 is *not* a substitute: its range ends at 65 504, and Gemma's activations exceed
# it.
#
# For interpretability, fp32 makes small effects (a patching result of 0.01) trustworthy; bf16 is
# fine for generation and for large effects. Here we load the same checkpoint in both and compare
# the logits (skipped for models above 3B parameters, to spare your memory).

# %%
import json
import math
from collections import Counter

from gemma_lab.loading import checkpoint_files
from gemma_lab.notebook import lesson_checkpoint

for name, bits in (("bfloat16", 8), ("float16", 11), ("float32", 24)):
    print(f"{name:>8}: {bits:2d} significant bits = {bits * math.log10(2):.1f} decimal digits")


def stored_dtypes(files):
    """How many tensors of each dtype the .safetensors files hold (read from their JSON headers only)."""
    counts = Counter()
    for file in files:
        if file.suffix != ".safetensors":
            continue
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        counts.update(entry["dtype"] for key, entry in header.items() if key != "__metadata__")
    return counts


stored = stored_dtypes(checkpoint_files(lesson_checkpoint()))
print(f"this lesson's checkpoint stores its tensors as: {dict(stored) or 'no .safetensors files'}")

# %%
if model.n_params() > 3e9:
    print("large model: skipping the side-by-side load (it would need the weights twice)")
else:
    fp32, _ = load_lesson_model(dtype="float32")
    bf16, _ = load_lesson_model(dtype="bfloat16")
    text = "When Mary and John went to the store, John gave a drink to"
    ids = torch.tensor([tokenizer.encode(text)])
    logits32, logits16 = fp32(ids)[0].float(), bf16(ids)[0].float()  # [pos, vocab]
    difference = (logits16 - logits32).abs()
    same_top = (logits16.argmax(-1) == logits32.argmax(-1)).float().mean()
    kl = torch.nn.functional.kl_div(logits16.log_softmax(-1), logits32.log_softmax(-1), log_target=True,
                                    reduction="none").sum(-1)  # [pos]: KL(fp32 || bf16)
    print(f"max |logit difference| {difference.max():.3f}, mean {difference.mean():.4f}")
    print(f"same top token at {same_top:.0%} of positions; mean KL(fp32 || bf16) = {kl.mean():.2e} nats")

    with plt.ioff():
        fig, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    plt.close(fig)
    ax.scatter(logits32[-1], logits16[-1], s=4, alpha=0.5)
    ax.axline((0, 0), slope=1, color="0.5", linewidth=0.8)
    ax.set(xlabel="fp32 logit", ylabel="bf16 logit", title="last position: every vocabulary entry")
    display(fig)

# %% [markdown]
# ## Summary
#
# * Accept the licence, download once (`gemma-lab download google/gemma-2-2b`), then
#   `GEMMA_LAB_MODEL=google/gemma-2-2b` (or a folder).
# * Weights need `n_params x 2` bytes in bf16, `x 4` in fp32; the KV cache grows with context, less so
#   with sliding-window layers.
# * bf16 for size and speed, fp32 for small, precise effects; never fp16 for Gemma.
#
# This is the last lesson. With a real checkpoint set, go back to notebooks 08 to 12 and look for
# induction heads, the IOI circuit and steering directions in a model trained on trillions of tokens.
