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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/17_gemma3n.ipynb)**
#
# # 17 · Gemma 3n: four residual streams, a low-rank side path, and sparse neurons
#
# **Time:** about 40 minutes. **Before this:** notebooks 05 (the block), 08 (hooks) and 13 (Gemma 2 and 3).
#
# Gemma 3n (E2B, E4B) was built to run on phones. Inside, it is the most unusual Gemma: the residual
# stream is widened to **four copies** that each block updates in a cheap, indirect way (*AltUp*); beside
# attention runs a **low-rank branch** (*LAuReL*); the first ten MLPs keep only about **5% of their
# neurons** per token (a *gaussian top-k*); and, as in Gemma 4, each layer gets **per-layer embeddings**
# and the last layers **reuse earlier layers' keys and values**. Finally, E2B is a sub-network cut out of
# E4B (*MatFormer*).
#
# **Learning goals.** By the end you can
#
# 1. say what AltUp's four copies are, which one a block computes on, and how the others follow (predict, correct);
# 2. write AltUp's prediction and the gaussian top-k as code, and check them against the model's hooks;
# 3. read LAuReL's branch and the sparsity cutoff off the hooks, and see which neurons survive (a widget);
# 4. say why direct logit attribution is not exact on Gemma 3n while patching still is;
# 5. explain MatFormer's nesting of E2B inside E4B, and cut a smaller model out of a bigger one.

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
# Configuration: which model this lesson runs on. "" keeps the default (the bundled tiny Gemma, or the
# folder in $GEMMA_LAB_MODEL). A Gemma 3n checkpoint folder (e.g. a downloaded google/gemma-3n-E2B) makes
# every number below the real model's; with any other model the lesson builds a small random Gemma 3n.
import os

MODEL = ""
if MODEL:
    os.environ["GEMMA_LAB_MODEL"] = MODEL

# %%
import torch
from einops import einsum  # noqa: F401  (for the exercises: einsum(x, y, "pattern"))

import gemma_lab.exercises.lesson17_gemma3n  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.exercises.lesson17_gemma3n import gemma3n_lesson_model
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import AltUpExplorer

torch.set_grad_enabled(False)
lesson_model, tokenizer = load_lesson_model()
model, source = gemma3n_lesson_model(lesson_model, tokenizer)
cfg = model.cfg
print(describe(model, source))
print(f"AltUp copies: {cfg.altup_num_inputs}, LAuReL rank: {cfg.laurel_rank}, "
      f"sparse MLPs: {[layer for layer in range(cfg.n_layers) if cfg.sparsity_for(layer)]}")

# %% [markdown]
# ## 1 · Four copies of the stream
#
# After the embedding, Gemma 3n makes `altup_num_inputs = 4` copies of it: copy 0 is the embedding
# itself, copies 1-3 are learned linear maps of it, each rescaled to copy 0's size. From then on the
# stream has an extra axis, `stream`: `[batch, pos, stream, d_model]`. At the very end, copies 1-3 are
# mapped back by their own matrices, rescaled again, and the four are **averaged** before the final norm.

# %%
text = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(text)])
logits, cache = model.run_with_cache(tokens)
streams = cache["altup_stack.hook_streams"]
print("streams entering layer 0:", tuple(streams.shape), "= [batch, pos, stream, d_model]")
print("copy 0 is the embedding:", torch.equal(streams[:, :, 0], cache["hook_embed"]))
rms = streams.pow(2).mean(-1).sqrt()[0, -1]
print("rms of each copy at the last token:", [round(v, 3) for v in rms.tolist()], "(rescaled to copy 0's)")

# %% [markdown]
# ## 2 · Predict, run the block on one copy, correct
#
# A block is as expensive as in any Gemma, but it runs on **one** copy, the *active* one (copy 0). AltUp
# keeps the other copies moving with two cheap steps around it:
#
# * **predict**: a small router reads the active copy and gives, per token, a 4 x 4 matrix `coefs`;
#   every copy becomes itself plus a mix of all copies: `predicted[out] = streams[out] + sum_in coefs[out, in] * streams[in]`.
# * the block (attention, LAuReL, MLP) runs on `predicted[active]`;
# * **correct**: the block's *innovation*, `output - predicted[active]`, is added to every copy, weighted
#   per copy (`1 + c`, from the same router reading the output).
#
# Write the prediction. `streams` is `[batch, pos, stream, d_model]`, `coefs` is `[batch, pos, out, in]`.

# %% exercise="altup_predict" tags=["exercise"]
def altup_predict(streams, coefs):
    raise NotImplementedError


# %%
check("altup_predict", altup_predict)

# %%
# solution("altup_predict")  # uncomment to see one way to write it

# %% [markdown]
# The hooks hold every piece, so the model can check your function on its own activations:

# %%
layer = 1
try:
    mine = altup_predict(cache["streams_pre", layer], cache[f"blocks.{layer}.altup_predict.hook_coefs"])
    print("equals the model's prediction:",
          torch.allclose(mine, cache[f"blocks.{layer}.altup_predict.hook_predicted"], atol=1e-5))
except NotImplementedError:
    print("write altup_predict above first")
innovation = cache[f"blocks.{layer}.altup_correct.hook_innovation"]
print("innovation = resid_post - resid_pre:",
      torch.allclose(innovation, cache["resid_post", layer] - cache["resid_pre", layer], atol=1e-5))
print("correction weights (1 + c) at the last token:",
      [round(v, 3) for v in cache[f"blocks.{layer}.altup_correct.hook_coefs"][0, -1].tolist()])

# %% [markdown]
# ## 3 · LAuReL: a low-rank path beside attention
#
# LAuReL (*learned augmented residual layer*) takes the block's normalised input `x = ln1(resid_pre)`,
# squeezes it through rank `laurel_rank` (64 in E2B/E4B), normalises, and adds `x + branch` next to
# attention. Three unit-sized things are now summed, so Gemma 3n scales by `1/sqrt(2)`:
# `resid_mid = (resid_pre + attn_out + x + branch) / sqrt(2)`.

# %%
x = cache[f"blocks.{layer}.ln1.hook_normalized"]
branch = cache[f"blocks.{layer}.laurel.hook_branch"]
rebuilt = (cache["resid_pre", layer] + cache["attn_out", layer] + x + branch) / 2 ** 0.5
print("resid_mid rebuilt from the hooks:", torch.allclose(rebuilt, cache["resid_mid", layer], atol=1e-5))

# %% [markdown]
# ## 4 · Activation sparsity: a top-k without sorting
#
# On the first layers (`activation_sparsity`, 0.95 on E2B/E4B's first ten) the MLP's gate is cut per
# token at `mean + std * Phi^-1(0.95) = mean + 1.645 std`: if the gate values were normally distributed,
# 95% would fall below. The survivors are shifted down by the cutoff: `relu(gate - cutoff)`. No sort is
# needed, which is what makes it cheap on a phone. Write it (`std` without Bessel's correction).

# %% exercise="gaussian_topk" tags=["exercise"]
def gaussian_topk(gate, sparsity):
    raise NotImplementedError


# %%
check("gaussian_topk", gaussian_topk)

# %%
# solution("gaussian_topk")  # uncomment to see one way to write it

# %% [markdown]
# The widget shows, for a layer and a token, each copy's size through the model, the layer's
# prediction matrix and correction weights, and (on a sparse layer) the gate values against the cutoff.
# Move the sliders; the attributes hold what it drew (`explorer.kept`, `explorer.mixing`).

# %%
explorer = AltUpExplorer(model, tokenizer, text, layer=0)
explorer

# %%
kept = explorer.kept
print(f"layer 0 keeps {int(kept.sum())} of {kept.numel()} neurons for the last token "
      f"({kept.float().mean():.1%}; a gaussian gate would give 5%)")
print("the neurons kept are exactly the non-zero ones:",
      torch.equal(kept, cache["post", 0][0, -1] != 0))

# %% [markdown]
# ## 5 · Shared with Gemma 4: per-layer inputs and KV sharing
#
# Each layer also reads a narrow per-layer embedding (`d_per_layer`: 256 numbers per layer in E2B/E4B):
# Gemma 3n gates it with the corrected active copy and adds the result to copies 1-3 only (Gemma 4 adds
# it to its one stream). The last `n_kv_shared_layers` layers compute no keys or values: they attend to
# those of the last earlier layer of their kind.

# %%
print("each layer's keys and values come from layer:", [cfg.kv_source(layer) for layer in range(cfg.n_layers)])
post = cache["streams_post", 0]
corrected = cache["blocks.0.altup_correct.hook_corrected"]
print("copy 0 gets no per-layer input:", torch.equal(post[:, :, 0], corrected[:, :, 0]))

# %% [markdown]
# ## 6 · What attribution can and cannot say here
#
# In Gemma 1-4 the final stream is a **sum** of what each head and MLP wrote, which is what direct logit
# attribution (notebook 10) splits up. In Gemma 3n, AltUp re-mixes the four copies in every layer with
# coefficients that depend on the token, so no such sum exists: `interp.direct_logit_attribution`
# refuses rather than return a wrong split. Ablation and patching make no such assumption and stay exact.
# The logit lens reads all four copies after each layer through the model's own ending.

# %%
try:
    interp.direct_logit_attribution(model, tokens, target=int(logits[0, -1].argmax()))
except ValueError as error:
    print("DLA:", str(error)[:120], "...")
lens = interp.logit_lens(model, tokens[0], k=1)
print("logit lens, top token after each layer at the last position:",
      [tokenizer.decode([int(t)]) for t in lens.top_tokens[:, -1, 0]])

# %% [markdown]
# ## 7 · MatFormer: E2B lives inside E4B
#
# Gemma 3n was trained as a *Matryoshka transformer* (MatFormer, Devvrit et al., 2023): the MLPs of the
# large model are trained so that their first neurons alone already form a working smaller MLP, the way
# nested dolls fit inside each other. Training optimises the large and the nested small model together,
# so E4B's weights contain E2B: a smaller MLP width per layer (8192 of E4B's 16384 neurons) and fewer
# layers. Google also describes "mix-n-match" sizes in between, choosing a width per layer.
#
# Google publishes the recipe that cuts a sub-model out of E4B: the *MatFormer Lab* notebook in the
# gemma-cookbook repository (`Gemma/[Gemma_3n]MatFormer_Lab.ipynb`), with tested configurations in the
# Hugging Face dataset `google/gemma3n-slicing-configs`. Official E2B: skip layers 20-24 (E4B's first five
# KV-shared layers, one block of four local and one global) and keep the first 8192 neurons of every MLP.
# Each kept layer's `gate_proj` and `up_proj` keep their first rows, `down_proj` its first columns; the
# per-layer embedding table and its projection, which hold one `d_per_layer` slice per layer, lose the
# skipped layers' slices; the config loses the skipped layers' entries (KV-shared count, layer types,
# activation sparsity) and lists one MLP width per layer. `gemma_lab.matformer.slice_gemma3n` does this in
# memory (`preset="e2b"` on a real E4B); its tests compare it with transformers on weights sliced by hand.
# The layers whose keys and values the KV-shared layers read cannot be skipped, and the function says so.
#
# Below, the same recipe in small on this lesson's model: skip the first KV-shared layer and halve every MLP.

# %%
from gemma_lab.matformer import PUBLISHED_SLICES, slice_gemma3n

e2b = PUBLISHED_SLICES["e2b"]
print(f"published E2B: skip layers {list(e2b.layers_to_skip)} of {e2b.n_layers}, MLP widths {sorted(set(e2b.ffn_dims))}")
first_shared = cfg.n_layers - cfg.n_kv_shared_layers
kept = [layer for layer in range(cfg.n_layers) if layer != first_shared]
small = slice_gemma3n(model, layers_to_skip=[first_shared], ffn_dims=[cfg.d_mlp_for(layer) // 2 for layer in kept])
print(f"layers {cfg.n_layers} -> {small.cfg.n_layers}, MLP widths {cfg.d_mlp_for(0)} -> {small.cfg.d_mlp_for(0)}, "
      f"KV-shared layers {cfg.n_kv_shared_layers} -> {small.cfg.n_kv_shared_layers}")
print(f"parameters {model.n_params():,} -> {small.n_params():,}")
small_logits = small(tokens)
print("top next token, full vs sliced:", [tokenizer.decode([int(lg[0, -1].argmax())]) for lg in (logits, small_logits)])

# %% [markdown]
# On random weights the two answers need not agree: nothing trained this model's first neurons to work
# alone. `gemma_lab.loading.save_pretrained(small, folder)` writes the sliced model as a transformers
# checkpoint, as the notebook's last step does.
#
# **To think about.** The nested model uses each MLP's *first* neurons. In the widget, are the neurons
# the sparsity keeps concentrated among the first ones? Why would they not be, on random weights?
