"""The tiny model's card: ``README.md`` (what it is, how it was made, what it can do, with the
measured figures) and ``loss_curve.png``, written from ``train_log.json`` and the evaluation.

Imports the recipe's settings; matplotlib only inside ``plot_loss_curve`` (Agg backend). The card is
one long template because it is one document; its sections are filled from the log and figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gemma_lab.tiny import recipe


def _stages(log: dict) -> list[dict]:
    """The logs of every training stage, first to last (one unless ``--init-from`` was used)."""
    return [*log.get("previous_stages", []), log]


def _joined_history(log: dict) -> tuple[dict, dict]:
    """Per-step and periodic figures of all stages on one token axis."""
    hist = {"tokens": [], "train_loss": []}
    evals = {"tokens": [], "heldout_loss": [], "ioi_accuracy": []}
    offset = 0
    for stage in _stages(log):
        hist["tokens"] += [offset + t for t in stage["history"]["tokens"]]
        hist["train_loss"] += stage["history"]["train_loss"]
        evals["tokens"] += [offset + t for t in stage["evals"]["tokens"]]
        evals["heldout_loss"] += stage["evals"]["heldout_loss"]
        evals["ioi_accuracy"] += stage["evals"]["ioi_accuracy"]
        offset += stage["train_tokens"]
    return hist, evals


def _stage_command(stage: dict, out_arg: str) -> str:
    s = stage["settings"]
    command = f"python -m gemma_lab.tiny.train --steps {stage['steps_planned']} --threads {s['threads']} --seed {s['seed']}"
    if s.get("init_from"):
        command += f" --init-from {s['init_from']}"
    for flag, default in (("lr", 3e-3), ("keep_others", recipe.KEEP_OTHERS), ("random_span_every", recipe.RANDOM_SPAN_EVERY),
                          ("warmup", 40), ("query_pre_attn_scalar", None), ("repeat_rows", recipe.REPEAT_ROWS),
                          ("post_norm_gain", recipe.POST_NORM_GAIN), ("alternations", recipe.ALTERNATIONS)):
        if s.get(flag, default) != default:
            command += f" --{flag.replace('_', '-')} {s[flag]}"
    return command + out_arg


def plot_loss_curve(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist, evals = _joined_history(log)
    train = torch.tensor(hist["train_loss"])
    window = max(1, len(train) // 50)
    smooth = train.unfold(0, window, 1).mean(-1) if len(train) >= window else train
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(hist["tokens"], hist["train_loss"], color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
    ax.plot(hist["tokens"][window - 1 :], smooth.tolist(), color="tab:blue", label=f"train (mean of {window})")
    ax.plot(evals["tokens"], evals["heldout_loss"], "o-", color="tab:orange", label="held-out")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title("tiny-gemma: training and held-out loss")
    ax.grid(alpha=0.3)
    ioi_ax = ax.twinx()
    ioi_ax.plot(evals["tokens"], evals["ioi_accuracy"], "s--", color="tab:green", ms=3,
                label="held-out IOI accuracy")
    ioi_ax.set_ylim(0, 1.05)
    ioi_ax.set_ylabel("IOI accuracy")
    lines = ax.get_legend_handles_labels()
    more = ioi_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- the model card ------------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def write_model_card(out: Path, log: dict, figures: dict, stats: dict) -> None:
    """README.md from the training log, the corpus statistics and the measured evaluation."""
    cfg = log["config"]
    s = log["settings"]
    ev = log["evals"]
    best = figures["best_heads"]
    copying = figures["copying"]
    ioi, ioi_train, facts = figures["ioi"], figures["ioi_train_distribution"], figures["facts"]
    out_arg = "" if Path(out).resolve() == recipe.DEFAULT_OUT.resolve() else f" --out {out}"
    stages = _stages(log)
    if len(stages) == 1:
        repro_rows = f"| the whole folder (tokenizer, weights, curve, this card) | `{_stage_command(log, out_arg)}` |"
    else:
        repro_rows = "\n".join(
            f"| the whole folder, stage {i + 1} of {len(stages)} (run them in order) | `{_stage_command(st, out_arg)}` |"
            for i, st in enumerate(stages))
    stage_text = []
    for i, st in enumerate(stages):
        ss = st["settings"]
        start = "from a random init" if not ss.get("init_from") else f"from stage {i}'s weights"
        sized = (f"; sized with `--minutes {ss['minutes']}`, which timed the {st['warmup_steps']} warm-up steps "
                 f"({st['probe_seconds_per_step']:.2f} s/step) and fixed {st['steps_planned']} steps"
                 if st.get("probe_seconds_per_step") else "")
        # A later stage starts from the earlier weights, so its --post-norm-gain did nothing.
        init_text = "" if ss.get("init_from") else f"post-norm gains starting at {ss.get('post_norm_gain', 1.0)}, "
        stage_text.append(
            f"* Stage {i + 1} ({start}, seed {ss['seed']}): peak learning rate {ss['lr']}, {st['warmup_steps']} warm-up "
            f"steps then cosine decay to 10 %, {ss.get('keep_others', recipe.KEEP_OTHERS):.0%} of the non-IOI/non-repeat "
            f"documents kept, a random span every {ss.get('random_span_every', recipe.RANDOM_SPAN_EVERY)} documents, "
            f"{ss.get('repeat_rows', 0.0):.0%} of rows built whole from random-token segments "
            f"({ss.get('alternations', 0.0):.0%} of them alternating pairs), "
            f"{init_text}"
            f"{st['steps_done']} of {st['steps_planned']} steps = {st['train_tokens']:,} tokens in "
            f"{st['train_seconds'] / 60:.1f} min ({st['tokens_per_second']:.0f} tokens/s)"
            f"{' - stopped early by the wall-clock limit' if st['stopped_early'] else ''}{sized}.")
    stage_text = "\n".join(stage_text)
    total_tokens = sum(st["train_tokens"] for st in stages)
    head_rows = []
    for kind in ("induction", "previous_token"):
        for layer, row in enumerate(figures["head_scores"][kind]):
            head_rows.append(f"| {kind} | {layer} ({cfg['layer_types'][layer]}) | "
                             + " | ".join(f"{v:.3f}" for v in row) + " |")
    heads_header = "| score | layer | " + " | ".join(f"head {h}" for h in range(cfg["n_heads"])) + " |"
    heads_rule = "|---|---|" + "---|" * cfg["n_heads"]
    kinds = "\n".join(f"| {k} | {n} | {_pct(stats['kind_fractions'][k])} |" for k, n in stats["kinds"].items())
    samples = "\n".join(f"| `{x['prompt']}` | `{x['completion']!r}` |" for x in figures["samples"])
    topics = ", ".join(f"{t} {_pct(a)}" for t, a in facts["by_topic"].items())
    minutes = sum(st["train_seconds"] for st in stages) / 60
    checks = [("best induction score", ">= 0.5", best["induction"]["score"], best["induction"]["score"] >= 0.5),
              ("best previous-token score", ">= 0.5", best["previous_token"]["score"],
               best["previous_token"]["score"] >= 0.5),
              ("second-copy / first-copy loss", "< 0.3", copying["ratio"], copying["ratio"] < 0.3),
              ("held-out IOI accuracy", ">= 0.9", ioi["accuracy"], ioi["accuracy"] >= 0.9)]
    targets = "\n".join(f"| {name} | {bar} | {value:.3f} | {'yes' if ok else '**no**'} |"
                         for name, bar, value, ok in checks)
    text = f"""# tiny-gemma

A {log['n_params'] / 1e6:.2f} M-parameter Gemma 3 trained from scratch in this repository, in
{minutes:.1f} minutes on a 2-core CPU, on a synthetic corpus built so that the circuits the notebooks
study (previous-token heads, induction heads, indirect-object identification, factual recall) have
something to form on. It is a teaching model: it knows a few hundred names, places and facts and
nothing else.

It loads exactly like a real checkpoint, with gemma_lab and with transformers:

```python
import gemma_lab
from gemma_lab.tokenizer import load_tokenizer
model = gemma_lab.load_pretrained("tiny")        # this folder
tokenizer = load_tokenizer("tiny")

from transformers import Gemma3ForCausalLM      # the same files
hf_model = Gemma3ForCausalLM.from_pretrained("data/tiny-gemma")
```

Files: `config.json` (a transformers `Gemma3ForCausalLM` config), `model.safetensors` (fp32,
transformers' tensor names, tied embedding stored once), `tokenizer.model` (SentencePiece),
`loss_curve.png`, `train_log.json` (every step's loss, the periodic held-out figures, all settings).

## Reproduce

| figure | command |
|---|---|
{repro_rows}
| every evaluation figure below | `python -m gemma_lab.tiny.evaluate --model tiny` (add `--json` for raw numbers) |
| the tests that hold the model to them | `pytest tests/test_tiny_model.py` |

Training is deterministic in its data order and initialisation (the seeds above); bit-identical
weights also need the same torch build and thread count ({s['threads']} threads). The shipped run
was sized by wall-clock budget (`--minutes`); the recorded step counts above replay it.

## Corpus

`gemma_lab.tiny.corpus` generates documents deterministically from `(seed, split, index)`; nothing is
downloaded. Each kind of document pays for one lesson:

| kind | documents (of the first {stats['documents']}) | share |
|---|---|---|
{kinds}

Statistics of those {stats['documents']} documents (the tokenizer's training text):
{stats['characters']:,} characters, {stats['tokens']:,} tokens (mean {stats['mean_tokens']}, max
{stats['max_tokens']} per document), {stats['unique_words']} distinct words, {stats['unique_names']}
distinct first names mentioned {stats['name_mentions']:,} times.

The training loop keeps every {' and '.join(recipe.KEEP_ALWAYS)} document but only {s.get('keep_others', recipe.KEEP_OTHERS):.0%} of the others (so the
training mix leans further toward the circuits the notebooks study), packs `<bos> document <eos>` into
rows of {s['seq_len']} tokens and, in one document in {recipe.RANDOM_SPAN_EVERY}, writes instead a span of {recipe.RANDOM_SPAN_LENGTHS[0]}-{recipe.RANDOM_SPAN_LENGTHS[1]} uniformly
random token ids twice: text alone never shows most of the vocabulary in random order, and that is
exactly where induction is measured. Besides, some rows (the share per stage is under Training) are built whole
from random-token segments, each after a `<bos>` (`repeat_row`): a random span of
{recipe.RANDOM_SPAN_LENGTHS[0]}-{recipe.RANDOM_SPAN_LENGTHS[1]} ids written twice, or (in {s.get('alternations', 0.0):.0%} of the segments) two random ids
alternating {recipe.ALTERNATION_REPEATS[0]}-{recipe.ALTERNATION_REPEATS[1]} times, `x y x y ...`. In an alternation the next token is the one
before the current one, so copying it is a previous-token head's whole job; that head forms first,
and the induction head composes with it. The **held-out split** (`split="heldout"`) uses name pairs that
never share a training document (about one pair in five, chosen by a hash) and, for half of its IOI
prompts, sentence frames never used in training; held-out loss and IOI accuracy are measured on it.

The tokenizer is a SentencePiece BPE model of {cfg['vocab_size']} pieces laid out like Gemma's
(`<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, `<mask>`=4, `<start_of_turn>`, `<end_of_turn>`, `\\n`,
then 256 byte pieces; byte fallback, digits split, no dummy prefix), trained on those
{stats['documents']} documents.

## Architecture

| field | value | why |
|---|---|---|
| family | Gemma 3 (`gemma3_text`) | q/k RMSNorm, sandwich norms and two RoPE bases: the newest Gemma's numerics, and no softcap, so training uses the fused attention kernel |
| layers | {cfg['n_layers']}, `layer_types` = {', '.join(cfg['layer_types'])} | Gemma 3's 5:1 local:global pattern would leave a 4-layer model with no global layer; alternating keeps both kinds and lets an induction circuit (previous-token head, then induction head) span a local and a global layer |
| d_model | {cfg['d_model']} | the widest that trains enough tokens in the time budget on 2 CPU cores |
| heads | {cfg['n_heads']} query heads, {cfg['n_kv_heads']} key/value heads, d_head {cfg['d_head']} | grouped-query attention (group of {cfg['n_heads'] // cfg['n_kv_heads']}), as in Gemma 3, so the notebooks exercise the grouped path |
| d_mlp | {cfg['d_mlp']} (GeGLU, tanh GELU) | {cfg['d_mlp'] / cfg['d_model']:g} x d_model: GeGLU has three matrices per layer, so 3 x d_model already holds more weights than a plain 4 x MLP; CPU time was the binding constraint |
| context | {cfg['max_seq_len']} tokens, sliding window {cfg['sliding_window']} | documents are under ~110 tokens; the window still cuts off on long inputs so local and global layers differ |
| RoPE | base {cfg['rope_theta']:,.0f} global, {cfg['rope_theta_local']:,.0f} local | Gemma 3's two bases |
| query_pre_attn_scalar | {cfg['query_pre_attn_scalar']} | = d_head |
| initialisation | matrices normal(0, 0.02); pre-norm and q/k-norm gains 1; post-attention and post-MLP norm gains {s.get('post_norm_gain', 1.0)} | a post-norm rescales its block's output to RMS 1 whatever the weights, while the embedding enters at RMS 0.02 x sqrt(d_model) = {0.02 * cfg['d_model'] ** 0.5:.2f}; at gain 1 the blocks' random output buries which token sits where, which the induction circuit needs; LayerScale-style small gains fix that, and training moves them (docs/teaching.md, "How the tiny model got its induction heads", has the side-by-side runs) |
| vocabulary | {cfg['vocab_size']} | every name, place, object and most capitals are one token |
| parameters | {log['n_params']:,} (tied embedding counted once) | {log['n_params'] * 4 / 2**20:.1f} MiB in fp32 |

## Training

AdamW (betas 0.9/0.95, weight decay {s['weight_decay']} on matrices, none on norm gains), gradient
clipping at {s['grad_clip']}, batch {s['batch_size']} x {s['seq_len']} tokens, fp32 on a shared 2-core CPU with
`torch.set_num_threads({s['threads']})` (on a CPU shared with other jobs, one thread ran ~4x faster than two,
whose threads kept waiting for each other). In all {total_tokens:,} tokens in {minutes:.1f} min:

{stage_text}

Held-out loss every {s['eval_every']} steps on {s['eval_batches']} x {s['batch_size']} held-out rows, and
held-out IOI accuracy on {s['ioi_prompts']} prompts (green in the curve). Each stage draws its held-out
rows with its own seed, so the held-out loss can step at a stage boundary: compare it within a stage.

Final held-out loss: **{ev['heldout_loss'][-1]:.3f}** nats/token (train loss, mean of the last 20 steps:
{sum(log['history']['train_loss'][-20:]) / len(log['history']['train_loss'][-20:]):.3f}).

![loss curve](loss_curve.png)

## Evaluation

All figures from `python -m gemma_lab.tiny.evaluate --model tiny`.

**Heads on repeated random tokens** (`<bos>` + 50 random ids + the same 50 again, 8 sequences).
Induction score: mean attention from a second-copy token to the token after its first occurrence;
previous-token score: mean attention from a second-copy token to the token just before
(`gemma_lab.interp.head_scores`). Best induction head: layer
{best['induction']['layer']} head {best['induction']['head']} ({best['induction']['score']:.3f}); best previous-token
head: layer {best['previous_token']['layer']} head {best['previous_token']['head']} ({best['previous_token']['score']:.3f}).

{heads_header}
{heads_rule}
{chr(10).join(head_rows)}

**In-context copying**: loss on the first copy {copying['first_copy']:.3f}, on the second copy
{copying['second_copy']:.3f} nats/token (ratio {copying['ratio']:.3f}).

**Indirect-object identification** ({ioi['n']} held-out prompts such as "When Mary and John went to the
store, John gave a drink to"; name pairs never seen together, half in unseen frames): the indirect
object's logit beats the subject's in **{_pct(ioi['accuracy'])}** (seen frames {_pct(ioi['accuracy_seen_templates'])},
unseen frames {_pct(ioi['accuracy_new_templates'])}); the IO name is the top-1 token in {_pct(ioi['top1_is_io'])};
mean logit difference {ioi['mean_logit_diff']:.2f}. On training-distribution prompts: {_pct(ioi_train['accuracy'])}.

**Factual recall** (greedy top-1 on the first answer token, {facts['n']} prompts such as "The capital
of France is" -> " Paris"): **{_pct(facts['accuracy'])}** ({topics}).

**Greedy samples**

| prompt | continuation |
|---|---|
{samples}

## Targets

The issue that asked for this model set these bars; `tests/test_tiny_model.py` asserts them on the
shipped weights.

| target | bar | measured | met |
|---|---|---|---|
{targets}

## Limits

Trained for minutes on a narrow synthetic corpus: it has no general English, no world knowledge
beyond the corpus's fact tables, and its chat turns are templates. Use it to learn how a Gemma
works, not to generate text.
"""
    (out / "README.md").write_text(text)
