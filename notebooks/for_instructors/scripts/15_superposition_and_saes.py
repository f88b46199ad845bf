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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/15_superposition_and_saes.ipynb)**
#
# # 15 · Superposition and sparse autoencoders
#
# **Time:** about 50 minutes. **Before this:** notebooks 08 (hooks), 10 (logit lens) and 12 (steering).
#
# A model has far more things to represent (tokens, names, colours, "the recipient comes next") than
# its activations have dimensions. It manages by *superposition*: each concept is a direction, the
# directions are almost but not quite orthogonal, and any one neuron ends up taking part in many
# unrelated concepts (it is *polysemantic*). A sparse autoencoder (SAE) undoes this: it learns a
# dictionary of many more directions than dimensions, of which only a few are active on any token,
# and these *features* are often readable one by one (Elhage et al., 2022, "Toy Models of
# Superposition"; Bricken et al., 2023, "Towards Monosemanticity"). Gemma Scope is a set of such
# SAEs for every layer of Gemma 2 and Gemma 3.
#
# **Learning goals.** By the end you can
#
# 1. show on a model's real activations why single neurons are hard to read;
# 2. write an SAE's encoder (JumpReLU, as in Gemma Scope) and say what its decoder and error term are;
# 3. measure an SAE's quality: L0, the fraction of variance unexplained (FVU), dead features;
# 4. read a feature (top contexts, logit effects, the `FeatureExplorer` widget), ablate it and steer with it;
# 5. say what a transcoder replaces, and load a Gemma Scope SAE for real Gemma.

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
# Configuration: which model this lesson runs on, and (for section 8) a Gemma Scope SAE for it.
# "" keeps the default: the bundled tiny Gemma, or the model $GEMMA_LAB_MODEL names.
# Real weights: a model id such as "google/gemma-2-2b" (downloaded once into the Hugging Face cache;
# accept its licence first, see notebook 14) or a checkpoint folder such as "/models/gemma-2-2b".
import os

MODEL = ""
if MODEL:
    os.environ["GEMMA_LAB_MODEL"] = MODEL
# A Gemma Scope SAE: release id and folder, "google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82",
# or a downloaded folder with that path.
SAE_FOLDER = ""
if SAE_FOLDER:
    os.environ["GEMMA_LAB_SAE"] = SAE_FOLDER

# %%
import html
import itertools

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display

import gemma_lab.exercises.lesson15_superposition_and_saes  # noqa: F401  (registers this lesson's exercises)
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.sae import SAEConfig, SAEConfigError, load_sae
from gemma_lab.sae import features as sae_features
from gemma_lab.sae.training import TrainConfig, collect_activations, evaluate, train_sae
from gemma_lab.tiny import corpus
from gemma_lab.widgets import FeatureExplorer

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# The bundled tiny Gemma comes with an SAE trained in this repository on its residual stream after
# layer 1 (`data/tiny-sae/README.md` is its card). On another model that SAE does not fit, and
# `load_sae(..., model=model)` says so; the lesson then trains a small SAE of its own in section 4 and
# uses that instead.

# %%
try:
    sae = load_sae("tiny", model=model)
    print(sae)
except SAEConfigError as error:
    sae = None
    print("The bundled SAE does not fit this model:", error)
layer = sae.cfg.layer if sae is not None else model.cfg.n_layers // 2
resid_name, neuron_name = f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.mlp.hook_post"

# %% [markdown]
# ## 1. Neurons are polysemantic
#
# We run 300 held-out documents of the tiny model's synthetic corpus (stories, facts, IOI sentences,
# chats, counting) through the model and keep two activations at every token (`<bos>` left out):
# the residual stream after layer `layer`, `[token, d_model]`, and the MLP's hidden neurons in that
# layer, `[token, d_mlp]` (`mlp.hook_post`, after the GeGLU gate). For a few neurons we list the
# tokens where they are largest.

# %%
held_rows = [tokenizer.encode(text) for text in itertools.islice(corpus.iter_documents(0, "heldout"), 300)]
held = collect_activations(model, held_rows, [resid_name, neuron_name], progress=False)
resid, neurons = held[resid_name], held[neuron_name]  # [token, d_model], [token, d_mlp]
token_ids = torch.tensor([t for row in held_rows for t in row[1:]])  # [token], aligned with them
print(f"{len(token_ids)} tokens; resid {tuple(resid.shape)}, neurons {tuple(neurons.shape)}")


def top_tokens(values, k=12):
    """The token strings at the k largest entries of values [token]."""
    return [tokenizer.decode([int(token_ids[i])]) for i in values.topk(k).indices]


for neuron in range(6):
    print(f"neuron {neuron:3d}:", " ".join(repr(t) for t in top_tokens(neurons[:, neuron])))

# %% [markdown]
# Some neurons are about one token, but many mix unrelated ones. To count it, take each neuron's 20
# strongest tokens and count how many *different* tokens they are: 1 for a neuron that reads a
# single token, up to 20. The histogram does this for every neuron.

# %%
def distinct_in_top(values, k=20):
    """How many different tokens sit at the k largest (positive) entries of each column of values [token, n]."""
    counts = []
    for column in values.T:
        top = column.topk(k)
        ids = token_ids[top.indices[top.values > 0]]
        counts.append(len(set(ids.tolist())))
    return torch.tensor(counts)


neuron_distinct = distinct_in_top(neurons)
print(f"median number of different tokens among a neuron's top 20: {neuron_distinct.median().item()}")

# %% [markdown]
# Why would a model do this? Because it has more to say than it has dimensions. In `d` dimensions
# there are only `d` orthogonal directions, but very many *nearly* orthogonal ones: random unit
# vectors in 128 dimensions already have a typical |cosine| of about 0.07. If each concept is rare
# (few are present on any one token), a model can give each its own direction, accept a little
# interference between them, and pack many more concepts than neurons. Reading a neuron then reads
# a mix of all the concepts whose directions have a component along it. That is superposition.
#
# ## 2. What a sparse autoencoder learns
#
# An SAE is a wide, one-hidden-layer autoencoder trained to rebuild an activation `x [d_in]`
# through a *sparse* code:
#
# * **encode:** `pre = x @ W_enc + b_enc` `[d_sae]`, then a nonlinearity that zeroes most entries:
#   `acts = sigma(pre)`, the feature activations;
# * **decode:** `recons = acts @ W_dec + b_dec` `[d_in]`: each feature that fires adds its decoder
#   row `W_dec[f]` (its direction), scaled by its activation;
# * **error:** `x - recons`, what the dictionary misses. Spliced into a model with
#   `use_error_term=True`, the SAE outputs `recons + error`, so the model runs exactly as before and
#   only what you change inside the SAE (a feature, say) makes a difference.
#
# `d_sae` is much larger than `d_in`. Training minimises the reconstruction error while keeping
# few features active per token: that pressure is what makes the features nameable. Gemma Scope uses
# **JumpReLU**: a feature fires only when its pre-activation exceeds its own learned `threshold`, and
# then with its full value: `acts = relu(pre) * (pre > threshold)`. (The bundled tiny SAE uses TopK
# instead: keep the `k` largest pre-activations of each token.)
#
# ### Exercise: the JumpReLU encoder
#
# Write `jumprelu_encode(x, W_enc, b_enc, threshold)`: from `x [..., d_in]`, `W_enc [d_in, d_sae]`,
# `b_enc [d_sae]` and `threshold [d_sae]`, the feature activations `[..., d_sae]`.

# %% tags=["exercise"] exercise="jumprelu_encode"
def jumprelu_encode(x, W_enc, b_enc, threshold):
    """[..., d_in] -> [..., d_sae]: relu(pre) * (pre > threshold), with pre = x @ W_enc + b_enc."""
    raise NotImplementedError  # your code here


# %%
display(check("jumprelu_encode", jumprelu_encode))
# solution("jumprelu_encode")

# %% [markdown]
# ## 3. The bundled SAE: L0, FVU and dead features
#
# Three numbers describe how good an SAE is on some tokens:
#
# * **L0**: the mean number of features firing per token (sparsity; lower is sparser);
# * **FVU**, the fraction of variance unexplained: `sum |recons - x|^2 / sum |x - mean(x)|^2` over
#   all tokens (0 is a perfect reconstruction; 1 is no better than always answering the mean);
# * **dead features**: features that never fire on these tokens, wasted capacity.
#
# ### Exercise: L0 and FVU
#
# Write `l0_norm(acts)` (`[..., d_sae] -> []`, a float tensor) and `fvu(recons, target)`
# (`[n, d], [n, d] -> []`).

# %% tags=["exercise"] exercise="l0_norm"
def l0_norm(acts):
    """[..., d_sae] -> []: the mean over tokens of how many features fire (are > 0)."""
    raise NotImplementedError  # your code here


# %%
display(check("l0_norm", l0_norm))
# solution("l0_norm")

# %% tags=["exercise"] exercise="fvu"
def fvu(recons, target):
    """[n, d], [n, d] -> []: sum |recons - target|^2 / sum |target - mean over tokens|^2."""
    raise NotImplementedError  # your code here


# %%
results = [check("l0_norm", l0_norm), check("fvu", fvu)]
display(results[1])
# solution("fvu")

# %% [markdown]
# Now the measurement, on the 300 held-out documents of section 1: your functions if they passed,
# the package's otherwise, next to `gemma_lab.sae.training.evaluate`, which computes the same three
# numbers (the bundled card states them on a larger held-out set).

# %%
if not results[0].passed:
    l0_norm = get_exercise("l0_norm").reference
if not results[1].passed:
    fvu = get_exercise("fvu").reference


def measure(sae, inputs, targets=None):
    """L0, FVU and dead features of sae on inputs [token, d_in] (targets: for a transcoder)."""
    targets = inputs if targets is None else targets
    acts = sae.encode(inputs)  # [token, d_sae]
    recons = sae.decode(acts, inputs)
    dead = int(((acts > 0).sum(dim=0) == 0).sum())
    return float(l0_norm(acts)), float(fvu(recons, targets)), dead


if sae is not None:
    l0, unexplained, dead = measure(sae, resid)
    print(f"bundled SAE at {resid_name}: L0 = {l0:.2f} of {sae.cfg.d_sae} features, FVU = {unexplained:.4f}, "
          f"dead = {dead}")
    print("training.evaluate:", evaluate(sae, resid))
else:
    print("no bundled SAE for this model: section 4 trains one")

# %% [markdown]
# On the tiny model about 16 of the 512 features fire per token (TopK with `k = 16` fixes that), and
# the FVU is about 0.11: sixteen directions per token rebuild nearly nine tenths of the variance of
# the residual stream.
#
# ## 4. Training a small SAE yourself
#
# `gemma_lab.sae.training.train_sae` follows the TopK recipe of Gao et al. (2024): the loss is the
# FVU itself (plus a small auxiliary loss that revives dead features), decoder rows are kept at unit
# length, and `b_dec` starts at the mean activation. Here a small one (256 features, `k = 8`) is
# trained for 200 steps on 1000 training documents: a few seconds on the tiny model.

# %%
train_rows = [tokenizer.encode(text) for text in itertools.islice(corpus.iter_documents(0, "train"), 1000)]
train_resid = collect_activations(model, train_rows, [resid_name], progress=False)[resid_name]
d_small = min(256, 4 * model.cfg.d_model)
small_cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=d_small, architecture="topk", k=8, hook_name=resid_name,
                      apply_b_dec_to_input=True)
with torch.enable_grad():
    small_sae, log = train_sae(small_cfg, train_resid, train=TrainConfig(d_sae=d_small, k=8, steps=200, batch_size=512,
                                                                        warmup=20, dead_after=20_000), progress=False)
l0, unexplained, dead = measure(small_sae, resid)
print(f"trained on {len(train_resid)} tokens in {log['seconds']} s; on the held-out tokens: L0 = {l0:.2f}, "
      f"FVU = {unexplained:.4f}, dead = {dead} of {d_small}")

with plt.ioff():
    fig, ax = plt.subplots(figsize=(6, 2.8), layout="constrained")
plt.close(fig)
ax.plot(log["step"], log["fvu"], marker=".")
ax.set(xlabel="step", ylabel="training FVU", title="a small TopK SAE learning to rebuild the residual stream")
display(fig)

if sae is None:  # another model: the rest of the lesson reads this SAE
    sae = small_sae

# %% [markdown]
# Fewer features and a smaller `k` leave more variance unexplained than the bundled SAE: the
# trade-off between sparsity (L0), width (`d_sae`) and reconstruction (FVU) is the central one.
#
# Back to superposition: are the SAE's features easier to read than the neurons? The same count of
# different tokens among the top 20, now for each feature that fires at least once.

# %%
feature_acts = sae.encode(resid)  # [token, d_sae]
alive = (feature_acts > 0).any(dim=0)
feature_distinct = distinct_in_top(feature_acts[:, alive])
print(f"median different tokens among the top 20: neurons {neuron_distinct.median().item()}, "
      f"SAE features {feature_distinct.median().item()}")

with plt.ioff():
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
plt.close(fig)
bins = torch.arange(0.5, 21.5).tolist()
ax.hist(neuron_distinct.tolist(), bins=bins, alpha=0.6, density=True, label=f"MLP neurons ({len(neuron_distinct)})")
ax.hist(feature_distinct.tolist(), bins=bins, alpha=0.6, density=True, label=f"SAE features ({len(feature_distinct)})")
ax.set(xlabel="different tokens among the 20 strongest", ylabel="fraction", title=f"layer {layer}")
ax.legend()
display(fig)

unit = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)  # [d_sae, d_model]
cosines = (unit @ unit.T).fill_diagonal_(0).abs()
random_unit = torch.nn.functional.normalize(torch.randn(sae.cfg.d_sae, sae.cfg.d_in,
                                                        generator=torch.Generator().manual_seed(0)), dim=-1)
random_cos = (random_unit @ random_unit.T).fill_diagonal_(0).abs()
off_diagonal = sae.cfg.d_sae * (sae.cfg.d_sae - 1)
print(f"{sae.cfg.d_sae} decoder directions in {sae.cfg.d_in} dimensions: mean |cos| "
      f"{cosines.sum() / off_diagonal:.3f} (random directions: {random_cos.sum() / off_diagonal:.3f}), "
      f"largest {cosines.max():.3f}")

# %% [markdown]
# On the tiny model the features are more often about one token (or one token in one kind of
# context) than the neurons are, although a feature's 20 strongest tokens can still differ (names,
# digits). And the bundled dictionary is overcomplete, 512 directions in 128 dimensions, yet nearly
# orthogonal on average (a little less than random directions), as superposition says.
#
# ## 5. Reading a feature
#
# `gemma_lab.sae.features` has the tools; the `FeatureExplorer` widget puts them together. Pick a
# token of the prompt and press "strongest feature here", or type a feature number: you see where
# it fires in the prompt, the reference texts where it fires most, the tokens its decoder direction
# promotes and suppresses, and (tick "ablate") what the model predicts without it.

# %%
prompt = "When Mary and John went to the store, John gave a drink to"
explorer = FeatureExplorer(model, tokenizer, sae=sae, text=prompt)
explorer.use_top_feature.click()  # the strongest feature at the last token
explorer

# %% [markdown]
# The same by hand. The features firing at the prompt's last token, strongest first; then the
# strongest one's top-activating contexts over the held-out documents, and its direct effect on the
# logits (its decoder direction through the final norm's gain and the unembedding). The tiny model's
# vocabulary has tokens its corpus never uses, whose embeddings were never trained and rank high by
# chance, so we list the effects among the tokens of the held-out text only.

# %%
prompt_tokens = torch.tensor([tokenizer.encode(prompt)])
last_acts = sae_features.feature_activations(model, sae, prompt_tokens)[0, -1]  # [d_sae]
strongest = last_acts.topk(5)
print("features at the last token:", ", ".join(f"{int(f)} ({float(v):.2f})"
                                                 for f, v in zip(strongest.indices, strongest.values)))
feature = int(strongest.indices[0])

contexts = sae_features.top_activating_contexts(model, sae, held_rows, feature, k=8, before=8, after=2)
lines = []
for window, values, centre in zip(contexts.contexts, contexts.context_acts, contexts.centre):
    pieces = [html.escape(tokenizer.decode([t])) for t in window]
    pieces[centre] = f"<b style='background:#ffd580'>{pieces[centre]}</b>"
    lines.append(f"<tr><td>{float(values[centre]):.2f}</td><td style='text-align:left'>{''.join(pieces)}</td></tr>")
display(HTML(f"<b>feature {feature}: top contexts</b><table>" + "".join(lines) + "</table>"))

seen = token_ids.unique()  # the token ids of the held-out text


def readable_effects(sae, feature, k=6):
    """The k tokens of the held-out text whose logits feature pushes up most, and down most."""
    effects = sae_features.feature_logit_effects(model, sae, feature).effects[seen]  # [n_seen]
    up, down = seen[effects.topk(k).indices], seen[(-effects).topk(k).indices]
    return [tokenizer.decode([int(t)]) for t in up], [tokenizer.decode([int(t)]) for t in down]


promotes, suppresses = readable_effects(sae, feature)
print("promotes:", promotes)
print("suppresses:", suppresses)

# %% [markdown]
# The contexts say what the feature *reads*, the logit effects what it *writes*. The two need not
# agree: a feature one layer in mostly describes the current token, and its direct effect on the
# logits is only part of what it does (later layers read it too).
#
# ## 6. Ablating and steering by a feature
#
# Ablating a feature: splice the SAE in with its error term and set the feature to 0 at
# `hook_sae_acts_post`. Because of the error term, everything else runs exactly as in the plain
# model, so the change in the logits is the feature's effect alone.
#
# ### Exercise: run with a feature ablated
#
# Write `run_with_feature_ablated(model, sae, tokens, feature)`: the logits `[batch, pos, vocab]`
# with `feature` zeroed at every position. While spliced, the SAE's hook points are named after its
# site: `f"{sae.cfg.hook_name}.hook_sae_acts_post"`; `model.run_with_hooks(tokens, fwd_hooks=[...],
# saes=[sae])` splices and hooks for one pass.

# %% tags=["exercise"] exercise="run_with_feature_ablated"
def run_with_feature_ablated(model, sae, tokens, feature):
    """Logits [batch, pos, vocab] with `feature` set to 0 at every position; everything else unchanged."""
    raise NotImplementedError  # your code here


# %%
result = check("run_with_feature_ablated", run_with_feature_ablated)
display(result)
# solution("run_with_feature_ablated")

# %%
if not result.passed:
    run_with_feature_ablated = get_exercise("run_with_feature_ablated").reference

plain = model(prompt_tokens)[0, -1].float().softmax(-1)  # [vocab]
ablated = run_with_feature_ablated(model, sae, prompt_tokens, feature)[0, -1].float().softmax(-1)
sae.use_error_term = False  # the exercise may have switched it on; the rest of the lesson splices nothing
rows = []
for token_id in torch.cat([plain.topk(5).indices, ablated.topk(5).indices]).unique().tolist():
    rows.append(f"<tr><td style='text-align:left'>{html.escape(repr(tokenizer.decode([token_id])))}</td>"
                f"<td>{plain[token_id]:.3f}</td><td>{ablated[token_id]:.3f}</td></tr>")
display(HTML(f"<b>next token after {html.escape(prompt)!r}, feature {feature} ablated</b><table><tr><th>token</th>"
             f"<th>plain</th><th>ablated</th></tr>" + "".join(rows) + "</table>"))
top_token = int(plain.argmax())
print(f"probability of {tokenizer.decode([top_token])!r}: {plain[top_token]:.3f} plain, "
      f"{ablated[top_token]:.3f} with feature {feature} ablated")

# %% [markdown]
# Steering goes the other way: add a multiple of the feature's decoder row where the SAE sits, in
# every forward pass (`sae_features.steer_with_feature`, like notebook 12's `interp.steer` with a
# dictionary direction). Below we take the features firing on `" Monday"` in *"Today is Monday."*,
# pick the one whose decoder direction most promotes the `" Monday"` logit, add it to a prompt about
# something else, and follow the logit of `" Monday"` as the next token.

# %%
day_text = torch.tensor([tokenizer.encode("Today is Monday.")])
day_position = day_text.shape[1] - 2  # <bos> Today is [Monday] .
target = int(day_text[0, day_position])
day_acts = sae_features.feature_activations(model, sae, day_text)[0, day_position]  # [d_sae]
firing = (day_acts > 0).nonzero()[:, 0]
on_target = torch.stack([sae_features.feature_logit_effects(model, sae, int(f), k=1).effects[target] for f in firing])
day_feature = int(firing[on_target.argmax()])
typical = float(day_acts[day_feature])
neutral = torch.tensor([tokenizer.encode("The sky is")])

sweep = torch.linspace(0, 3, 7) * typical
target_logit = []
for coeff in sweep.tolist():
    with sae_features.steer_with_feature(model, sae, day_feature, coeff):
        target_logit.append(float(model(neutral)[0, -1, target]))

with plt.ioff():
    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
plt.close(fig)
ax.plot(sweep.tolist(), target_logit, marker="o")
ax.set(xlabel=f"coefficient (feature {day_feature} fires at {typical:.1f} on ' Monday')",
       ylabel=f"logit of {tokenizer.decode([target])!r}", title="'The sky is' steered by one feature")
display(fig)
print(f"feature {day_feature} of the {len(firing)} firing on {tokenizer.decode([target])!r}; "
      f"logit {target_logit[0]:.2f} unsteered, {target_logit[-1]:.2f} at coefficient {sweep[-1]:.1f}")
print("the tokens it promotes most directly:", readable_effects(sae, day_feature)[0])

# %% [markdown]
# ## 7. Transcoders, briefly
#
# An SAE rebuilds one activation. A **transcoder** reads the MLP's input (`ln2.hook_normalized`)
# and predicts the MLP's *output* (`hook_mlp_out`) through sparse features: a readable stand-in for
# the whole MLP. Spliced in without its error term it *replaces* the MLP, and the change in the
# model's loss says how much the replacement misses. The tiny Gemma's bundled transcoder sits in
# layer 1 too.

# %%
try:
    transcoder = load_sae("tiny-transcoder", model=model)
except SAEConfigError as error:
    transcoder = None
    print("The bundled transcoder does not fit this model:", error)

if transcoder is not None:
    mlp_in, mlp_out = transcoder.cfg.hook_name, transcoder.cfg.hook_name_out
    sites = collect_activations(model, held_rows[:100], [mlp_in, mlp_out], progress=False)
    l0, unexplained, dead = measure(transcoder, sites[mlp_in], sites[mlp_out])
    print(f"{transcoder.cfg.hook_name} -> {mlp_out}: L0 = {l0:.2f}, FVU of the MLP output = {unexplained:.4f}, "
          f"dead = {dead} of {transcoder.cfg.d_sae}")
    text = torch.tensor([tokenizer.encode(corpus_text) for corpus_text in
                         itertools.islice(corpus.iter_documents(0, "heldout"), 1)])

    def loss(logits):
        return float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), text[0, 1:]))

    with model.hooks(saes=[transcoder]):
        replaced = loss(model(text))
    print(f"loss on a held-out document: {loss(model(text)):.3f} nats/token; with layer {transcoder.cfg.layer}'s "
          f"MLP replaced by the transcoder: {replaced:.3f}")

# %% [markdown]
# ## 8. Gemma Scope on real Gemma
#
# Gemma Scope (Lieberum et al., 2024) released JumpReLU SAEs for Gemma 2 (2B, 9B and 27B) at the
# residual stream, the MLP output and the attention output of the layers, and transcoders; Gemma
# Scope 2 does the same for Gemma 3, 270M to 27B.
# Each SAE is a folder on the Hugging Face hub, e.g. in `google/gemma-scope-2b-pt-res` the folder
# `layer_12/width_16k/average_l0_82` (`params.npz`). Set `MODEL` and `SAE_FOLDER` in the configuration
# cell (or `GEMMA_LAB_MODEL` and `GEMMA_LAB_SAE` before starting Jupyter), e.g. to `google/gemma-2-2b`
# and `google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82`: after accepting the Gemma
# licence, both are fetched into the Hugging Face cache on first use (a downloaded folder works
# too; `load_sae("google/gemma-scope-2b-pt-res", "layer_12/...")` is the same). `load_sae` reads the site from
# the folder's path and checks that it fits the model. Everything of sections 5 and 6 then works
# the same; the cell below runs only when both are set.

# %%
scope_folder = os.environ.get("GEMMA_LAB_SAE", "")
if scope_folder and os.environ.get("GEMMA_LAB_MODEL"):
    scope = load_sae(scope_folder, model=model, use_error_term=True)
    print(scope)
    scope_prompt = torch.tensor([tokenizer.encode("The Eiffel Tower is in the city of")])
    logits, cache = model.run_with_cache(scope_prompt, saes=[scope])
    scope_acts = cache[f"{scope.cfg.hook_name}.hook_sae_acts_post"][0]  # [pos, d_sae]
    print(f"L0 on this prompt: {float(l0_norm(scope_acts[1:])):.1f}; logits equal to the plain model's:",
          bool(torch.equal(logits, model(scope_prompt))))
    top = scope_acts[-1].topk(5)
    for f, v in zip(top.indices.tolist(), top.values.tolist()):
        effects = sae_features.feature_logit_effects(model, scope, f, k=5)
        print(f"feature {f} ({v:.1f}) promotes", [tokenizer.decode([int(t)]) for t in effects.top_tokens])
    display(FeatureExplorer(model, tokenizer, sae=scope, text="The Eiffel Tower is in the city of"))
else:
    print("Set MODEL and SAE_FOLDER (or GEMMA_LAB_MODEL and GEMMA_LAB_SAE) to run this cell on real Gemma.")

# %% [markdown]
# Neuronpedia (neuronpedia.org) shows top activations and descriptions of Gemma Scope features, by
# model, layer and width: a quick way to find a feature worth ablating or steering with.
#
# ## Summary
#
# * Models represent more concepts than they have dimensions (superposition), so single neurons mix
#   concepts (polysemanticity).
# * An SAE encodes an activation into many sparse features (`pre = x @ W_enc + b_enc`, JumpReLU or
#   TopK) and decodes it back (`acts @ W_dec + b_dec`); the error term keeps the model exact.
# * Judge an SAE by L0, FVU and dead features, measured on held-out tokens.
# * Read a feature by where it fires and what it writes; test what it does by ablating it or steering
#   with it. Transcoders do the same for a whole MLP.
# * `load_sae(folder, model=model)` reads Gemma Scope, Gemma Scope 2 and SAELens folders.
