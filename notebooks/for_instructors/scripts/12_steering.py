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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/12_steering.ipynb)**
#
# # 12 · Steering with a direction in the residual stream
#
# **Time:** about 45 minutes. **Before this:** notebooks 08 (hooks) and 11 (patching).
#
# Patching copies a whole activation from another run. Steering is gentler: it *adds* one vector to
# the residual stream, in every forward pass, while the model generates. If the vector points along
# a concept the model uses ("dog rather than cat"), what the model writes drifts towards it. The simplest recipe
# for such a vector is the difference between the mean activations on two contrasting sets of
# prompts: *contrastive activation addition* (Panickssery, Rimsky et al., 2023, "Steering Llama 2
# via Contrastive Activation Addition"). Its forerunner, ActAdd (Turner et al., 2023, "Steering
# Language Models With Activation Engineering"), takes the difference of the activations of a
# *single* pair of prompts (such as "Love" and "Hate") instead of means over two sets.
#
# **Learning goals.** By the end you can
#
# 1. build a steering vector `[d_model]` from contrasting prompts at one layer;
# 2. write the steering hook yourself (the positions to steer, during generation with a KV cache
#    too), generate with it, and see the text change;
# 3. measure the effect as a function of the coefficient and the layer, and say when steering breaks
#    the model instead of steering it.

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
import html

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display

import gemma_lab.exercises.lesson12_steering  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp, viz
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.generation import generate
from gemma_lab.notebook import describe, load_lesson_model

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## 1. Two sets of contrasting prompts
#
# The two sets are the same short phrases, ending on two different animals. We read the residual
# stream at the last position, on the animal's token. What differs between the two sets, on
# average, is "dog rather than cat"; what they share (grammar, "an animal", the position) cancels.

# %%
TEMPLATES = ["The {}", "A {}", "I saw a {}", "The little {}", "My {}", "Look at the {}", "There is a {}",
             "She has a {}"]
concept_a, concept_b = "dog", "cat"
prompts_a = [template.format(concept_a) for template in TEMPLATES]
prompts_b = [template.format(concept_b) for template in TEMPLATES]
layer = model.cfg.n_layers // 2  # a middle layer: the concept is formed, the output not yet decided


def last_resid(prompts):
    """resid_pre of every layer at each prompt's last token: [layer, prompt, d_model]."""
    rows = []
    for prompt in prompts:
        tokens = torch.tensor([tokenizer.encode(prompt)])
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_pre"))
        rows.append(torch.stack([cache["resid_pre", i][0, -1].float() for i in range(model.cfg.n_layers)]))
    return torch.stack(rows, dim=1)


all_acts_a, all_acts_b = last_resid(prompts_a), last_resid(prompts_b)  # [layer, prompt, d_model]
acts_a, acts_b = all_acts_a[layer], all_acts_b[layer]
print("acts_a:", tuple(acts_a.shape), "= [prompt, d_model]")

# %% [markdown]
# ## 2. Exercise: the steering vector
#
# Write `steering_vector(acts_a, acts_b)`: from `[n_a, d_model]` and `[n_b, d_model]`, the
# difference of the means over prompts, `mean(acts_a) - mean(acts_b)`, `[d_model]`. Adding it moves
# an activation from "typical of B" to "typical of A".

# %% tags=["exercise"] exercise="steering_vector"
def steering_vector(acts_a, acts_b):
    """[n_a, d_model], [n_b, d_model] -> [d_model]: mean(acts_a) - mean(acts_b) over prompts."""
    raise NotImplementedError  # your code here


# %%
result = check("steering_vector", steering_vector)
display(result)

# %%
# solution("steering_vector")  # uncomment to see one way to write it

# %%
# From here on: your function if it passed, otherwise the reference implementation.
if not result.passed:
    steering_vector = get_exercise("steering_vector").reference

direction = steering_vector(acts_a, acts_b).to(model.dtype)  # [d_model]
typical = acts_b.norm(dim=-1).mean()
print(f"|direction| = {direction.float().norm():.2f}; resid_pre of layer {layer} on the animal has norm {typical:.2f}")

# %% [markdown]
# ## 3. Exercise: the steering hook
#
# Steering is one hook. A forward hook receives the activation and the hook point, and returns the
# activation the model should carry on with (lesson 08). Here the activation is
# `blocks.{layer}.hook_resid_pre`, `[batch, pos, d_model]`, and the hook returns it with
# `coeff * direction` added at the positions we choose.
#
# Which positions? Not `<bos>` (position 0): many heads park their attention there when they have
# nothing to read (the attention sink of lesson 09), so shifting it changes what every such head
# reads, a side effect we did not ask for. And often only from some position on (to steer what is
# generated, not the prompt). During generation the model runs once per new token and, with the KV
# cache, that pass sees *only the new position*: `resid[:, start:]` then indexes this pass's one
# position, not the sequence. `hook.positions` (`[batch, pos]`) holds the absolute positions of the
# tokens in the pass, counted from 0 at `<bos>`, in every pass.
#
# Write `steered_generate(model, prompt_ids, direction, layer, coeff, start, max_new_tokens)`:
#
# 1. inside it, a hook `add_direction(resid, hook)` that returns `resid` with `coeff * direction` added
#    wherever `hook.positions >= start`, and left alone elsewhere;
# 2. attach it with `with model.hooks(fwd_hooks=[(name, add_direction)]):`;
# 3. inside that block, greedy generation:
#    `generate(model, prompt_ids, max_new_tokens=max_new_tokens, stop=[]).token_ids` (a list of new ids).
#
# Three traps the checker knows: `direction` may be float32 while the model runs in bfloat16
# (convert it to `resid`'s dtype and device); do not edit `direction` in place (the same tensor is
# used by every forward pass of the generation); and steering *adds* the vector.

# %% tags=["exercise"] exercise="steered_generate"
def steered_generate(model, prompt_ids, direction, layer, coeff, start, max_new_tokens):
    """Greedy new token ids (a list) while coeff * direction is added to blocks.{layer}.hook_resid_pre
    at every absolute position >= start (start >= 1 leaves <bos> alone)."""

    def add_direction(resid, hook):
        # resid: [batch, pos, d_model]; hook.positions: [batch, pos] absolute positions
        raise NotImplementedError  # your code here

    raise NotImplementedError  # your code here: attach add_direction with model.hooks(...), then generate


# %%
result = check("steered_generate", steered_generate)
display(result)

# %%
# solution("steered_generate")  # uncomment to see one way to write it

# %% [markdown]
# ## 4. Steering generation
#
# Now steer for real, with your function (or the reference, if it has not passed yet). Coefficient 0
# is the model as it is; 1 adds the whole difference between a typical dog and a typical cat;
# negative coefficients steer towards the cat. We steer every position but `<bos>` (`start=1`).
#
# The test prompt is about neither: *"The horse says"*. Does the horse start to bark?

# %%
if not result.passed:
    steered_generate = get_exercise("steered_generate").reference

neutral = "The horse says"
neutral_ids = tokenizer.encode(neutral)  # <bos> first
coefficients = [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0]
rows = []
for coeff in coefficients:
    new_ids = steered_generate(model, neutral_ids, direction, layer, coeff, start=1, max_new_tokens=8)
    text = tokenizer.decode(new_ids)
    rows.append(f"<tr><td style='text-align:right'>{coeff:+g}</td><td style='text-align:left'>"
                f"{html.escape(neutral)}<b>{html.escape(text)}</b></td></tr>")
HTML("<table><tr><th>coeff</th><th style='text-align:left'>greedy continuation</th></tr>" + "".join(rows) + "</table>")

# %% [markdown]
# The package has the same hook ready-made: `interp.steering_hook(direction, coeff, positions)`, and
# `interp.steer(model, direction, layer, coeff=c, positions=...)`, a context manager that attaches
# it for a block of code (generation, or single forward passes as below). The rest of the lesson
# uses it, with `positions=STEERED`, every position but `<bos>`.

# %%
STEERED = range(1, model.cfg.max_seq_len)  # every position but <bos>
with interp.steer(model, direction, layer, coeff=2.0, positions=STEERED):
    package_text = generate(model, neutral, tokenizer=tokenizer, max_new_tokens=8, stop=[]).text
mine = tokenizer.decode(steered_generate(model, neutral_ids, direction, layer, 2.0, start=1, max_new_tokens=8))
print(f"coeff +2: interp.steer gives {package_text!r}; steered_generate gives {mine!r}; same: {package_text == mine}")

# %% [markdown]
# ## 5. Measuring the effect
#
# Text is a noisy readout: a small model's text often breaks before it says the word we steer
# towards. A number is better: the logit difference `logit(" woof") - logit(" meow")` for the next
# token after the neutral prompt, as the coefficient varies. A steering vector works if this rises
# smoothly with the coefficient. Very large coefficients push the stream where the model has never
# been, and the text degrades into repetition or nonsense.

# %%
sound_a, sound_b = " woof", " meow"
id_a = tokenizer.encode(sound_a, add_bos=False)[0]  # the first token, if the tokenizer splits the word
id_b = tokenizer.encode(sound_b, add_bos=False)[0]
neutral_tokens = torch.tensor([tokenizer.encode(neutral)])


def preference(logits):
    """logit(sound of A) - logit(sound of B) for the next token: [batch, pos, vocab] -> float."""
    return float(logits[0, -1, id_a].float() - logits[0, -1, id_b].float())


def rank_and_probability(logits, token):
    """Where `token` stands among *all* tokens for the next position: (rank, 1 = top; probability)."""
    last = logits[0, -1].float()
    return int((last > last[token]).sum()) + 1, float(last.softmax(-1)[token])


sweep = torch.linspace(-3, 3, 13)
effect, ranks, probabilities = [], [], []
for coeff in sweep:
    with interp.steer(model, direction, layer, coeff=float(coeff), positions=STEERED):
        steered_logits = model(neutral_tokens)
    effect.append(preference(steered_logits))
    rank, probability = rank_and_probability(steered_logits, id_a)
    ranks.append(rank)
    probabilities.append(probability)

with plt.ioff():
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
plt.close(fig)
left.plot(sweep, effect, marker="o")
left.axhline(0, color="0.6", linewidth=0.8)
left.set(xlabel=f"steering coefficient ({concept_a} - {concept_b})", ylabel=f"logit({sound_a!r}) - logit({sound_b!r})",
         title=f"{neutral!r}, steered at resid_pre of layer {layer}")
right.semilogy(sweep, ranks, marker="o", color="C1")
right.invert_yaxis()  # rank 1 at the top
right.set(xlabel="steering coefficient", ylabel=f"rank of {sound_a!r} among all tokens",
          title=f"{sound_a!r}: rank (line) and probability (labels)")
for coeff, rank, probability in zip(sweep[::3], ranks[::3], probabilities[::3]):
    right.annotate(f"p={probability:.1e}", (float(coeff), rank), fontsize=7, textcoords="offset points", xytext=(0, 6))
display(fig)
best = max(range(len(sweep)), key=lambda i: probabilities[i])
print(f"unsteered: {sound_a!r} has rank {ranks[len(sweep) // 2]} and probability {probabilities[len(sweep) // 2]:.2e}; "
      f"best over the sweep: rank {ranks[best]}, probability {probabilities[best]:.2e} at coefficient {float(sweep[best]):+g}")

# %% [markdown]
# The logit difference only compares two tokens; the rank and probability say whether the target
# ever becomes something the model would actually *say*. A difference that rises steadily while the
# target stays far down the ranking means the vector pushes "dog-cat" without making " woof" likely:
# always look at both.

# %% [markdown]
# ## 6. Which layer?
#
# Each layer gets its own vector (the difference of means *at that layer*). Early layers mostly
# carry the token itself; late layers have little computation left to use the nudge. The heatmap
# shows, for each layer and coefficient, the change of the logit difference from the unsteered model.

# %%
coeffs = [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]
baseline = preference(model(neutral_tokens))
by_layer = torch.zeros(model.cfg.n_layers, len(coeffs))  # [layer, coeff]
for each_layer in range(model.cfg.n_layers):
    layer_direction = steering_vector(all_acts_a[each_layer], all_acts_b[each_layer]).to(model.dtype)
    for column, coeff in enumerate(coeffs):
        with interp.steer(model, layer_direction, each_layer, coeff=coeff, positions=STEERED):
            by_layer[each_layer, column] = preference(model(neutral_tokens)) - baseline

with plt.ioff():
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
plt.close(fig)
viz.patching_heatmap(by_layer, [f"{c:+g}" for c in coeffs], value_label="change in logit difference",
                     title="steering effect by layer and coefficient", ax=ax)
ax.set_xlabel("steering coefficient")
display(fig)

# %% [markdown]
# In a model this small, steering is blunt: the preference moves by many logits, but the text tends to
# break rather than bark. Larger models, with more room in their residual stream, follow a steering
# vector more gracefully: rerun this notebook with real weights (notebook 14), and try your own
# contrasts (formal versus casual, English versus French, ...).
#
# ## Summary
#
# * A steering vector is a difference of mean activations, `[d_model]`, at one layer.
# * Steering is one forward hook that adds `c * direction` at chosen absolute positions
#   (`hook.positions`, which keep counting during cached generation); leave `<bos>` (position 0)
#   alone, and never edit the direction in place. `interp.steer(model, direction, layer, coeff=c,
#   positions=...)` is the package's version.
# * The difference of means over two prompt sets is contrastive activation addition; ActAdd uses
#   one pair of prompts.
# * Check the effect with numbers (a logit difference, and the target's rank and probability among
#   all tokens), across coefficients and layers; too large a coefficient breaks the model rather
#   than steering it.
#
# **Next:** notebook 13 looks at what changed in the architecture from Gemma 1 to Gemma 2 and 3.
