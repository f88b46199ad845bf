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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/09_attention_patterns_and_induction.ipynb)**
#
# # 09 · Attention patterns, previous-token heads and induction heads
#
# **Time:** about 90 minutes. **Before this:** notebook 08 (hooks and caching).
#
# An attention pattern shows, for every query position, how much it reads from each earlier key
# position. Some heads do one recognisable job everywhere. Two of them, working together, let a
# model continue a pattern it has seen once in its context: *previous-token heads* and *induction
# heads* (Olsson et al., 2022, "In-context Learning and Induction Heads").
#
# **Learning goals.** By the end you can
#
# 1. read a head's pattern `[q_pos, k_pos]` and explore every head with the `AttentionExplorer` widget;
# 2. explain why repeated random tokens are the standard test for induction, and see the loss drop
#    on the second copy;
# 3. compute previous-token and induction scores from a pattern `[batch, head, q_pos, k_pos]`;
# 4. find the induction heads of the model in a `[layer, head]` heatmap;
# 5. say why heads rest on `<bos>` (the attention sink);
# 6. read a head's OV and QK circuits from its weights, and find the previous-token heads an
#    induction head composes with (K-composition), as checked exercises;
# 7. compute a head's QK circuit with RoPE as a function of the offset, equal to the model's own
#    scores, and tell a positional preference (previous-token head) from a content one (induction).

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

import gemma_lab.exercises.lesson09_attention_patterns_and_induction  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import interp, viz
from gemma_lab.exercises import check, get_exercise, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import AttentionExplorer

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## 1. Reading a pattern
#
# `cache["pattern", layer]` is `[batch, head, q_pos, k_pos]`. One head's slice `[q_pos, k_pos]` is a
# lower-triangular matrix (a token never sees the future); each row sums to 1. Gemma 2 and 3 also
# have *local* layers that only see the last `sliding_window` keys (notebook 13).

# %%
prompt = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]
str_tokens = tokenizer.to_str_tokens(tokens[0])
_, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))

last_layer = model.cfg.n_layers - 1
viz.attention_heads_grid(cache["pattern", last_layer][0], str_tokens, layer=last_layer)

# %% [markdown]
# The `AttentionExplorer` widget shows the same patterns for any prompt, layer and head: type a
# prompt, move the sliders, and look for heads that do one thing (attend to `<bos>`, to the
# previous token, to the same token earlier, to names...).

# %%
AttentionExplorer(model, tokenizer, text=prompt, layer=last_layer)

# %% [markdown]
# ## 2. Repeated random tokens
#
# On ordinary text, a head that attends to an earlier position might be doing many things at once.
# Random tokens strip that away: the first copy of a random sequence is unpredictable, so a model
# can only predict the second copy *by looking back at the first*. The sequence is
#
#     <bos>, r_0, r_1, ..., r_{n-1}, r_0, r_1, ..., r_{n-1}        shape [batch, 1 + 2n]
#
# `interp.repeated_tokens` builds it. We keep `n` below the sliding window, so that local layers
# can see the whole first copy too, and draw ids the tokenizer can show (some checkpoints, such as
# Gemma 3 4B, have more embedding rows than their tokenizer has pieces).

# %%
window = model.cfg.sliding_window or model.cfg.max_seq_len
seq_len = min(20, window - 1)
n_ids = min(model.cfg.vocab_size, tokenizer.vocab_size)
repeated = interp.repeated_tokens(n_ids, seq_len, batch=4, seed=0, bos=tokenizer.bos_id)
print("tokens:", tuple(repeated.shape), "= [batch, 1 + 2 * seq_len]")
print("first row:", tokenizer.to_str_tokens(repeated[0])[: seq_len + 4], "...")

loss = interp.in_context_loss(model, seq_len, batch=4, seed=0, bos=tokenizer.bos_id)
first, second = float(loss["first_copy"]), float(loss["second_copy"])
print(f"mean loss on the first copy: {first:.2f} nats, on the second copy: {second:.2f} nats")
if second < 0.5 * first:
    print("-> the loss drops on the second copy: this model copies from its context.")
else:
    print("-> no clear drop: this model does not (yet) copy random tokens from its context.")

with plt.ioff():
    fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
plt.close(fig)
ax.plot(range(1, len(loss["per_position"]) + 1), loss["per_position"], marker=".")
ax.axvline(seq_len + 1, color="0.5", linestyle="--", label="second copy starts")
ax.set(xlabel="pos of the predicted token", ylabel="loss (nats)", title="next-token loss on repeated random tokens")
ax.legend()
display(fig)

# %% [markdown]
# A model with induction heads has a much lower loss on the second copy: it has learned to copy
# from context, as every real Gemma does. A model with random weights shows no drop, and neither
# does a model trained too briefly: induction heads appear suddenly during training, after a plateau
# (Olsson et al. call it a *phase change*). Whatever your model does, the tools below show which
# heads attend where.

# %%
_, rep_cache = model.run_with_cache(repeated, names_filter=lambda name: name.endswith("hook_pattern"))
rep_patterns = torch.stack([rep_cache["pattern", layer] for layer in range(model.cfg.n_layers)])
print("rep_patterns:", tuple(rep_patterns.shape), "= [layer, batch, head, q_pos, k_pos]")

# %% [markdown]
# ## 3. Exercise: a previous-token score
#
# A *previous-token head* attends from each position to the one just before it: in its pattern, the
# weight sits on the diagonal just below the main one, at `[q, q - 1]`. Write
# `prev_token_score(pattern)`: for a pattern `[batch, head, q_pos, k_pos]`, the mean of
# `pattern[b, h, q, q - 1]` over the batch and over every query `q >= 1`, per head: `[head]`.
#
# Hint: `tensor.diagonal(offset=..., dim1=-2, dim2=-1)` takes a diagonal of the last two axes.

# %% exercise="prev_token_score" tags=["exercise"]
def prev_token_score(pattern):
    """[batch, head, q_pos, k_pos] -> [head]: mean attention from each query to the key just before it."""
    raise NotImplementedError  # your code here


# %%
check("prev_token_score", prev_token_score)

# %%
# solution("prev_token_score")  # uncomment to see one way to write it

# %% [markdown]
# ## 4. Exercise: an induction score
#
# An induction head at position `q` of the second copy (token `r_i`) looks for the earlier occurrence
# of `r_i` and attends to the token *after* it, `r_{i+1}`: that is the token to predict next. With
# one `<bos>` in front, `r_i` is at positions `1 + i` and `1 + n + i`, so the head attends from
# `q` to `q - n + 1`.
#
# Write `induction_score(pattern, seq_len)`: the mean of `pattern[b, h, q, q - seq_len + 1]` over the
# batch and the queries of the second copy (the last `seq_len` positions), per head: `[head]`.

# %% exercise="induction_score" tags=["exercise"]
def induction_score(pattern, seq_len):
    """[batch, head, q_pos, k_pos], n -> [head]: mean attention to the token after the earlier copy."""
    raise NotImplementedError  # your code here


# %%
check("induction_score", induction_score)

# %%
# solution("induction_score")  # uncomment to see one way to write it

# %% [markdown]
# ## 5. Every head at once
#
# `interp.head_scores` computes both scores (plus the *duplicate-token* score, attention to the
# earlier copy of the same token) for every layer and head on repeated random tokens. Its
# previous-token score, like the other two, averages over the queries of the second copy.

# %%
scores = interp.head_scores(model, seq_len, batch=4, seed=0, bos=tokenizer.bos_id)  # kind -> [layer, head]

with plt.ioff():
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), layout="constrained")
plt.close(fig)
for ax, (kind, values) in zip(axes, scores.items()):
    viz.patching_heatmap(values, kind="layer x head", value_label="score", title=kind.replace("_", " "), ax=ax)
display(fig)

# %% [markdown]
# Now the patterns of the best-scoring heads on the repeated sequence. A real induction head draws
# a stripe `seq_len - 1` positions below the diagonal, in the second copy; a previous-token head
# draws the stripe just below the diagonal. (If all scores above are near zero, the "strongest" head
# is only the least weak, and there is no stripe to see.) In a model that has both, the
# previous-token head sits in an *earlier* layer than the induction head: the induction head's keys
# carry "the token before me was ...", written by the previous-token head, and its query matches
# that against its own token.

# %%
def strongest(values):
    layer, head = divmod(int(values.argmax()), values.shape[1])
    return layer, head


with plt.ioff():
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
plt.close(fig)
rep_tokens = tokenizer.to_str_tokens(repeated[0])
for ax, kind in zip(axes, ("previous_token", "induction")):
    layer, head = strongest(scores[kind])
    viz.attention_pattern(rep_patterns[layer, 0, head], rep_tokens, ax=ax,
                          title=f"strongest {kind.replace('_', ' ')} head: L{layer} H{head} "
                                f"(score {scores[kind][layer, head]:.2f})")
display(fig)

# %% [markdown]
# ## 6. Resting on `<bos>`: the attention sink
#
# Lessons 01 and 04 promised this. A pattern's row is a softmax: it *must* sum to 1. A head whose
# job does not apply at some position (a previous-token head is always useful, but a head that
# looks for a repeated name has nothing to find in most positions) still has to put its weight
# somewhere. The safest place is a key that is always visible and says nothing about the current
# text: `<bos>`, at position 0, seen by every query. Heads learn to park their attention there:
# what they then read is the same at every position, a constant offset rather than information.
# This is the *attention sink* (Xiao et al., 2023, "Efficient Streaming Language Models with Attention
# Sinks"). Below, the mean attention each head pays to position 0, over every other query of the
# lesson's prompt.

# %%
_, prompt_cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(("hook_pattern", "hook_resid_pre")))
to_bos = torch.stack([prompt_cache["pattern", layer][0, :, 1:, 0].mean(dim=-1)  # [head]: queries 1.. to key 0
                      for layer in range(model.cfg.n_layers)])  # [layer, head]
sink_layer, sink_head = divmod(int(to_bos.argmax()), model.cfg.n_heads)
resid_norms = torch.stack([prompt_cache["resid_pre", layer][0].norm(dim=-1)
                           for layer in range(model.cfg.n_layers)])  # [layer, pos]

with plt.ioff():
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
plt.close(fig)
viz.patching_heatmap(to_bos, kind="layer x head", value_label="mean attention to <bos>",
                     title="how much each head rests on <bos>", ax=left)
viz.attention_pattern(prompt_cache["pattern", sink_layer][0, sink_head], str_tokens, ax=right,
                      title=f"the head that rests most: L{sink_layer} H{sink_head} "
                            f"({float(to_bos[sink_layer, sink_head]):.0%} on <bos>)")
display(fig)
for layer in range(model.cfg.n_layers):
    print(f"layer {layer}: |resid_pre| at <bos> {float(resid_norms[layer, 0]):6.1f}, "
          f"mean over the other tokens {float(resid_norms[layer, 1:].mean()):6.1f}")

# %% [markdown]
# The left map says which heads use the sink and how much; the pattern on the right shows the
# stripe down the first column that resting draws. The printout compares the length of the residual
# stream at `<bos>` with the other tokens: in large models `<bos>`'s stream is often many times longer
# than the rest, one of the "massive activations" (Sun et al., 2024) that make it an easy target
# for every head's query. In a four-layer toy model the effect is milder; check what your model shows.
#
# What if there is no `<bos>`? Then the first real token is the only key every query can see, and
# it becomes the sink instead. Compare the attention to position 0 and the next-token prediction
# with and without `<bos>`:

# %%
without_bos = torch.tensor([tokenizer.encode(prompt, add_bos=False)])
for label, ids in (("with <bos>", tokens), ("without <bos>", without_bos)):
    ids_logits, ids_cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_pattern"))
    to_first = torch.stack([ids_cache["pattern", layer][0, :, 1:, 0].mean(dim=-1)
                            for layer in range(model.cfg.n_layers)])  # [layer, head]
    probs = ids_logits[0, -1].softmax(-1)
    top = int(probs.argmax())
    print(f"{label:>14}: position 0 is {tokenizer.to_str_tokens(ids[0])[0]!r}; mean attention to it "
          f"{float(to_first.mean()):.2f} (most: {float(to_first.max()):.2f}); "
          f"prediction {tokenizer.decode([top])!r} with p = {float(probs[top]):.3f}")

# %% [markdown]
# Heads still rest on position 0 when it holds an ordinary word, but now that word's value vectors
# are read too, and they were never trained to be harmless. Real Gemma checkpoints were trained with
# `<bos>` on every sequence and can degrade badly without it; the tiny model, trained on short
# documents that each start with `<bos>`, may shrug it off (compare the two predictions above). Either
# way: always let the tokenizer add `<bos>`. Lesson 12 comes back to this: a steering vector should
# not be added at the sink.

# %% [markdown]
# ## 7. Circuits in the weights: OV, QK and K-composition
#
# Everything so far watched the heads *run*. The weights alone say a lot too (Elhage et al., 2021,
# "A Mathematical Framework for Transformer Circuits"). Each head is two circuits, two
# `[d_model, d_model]` matrices acting on residual-stream rows:
#
# * **QK**, `W_Q @ W_K.T`: the attention score between a query row `x_q` and a key row `x_k` is
#   `x_q @ QK @ x_k.T`. It decides *where* the head looks.
# * **OV**, `W_V @ W_O`: what the head adds to the stream when it attends to `x_k` is `x_k @ OV`
#   (times the attention weight). It decides *what* the head moves.
#
# `interp.head_circuits(model)` builds both for every head, `[layer, head, d_model, d_model]`, with
# the gains of the norms around the head folded in (`ln1`, Gemma 2/3's `ln1_post`, Gemma 3's q/k
# norms). What cannot be folded into a matrix is left out and matters when reading the numbers: each
# norm's division by its input's RMS (sizes, not directions), RoPE (QK is the score of a query and a
# key at the same position; section 8 puts it back) and the score scale.
#
# **The induction head's OV circuit copies.** Put every token's embedding through the head's OV
# circuit and read the result with the unembedding: the *full OV circuit* `[vocab, vocab]`, row `i`
# the logits the head writes when it attends to token `i`. An induction head attends to the token
# that came next last time, and should then say *that token*: row `i`'s largest logit should be `i`
# itself. Write `ov_copying_score(full_ov)`: the fraction of rows whose largest entry is on the
# diagonal, as a 0-d tensor.

# %% exercise="ov_copying_score" tags=["exercise"]
def ov_copying_score(full_ov):
    """[vocab, vocab] -> []: the fraction of rows whose largest entry is on the diagonal."""
    raise NotImplementedError  # your code here


# %%
result = check("ov_copying_score", ov_copying_score)
display(result)

# %%
# solution("ov_copying_score")  # uncomment to see one way to write it

# %%
if not result.passed:
    ov_copying_score = get_exercise("ov_copying_score").reference

circuits = interp.head_circuits(model)  # .ov, .qk: [layer, head, d_model, d_model]
# A sample of token ids the tokenizer can show (a real vocabulary of 256k squared would not fit in memory).
n_sample = min(2048, n_ids)
sample = torch.randperm(n_ids, generator=torch.Generator().manual_seed(0))[:n_sample].sort().values
embedding = model.embed.weight[sample].float() * model.cfg.embed_scale  # [sample, d_model], as the stream gets it
embedding = embedding / embedding.pow(2).mean(-1, keepdim=True).add(model.cfg.norm_eps).sqrt()  # ln1's division
unembed = model.embed.weight[sample].float() * model.ln_final.gain()  # [sample, d_model]: ln_final's gain folded in
copying = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)  # [layer, head]
for layer in range(model.cfg.n_layers):
    for head in range(model.cfg.n_heads):
        full_ov = embedding @ circuits.ov[layer, head] @ unembed.T  # [sample, sample]
        copying[layer, head] = ov_copying_score(full_ov)
ind_layer, ind_head = strongest(scores["induction"])
print(f"full OV circuits on {n_sample} tokens; chance level {1 / n_sample:.4f}")
print(f"the strongest induction head, L{ind_layer} H{ind_head}: copying score {float(copying[ind_layer, ind_head]):.2f}")
viz.patching_heatmap(copying, kind="layer x head", value_label="fraction of tokens copied",
                     title="full OV circuit: does attending to a token make the head say it?")

# %% [markdown]
# **K-composition.** The induction head finds "the token after the earlier copy" because its *keys*
# carry "the token before me was ...", which the previous-token head wrote into the stream. In the
# weights, that is an earlier head's OV output being read by a later head's key side: the product
# `OV_earlier @ QK_later.T`. Its relative size is the *composition score*,
# `|A @ B|_F / (|A|_F |B|_F)` (`interp.composition_score`). Write
# `k_composition_scores(ov, qk)`: for an earlier layer's OV circuits `[head_e, d, d]` and a later
# layer's QK circuits `[head_l, d, d]`, the K-composition score of every pair, `[head_l, head_e]`.
# (Broadcasting does the pairs: `ov[None]` against `qk.T[:, None]`.)

# %% exercise="k_composition_scores" tags=["exercise"]
def k_composition_scores(ov, qk):
    """[head_e, d, d], [head_l, d, d] -> [head_l, head_e]: K-composition of each (later, earlier) pair."""
    raise NotImplementedError  # your code here


# %%
result = check("k_composition_scores", k_composition_scores)
display(result)

# %%
# solution("k_composition_scores")  # uncomment to see one way to write it

# %%
if not result.passed:
    k_composition_scores = get_exercise("k_composition_scores").reference

# Every earlier head against the induction head's QK circuit: [earlier layer, head].
k_comp = torch.zeros(max(ind_layer, 1), model.cfg.n_heads)
for earlier in range(ind_layer):
    k_comp[earlier] = k_composition_scores(circuits.ov[earlier], circuits.qk[ind_layer, ind_head][None])[0]
# The baseline: the same score between random matrices of the same shapes.
generator = torch.Generator().manual_seed(0)
d_model, d_head = model.cfg.d_model, model.cfg.d_head


def random_circuit():
    return torch.randn(d_model, d_head, generator=generator) @ torch.randn(d_head, d_model, generator=generator)


baseline = sum(float(interp.composition_score(random_circuit(), random_circuit())) for _ in range(20)) / 20
if ind_layer > 0:
    top_layer, top_head = divmod(int(k_comp.argmax()), model.cfg.n_heads)
    prev_layer, prev_head = strongest(scores["previous_token"])
    print(f"K-composition into L{ind_layer} H{ind_head}: highest from L{top_layer} H{top_head} "
          f"({float(k_comp.max()):.3f}); random matrices score about {baseline:.3f}")
    if prev_layer < ind_layer:
        print(f"the strongest previous-token head, L{prev_layer} H{prev_head}, scores "
              f"{float(k_comp[prev_layer, prev_head]):.3f}")
    display(viz.patching_heatmap(k_comp - baseline, kind="layer x head",
                                 value_label="K-composition minus random baseline",
                                 title=f"which earlier heads feed L{ind_layer} H{ind_head}'s keys?"))
else:
    print("the strongest induction-scoring head is in layer 0: there is no earlier head to compose with")

# %% [markdown]
# On a model with an induction circuit, the heads that stand out are the previous-token heads of
# the layer before (compare with the previous-token scores of section 5): the weights alone find the
# circuit the attention patterns showed. The scores are small numbers (a head reads a few directions
# of a wide stream) and only mean something against the random baseline; they ignore RoPE and the
# norms' RMS divisions, so treat them as a map of where to look, then confirm by patching
# (lesson 11). On random weights nothing stands out.
#
#
# ## 8. The QK circuit under RoPE: position or content?
#
# Section 7's `qk` matrix is the score of a query and a key *at the same position*. Gemma never
# compares them unrotated: RoPE (lesson 03) turns each pair of dimensions of the query by an angle
# proportional to its position, and the key by its own. For one head, with `x_q` the query's
# residual-stream row at position `p` and `x_k` the key's at `p - d`,
#
#     q = q_norm(ln1(x_q) @ W_Q)       k = k_norm(ln1(x_k) @ W_K)        (Gemma 3; Gemma 1 and 2 have no q/k norms)
#     score = attn_scale * rot(q, p) . rot(k, p - d) = attn_scale * rot(q, d) . k
#
# A rotation by `p - d` undone from one by `p` leaves one by `d`: the score depends on the
# *distance* `d`, never on where the pair sits. So the QK circuit of a Gemma head is a family of
# matrices, one per offset. Both norms divide by a row's own RMS, which a matrix cannot do, so we
# compute it row by row instead of as one product.
#
# **Exercise.** Write `scores_by_offset(q, k, offsets, theta, rope_scale)`: for queries `q`
# `[n_q, d_head]` and keys `k` `[n_k, d_head]` (normalised, not yet rotated) and `offsets` `[offset]`,
# the dot products `rot(q, d) . k` as `[offset, n_q, n_k]`. Gemma's RoPE pairs dimension `i` with
# `i + d_head/2` and turns pair `i` by `d / rope_scale * theta ** (-2i / d_head)`; the key stays
# where it is (position 0).

# %% exercise="scores_by_offset" tags=["exercise"]
def scores_by_offset(q, k, offsets, theta, rope_scale=1.0):
    """[n_q, d_head], [n_k, d_head], [offset] -> [offset, n_q, n_k]: rot(q, offset) . k for each offset."""
    raise NotImplementedError  # your code here


# %%
result = check("scores_by_offset", scores_by_offset)
display(result)

# %%
# solution("scores_by_offset")  # uncomment to see one way to write it

# %% [markdown]
# Now check it against the model itself. On the repeated random tokens, take the normalised,
# unrotated queries and keys the forward pass computed (`q_norm`'s output on Gemma 3, `hook_q` and
# `hook_k` before it), score every query against every key at their real distance, and compare with
# the scores the pass used (`hook_attn_scores`). `interp.qk_scores_by_offset` does the whole
# circuit from residual-stream rows with the model's own modules (ln1, the head's slice of `W_Q`
# and its kv head's of `W_K`, the q/k norms, RoPE with the layer's base, the scale and Gemma 2's
# softcap): it must agree too.

# %%
if not result.passed:
    scores_by_offset = get_exercise("scores_by_offset").reference

prev_layer, prev_head = strongest(scores["previous_token"])
ind_layer, ind_head = strongest(scores["induction"])
cfg = model.cfg


def normalised_qk(layer):
    """The hook names of a layer's queries and keys after their norms, before RoPE."""
    if cfg.qk_norm:
        return f"blocks.{layer}.attn.q_norm.hook_normalized", f"blocks.{layer}.attn.k_norm.hook_normalized"
    return f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"


wanted = {name for layer in (prev_layer, ind_layer) for name in normalised_qk(layer)}
wanted |= {f"blocks.{layer}.{hook}" for layer in (0, prev_layer, ind_layer)
           for hook in ("hook_resid_pre", "attn.hook_attn_scores")}
_, qk_cache = model.run_with_cache(repeated[:1], names_filter=lambda name: name in wanted)
n_pos = repeated.shape[1]
rows, cols = torch.tril_indices(n_pos, n_pos)  # every (query, key) pair a causal head compares
for layer, head in ((prev_layer, prev_head), (ind_layer, ind_head)):
    q_name, k_name = normalised_qk(layer)
    kv_head = head // (cfg.n_heads // cfg.n_kv_heads)
    q, k = qk_cache[q_name][0, :, head].float(), qk_cache[k_name][0, :, kv_head].float()  # [pos, d_head]
    theta, rope_scale = cfg.rope_for_layer(layer)
    yours = scores_by_offset(q, k, torch.arange(n_pos), theta, rope_scale) * cfg.attn_scale  # [offset, pos, pos]
    if cfg.attn_softcap is not None:
        yours = cfg.attn_softcap * torch.tanh(yours / cfg.attn_softcap)
    resid = qk_cache["resid_pre", layer][0]
    package = interp.qk_scores_by_offset(model, layer, head, resid, resid, torch.arange(n_pos))
    real = qk_cache["attn_scores", layer][0, head, rows, cols].float()
    print(f"L{layer} H{head}: yours vs the forward pass, largest difference "
          f"{float((yours[rows - cols, rows, cols] - real).abs().max()):.1e}; "
          f"interp.qk_scores_by_offset vs the pass {float((package[rows - cols, rows, cols] - real).abs().max()):.1e} "
          f"(scores up to {float(real.abs().max()):.1f})")

# %% [markdown]
# **The full QK circuit at layer 0.** In layer 0 the residual stream is just the scaled embedding
# of the token, so feeding `embed_scale * W_E` as both the query and the key rows gives the *full
# QK circuit*: for every query token, key token and offset, exactly the score layer 0 computes, on
# any input. Below, one layer-0 head's full circuit at offset 1 for the tokens of the lesson's
# prompt, checked against the forward pass. Every entry is a hypothetical (that query token with
# that key token one step before it), so the matrix is full, not causal. A column that is bright in
# most rows is a key token the head favours from almost any query (content of the key alone); rows
# that look alike are query tokens the head treats alike. Change the head, or the offset, and compare.

# %%
prompt_ids = tokens[0]
embedded = model.embed.weight[prompt_ids].float() * cfg.embed_scale  # [pos, d_model]: layer 0's resid_pre
full_qk = interp.qk_scores_by_offset(model, 0, 0, embedded, embedded, torch.arange(len(prompt_ids)))  # [offset, tok, tok]
_, layer0 = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_attn_scores")
n = len(prompt_ids)
q_rows, k_cols = torch.tril_indices(n, n)
layer0_real = layer0["attn_scores", 0][0, 0, q_rows, k_cols].float()
print(f"layer 0 head 0, full QK circuit vs the forward pass on the prompt: largest difference "
      f"{float((full_qk[q_rows - k_cols, q_rows, k_cols] - layer0_real).abs().max()):.1e}")
with plt.ioff():
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
plt.close(fig)
image = ax.imshow(full_qk[1], cmap="RdBu_r", vmin=-float(full_qk[1].abs().max()), vmax=float(full_qk[1].abs().max()))
ax.set_xticks(range(n), str_tokens, rotation=90, fontsize=8)
ax.set_yticks(range(n), str_tokens, fontsize=8)
ax.set(xlabel="key token (one position before the query)", ylabel="query token",
       title="L0 H0: full QK circuit at offset 1 (every pair, as if adjacent)")
fig.colorbar(image, ax=ax, label="score")
display(fig)

# %% [markdown]
# **Position or content?** Now split where a head's preference comes from. At a fixed offset the
# score is bilinear in the query and the key, so its average over many (query, key) pairs is the
# score of the *mean query* with the *mean key*: a function of the offset alone, the part of the
# preference RoPE gives every token (position). How far single pairs spread around it is what the
# tokens themselves decide (content). Below, for the strongest previous-token head and the
# strongest induction head, the mean over all pairs of rows from the repeated-token run at each
# offset, with a band of one standard deviation.

# %%
max_offset = min(2 * seq_len, window - 1)
offsets = torch.arange(max_offset + 1)
with plt.ioff():
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
plt.close(fig)
by_head = {}
for ax, (kind, (layer, head)) in zip(axes, (("previous-token", (prev_layer, prev_head)),
                                            ("induction", (ind_layer, ind_head)))):
    resid = qk_cache["resid_pre", layer][0, 1:]  # the random tokens' rows (not <bos>)
    circuit = interp.qk_scores_by_offset(model, layer, head, resid, resid, offsets)  # [offset, q row, k row]
    mean, spread = circuit.mean(dim=(1, 2)), circuit.std(dim=(1, 2))
    by_head[kind] = (layer, head, mean, spread)
    ax.plot(offsets, mean, marker=".", label="mean over token pairs (position)")
    ax.fill_between(offsets, mean - spread, mean + spread, alpha=0.25, label="± 1 std over pairs (content)")
    ax.set(xlabel="offset d (key d positions before the query)", ylabel="score",
           title=f"{kind} head L{layer} H{head}")
    ax.legend(fontsize=8)
display(fig)
for kind, (layer, head, mean, spread) in by_head.items():
    best = int(mean.argmax())
    print(f"{kind} head L{layer} H{head}: the mean score peaks at offset {best} ({float(mean[best]):.1f}; "
          f"offset 0: {float(mean[0]):.1f}, offset 2: {float(mean[2]):.1f}); spread over pairs at offset 1: "
          f"{float(spread[1]):.1f}")

# Where does the previous-token head's shared query and key come from? Feed it the token embeddings
# alone, as if no earlier layer had written anything.
embedded_rows = model.embed.weight[repeated[0, 1:]].float() * cfg.embed_scale  # [pos, d_model]
direct = interp.qk_scores_by_offset(model, prev_layer, prev_head, embedded_rows, embedded_rows, offsets[:3])
print(f"previous-token head fed the embeddings alone: mean score at offsets 0, 1, 2: "
      f"{', '.join(f'{float(v):.1f}' for v in direct.mean(dim=(1, 2)))}")

# The induction head's own pairs: query in the second copy, key = the token after its earlier occurrence.
layer, head = ind_layer, ind_head
resid = qk_cache["resid_pre", layer][0]
at_induction = interp.qk_scores_by_offset(model, layer, head, resid, resid, [seq_len - 1])[0]  # [q row, k row]
second = torch.arange(1 + seq_len, n_pos)
print(f"induction head at offset {seq_len - 1}: the induction pairs score {float(at_induction[second, second - seq_len + 1].mean()):.1f} "
      f"on average, all pairs at that offset {float(by_head['induction'][2][seq_len - 1]):.1f}")

# %% [markdown]
# Read the two panels side by side. On the tiny model the previous-token head's mean curve has a
# clear peak at offset 1 and its band is narrow: *every* query prefers the key one step back, whatever
# the tokens. That is position, and it comes from RoPE alone (Gemma has no position embedding):
# the mean query and mean key are a direction that every row of the stream shares, which the
# rotation by one step lines up. Fed the token embeddings alone, the same head's curve is flat on
# the tiny model (the printout): that shared direction is written by the earlier layers, the same at
# every position, not carried by the tokens. The induction head is the opposite: its mean curve is nearly
# flat in the offset and its band is wide, and the pairs it actually attends to (the token after an
# earlier copy) score far above the rest. That is content: the key carries "the token before me
# was ...", written by the previous-token head, and the query matches its own token against it.
# (Whether your model shows this: read the printed numbers. On random weights neither head prefers
# anything.) RoPE's rotations are periodic, so a head that likes offset 1 can also like some larger
# offsets where its fast pairs come round again: look for the second bump in the left panel.
#
# **The induction head's full QK circuit, through the previous-token head.** K-composition (section
# 7) said the induction head's keys read what an earlier head writes; `qk_scores_by_offset` can now
# show it token by token. Make the query row a token's own embedding (the stream's direct path) and
# the key row what an earlier head writes when it attends to a token: that token's embedding through
# the head's OV circuit (section 7's `circuits.ov`). The score matrix `[query token A, token B]`, at
# the induction offset `seq_len - 1`, is the full QK circuit of the path "the previous-token head
# moved B one step on, and the induction head's query A meets it". If the path is induction, each
# query token scores highest where B is itself: a diagonal, measured with your `ov_copying_score`
# (the fraction of rows whose largest entry is on the diagonal), for every earlier head.

# %%
n_pairs = min(256, n_sample)
token_rows = model.embed.weight[sample[:n_pairs]].float() * cfg.embed_scale  # [token, d_model]
through = torch.zeros(max(ind_layer, 1), cfg.n_heads)  # [earlier layer, head]: diagonal fraction
if ind_layer > 0:
    with torch.no_grad():
        for earlier in range(ind_layer):
            for head in range(cfg.n_heads):
                written = token_rows @ circuits.ov[earlier, head]  # what the head writes, per attended token
                qk_path = interp.qk_scores_by_offset(model, ind_layer, ind_head, token_rows, written, [seq_len - 1])[0]
                through[earlier, head] = ov_copying_score(qk_path)
        direct_path = interp.qk_scores_by_offset(model, ind_layer, ind_head, token_rows, token_rows, [seq_len - 1])[0]
        via_prev = interp.qk_scores_by_offset(model, ind_layer, ind_head, token_rows,
                                              token_rows @ circuits.ov[prev_layer, prev_head], [seq_len - 1])[0]
    print(f"L{ind_layer} H{ind_head}'s queries on {n_pairs} tokens (chance {1 / n_pairs:.3f}): diagonal fraction through "
          f"the previous-token head L{prev_layer} H{prev_head}: {float(ov_copying_score(via_prev)):.3f}; "
          f"best earlier head L{int(through.argmax()) // cfg.n_heads} H{int(through.argmax()) % cfg.n_heads} "
          f"({float(through.max()):.3f}); the key token's own embedding (no head in between): "
          f"{float(ov_copying_score(direct_path)):.3f}")
    with plt.ioff():
        fig, (ax_heads, ax_tokens) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    plt.close(fig)
    image = ax_heads.imshow(through, cmap="Greens", vmin=0, vmax=1)
    ax_heads.set(xlabel="head", ylabel="earlier layer", xticks=range(cfg.n_heads), yticks=range(ind_layer),
                 title=f"keys written by each earlier head: L{ind_layer} H{ind_head} finds its own token")
    fig.colorbar(image, ax=ax_heads, label="fraction of query tokens whose top key is their own token")
    shown = via_prev[:32, :32]
    image = ax_tokens.imshow(shown, cmap="RdBu_r", vmin=-float(shown.abs().max()), vmax=float(shown.abs().max()))
    ax_tokens.set(xlabel="token B, moved one step on by the previous-token head", ylabel="query token A",
                  title=f"through L{prev_layer} H{prev_head}, first 32 sampled tokens")
    fig.colorbar(image, ax=ax_tokens, label="score")
    display(fig)
else:
    print("the strongest induction-scoring head is in layer 0: no earlier head can write its keys")

# %% [markdown]
# On the tiny model the diagonal is nearly complete through the previous-token head, and absent
# when the key row is the token's own embedding: the induction head does not look for *its own
# token*, it looks for a key whose *previous token* was its own token, and that information exists
# only because an earlier head moved it there. Read the other heads' fractions too: a head whose
# OV also moves the previous token into the next position feeds the same path. Like the
# composition scores, this ignores the rest of the key's stream (the key token's own embedding, the
# other heads), so it is a map of the path, which patching (lesson 11) then tests on real inputs.
#
# ## Summary
#
# * A pattern `[q_pos, k_pos]` is where each token reads from; heads that do one job show it as a
#   stripe: just below the diagonal (previous token), `seq_len - 1` below it on repeated text (induction).
# * Repeated random tokens isolate in-context copying: loss on the second copy drops only if the
#   model has induction heads.
# * `interp.head_scores` scores every head at once.
# * In the weights: a head's QK circuit says where it looks, its OV circuit what it moves; the
#   induction head's full OV circuit copies tokens, and its keys K-compose with the previous-token heads;
#   its full QK circuit through the previous-token head is a diagonal: it looks for its own token one step back.
# * Under RoPE the QK circuit is one matrix per offset (`interp.qk_scores_by_offset`, exact to the
#   model's scores): averaged over tokens it shows a head's positional preference, its spread the content.
# * Heads with nothing to do rest on `<bos>` (the attention sink): a softmax must put its weight
#   somewhere, and `<bos>` is always visible and says nothing about the text.
#
# **Next:** notebook 10 reads the residual stream itself, layer by layer, with the logit lens.
