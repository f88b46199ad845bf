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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/06_full_forward_pass.ipynb)**
#
# # 06 · The full forward pass
#
# **Time:** about 45 minutes. **Before this:** notebooks 02 to 05.
#
# You have built every piece: the embedding, RMSNorm, the rotation, the mask, grouped-query attention,
# the GeGLU MLP and the block. Here they become a whole Gemma, reading nothing from the model but its
# weights and its config, and the result is held against the package's logits, which are in turn held
# against the reference implementation, Hugging Face transformers.
#
# **Learning goals.** By the end you can
#
# 1. list the steps of a Gemma forward pass, for all three generations, with the shape after each;
# 2. write a complete attention sublayer from the raw weights (projections, q/k norm, RoPE with the
#    layer's own base, mask with the layer's window, softcap, output projection);
# 3. assemble the whole forward pass and match `model(tokens)` to float32 precision;
# 4. explain why "the same maths" can differ in the last bits, and how the package proves it agrees
#    with transformers.

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
# Section 6 loads the same checkpoint with transformers and compares logits (slower: off by default).
COMPARE_WITH_TRANSFORMERS = False

# %%
import matplotlib.pyplot as plt
import torch
from einops import rearrange  # noqa: F401  (for your exercises)

from gemma_lab import viz
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.notebook import describe, lesson_checkpoint, load_lesson_model

# The pieces of lessons 02-05, in the package's versions (same names and arguments as your exercises),
# so that a slip in an earlier lesson does not follow you here. Paste in your own if you prefer.
from gemma_lab.exercises.lesson02_embeddings_and_rmsnorm import embed, rms_norm  # noqa: F401
from gemma_lab.exercises.lesson03_rotary_embeddings import apply_rotary, rotary_cos_sin  # noqa: F401
from gemma_lab.exercises.lesson04_attention import attention_mask, grouped_attention  # noqa: F401
from gemma_lab.exercises.lesson05_mlp_and_block import geglu  # noqa: F401

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
cfg = model.cfg
print(describe(model))

prompt = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]

# %% [markdown]
# ## 1. The recipe
#
# | step | computation | shape after |
# |---|---|---|
# | embed | `embed(tokens, W_E)`: rows of `W_E` times `sqrt(d_model)` (rounded to the weight dtype) | `[batch, pos, d_model]` |
# | each block | **attention sublayer** on `rms_norm(resid, ln1)`; Gemma 2/3: `rms_norm(·, ln1_post)`; add to `resid` | `[batch, pos, d_model]` |
# | | **MLP** `geglu` on `rms_norm(resid, ln2)`; Gemma 2/3: `rms_norm(·, ln2_post)`; add to `resid` | `[batch, pos, d_model]` |
# | final norm | `rms_norm(resid, ln_final)` | `[batch, pos, d_model]` |
# | unembed | `x @ W_E.T`, the embedding matrix again (tied) | `[batch, pos, vocab]` |
# | Gemma 2 | `final_softcap * tanh(logits / final_softcap)`, with `final_softcap = 30` | `[batch, pos, vocab]` |
#
# and the attention sublayer on `x [batch, pos, d_model]` at `positions [batch, pos]`:
#
# | step | computation | shape after |
# |---|---|---|
# | project | `x @ q_proj.weight.T`, split heads with `rearrange`; the same for `k`, `v` with `kv_head` | `q [batch, pos, head, d_head]`, `k`, `v [batch, pos, kv_head, d_head]` |
# | Gemma 3 | `rms_norm` over `d_head` of `q` with `q_norm.weight`, of `k` with `k_norm.weight` | unchanged |
# | rotate | `theta, scale = cfg.rope_for_layer(layer)`; cos/sin of `positions / scale`; `apply_rotary` to `q` and `k` | unchanged |
# | attend | `attention_mask(positions, positions, attn.window)`; `grouped_attention(..., query_pre_attn_scalar, cfg.attn_softcap)` | `z [batch, pos, head, d_head]` |
# | output | merge heads `(head d_head)`, then `@ o_proj.weight.T` | `[batch, pos, d_model]` |
#
# Where the config says what a generation does: `cfg.sandwich_norms` (post-norms), `cfg.qk_norm`,
# `cfg.attn_softcap` and `cfg.final_softcap` (None unless Gemma 2), `attn.window` (None on global
# layers), `cfg.query_pre_attn_scalar` (None in Gemma 1: use `d_head`), `cfg.rope_for_layer(layer)`.

# %% [markdown]
# ## 2. Exercise: the attention sublayer
#
# Write `attention_layer(attn, x, positions)` from the table above. `attn` is one of the model's
# attention modules (`model.blocks[i].attn`); use its weights and settings, `attn.cfg`, `attn.layer` and
# `attn.window`, but not its `forward`. The angles from `rotary_cos_sin` are float32: cast them to
# `x.dtype` before rotating. The check runs it on random Gemma 1, 2 and 3 layers, local and global.

# %% exercise="attention_layer" tags=["exercise"]
def attention_layer(attn, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The attention sublayer of `attn` on x [batch, pos, d_model] at positions [batch, pos]: [batch, pos, d_model]."""
    raise NotImplementedError  # your code here


# %%
check("attention_layer", attention_layer)

# %%
# solution("attention_layer")  # uncomment to see one way to write it

# %% [markdown]
# ## 3. Exercise: the whole model
#
# Write `gemma_forward(model, tokens)`: logits `[batch, pos, vocab]` for `tokens [batch, pos]`, using
# `model.embed.weight`, each `block` in `model.blocks` (`block.attn` for your `attention_layer`;
# `block.ln1`, `block.ln1_post`, `block.ln2`, `block.ln2_post` for the norms' weights; `block.mlp`'s
# `gate_proj`, `up_proj` and `down_proj` weights), `model.ln_final` and `model.cfg`. The positions are
# `0 .. pos - 1`, the same for every row. Only the weights: not `model(...)`, not a block's `forward`.

# %% exercise="gemma_forward" tags=["exercise"]
def gemma_forward(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [batch, pos, vocab] of a gemma_lab Gemma on tokens [batch, pos], from its weights alone."""
    raise NotImplementedError  # your code here


# %%
check("gemma_forward", gemma_forward)

# %%
# solution("gemma_forward")  # uncomment to see one way to write it

# %% [markdown]
# ## 4. Against the package
#
# Now the lesson model and the prompt. The logits should agree with `model(tokens)` to float32
# precision, and the predictions should be the same.
#
# Agree *to float32 precision*, rather than bit for bit, because floating-point addition is not
# associative: the same sum computed in another order can differ in the last bit. Without hooks,
# `model(tokens)` runs attention through PyTorch's fused `scaled_dot_product_attention` kernel, which
# orders its sums its own way; with a hook on the attention scores or pattern it runs the explicit
# einsum path. The two are tested equal to float32 precision; an einsum version written like the
# lessons' usually equals the explicit path bit for bit.

# %%
expected = model(tokens)  # [batch, pos, vocab]
explicit = model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_pattern"),
                                                     lambda pattern, hook: None)])  # forces the einsum path
print(f"fused vs explicit attention path: max |difference| {(expected - explicit).abs().max().item():.2g}")
try:
    mine = gemma_forward(model, tokens)
    print(f"yours vs model(tokens):           max |difference| {(mine - expected).abs().max().item():.2g}")
    print(f"yours vs the explicit path:       max |difference| {(mine - explicit).abs().max().item():.2g}"
          f"   (bit for bit: {torch.equal(mine, explicit)})")
    torch.testing.assert_close(mine, expected)  # float32 tolerances: raises if they differ by more
    same = torch.equal(mine.argmax(-1), expected.argmax(-1))
    print("within float32 tolerance; same prediction at every position:", same)
except NotImplementedError:
    print("(write gemma_forward above to hold it against the model)")

# %% [markdown]
# What the model predicts after the prompt, and where its parameters are:

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
viz.top_k_bars(expected[0, -1].softmax(-1), tokenizer.id_to_piece, k=8, title="next token", ax=left)
groups = {
    "embedding (tied)": model.embed.weight.numel(),
    "attention": sum(p.numel() for block in model.blocks for p in block.attn.parameters()),
    "MLP": sum(p.numel() for block in model.blocks for p in block.mlp.parameters()),
    "norms": sum(p.numel() for name, p in model.named_parameters() if p.ndim == 1),
}
right.barh(list(groups), list(groups.values()), color=["C0", "C1", "C2", "C7"])
for y, count in enumerate(groups.values()):
    right.text(count, y, f" {count / model.n_params():.1%}", va="center")
right.invert_yaxis()
right.set_xlabel("parameters")
right.set_title(f"{model.n_params():,} parameters")
plt.show()

# %% [markdown]
# ## 5. How do we know the package is right?
#
# The package's `model(tokens)` is held against **transformers** (`GemmaForCausalLM`,
# `Gemma2ForCausalLM`, `Gemma3ForCausalLM`), the implementation most Gemma checkpoints are published
# for. `tests/test_parity.py` builds small random models of all three generations, saves them with
# transformers' own `save_pretrained`, loads them into `gemma_lab`, and requires the logits to be
# *equal*, in float32 and in bfloat16, against transformers' `attn_implementation="eager"` path.
# Every numerical detail of lessons 02 to 05 (the scale rounded to the weight dtype, `1 + w` in
# float32, tanh-GELU, rotate-half, `query_pre_attn_scalar`, the window counting the query itself) is
# there because that test would fail without it. On the lesson model, your `gemma_forward`, the
# package's explicit path and transformers' eager path usually agree bit for bit (section 6 shows it).
#
# ## 6. Optional: transformers on the same checkpoint
#
# If `transformers` is installed and the lesson model is a transformers checkpoint folder, set
# `COMPARE_WITH_TRANSFORMERS = True` in the configuration cell and run this cell: it loads the same
# weights with transformers and compares the logits. (Importing transformers takes a few seconds.)

# %%
checkpoint = lesson_checkpoint()
if COMPARE_WITH_TRANSFORMERS:
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=model.dtype, attn_implementation="eager").eval()
    theirs = reference(tokens).logits
    print(f"transformers (eager) vs gemma_lab's explicit path: max |difference| "
          f"{(theirs - explicit).abs().max().item():.2g}   (bit for bit: {torch.equal(theirs, explicit)})")
    print(f"transformers (eager) vs model(tokens):             max |difference| "
          f"{(theirs - expected).abs().max().item():.2g}")
else:
    print(f"skipped (set COMPARE_WITH_TRANSFORMERS = True to compare with transformers on {checkpoint})")

# %% [markdown]
# **Takeaways.** A Gemma forward pass is: embed and scale; per block, attention and MLP, each on a
# pre-normed stream and (Gemma 2/3) post-normed before being added; a final norm; the tied unembedding;
# Gemma 2's final softcap. Written from the weights alone it matches the package to float32 precision,
# and the package matches transformers. Next, lesson 07 runs the model again and again: generation.
