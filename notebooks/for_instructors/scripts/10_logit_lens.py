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
# **Time:** about 50 minutes. **Before this:** notebook 08 (hooks and caching).
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
# 4. use the `LogitLensExplorer` widget, and name the lens's limits;
# 5. train a tuned lens in seconds and compare it with the logit lens by KL to the output, layer by
#    layer, and say where the logit lens works on Gemma (tied embeddings, final norm, softcap).

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

# %%
# solution("logit_lens_for_position")  # uncomment to see one way to write it

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
# ## 6. The tuned lens: a translator per layer
#
# The logit lens assumes that the stream after layer `l` already speaks the language of the last
# layer's output. Nothing trained it to. The *tuned lens* (Belrose et al., 2023, "Eliciting Latent
# Predictions from Transformers with the Tuned Lens") learns the missing step: for each layer an
# affine *translator*, then the same readout,
#
#     tuned_lens_l(h) = softmax(softcap(ln_final(h + h @ A_l + b_l) @ W_E.T))        A_l [d_model, d_model], b_l [d_model]
#
# trained so that its prediction is close to the model's final output: it minimises
# `KL(output || tuned_lens_l)` over positions of text the model knows. `A_l` and `b_l` start at zero,
# so before training the tuned lens *is* the logit lens. The model does not change: only the
# translators learn, and only the model's own output teaches them (no labels).
#
# `gemma_lab.tuned_lens` has the pieces: `train_tuned_lens(model, tokens)` and `lens_kl(model, tokens, lens)`,
# the mean KL per row (`lens=None`: the logit lens). We train on documents of the tiny model's own
# corpus (`gemma_lab.tiny.corpus`, the text it was trained on) and measure on its *held-out* split,
# so that the translators are judged on text they did not see.

# %%
import itertools

from gemma_lab import tuned_lens
from gemma_lab.tiny import corpus

QUICK = os.environ.get("GEMMA_LAB_QUICK") == "1"  # the notebook tests: fewer documents and steps


def corpus_rows(split, n_documents, seq_len=128):
    """``<bos> document <eos>`` after one another, cut into rows ``[rows, seq_len]``."""
    ids = []
    for document in itertools.islice(corpus.iter_documents(0, split), n_documents):
        ids += tokenizer.encode(document) + [tokenizer.eos_id]
    n_rows = len(ids) // seq_len
    return torch.tensor(ids[: n_rows * seq_len]).view(n_rows, seq_len)


train_rows = corpus_rows("train", 150 if QUICK else 600)
heldout_rows = corpus_rows("heldout", 40 if QUICK else 100)
print(f"training text {tuple(train_rows.shape)}, held-out text {tuple(heldout_rows.shape)} = [rows, pos]")

# Positions read out per step: 256 on a small vocabulary, fewer on a 256k one (memory: rows x positions x vocab).
per_step = max(8, min(256, 2**26 // (model.cfg.vocab_size * (model.cfg.n_layers + 1))))
lens = tuned_lens.train_tuned_lens(model, train_rows, steps=30 if QUICK else 150, lr=1e-2, batch_positions=per_step)
logit_kl = tuned_lens.lens_kl(model, heldout_rows)  # [row]
tuned_kl = tuned_lens.lens_kl(model, heldout_rows, lens)

with plt.ioff():
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
plt.close(fig)
ax.plot(lens.labels[:-1], logit_kl[:-1], marker="o", label="logit lens")
ax.plot(lens.labels[:-1], tuned_kl[:-1], marker="o", label="tuned lens")
ax.set(xlabel="read after layer", ylabel="KL(output || lens), nats", yscale="log",
       title="how far each lens is from the model's output (held-out text)")
ax.legend()
display(fig)
for label, plain, tuned in zip(lens.labels[:-1], logit_kl, tuned_kl):
    print(f"after {label:>5}: logit lens {float(plain):6.2f} nats, tuned lens {float(tuned):6.2f} nats")
print(f"(for scale: the entropy of the model's own output averages "
      f"{float(torch.distributions.Categorical(logits=model(heldout_rows).float()).entropy().mean()):.2f} nats)")

# %% [markdown]
# Both lenses are exact at the last layer (KL 0, not drawn). Before it, compare the two curves:
# where the logit lens is far from the output but the tuned lens is close, the information is in the
# stream, just not in the basis the unembedding reads. The tuned lens at layer `l` is still only
# an affine map of that layer's stream, so what it cannot recover is what the later layers have yet
# to compute. Now the prompt from the start, read through both lenses: look for a row where the tuned
# lens already has the final answer on top (or gives it a real probability) while the logit lens
# still shows something else.

# %%
stack = tuned_lens.residual_stack(model, tokens)[:, 0]  # [row, pos, d_model]
plain_probs = interp.unembed(model, stack[:, last_pos]).float().softmax(-1)  # [row, vocab]
tuned_probs = lens.logits(model, stack[:, last_pos]).softmax(-1)
final_top = int(plain_probs[-1].argmax())
print(f"prompt {prompt!r}; the model's prediction: {tokenizer.decode([final_top])!r}")
for label, plain, tuned in zip(lens.labels, plain_probs, tuned_probs):
    print(f"after {label:>5}: logit lens top {tokenizer.decode([int(plain.argmax())])!r:>12} "
          f"(p of the final answer {float(plain[final_top]):.3f}); tuned lens top "
          f"{tokenizer.decode([int(tuned.argmax())])!r:>12} ({float(tuned[final_top]):.3f})")

# %% [markdown]
# ## 7. Where the logit lens works, and where it does not
#
# Three parts of Gemma's ending decide what the logit lens can read.
#
# * **Tied embeddings.** The unembedding is the embedding matrix. At the `embed` row the stream is
#   the token's own embedding (times `sqrt(d_model)`), and the readout of an embedding through the
#   same matrix favours that token itself: the logit lens "predicts" the input token, far from the
#   output (on the tiny model, the largest KL above). The tuned lens's first translator learns instead what the
#   current token says about the next one (bigram statistics), which is why its first row is so much
#   closer. In a model with a separate unembedding this failure looks different; in Gemma, read the
#   `embed` row as "which token is here", not as a prediction.
# * **The final norm.** `ln_final` divides by the stream's RMS, so the lens reads the stream's
#   *direction*, never its length, and its learned gain `1 + w` weighs the dimensions as the last
#   layer needs. Every row is rescaled to the same size before the readout, however small it was,
#   while the later layers may still write vectors as large as the whole early stream (the sizes below: on
#   the tiny model the last layer alone more than doubles the stream's RMS), which turn its direction.
#   The readout of an early row can therefore be confident and wrong: a confident early row is a
#   hint, not a decision. Dimensions that are large in early layers but that the last layer
#   no longer uses (real Gemmas have a few "massive" ones, often at `<bos>`) pass through the final
#   gain meant for the last layer; the tuned lens's `A_l` can undo that, the logit lens cannot.
# * **Gemma 2's final softcap** `30 * tanh(logits / 30)` bounds every logit. It never changes which
#   token is on top, but it caps how confident any row can look: for KL and probabilities, read both
#   lenses through it, as `interp.unembed` and `gemma_lab.tuned_lens` do.
#
# On the tiny model the logit lens stays several nats from the output at every row before the last
# (the printout in section 6): with four layers, much of the translation into the unembedding's
# language happens only at the end, and the plain readout of earlier rows shows little.
# On a real Gemma, with tens of layers, expect the logit lens to become useful only in the later
# part of the network, and the tuned lens to read earlier layers much better (Belrose et al. found
# this pattern across model families). Check it: set `MODEL` to a real checkpoint and rerun this
# lesson; the KL curves above are measured, not assumed.

# %%
sizes = stack.pow(2).mean(-1).sqrt()  # [row, pos]: RMS of the stream
for label, size in zip(lens.labels, sizes):
    print(f"after {label:>5}: RMS of the stream {float(size[1:].mean()):7.2f} (mean over positions after <bos>)")

# %% [markdown]
# ## Summary
#
# * Logit lens: `softmax(softcap(ln_final(resid) @ W_E.T))` applied to the stream after every layer,
#   `[layer, pos, d_model] -> [layer, pos, vocab]`.
# * Its last row is the model's output; earlier rows show when a prediction forms, if the stream
#   already speaks the unembedding's language.
# * The tuned lens trains one affine translator per layer against the model's own output; its KL to
#   the output per layer, beside the logit lens's, shows where the plain readout fails.
# * In Gemma: the `embed` row reads the input token (tied embeddings); the final norm reads directions
#   only; Gemma 2's softcap bounds the confidence.
#
# **Next:** notebook 11 moves from watching to intervening: activation patching on indirect-object
# identification.
