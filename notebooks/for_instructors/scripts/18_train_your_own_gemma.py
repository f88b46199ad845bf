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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/18_train_your_own_gemma.ipynb)**
#
# # 18 · Train your own tiny Gemma
#
# **Time:** about 60 minutes, of which the training run takes about 2 minutes of CPU time (1,000
# steps at about 0.10 CPU-seconds each, measured with one thread; a busy machine takes longer in wall
# time, and the cell prints its own). **Before this:** notebooks
# 01 (tokenization), 06 (the forward pass) and 09 (induction heads).
#
# The bundled tiny model (`data/tiny-gemma`) was trained in this repository, from nothing, by
# `gemma_lab.tiny`: a synthetic corpus, a SentencePiece vocabulary trained on it, and 48 minutes
# of AdamW. This lesson does the same at a smaller scale, on your CPU, and watches the model learn:
# first the vocabulary, then the loss, then the heads of lesson 09: the previous-token head, and
# then, suddenly, the induction head.
#
# **Learning goals.** By the end you can
#
# 1. train a Gemma-style SentencePiece vocabulary and read what its pieces are;
# 2. write the next-token cross-entropy, the warm-up + cosine learning-rate schedule and one AdamW
#    step yourself, and check them against the package and against `torch.optim.AdamW`;
# 3. say what backpropagation computes, and check one gradient against a finite difference;
# 4. run a training loop and read its train loss, held-out loss and perplexity;
# 5. watch the previous-token head and then the induction head form during training (the phase
#    change), tell a real induction head from a positional trick, and explain the changes the
#    tiny model's recipe needed before its heads formed.

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
# Configuration: which model this lesson compares with.
# "" keeps the default: the bundled tiny Gemma, or the checkpoint folder in $GEMMA_LAB_MODEL.
# The model you train here is always a new tiny one; the configured model is only the comparison.
import os

MODEL = ""
if MODEL:
    os.environ["GEMMA_LAB_MODEL"] = MODEL
# GEMMA_LAB_QUICK=1 (set by the notebook tests) shrinks the training run to a few steps, so that the
# whole notebook runs in seconds. Leave it unset to run the real length.
QUICK = os.environ.get("GEMMA_LAB_QUICK", "") == "1"

# %%
import math
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display

import gemma_lab.exercises.lesson18_train_your_own_gemma  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp
from gemma_lab.bundled import tiny_model_dir
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.generation import generate
from gemma_lab.model import Gemma, init_weights
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.tiny import corpus, train
from gemma_lab.tiny.tokenizer_training import train_tokenizer
from gemma_lab.tokenizer import load_tokenizer

torch.set_num_threads(1)  # small tensors: one thread is fastest, and far faster on a busy machine
reference_model, reference_tokenizer = load_lesson_model()
print("comparison model:", describe(reference_model))

# %% [markdown]
# ## 1. The corpus and its vocabulary
#
# `gemma_lab.tiny.corpus` writes documents from word tables and sentence frames, deterministically
# from `(seed, split, index)`: stories, IOI sentences, facts, repeated spans, sequences and chat turns.
# A **tokenizer** is trained on the text first. Gemma's is a SentencePiece model: byte-pair
# encoding (BPE) starts from single characters and repeatedly merges the most frequent adjacent pair
# into a new piece, until the vocabulary has the size asked for. `train_tokenizer` uses Gemma's
# settings: byte fallback (any text can be written, byte by byte), digits split one per token, no
# dummy prefix, and the special pieces first.

# %%
n_documents = 2_000 if QUICK else 20_000
vocab_size = 1_024 if QUICK else 3_072
start = time.perf_counter()
texts = corpus.generate_corpus(seed=0, n_documents=n_documents)
generated_s = time.perf_counter() - start
workdir = Path(tempfile.mkdtemp(prefix="gemma_lab_lesson18_"))
start = time.perf_counter()
tokenizer_path = train_tokenizer(texts, workdir, vocab_size=vocab_size)
trained_s = time.perf_counter() - start
tokenizer = load_tokenizer(tokenizer_path)
print(f"{n_documents} documents, {sum(map(len, texts)):,} characters, written in {generated_s:.1f} s")
print(f"vocabulary of {tokenizer.vocab_size} pieces trained in {trained_s:.1f} s")
for text in texts[:3]:
    print("  ", repr(text[:100]))

# %% [markdown]
# The pieces are laid out like Gemma's: special pieces, then the 256 byte pieces, then the merges
# in the order BPE made them. The first merges are the most frequent pairs in the corpus; the
# longest pieces are whole frequent words (with their leading space, `▁`).

# %%
pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
n_bytes = sum(piece.startswith("<0x") for piece in pieces)
first_merge = next(i for i, piece in enumerate(pieces) if i > 8 and not piece.startswith("<0x"))
print("special pieces:", pieces[:8])
print(f"{n_bytes} byte pieces, ids {pieces.index('<0x00>')}..{pieces.index('<0xFF>')}")
print("the first 20 merges:", pieces[first_merge:first_merge + 20])
print("the last 10 merges: ", pieces[-10:])
print("the 10 longest:     ", sorted(pieces, key=len, reverse=True)[:10])
for text in (" Mary", " Christopher", " Paris", "The capital of France is Paris.", " tobirak", "2026"):
    ids = tokenizer.encode(text, add_bos=False)
    print(f"{text!r:36} -> {[pieces[i] for i in ids]}")
single = sum(len(tokenizer.encode(" " + name, add_bos=False)) == 1 for name in corpus.NAMES)
print(f"{single} of {len(corpus.NAMES)} first names are a single piece")

# %%
shipped = tiny_model_dir() / "tokenizer.model"
if not QUICK:
    same = tokenizer_path.read_bytes() == shipped.read_bytes()
    print(f"identical to the bundled model's tokenizer.model, byte for byte: {same}")
else:
    print("quick mode: fewer documents and a smaller vocabulary than the bundled tokenizer, so not compared")

# %% [markdown]
# The merges follow the corpus: names, places and fact words are common here, so they become single
# pieces early, while a made-up word (`tobirak`) is spelt from smaller pieces. A real Gemma
# tokenizer is trained the same way on far more text, with 256,000 pieces (262,144 in Gemma 3).
#
# ## 2. A model to train
#
# `train.tiny_config` is the bundled model's architecture (a Gemma 3: q/k norms, sandwich norms,
# local and global layers alternating). Here it is smaller so that it trains in minutes: 2 layers
# (one local, one global: the least an induction circuit needs), `d_model` 64, 4 heads, each with
# its own keys and values (`n_kv_heads=4`; the bundled model, like Gemma, shares one key/value head
# between two query heads). `init_weights` draws every matrix from normal(0, 0.02); `damp_block_outputs`
# starts the post-attention and post-MLP norm gains at 0.1 (section 9 says why).
#
# One setting differs from Gemma: `query_pre_attn_scalar=1.0` instead of `d_head`. Gemma 3
# normalises queries and keys (q/k RMSNorm), so an attention score is at most about
# `d_head / sqrt(query_pre_attn_scalar)` until the norm gains grow: 4 here with Gemma's value, too
# flat for a head to pick out one position among 64 early in a short run. Scaling by 1 instead
# lets the heads sharpen from the start (`python -m gemma_lab.tiny.train` has the same switch,
# `--query-pre-attn-scalar`).

# %%
SEQ_LEN = 64
config = train.tiny_config(tokenizer.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_mlp=192,
                           seq_len=SEQ_LEN, sliding_window=SEQ_LEN // 2, query_pre_attn_scalar=1.0)
torch.manual_seed(0)
model = train.damp_block_outputs(init_weights(Gemma(config), seed=0, std=0.02), 0.1)
print(describe(model, source="initialised in this notebook"))
print(f"layer types: {config.layer_types}; {model.n_params():,} parameters "
      f"({model.cfg.vocab_size * model.cfg.d_model:,} of them the embedding)")

# %% [markdown]
# Training rows come from `train.batches`: documents packed as `<bos> text <eos>` into rows of
# `SEQ_LEN + 1` tokens, and a share `REPEAT_ROWS` of rows built whole from random tokens
# (`train.repeat_row`): a random span written twice, or two random tokens alternating. The random
# rows are what teaches the model to look back. The run in section 7 takes them in two phases:
# for its first `CIRCUIT_STEPS` steps *only* random rows (`circuit_rows`), then half random, half
# text (`train_rows`). Section 7 says why. The spans are 8 to 24 tokens
# long (`SPAN_LENGTHS`), so a row holds segments of different lengths; section 7 says why that
# matters. Random ids are drawn from the
# first `RANDOM_IDS` ids of the vocabulary here (byte pieces and early merges), so that each of
# them comes round often enough in a short run (the bundled model draws from all 3,072).

# %%
RANDOM_IDS = 128


class FewerRandomIds:
    """The tokenizer as `train.batches` sees it, with random spans drawn below `RANDOM_IDS`."""

    def __init__(self, tokenizer, high):
        self.tokenizer, self.vocab_size = tokenizer, high
        self.bos_id, self.eos_id = tokenizer.bos_id, tokenizer.eos_id

    def encode(self, text):
        return self.tokenizer.encode(text)


BATCH = 16
REPEAT_ROWS = 0.5  # share of random-token rows once text joins the training rows
SPAN_LENGTHS = (8, 24)  # shortest and longest random span in the training rows
# train.batches gives rows of seq_len + 1 tokens (inputs and shifted targets): ask for SEQ_LEN - 1.
train_rows = train.batches(FewerRandomIds(tokenizer, RANDOM_IDS), seed=0, split="train", batch_size=BATCH,
                           seq_len=SEQ_LEN - 1, repeat_rows=REPEAT_ROWS, span_lengths=SPAN_LENGTHS)
circuit_rows = train.batches(FewerRandomIds(tokenizer, RANDOM_IDS), seed=1, split="train", batch_size=BATCH,
                             seq_len=SEQ_LEN - 1, repeat_rows=1.0, span_lengths=SPAN_LENGTHS)
heldout_rows = [next(train.batches(tokenizer, seed=0, split="heldout", batch_size=BATCH, seq_len=SEQ_LEN - 1))]
rows = next(train_rows)
print("one batch:", tuple(rows.shape), "= [batch, SEQ_LEN]")
for row in rows[:4]:
    print([tokenizer.id_to_piece(i) for i in row[:20].tolist()])

# %% [markdown]
# ## 3. Exercise: the next-token loss
#
# A language model's output at position `t` is a guess at token `t + 1`. The loss is the
# **cross-entropy**: minus the log-probability the model gave the token that came, averaged over
# every prediction. Write `next_token_loss(logits, tokens)`: from `logits` `[batch, pos, vocab]` and
# the `tokens` `[batch, pos]` they were computed from, a scalar. (`F.cross_entropy` takes raw logits
# `[n, vocab]` and targets `[n]`; or write it with `log_softmax` and `gather`.)

# %% tags=["exercise"] exercise="next_token_loss"
def next_token_loss(logits, tokens):
    """[batch, pos, vocab], [batch, pos] -> []: mean cross-entropy of predicting tokens[:, t + 1] from logits[:, t]."""
    raise NotImplementedError  # your code here


# %%
result = check("next_token_loss", next_token_loss)
display(result)

# %%
# solution("next_token_loss")  # uncomment to see one way to write it

# %%
# From here on: your function if it passed, otherwise the reference implementation.
if not result.passed:
    next_token_loss = get_exercise("next_token_loss").reference

with torch.no_grad():
    initial_loss = next_token_loss(model(rows), rows).item()
print(f"loss of the untrained model: {initial_loss:.3f} nats per token; "
      f"ln(vocab_size) = {math.log(tokenizer.vocab_size):.3f} (a uniform guess)")

# %% [markdown]
# At initialisation every logit is near zero, so the model guesses uniformly and the loss is close
# to `ln(vocab_size)`. **Perplexity** is `exp(loss)`: the number of tokens the model is, on average,
# as unsure as if it chose uniformly among them. Untrained, that is the whole vocabulary.
#
# ## 4. Backpropagation
#
# `loss.backward()` computes the derivative of the loss with respect to every parameter, by the
# chain rule applied backwards through the forward pass (each operation knows its own local
# derivative; autograd multiplies them in reverse order). One gradient can be checked by hand: nudge
# one weight by `±h`, run the model twice, and divide the change of the loss by `2h`.

# %%
probe_model = train.damp_block_outputs(init_weights(Gemma(config), seed=0, std=0.02), 0.1).double()
small = rows[:2]
probe_model.zero_grad()
next_token_loss(probe_model(small), small).backward()
name, weight = next((name, p) for name, p in probe_model.named_parameters() if name.startswith("blocks.0.attn.q"))
index = (0,) * weight.ndim
autograd = weight.grad[index].item()
h = 1e-6
with torch.no_grad():
    weight[index] += h
    plus = next_token_loss(probe_model(small), small).item()
    weight[index] -= 2 * h
    minus = next_token_loss(probe_model(small), small).item()
    weight[index] += h
print(f"d loss / d {name}{list(index)}: autograd {autograd:.8f}, "
      f"finite difference {(plus - minus) / (2 * h):.8f}  (float64)")

norms = {}
for name, parameter in probe_model.named_parameters():
    kind = name.split(".")[-2] if name.startswith("blocks") else name.split(".")[0]
    norms[kind] = norms.get(kind, 0.0) + parameter.grad.norm().item() ** 2
print("gradient norm by kind of parameter:",
      {kind: round(total ** 0.5, 4) for kind, total in sorted(norms.items(), key=lambda kv: -kv[1])})
del probe_model

# %% [markdown]
# ## 5. Exercise: warm-up and cosine decay
#
# AdamW's first steps are noisy (its moment estimates have seen one gradient), so the learning rate
# starts small and rises linearly for `warmup` steps to `peak`; then it follows half a cosine down
# to `floor * peak` at the last step. Write `lr_schedule(total, peak, warmup, floor)`: the rate of
# each of the `total` steps, a list (or tensor) of `total` numbers. Step `s` counts from 0; during
# the warm-up the rate is `peak * (s + 1) / warmup`; afterwards
# `peak * (floor + (1 - floor) * (1 + cos(pi * progress)) / 2)` with
# `progress = (s - warmup) / (total - warmup)`.

# %% tags=["exercise"] exercise="lr_schedule"
def lr_schedule(total, peak, warmup, floor):
    """The learning rate of each of `total` steps: linear warm-up, then cosine decay to floor * peak."""
    raise NotImplementedError  # your code here


# %%
result = check("lr_schedule", lr_schedule)
display(result)

# %%
# solution("lr_schedule")  # uncomment to see one way to write it

# %%
if not result.passed:
    lr_schedule = get_exercise("lr_schedule").reference

TRAINING_STEPS = 8 if QUICK else 1000
PEAK_LR, WARMUP = 0.003, max(1, TRAINING_STEPS // 10)  # section 7 says why not a larger peak
schedule = [float(rate) for rate in lr_schedule(TRAINING_STEPS, PEAK_LR, WARMUP, 0.1)]
package = [train.lr_at(step, TRAINING_STEPS, PEAK_LR, WARMUP, 0.1) for step in range(TRAINING_STEPS)]
print("the same rates as gemma_lab.tiny.train.lr_at:", all(math.isclose(a, b) for a, b in zip(schedule, package)))
with plt.ioff():
    fig, ax = plt.subplots(figsize=(6, 2.4), layout="constrained")
plt.close(fig)
ax.plot(range(TRAINING_STEPS), schedule)
ax.set(xlabel="step", ylabel="learning rate", title=f"warm-up {WARMUP} steps, cosine decay to 10 % of {PEAK_LR}")
display(fig)

# %% [markdown]
# ## 6. Exercise: one AdamW step
#
# Adam keeps two running averages per parameter: of the gradient (`exp_avg`, the momentum) and of
# its square (`exp_avg_sq`). Both start at zero, so they are divided by `1 - beta ** step` (the
# bias correction). The step is `lr * m_hat / (sqrt(v_hat) + eps)`: each weight moves by about
# `lr`, whatever the scale of its gradient. AdamW adds *decoupled* weight decay: the weights
# themselves shrink by the factor `1 - lr * weight_decay` before the step (Loshchilov and Hutter,
# 2019), instead of adding `weight_decay * param` to the gradient as L2 regularisation does.
#
# Write `adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay)`
# returning `(new_param, new_exp_avg, new_exp_avg_sq)`, with `step` counting from 1.

# %% tags=["exercise"] exercise="adamw_update"
def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step (step counts from 1): returns (new_param, new_exp_avg, new_exp_avg_sq)."""
    raise NotImplementedError  # your code here


# %%
result = check("adamw_update", adamw_update)
display(result)

# %%
# solution("adamw_update")  # uncomment to see one way to write it

# %%
if not result.passed:
    adamw_update = get_exercise("adamw_update").reference

# The same three steps taken by torch.optim.AdamW and by adamw_update, on the model's own gradients.
torch_copy = train.damp_block_outputs(init_weights(Gemma(config), seed=0, std=0.02), 0.1)
mine = {name: p.detach().clone() for name, p in torch_copy.named_parameters()}
state = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in mine.items()}
optimizer = torch.optim.AdamW(torch_copy.parameters(), lr=0.003, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
for step in range(1, 4):
    optimizer.zero_grad()
    next_token_loss(torch_copy(rows[:2]), rows[:2]).backward()
    grads = {name: p.grad.detach().clone() for name, p in torch_copy.named_parameters()}
    optimizer.step()
    for name in mine:
        mine[name], *moments = adamw_update(mine[name], grads[name], *state[name], step, 0.003, 0.9, 0.95, 1e-8, 0.05)
        state[name] = tuple(moments)
gap = max((mine[name] - p.detach()).abs().max().item() for name, p in torch_copy.named_parameters())
print(f"after 3 steps, largest difference from torch.optim.AdamW over {len(mine)} tensors: {gap:.2e}")
del torch_copy, optimizer

# %% [markdown]
# (The training loop below uses `train.make_optimizer`: `torch.optim.AdamW`, with weight decay on
# the matrices only. Norm gains are stored as offsets from 1, and decaying them would pull every
# gain towards 1, which is not "smaller weights".)
#
# ## 7. Training, and watching the heads form
#
# Every few steps the loop measures the held-out loss and, on `<bos>` + a random span + the same
# span again (lesson 09's test, with the same random ids as the training rows):
#
# * the two head scores with `interp.head_scores` (as `gemma_lab.tiny.evaluate` does for the bundled
#   model): how much each head attends to the previous token, and to the token after the current
#   token's earlier occurrence (induction);
# * the **in-context loss** with `interp.in_context_loss`: the loss on the first copy (random: no
#   model can beat a guess among the random ids) and on the second copy, which a model with an
#   induction head predicts by copying.
#
# The real run (`TRAINING_STEPS` = 1000) costs about 0.10 s of CPU per step with one thread, under
# 2 minutes in all; on our 2-core machine, shared with a dozen other jobs, the wall time was several
# times that.

# %%
span = 20  # the test span: a length the training rows use, well inside layer 0's sliding window
score_tokens = torch.tensor([[tokenizer.bos_id] + corpus.repeated_random_tokens(10_000, i, 8, RANDOM_IDS, span)
                             for i in range(8)])
EVAL_EVERY = max(1, TRAINING_STEPS // 30)
CIRCUIT_STEPS = TRAINING_STEPS // 2  # random-token rows only until here, then half text (section 6)

torch.manual_seed(0)
model = train.damp_block_outputs(init_weights(Gemma(config), seed=0, std=0.02), 0.1).train()
optimizer = train.make_optimizer(model, PEAK_LR, weight_decay=0.05)
log = {"step": [], "train_loss": []}
evals = {"step": [], "heldout_loss": [], "previous_token": [], "induction": [], "first_copy": [], "second_copy": []}
start = time.perf_counter()
for step in range(TRAINING_STEPS):
    for group in optimizer.param_groups:
        group["lr"] = schedule[step]
    batch = next(circuit_rows if step < CIRCUIT_STEPS else train_rows)
    loss = next_token_loss(model(batch), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    log["step"].append(step + 1)
    log["train_loss"].append(loss.item())
    if (step + 1) % EVAL_EVERY == 0 or step + 1 == TRAINING_STEPS:
        model.eval()
        with torch.no_grad():
            scores = interp.head_scores(model, span, tokens=score_tokens)
            in_context = interp.in_context_loss(model, span, tokens=score_tokens)
            held = sum(next_token_loss(model(r), r).item() for r in heldout_rows) / len(heldout_rows)
        model.train()
        evals["step"].append(step + 1)
        evals["heldout_loss"].append(held)
        evals["previous_token"].append(scores["previous_token"])  # [layer, head]
        evals["induction"].append(scores["induction"])
        evals["first_copy"].append(in_context["first_copy"].item())
        evals["second_copy"].append(in_context["second_copy"].item())
        if len(evals["step"]) % 5 == 0 or step + 1 == TRAINING_STEPS:
            print(f"step {step + 1:4d}  train {loss.item():.3f}  held-out {held:.3f}  "
                  f"best previous-token {scores['previous_token'].max():.2f}  best induction {scores['induction'].max():.2f}  "
                  f"repeated tokens: first copy {evals['first_copy'][-1]:.2f}, second {evals['second_copy'][-1]:.2f}")
model.eval()
seconds = time.perf_counter() - start
print(f"{TRAINING_STEPS} steps in {seconds:.0f} s ({seconds / TRAINING_STEPS:.3f} s per step, "
      f"{TRAINING_STEPS * BATCH * SEQ_LEN:,} tokens)")

# %%
previous_token = torch.stack(evals["previous_token"])  # [eval, layer, head]
induction = torch.stack(evals["induction"])


def first_step_above(series, threshold=0.5):
    """The first evaluated step where the best head's score passes `threshold` (None if never)."""
    best = series.flatten(1).max(dim=1).values
    above = (best > threshold).nonzero()
    return evals["step"][int(above[0])] if len(above) else None


# The phase change, read off the in-context loss: the first evaluation where the second copy is
# predicted at least 1 nat better than the first (the first copy is random: it stays high).
gap = [first - second for first, second in zip(evals["first_copy"], evals["second_copy"])]
loss_drop = next((step for step, g in zip(evals["step"], gap) if g > 1.0), None)
formed = {"previous-token": first_step_above(previous_token), "induction": first_step_above(induction)}

with plt.ioff():
    fig, (ax_loss, ax_heads) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
plt.close(fig)
ax_loss.plot(log["step"], log["train_loss"], color="0.75", linewidth=0.8, label="train (one batch)")
ax_loss.plot(evals["step"], evals["heldout_loss"], marker=".", label="held-out text")
ax_loss.plot(evals["step"], evals["first_copy"], color="tab:purple", linestyle="--",
             label="repeated tokens: first copy")
ax_loss.plot(evals["step"], evals["second_copy"], color="tab:purple", marker=".",
             label="repeated tokens: second copy")
ax_loss.set(xlabel="step", ylabel="loss (nats per token)", title="loss")
for layer in range(config.n_layers):
    for head in range(config.n_heads):
        ax_heads.plot(evals["step"], previous_token[:, layer, head], color="tab:blue", alpha=0.35 + 0.15 * head,
                      label="previous-token score" if (layer, head) == (0, 0) else None)
        ax_heads.plot(evals["step"], induction[:, layer, head], color="tab:red", alpha=0.35 + 0.15 * head,
                      label="induction score" if (layer, head) == (0, 0) else None)
ax_heads.set(xlabel="step", ylabel="score (one line per head)", ylim=(0, 1), title="head scores during training")
for ax in (ax_loss, ax_heads):
    ax.axvline(CIRCUIT_STEPS, color="0.5", linestyle="--", linewidth=1, label=f"text joins (step {CIRCUIT_STEPS})")
    if formed["induction"]:
        ax.axvline(formed["induction"], color="tab:red", linestyle=":", linewidth=1,
                   label=f"induction score > 0.5 (step {formed['induction']})")
    if loss_drop:
        ax.axvline(loss_drop, color="tab:purple", linestyle=":", linewidth=1,
                   label=f"second copy 1 nat below first (step {loss_drop})")
    ax.legend(fontsize=7)
display(fig)

# %%
for kind, step in formed.items():
    table = (previous_token if kind == "previous-token" else induction)[-1]
    layer, head = divmod(int(table.argmax()), table.shape[1])
    when = f"passed 0.5 at step {step}" if step else "never passed 0.5 in this run"
    print(f"{kind:15} best head at the end: L{layer}H{head} ({table.max():.2f}); {when}")
print(f"repeated random tokens at the end: first copy {evals['first_copy'][-1]:.2f} nats, "
      f"second copy {evals['second_copy'][-1]:.2f} nats; "
      + (f"the second copy first beat the first by 1 nat at step {loss_drop}" if loss_drop
         else "the second copy never beat the first by 1 nat"))

# %% [markdown]
# What to look for. The previous-token score (blue) rises first, in layer 0, a local layer: it only
# needs positions, and the alternating pairs reward it on their own. The induction heads (red) sit
# in layer 1 and need it: their keys must carry "which token came before me", which layer 0's
# previous-token head writes into the stream. Nothing happens to them for a while; then their
# scores jump within a few dozen steps, and at the same moment the loss on the second copy of the
# repeated tokens falls away from the first copy's (about ln 128 = 4.85 nats, a guess among the 128
# random ids): the **phase change** Olsson et al. (2022) describe. The dotted lines mark where the
# run crosses the two thresholds.
#
# In our full run of this notebook (1,000 steps, 68 s of wall time on an otherwise quiet 2-core
# machine) the previous-token score passed 0.5 at step 99; the best induction score was 0.00 at
# step 165 and passed 0.5 at step 297 (L1H0, 0.91 at the end), the step at which the second
# copy first beat the first by a nat; at the end the second copy cost 0.35 nats against the first
# copy's 5.19. Your run prints its own figures above; on another machine the step can move by a
# few dozen.
#
# **Why two phases, and why this learning rate.** The held-out text loss (blue, left) *rises* during
# the first 500 steps: the model sees only random ids and learns to predict nothing else. Once text
# joins, it falls from 10.9 to 3.8 nats in 500 steps, and the induction heads stay. The order
# matters, and so does the step size. We ran the same model, rows and schedule outside the
# notebook, 1,000 steps each:
#
# * random rows only, peak rate 0.003: an induction head formed in all three seeds tried (0, 1, 2),
#   at about steps 250, 400 and 300;
# * 85 or 90 rows in 100 random from the start: seeds 0 and 2 formed one, seed 1 did not;
# * 70 in 100 random from the start (this lesson's earlier recipe): none formed, with the peak rate
#   at 0.01 or at 0.003 (best induction score 0.07), although the held-out text loss ended lower
#   (2.55 nats against 3.8);
# * random rows only at peak rate 0.01: none formed in 800 steps.
#
# The text competes for the same small model: with text in every batch the model first learns the
# easy statistics of words and stays on the plateau; fed only the task that needs the circuit, it
# finds it. A learning rate too large for a 2-layer, `d_model` 64 model keeps it from settling into
# the narrow direction the circuit needs. The bundled model's recipe (section 9) has the room and
# the tokens to learn both at once.
#
# **A trap we fell into, which the in-context loss and the layer gave away.** An earlier version of
# this recipe drew every span as long as the row allowed (31 tokens) and scored the heads on 31-token
# spans. After about 200 steps one head scored 0.93 on that induction test and the second copy's loss
# fell from 4.9 to 0.1 nats: a phase change, it seemed. But the head was in layer **0**, which cannot
# know which token came before another (that takes two layers), and on 20-token spans the same
# models scored at most 0.13 and predicted the second copy no better than the first. The head had
# learned a trick tied to the length 31 (a fixed distance back, near the edge of layer 0's
# 32-token sliding window), not induction. Hence the varied `SPAN_LENGTHS` and the test span of 20:
# always check which layer a high-scoring head is in, and test at more than one length.
#
# The bundled model learnt text and circuits together, with 4 layers, `d_model` 128 and 48 CPU
# minutes (about 19 million tokens against this run's one million): its held-out loss falls
# suddenly from 3.41 to 2.45 nats between steps 800 and 1,100 (its `loss_curve.png`), its own phase
# change, and lesson 09 takes apart the induction head it ends with.
#
# ## 8. Held-out loss and perplexity
#
# The held-out rows come from the corpus's held-out split (name pairs never seen together in
# training, new sentence frames), so a model that memorised its rows would do badly there. The
# comparison model below is evaluated on the same held-out text, through its own tokenizer.

# %%
heldout_text_rows = next(train.batches(reference_tokenizer, seed=0, split="heldout", batch_size=BATCH,
                                       seq_len=min(SEQ_LEN, reference_model.cfg.max_seq_len) - 1))
with torch.no_grad():
    reference_loss = next_token_loss(reference_model(heldout_text_rows), heldout_text_rows).item()
final = evals["heldout_loss"][-1]
print(f"your model:       held-out loss {final:.3f} nats/token, perplexity {math.exp(final):8.1f}")
print(f"comparison model: held-out loss {reference_loss:.3f} nats/token, perplexity {math.exp(reference_loss):8.1f}"
      f"  ({reference_model.cfg.n_layers} layers, d_model {reference_model.cfg.d_model})")
print(f"uniform guess:    {math.log(tokenizer.vocab_size):.3f} nats/token, perplexity {tokenizer.vocab_size:8d}")
for prompt in ("The capital of France is", "Repeat after me: red fox blue sky. red fox"):
    text = generate(model, prompt, tokenizer=tokenizer, max_new_tokens=10, temperature=0.0).text
    print(f"{prompt!r} -> {text!r}")

# %% [markdown]
# The bundled model (4 layers, `d_model` 128, about 19 million training tokens) reaches a far lower
# perplexity than a 2-layer model trained for minutes: more layers, more width and more tokens all
# pay. (In the real-weights mode of the notebook tests the comparison model has random weights, and
# its perplexity is near the vocabulary size.)
#
# ## 9. Discussion: the two fixes the tiny model needed
#
# The first versions of the bundled model sat on the loss plateau before the phase change for their
# whole budget. Two changes to `gemma_lab.tiny.train` moved it (`docs/teaching.md`, "How the tiny
# model got its induction heads", has the side-by-side runs):
#
# 1. **Small post-norm gains.** Gemma 2 and 3 normalise each block's *output* (`ln1_post`,
#    `ln2_post`): whatever a random block computes, it enters the residual stream at RMS about
#    `gain`. The token embedding enters at RMS `0.02 * sqrt(d_model)`. At gain 1 the blocks' random
#    output buries which token sits where, and both heads of the induction circuit need exactly
#    that. The cell below measures it on a fresh model.
# 2. **Alternating pairs.** In rows like `x y x y x y`, the next token is the one *before* the
#    current one, so a previous-token head pays off on its own and forms early; on repeated spans
#    alone, neither head of the circuit lowers the loss until the other exists.
#
# Try it: rerun section 7 with `damp_block_outputs(..., 1.0)`, or with `circuit_rows` built by
# `train.batches(..., alternations=0.0)`, and compare the step at which the heads form (if they
# do). Section 7 names two more settings this small run depends on: the order of the rows and the
# peak learning rate.

# %%
fresh = {}
for gain in (0.1, 1.0):
    candidate = train.damp_block_outputs(init_weights(Gemma(config), seed=0, std=0.02), gain).eval()
    names = ["hook_embed"] + [f"blocks.{i}.hook_attn_out" for i in range(config.n_layers)]
    with torch.no_grad():
        _, cache = candidate.run_with_cache(rows[:4, :-1], names_filter=names)
    embed_rms = cache["hook_embed"].pow(2).mean().sqrt().item()
    block_rms = [cache[f"blocks.{i}.hook_attn_out"].pow(2).mean().sqrt().item() for i in range(config.n_layers)]
    fresh[gain] = (embed_rms, block_rms)
    print(f"post-norm gain {gain}: embedding enters at RMS {embed_rms:.3f}, attention blocks add RMS "
          + ", ".join(f"{r:.3f}" for r in block_rms))

# %% [markdown]
# ## Summary
#
# * A vocabulary is trained before the model: BPE merges the most frequent pairs; Gemma's settings
#   add byte fallback and split digits.
# * The loss is the mean next-token cross-entropy; its exponential is the perplexity; a uniform
#   guess scores `ln(vocab_size)`.
# * AdamW with linear warm-up and cosine decay is the standard recipe; weight decay is decoupled
#   from the gradient.
# * Head scores and the in-context loss measured during training show the previous-token head
#   forming in about a hundred steps, then, after a plateau, the induction head in layer 1 and its
#   phase change: the loss on the second copy of repeated tokens drops within a few dozen steps.
#   What the model is fed, and in which order, decides whether the circuit forms at all in a short
#   run. A high score is only evidence when the head's layer and a second test length agree.
#
# **Next:** notebook 19 reads the trained bundled model's activations with linear probes and
# function vectors.
