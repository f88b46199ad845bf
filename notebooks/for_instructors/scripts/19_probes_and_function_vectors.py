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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/19_probes_and_function_vectors.ipynb)**
#
# # 19 · Linear probes and function vectors
#
# **Time:** about 50 minutes. **Before this:** notebooks 08 (hooks), 11 (IOI) and 12 (steering).
#
# Lesson 12 *wrote* a direction into the residual stream. This lesson first *reads* directions out of
# it: a **linear probe** is a small classifier trained on a model's activations; if it predicts
# something on data it never saw, that information is there, linearly, at that layer (Alain and
# Bengio, 2016). Then it asks whether a direction a probe found also *steers* the model, and
# compares it with lesson 12's difference of means. Last, **function vectors** (Todd et al., 2023):
# the average output of the attention layers over prompts that demonstrate a task, added to a
# prompt that does not, to make the model do the task anyway.
#
# **Learning goals.** By the end you can
#
# 1. train a linear probe on one layer's activations and measure its accuracy on held-out data;
# 2. read probe accuracy layer by layer, and say why training accuracy alone proves little;
# 3. compare a probe's direction with a difference-of-means steering vector (cosine similarity) and
#    steer with both, through a hook you write;
# 4. build a function vector from in-context examples and measure what it does to a zero-shot prompt;
# 5. say honestly how much of this a 4-layer model shows.

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
# "" keeps the default: the bundled tiny Gemma, or the checkpoint folder in $GEMMA_LAB_MODEL.
# Real weights: a folder such as "/models/gemma-2-2b" (see notebook 14 for where to get one).
import os

MODEL = ""
if MODEL:
    os.environ["GEMMA_LAB_MODEL"] = MODEL

# %%
import random

import matplotlib.pyplot as plt
import torch
from IPython.display import display

import gemma_lab.exercises.lesson19_probes_and_function_vectors  # noqa: F401  (registers this lesson's exercises)
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.tiny import corpus, tables

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
n_layers = model.cfg.n_layers
print(describe(model))


# %% [markdown]
# ## 1. Activations at the last token
#
# Every probe here reads the residual stream at a prompt's last token, at every depth: the input to
# each layer (`resid_pre`) and the output of the last one, `n_layers + 1` places in all. Prompts are
# left-padded into batches, so the last token sits at position `-1` in every row.

# %%
def padded(prompts):
    """Left-padded token ids and attention mask for a list of prompts."""
    encoded = [tokenizer.encode(p) for p in prompts]
    width = max(map(len, encoded))
    tokens = torch.tensor([[tokenizer.pad_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    return tokens, mask


def stream_name(depth):
    """The residual stream before layer `depth`; depth n_layers is the last layer's output."""
    return f"blocks.{depth}.hook_resid_pre" if depth < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"


def last_token_acts(prompts, batch_size=64):
    """[n_layers + 1, prompt, d_model]: the stream at each depth, at each prompt's last token."""
    names = [stream_name(depth) for depth in range(n_layers + 1)]
    parts = []
    for start in range(0, len(prompts), batch_size):
        tokens, mask = padded(prompts[start:start + batch_size])
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
        parts.append(torch.stack([cache[name][:, -1].float() for name in names]))
    return torch.cat(parts, dim=1)


# %% [markdown]
# ## 2. Which name is the indirect object?
#
# Lesson 11's task: *"When Mary and John went to the store, John gave a drink to"* -> " Mary". The
# prompts here use eight names and the corpus's IOI frames (`gemma_lab.tiny.tables`): the probes
# are trained on the training frames and tested on the three frames the model never saw in
# training (`HELDOUT_TEMPLATES`). Two questions per depth: can a linear map read off **which of the
# eight names is the indirect object** (the answer), and which is the **subject** (the name said
# twice)? Chance is 1 in 8.

# %%
NAMES = ["Mary", "John", "Anna", "David", "Sarah", "James", "Emma", "Peter"]


def ioi_prompts(frames, n, seed):
    """(prompt, io index, s index) with names from NAMES, ABBA and BABA orders alternating."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        io, s = rng.sample(range(len(NAMES)), 2)
        first, second = (io, s) if i % 2 == 0 else (s, io)
        frame = rng.choice(list(frames.values())).split("{IO}")[0].rstrip()
        noun = rng.choice(tables.OBJECTS)
        obj = ("an " if noun[0] in "aeiou" else "a ") + noun
        text = frame.format(first=NAMES[first], second=NAMES[second], S=NAMES[s], place=rng.choice(tables.PLACES),
                            obj=obj, noun=noun, gave=rng.choice(tables.GIVE_VERBS))
        prompts.append((text, io, s))
    return prompts


train_set = ioi_prompts(tables.TRAIN_TEMPLATES, 400, seed=0)
test_set = ioi_prompts(tables.HELDOUT_TEMPLATES, 200, seed=1)
print("train:", train_set[0][0], "->", NAMES[train_set[0][1]])
print("test: ", test_set[0][0], "->", NAMES[test_set[0][1]])
train_acts = last_token_acts([p for p, _, _ in train_set])  # [depth, 400, d_model]
test_acts = last_token_acts([p for p, _, _ in test_set])
labels = {"indirect object": (torch.tensor([io for _, io, _ in train_set]), torch.tensor([io for _, io, _ in test_set])),
          "subject": (torch.tensor([s for _, _, s in train_set]), torch.tensor([s for _, _, s in test_set]))}
print("activations:", tuple(train_acts.shape), "= [depth, prompt, d_model]")

# %% [markdown]
# ## 3. Exercise: train a probe
#
# A probe is logistic regression: `logits = acts @ W + b`, `W` `[d_model, n_classes]`, trained on
# the mean cross-entropy between `logits` and the labels. Write `train_probe(acts, labels,
# n_classes, steps, lr)`: start from `W = 0` and `b = 0` and take `steps` steps of plain
# full-batch gradient descent (`torch.optim.SGD`, or by hand) with learning rate `lr`; return
# `(W, b)`. The lesson turns gradients off globally, so wrap the loop in `torch.enable_grad()`.
#
# The activations are standardised first (each feature to mean 0 and standard deviation 1 on the
# training set), so that one learning rate suits every layer.

# %% exercise="train_probe" tags=["exercise"]
def train_probe(acts, labels, n_classes, steps, lr):
    """[n, d], [n] -> (W [d, n_classes], b [n_classes]): full-batch gradient descent on the mean cross-entropy."""
    raise NotImplementedError  # your code here


# %%
result = check("train_probe", train_probe)
display(result)

# %%
# solution("train_probe")  # uncomment to see one way to write it

# %%
# From here on: your function if it passed, otherwise the reference implementation.
if not result.passed:
    train_probe = get_exercise("train_probe").reference


class Probe:
    """A probe trained on standardised activations of one depth."""

    def __init__(self, acts, labels, n_classes, steps=300, lr=0.1):
        self.mean, self.std = acts.mean(dim=0), acts.std(dim=0) + 1e-6
        self.W, self.b = train_probe((acts - self.mean) / self.std, labels, n_classes, steps, lr)

    def predict(self, acts):
        return (((acts - self.mean) / self.std) @ self.W + self.b).argmax(dim=-1)

    def accuracy(self, acts, labels):
        return (self.predict(acts) == labels).float().mean().item()


accuracy = {}  # (target, "train"/"held-out") -> [depth]
probes = {}
for target, (y_train, y_test) in labels.items():
    probes[target] = [Probe(train_acts[d], y_train, len(NAMES)) for d in range(n_layers + 1)]
    accuracy[target, "train"] = [p.accuracy(train_acts[d], y_train) for d, p in enumerate(probes[target])]
    accuracy[target, "held-out"] = [p.accuracy(test_acts[d], y_test) for d, p in enumerate(probes[target])]
    print(f"{target:16} held-out accuracy by depth: " + "  ".join(f"{a:.2f}" for a in accuracy[target, "held-out"]))

depths = [f"L{d}" if d < n_layers else "out" for d in range(n_layers + 1)]
with plt.ioff():
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
plt.close(fig)
for (target, split), values in accuracy.items():
    ax.plot(depths, values, marker="o", linestyle="-" if split == "held-out" else ":",
            color="tab:red" if target == "indirect object" else "tab:blue", label=f"{target}, {split}")
ax.axhline(1 / len(NAMES), color="0.6", linewidth=0.8, label="chance")
ax.set(xlabel="residual stream before layer (out: after the last)", ylabel="accuracy", ylim=(0, 1.05),
       title="which name? linear probes at the last token")
ax.legend(fontsize=8)
display(fig)

# %% [markdown]
# Read the held-out lines (solid). Before layer 0 the stream at the last token holds only the token
# " to", so every probe is at chance there: a built-in control. On the bundled tiny model the
# **subject** is readable at the last token from layer 1 on: layer 0 has already moved the repeated
# name there (lesson 11 finds the head that does it). The **indirect object**, the answer, becomes
# readable only at the very end, after the last layer: the 4-layer model decides late. The dotted
# training lines sit well above the solid ones in the middle layers: with 400 prompts and
# `d_model` features a probe can fit its training set without the information being there in a
# form that generalises, which is why a probe is only ever judged on held-out data.
#
# ## 4. A fact attribute
#
# The corpus's fact templates say what colour things are. Train a probe for the colour at the last
# token of *"The colour of grass is"*, and test it on the same things in another frame the corpus
# also uses, *"What colour is grass? It is"*. Every thing has one colour, so held-out here means a
# held-out phrasing.

# %%
things = list(corpus.COLOURS_OF_THINGS.items())
colours = sorted({colour for _, colour in things})
colour_labels = torch.tensor([colours.index(colour) for _, colour in things])
frame_a = last_token_acts([f"The colour of {thing} is" for thing, _ in things])
frame_b = last_token_acts([f"What colour is {thing}? It is" for thing, _ in things])
colour_accuracy = []
for depth in range(n_layers + 1):
    probe = Probe(frame_a[depth], colour_labels, len(colours))
    colour_accuracy.append((probe.accuracy(frame_a[depth], colour_labels), probe.accuracy(frame_b[depth], colour_labels)))
print(f"{len(things)} things, {len(colours)} colours (chance {1 / len(colours):.2f}; the commonest colour alone "
      f"{colour_labels.bincount().max().item() / len(things):.2f})")
for depth, (seen, other) in zip(depths, colour_accuracy):
    print(f"  {depth:>3}: trained frame {seen:.2f}, other frame {other:.2f}")

# %% [markdown]
# With only a few dozen examples the probe fits the training frame perfectly from the first layer on;
# the other frame tells the truth. On the tiny model the colour generalises across frames only
# after the last layer, where the model is about to say it, so "the model knows the colour of
# grass at layer 2" is not something these probes can claim. On real weights, with many layers,
# attribute probes usually work from the middle layers on: try it with `MODEL` set.
#
# ## 5. The probe's direction and the steering direction
#
# The IO probe's weights for one name, mapped back to the unstandardised stream (`W[:, k] / std`),
# are a direction in the residual stream that says "the answer is name k". Lesson 12's recipe gives
# another: the mean activation over prompts whose answer is name k, minus the mean over the rest
# (contrastive activation addition, Rimsky et al., 2023). Are they the same direction?

# %%
target_name = 0  # NAMES[0]
y_train = labels["indirect object"][0]
is_target = y_train == target_name
cosines = []
for depth in range(n_layers + 1):
    probe = probes["indirect object"][depth]
    probe_direction = probe.W[:, target_name] / probe.std
    mean_difference = train_acts[depth][is_target].mean(dim=0) - train_acts[depth][~is_target].mean(dim=0)
    cosines.append(torch.nn.functional.cosine_similarity(probe_direction, mean_difference, dim=0).item())
print(f"cosine(probe direction, difference of means) for IO = {NAMES[target_name]}, by depth: "
      + "  ".join(f"{d} {c:+.2f}" for d, c in zip(depths, cosines)))

# %% [markdown]
# For scale: two random directions in `d_model` dimensions have a cosine of about
# `± 1 / sqrt(d_model)` (0.09 for the tiny model's 128). On the bundled tiny model the two agree
# where the answer is readable, after the last layer (a cosine around 0.7), and are close to
# orthogonal before layers 1 and 2, where the held-out accuracy says the probe found nothing that
# generalises: there it fits noise that the difference of means averages away. The difference of
# means follows everything that differs between the groups; the probe only what separates them best
# after standardisation, and it is free to lean on low-variance features. (Before layer 0 every
# prompt ends in the same token " to", so both vectors are differences of tiny position effects
# there, and their cosine means little.)
#
# ## 6. Exercise: the steering hook
#
# To steer with a direction, a hook adds it to the residual stream. Write the body of such a hook,
# `steer_resid(resid, direction, coeff, position)`: `resid` `[batch, pos, d_model]` with
# `coeff * direction` added at `position` in every prompt of the batch (an index into `pos`, so
# `-1` is the last token; `None` means every position). Return a new tensor in `resid`'s dtype and
# leave `resid` as it was.

# %% exercise="steer_resid" tags=["exercise"]
def steer_resid(resid, direction, coeff, position):
    """[batch, pos, d_model] with coeff * direction added at `position` (None: everywhere), as a new tensor."""
    raise NotImplementedError  # your code here


# %%
result = check("steer_resid", steer_resid)
display(result)

# %%
# solution("steer_resid")  # uncomment to see one way to write it

# %% [markdown]
# Now steer held-out prompts whose answer is *not* `NAMES[target_name]` towards it, at the last
# token, at the depth where the IO probe does best (before the last layer's output, so that there
# is a layer left to use it). Both directions are scaled to the same length, the length of the
# difference of means, and the coefficient multiplies that. The measure is over all tokens: the
# probability of " Mary" (for `target_name = 0`) and its rank among the whole vocabulary.

# %%
if not result.passed:
    steer_resid = get_exercise("steer_resid").reference

held_acc = accuracy["indirect object", "held-out"]
depth = max(range(n_layers), key=lambda d: held_acc[d])  # a depth with a layer after it
probe = probes["indirect object"][depth]
mean_difference = train_acts[depth][is_target].mean(dim=0) - train_acts[depth][~is_target].mean(dim=0)
probe_direction = probe.W[:, target_name] / probe.std
probe_direction = probe_direction / probe_direction.norm() * mean_difference.norm()
target_id = tokenizer.encode(" " + NAMES[target_name], add_bos=False)[0]
others = [p for p, io, s in test_set if io != target_name and s != target_name][:64]
tokens, mask = padded(others)


def steered_target(direction, coeff):
    """Mean probability of the target name and its mean rank over all tokens, steering at `depth`."""
    hook = (stream_name(depth), lambda resid, hook: steer_resid(resid, direction.to(resid.dtype), coeff, -1))
    with model.hooks(fwd_hooks=[hook]):
        log_probs = model(tokens, attention_mask=mask)[:, -1].float().log_softmax(dim=-1)
    target = log_probs[:, target_id]
    rank = (log_probs > target[:, None]).sum(dim=-1).float()
    return target.exp().mean().item(), rank.mean().item()


coefficients = [0.0, 1.0, 2.0, 4.0, 8.0]
steering = {name: [steered_target(direction, c) for c in coefficients]
            for name, direction in (("difference of means", mean_difference), ("probe direction", probe_direction))}
print(f"steering at the stream before layer {depth}, {len(others)} held-out prompts, towards {NAMES[target_name]!r}")
for name, values in steering.items():
    print(f"  {name:20} " + "  ".join(f"c={c:g}: p={p:.3f} rank={r:.0f}" for c, (p, r) in zip(coefficients, values)))

with plt.ioff():
    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
plt.close(fig)
for name, values in steering.items():
    ax.plot(coefficients, [p for p, _ in values], marker="o", label=name)
ax.set(xlabel="coefficient (x the difference of means' length)", ylabel=f"mean p({NAMES[target_name]!r})",
       title=f"steering the last token before layer {depth}")
ax.legend()
display(fig)

# %% [markdown]
# A direction that *reads* well need not *write* well: a probe can pick up features the model
# never uses downstream. On the bundled tiny model, at the same length, the difference of means
# lowers the target name's mean rank steadily as the coefficient grows (by several hundred places
# at 4x), while the probe direction barely moves it, and neither makes the name likely: the
# model's answer is written by its last layer, and one vector added before it does not rewrite it.
# That is the usual finding, and the reason interpretability work checks a probe's direction with
# an intervention before calling it "the representation".
#
# ## 7. Function vectors
#
# Todd et al. (2023) found that when a model sees a few examples of a task ("France is Paris. Japan
# is Tokyo. Italy is ..."), some attention heads write a vector at the last token that encodes the
# *task*; its average over many such prompts, added to a prompt without examples, makes the model
# do the task. Here the tasks come from the fact templates (capitals, opposites, animal sounds,
# colours), in the neutral frame `"{x} is {y}."`, which leaves the task to the examples. The
# function vector of layer `l` is the mean of that layer's attention output (`hook_attn_out`, all
# heads together) at the last token over 48 five-example prompts; it is added at the last token of
# the zero-shot prompt `"{x} is"`, through your `steer_resid`.

# %%
TASKS = {
    "capital": list(corpus.CAPITALS.items()),
    "opposite": list(corpus.OPPOSITES.items()) + [(b, a) for a, b in corpus.OPPOSITES.items()],
    "sound": [(animal, sound) for animal, (sound, _) in corpus.ANIMAL_SOUNDS.items()],
    "colour": list(corpus.COLOURS_OF_THINGS.items()),
}


def task_prompts(pairs, n=48, shots=5, seed=0):
    """(in-context prompt, zero-shot prompt, answer's first token) for n queries of one task."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        *examples, (query, answer) = rng.sample(pairs, shots + 1)
        context = " ".join(f"{x} is {y}." for x, y in examples)
        out.append((f"{context} {query} is", f"{query} is", tokenizer.encode(" " + answer, add_bos=False)[0]))
    return out


def answer_stats(prompts, answers, hook=None):
    """Mean probability of the answer, its median rank over all tokens, and top-1 accuracy."""
    tokens, mask = padded(prompts)
    with model.hooks(fwd_hooks=[hook] if hook else []):
        log_probs = model(tokens, attention_mask=mask)[:, -1].float().log_softmax(dim=-1)
    answers = torch.tensor(answers)
    target = log_probs[torch.arange(len(answers)), answers]
    rank = (log_probs > target[:, None]).sum(dim=-1).float()
    return target.exp().mean().item(), rank.median().item(), (rank == 0).float().mean().item()


function_vectors, task_data = {}, {}
for task, pairs in TASKS.items():
    data = task_prompts(pairs)
    task_data[task] = data
    tokens, mask = padded([icl for icl, _, _ in data])
    names = [f"blocks.{layer}.hook_attn_out" for layer in range(n_layers)]
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    function_vectors[task] = torch.stack([cache[name][:, -1].float().mean(dim=0) for name in names])  # [layer, d_model]
print("example:", repr(task_data["capital"][0][0]), "->", repr(tokenizer.decode([task_data["capital"][0][2]])))

# %%
task_names = list(TASKS)
rows = []
for index, task in enumerate(task_names):
    data = task_data[task]
    zero_shot, answers = [z for _, z, _ in data], [a for _, _, a in data]
    row = {"in-context": answer_stats([icl for icl, _, _ in data], answers), "zero-shot": answer_stats(zero_shot, answers)}
    other = task_names[(index + 1) % len(task_names)]  # control: another task's vector
    for layer in range(n_layers):
        for source, label in ((task, f"+FV L{layer}"), (other, f"+{other} FV L{layer}")):
            vector = function_vectors[source][layer]
            hook = (f"blocks.{layer}.hook_attn_out",
                    lambda resid, hook, v=vector: steer_resid(resid, v.to(resid.dtype), 1.0, -1))
            row[label] = answer_stats(zero_shot, answers, hook)
    rows.append((task, row))
    print(f"{task:9} " + "  ".join(f"{k}: p={p:.3f} rank={r:.0f} top1={t:.2f}" for k, (p, r, t) in row.items()
                                   if k in ("in-context", "zero-shot") or k.startswith("+FV")))
    last = f"+{other} FV L{n_layers - 1}"
    print(f"{'':9} control, {last}: p={row[last][0]:.3f} rank={row[last][1]:.0f} top1={row[last][2]:.2f}")

# %%
with plt.ioff():
    fig, axes = plt.subplots(1, len(task_names), figsize=(12, 3.4), layout="constrained", sharey=True)
plt.close(fig)
for ax, (task, row) in zip(axes, rows):
    keys = ["in-context", "zero-shot"] + [f"+FV L{layer}" for layer in range(n_layers)]
    controls = [f"+{task_names[(task_names.index(task) + 1) % len(task_names)]} FV L{layer}" for layer in range(n_layers)]
    ax.bar(range(len(keys)), [row[k][0] for k in keys], color=["tab:green", "0.6"] + ["tab:purple"] * n_layers)
    ax.scatter(range(2, len(keys)), [row[k][0] for k in controls], color="black", marker="_", s=200, zorder=3,
               label="another task's vector")
    ax.set_xticks(range(len(keys)), ["ICL", "0-shot"] + [f"FV{layer}" for layer in range(n_layers)], fontsize=8)
    ax.set_title(task)
axes[0].set_ylabel("mean p(answer)")
axes[0].legend(fontsize=7)
fig.suptitle("function vectors: in-context, zero-shot, and zero-shot plus each layer's vector")
display(fig)

# %% [markdown]
# Be honest about what this shows. The tiny model was trained on facts in sentences, not on lists of
# examples, so its **in-context** accuracy in the `"{x} is {y}."` frame is itself weak for most tasks
# (compare the green bars with the table of `in-context` numbers above): only the colour task,
# whose `"Grass is green."` frame the corpus uses, is done well from examples. A function vector
# cannot carry a task the model does not do in context. Where it does (colours on the bundled model),
# adding a late layer's vector to the zero-shot prompt raises the answer's probability and improves
# its rank a little; a vector from another task (the black marks) is the control that separates "this
# vector encodes the task" from "any large push changes the output". Todd et al. see strong effects
# in models of billions of parameters, from a handful of heads chosen by their causal effect; rerun
# this section on real weights to see the difference.
#
# ## Summary
#
# * A linear probe is logistic regression on activations; judge it on held-out data, and compare it
#   with a control (here, the stream before layer 0, and the other frame).
# * On the tiny model the IOI subject is readable at the last token from layer 1 on; the answer only
#   at the end.
# * A probe's direction and the difference of means point roughly the same way; steering says
#   which one the model uses.
# * A function vector is the mean attention output over in-context prompts; it can only carry a task
#   the model does in context.
#
# **Next:** probes need labels; notebook 15's sparse autoencoders look for directions without them.
# If you have not done it yet, it is the natural next step.
