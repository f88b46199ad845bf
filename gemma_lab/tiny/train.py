"""Train the bundled tiny Gemma from scratch, reproducibly, and write it as a transformers checkpoint.

    python -m gemma_lab.tiny.train [--out data/tiny-gemma] [--steps N | --minutes M] [--seed 0]

Steps, in order:

1. Train a Gemma-style SentencePiece tokenizer on the first documents of the synthetic corpus
   (``gemma_lab.tiny.corpus``) and write ``tokenizer.model``.
2. Train ``gemma_lab.Gemma`` (the package's own model code) with AdamW, linear warm-up then cosine
   decay, on 256-token rows packed from corpus documents (``<bos>`` text ``<eos>``) plus rows of
   random-token segments (``repeat_row``: spans written twice, and alternating pairs), which teach
   previous-token and induction heads on any token. The post-attention and post-MLP norms start at
   a small gain (``damp_block_outputs``), without which those heads never formed in our budget.
   The data order is a function of the seed alone; a held-out split is scored periodically.
3. Write the checkpoint in transformers' layout (``config.json`` of a ``Gemma3ForCausalLM``,
   ``model.safetensors`` under transformers' tensor names), ``loss_curve.png``, ``train_log.json``,
   then evaluate it (``gemma_lab.tiny.evaluate``) and write the model card ``README.md``.

``--minutes M`` sizes the run: it times the warm-up steps (whose learning rates do not depend on the
total) and then fixes the step count that fits; the count is recorded, so ``--steps N`` replays the run. This module is a script: it may
import matplotlib (only to draw the loss curve, with the Agg backend) but nothing imports it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gemma_lab.config import GemmaConfig
from gemma_lab.hf_format import our_name_table
from gemma_lab.model import Gemma, init_weights
from gemma_lab.tiny import corpus
from gemma_lab.tiny.card import plot_loss_curve, write_model_card
from gemma_lab.tiny.recipe import (
    ALTERNATION_REPEATS,
    ALTERNATIONS,
    DEFAULT_OUT,
    KEEP_ALWAYS,
    KEEP_OTHERS,
    POST_NORM_GAIN,
    RANDOM_SPAN_EVERY,
    RANDOM_SPAN_LENGTHS,
    REPEAT_ROWS,
)
from gemma_lab.tiny.tokenizer_training import train_tokenizer

# ---- the architecture ------------------------------------------------------------------------------

def tiny_config(vocab_size: int, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2,
                d_mlp: int | None = None, seq_len: int = 256, sliding_window: int = 128,
                query_pre_attn_scalar: float | None = None) -> GemmaConfig:
    """A small Gemma 3: q/k norms, sandwich norms, two RoPE bases, local and global layers alternating.

    Gemma 3's own 5:1 local:global pattern would leave a 4-layer model without a global layer, so
    the layers alternate local, global, ... explicitly (``layer_types``).
    """
    d_head = d_model // n_heads
    return GemmaConfig(
        family=3, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, d_head=d_head, d_mlp=d_mlp or 4 * d_model, max_seq_len=seq_len,
        sandwich_norms=True, qk_norm=True, query_pre_attn_scalar=float(query_pre_attn_scalar or d_head),
        sliding_window=sliding_window, layer_types=tuple(("local", "global")[i % 2] for i in range(n_layers)),
        rope_theta=1_000_000.0, rope_theta_local=10_000.0, rope_scale=1.0, name="tiny-gemma",
    )


def damp_block_outputs(model: Gemma, gain: float) -> Gemma:
    """Start every post-attention and post-MLP norm (Gemma 2/3's sandwich norms) at gain ``gain``.

    Why: a post-norm rescales its block's output to RMS 1 whatever the weights, while the token
    embedding enters the stream at RMS ``std * sqrt(d_model)`` (0.23 here). At gain 1, eight blocks
    of random output bury which token sits where, and the circuits that need it (previous-token
    and induction heads) sat on a loss plateau in every run we tried. A small starting gain, as
    LayerScale does (Touvron et al., 2021, "Going deeper with Image Transformers"), keeps the
    stream the token's until the blocks have something to say; the gains are trained like any other.
    """
    with torch.no_grad():
        for block in model.blocks:
            for norm in (block.ln1_post, block.ln2_post):
                if norm is not None:
                    norm.weight.fill_(gain - 1.0)  # Gemma stores norm gains as offsets from 1
    return model


def hf_config_dict(cfg: GemmaConfig, tokenizer) -> dict:
    """``config.json`` as transformers writes it for a ``Gemma3ForCausalLM``, with this tokenizer's ids."""
    return cfg.to_hf(pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, bos_id=tokenizer.bos_id)


# ---- data ------------------------------------------------------------------------------------------------

def token_stream(tokenizer, seed: int, split: str, keep_others: float = KEEP_OTHERS,
                 random_span_every: int = RANDOM_SPAN_EVERY):
    """Endless token ids: ``<bos> document <eos>`` after each other, some documents random spans x2.

    Documents of the kinds in ``KEEP_ALWAYS`` are all kept; the others with probability
    ``KEEP_OTHERS``, which shifts the training mix toward the lessons the tests measure.
    """
    choose = random.Random(f"gemma_lab.train_tiny/{split}/{seed}")
    low = len(corpus.SPECIAL_PIECES)
    documents = corpus.iter_tagged_documents(seed, split)
    for index in itertools.count():
        if choose.randrange(random_span_every) == 0:
            span = choose.randint(*RANDOM_SPAN_LENGTHS)
            body = corpus.repeated_random_tokens(seed * 1_000_003 + (split == "heldout"), index, low,
                                                 tokenizer.vocab_size, span)
            yield [tokenizer.bos_id, *body, tokenizer.eos_id]
            continue
        kind, text = next(documents)
        if kind in KEEP_ALWAYS or choose.random() < keep_others:
            yield tokenizer.encode(text) + [tokenizer.eos_id]


def repeat_row(rng: random.Random, tokenizer, length: int, alternations: float = ALTERNATIONS,
               span_lengths: tuple[int, int] = RANDOM_SPAN_LENGTHS) -> list[int]:
    """One whole row of random-token segments, each after a ``<bos>``: ``<bos> a b c a b c <bos> x y x y ...``.

    Most segments are a random span written twice (induction's job: find the earlier occurrence of
    the current token and copy what came after it). A share ``alternations`` are two random tokens
    alternating, where the next token is the one *before* the current one: copying it is exactly a
    previous-token head's job, so that head forms early, and the induction head then composes with
    it (it needs to know, at each key, which token came before). Packed documents can be cut at a
    row boundary, losing a span's first copy; a row built whole never is.

    Span lengths are drawn from ``span_lengths`` (inclusive) and cut to what fits. When most spans
    are cut to the same length (a short row), a head that attends a fixed distance back predicts
    the second copy without any induction: keep the upper end well below ``length / 2`` then.
    """
    low, high = len(corpus.SPECIAL_PIECES), tokenizer.vocab_size
    row: list[int] = []
    while len(row) < length:
        if rng.random() < alternations:
            pair = [rng.randrange(low, high), rng.randrange(low, high)]
            row += [tokenizer.bos_id, *pair * rng.randint(*ALTERNATION_REPEATS)]
            continue
        room = (length - len(row) - 1) // 2
        span = [rng.randrange(low, high) for _ in range(max(1, min(rng.randint(*span_lengths), room)))]
        row += [tokenizer.bos_id, *span, *span]
    return row[:length]


def batches(tokenizer, seed: int, split: str, batch_size: int, seq_len: int, keep_others: float = KEEP_OTHERS,
            random_span_every: int = RANDOM_SPAN_EVERY, repeat_rows: float = 0.0,
            alternations: float = ALTERNATIONS, span_lengths: tuple[int, int] = RANDOM_SPAN_LENGTHS):
    """Endless ``[batch, seq_len + 1]`` rows (inputs and shifted targets): cut from the packed stream,
    or, with probability ``repeat_rows``, built whole from random-token segments (``repeat_row``, with
    ``alternations`` and ``span_lengths``)."""
    buffer: list[int] = []
    row = seq_len + 1
    stream = token_stream(tokenizer, seed, split, keep_others, random_span_every)
    choose = random.Random(f"gemma_lab.train_tiny/rows/{split}/{seed}")
    while True:
        rows = []
        for _ in range(batch_size):
            if repeat_rows and choose.random() < repeat_rows:
                rows.append(repeat_row(choose, tokenizer, row, alternations, span_lengths))
                continue
            while len(buffer) < row:
                buffer.extend(next(stream))
            rows.append(buffer[:row])
            buffer = buffer[row:]
        yield torch.tensor(rows)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor * peak`` at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def lm_loss(model: Gemma, rows: torch.Tensor) -> torch.Tensor:
    logits = model(rows[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten())


# ---- training ----------------------------------------------------------------------------------------------

def make_optimizer(model: Gemma, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; matrices decay, norm gains (1-D offsets from 1) do not."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    gains = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": gains, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


@torch.no_grad()
def heldout_loss(model: Gemma, rows: list[torch.Tensor]) -> float:
    model.eval()
    loss = sum(lm_loss(model, r).item() for r in rows) / len(rows)
    model.train()
    return loss


def train(args, tokenizer, out: Path) -> tuple[Gemma, dict]:
    from tqdm.auto import tqdm

    from gemma_lab.tiny.evaluate import ioi_accuracy

    torch.manual_seed(args.seed)
    cfg = tiny_config(tokenizer.vocab_size, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                      n_kv_heads=args.n_kv_heads, d_mlp=args.d_mlp, seq_len=args.seq_len,
                      sliding_window=args.sliding_window, query_pre_attn_scalar=args.query_pre_attn_scalar)
    model = damp_block_outputs(init_weights(Gemma(cfg), seed=args.seed, std=0.02), args.post_norm_gain)
    if args.init_from is not None:  # a second stage: continue from an earlier run's weights
        from gemma_lab.loading import load_pretrained

        model = load_pretrained(args.init_from, dtype=torch.float32).requires_grad_(True)  # loaded frozen
        cfg = model.cfg
        if cfg.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"{args.init_from} has vocab_size {cfg.vocab_size}, the tokenizer {tokenizer.vocab_size}")
    model.train()
    train_rows = batches(tokenizer, args.seed, "train", args.batch_size, args.seq_len, args.keep_others,
                         args.random_span_every, args.repeat_rows, args.alternations)
    eval_rows = list(itertools.islice(batches(tokenizer, args.seed, "heldout", args.batch_size, args.seq_len),
                                      args.eval_batches))

    # With --minutes, the step count is fixed after the warm-up: the warm-up's learning rates do not
    # depend on the total, so those steps are timed for real and `--steps N` replays the same run.
    steps = args.steps
    warmup = args.warmup if steps is None or steps >= 2 * args.warmup else max(1, steps // 10)
    deadline = time.perf_counter() + args.minutes * 60 * args.hard_stop if args.minutes else None

    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    history = {"step": [], "tokens": [], "train_loss": [], "lr": []}
    evals = {"step": [], "tokens": [], "heldout_loss": [], "ioi_accuracy": []}
    tokens_per_step = args.batch_size * args.seq_len
    start = time.perf_counter()
    stopped_early = False
    probe_s = None
    bar = tqdm(total=steps or warmup, desc="train tiny-gemma", unit="step")
    step = 0
    while steps is None or step < steps:
        if steps is None and step == warmup:
            probe_s = (time.perf_counter() - start) / warmup
            # 85 % of the budget for steps: evaluation and writing the files take the rest.
            steps = max(warmup + 1, int(args.minutes * 60 * 0.85 / probe_s))
            bar.total = steps
            bar.write(f"warm-up: {probe_s:.2f} s/step -> {steps} steps for {args.minutes} min "
                      f"(reproduce with --steps {steps})")
        lr = lr_at(step, steps or warmup, args.lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, next(train_rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        history["step"].append(step + 1)
        history["tokens"].append((step + 1) * tokens_per_step)
        history["train_loss"].append(loss.item())
        history["lr"].append(lr)
        last = steps is not None and step + 1 == steps
        if (step + 1) % args.eval_every == 0 or last:
            held = heldout_loss(model, eval_rows)
            model.eval()
            ioi = ioi_accuracy(model, tokenizer, n=args.ioi_prompts)["accuracy"]
            model.train()
            for key, value in (("step", step + 1), ("tokens", (step + 1) * tokens_per_step),
                               ("heldout_loss", held), ("ioi_accuracy", ioi)):
                evals[key].append(value)
            bar.write(f"step {step + 1}: train {loss.item():.3f}  heldout {held:.3f}  IOI {ioi:.2f}  "
                      f"{time.perf_counter() - start:.0f}s")
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        bar.update(1)
        step += 1
        if deadline is not None and time.perf_counter() > deadline and not last:
            bar.write(f"wall-clock limit reached after {step} of {steps} steps; stopping")
            stopped_early = True
            if not evals["step"] or evals["step"][-1] != step:
                held = heldout_loss(model, eval_rows)
                model.eval()
                ioi = ioi_accuracy(model, tokenizer, n=args.ioi_prompts)["accuracy"]
                model.train()
                for key, value in (("step", step), ("tokens", step * tokens_per_step),
                                   ("heldout_loss", held), ("ioi_accuracy", ioi)):
                    evals[key].append(value)
            break
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    log = {
        "config": cfg.to_dict(),
        "n_params": model.n_params(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "steps_planned": steps,
        "steps_done": history["step"][-1],
        "stopped_early": stopped_early,
        "warmup_steps": warmup,
        "probe_seconds_per_step": probe_s,
        "tokens_per_step": tokens_per_step,
        "train_tokens": history["step"][-1] * tokens_per_step,
        "train_seconds": seconds,
        "tokens_per_second": history["step"][-1] * tokens_per_step / seconds,
        "history": history,
        "evals": evals,
    }
    return model, log


# ---- writing the checkpoint ----------------------------------------------------------------------------

def save_checkpoint(model: Gemma, tokenizer, out: Path) -> None:
    """``config.json`` + ``model.safetensors`` under transformers' names (tied embedding stored once)."""
    from safetensors.torch import save_file

    ours = model.state_dict()
    tensors = {theirs: ours[mine].detach().contiguous().clone()
               for mine, theirs in our_name_table(model.cfg).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_dict(model.cfg, tokenizer), indent=2) + "\n")


# ---- entry point --------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m gemma_lab.tiny.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/tiny-gemma)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: sized by --minutes)")
    p.add_argument("--minutes", type=float, default=None, help="training time budget (default 15 without --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-kv-heads", type=int, default=2)
    p.add_argument("--d-mlp", type=int, default=384, help="width of one GeGLU branch")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--query-pre-attn-scalar", type=float, default=None,
                   help="scores are scaled by this**-0.5 (default d_head); smaller = sharper attention")
    p.add_argument("--sliding-window", type=int, default=128)
    p.add_argument("--post-norm-gain", type=float, default=POST_NORM_GAIN,
                   help="starting gain of the post-attention/post-MLP norms (see damp_block_outputs)")
    p.add_argument("--vocab-size", type=int, default=corpus.DEFAULT_VOCAB_SIZE)
    p.add_argument("--tokenizer-docs", type=int, default=20_000, help="documents the tokenizer is trained on")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--random-span-every", type=int, default=RANDOM_SPAN_EVERY,
                   help="one document in this many is a random token span written twice")
    p.add_argument("--keep-others", type=float, default=KEEP_OTHERS,
                   help="share of story/fact/sequence/chat documents kept (IOI and repeats are always kept)")
    p.add_argument("--repeat-rows", type=float, default=REPEAT_ROWS,
                   help="share of rows built whole from random-token segments (repeat_row; never cut by packing)")
    p.add_argument("--alternations", type=float, default=ALTERNATIONS,
                   help="share of repeat-row segments that alternate two random tokens (x y x y ...)")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--ioi-prompts", type=int, default=100, help="held-out IOI prompts checked at each eval")
    p.add_argument("--final-ioi-prompts", type=int, default=200, help="held-out IOI prompts in the final evaluation")
    p.add_argument("--sample-tokens", type=int, default=20, help="tokens per greedy sample in the model card")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this checkpoint's weights instead of a random init (a second training stage)")
    p.add_argument("--card-only", action="store_true",
                   help="re-evaluate the model already in --out and rewrite README.md and loss_curve.png only")
    p.add_argument("--hard-stop", type=float, default=1.4,
                   help="with --minutes: stop at this multiple of the budget even if steps remain")
    args = p.parse_args(argv)
    if args.steps is None and args.minutes is None:
        args.minutes = 15.0
    return args


def main(argv=None) -> int:
    from gemma_lab.tiny.evaluate import evaluate
    from gemma_lab.tokenizer import load_tokenizer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.card_only:
        return rewrite_card(out)
    out.mkdir(parents=True, exist_ok=True)

    texts = corpus.generate_corpus(args.seed, args.tokenizer_docs, with_kinds=True)
    if args.init_from is None:
        train_tokenizer([text for _, text in texts], out, args.vocab_size)
    elif Path(args.init_from).resolve() != out.resolve():  # a later stage keeps the first stage's tokenizer
        shutil.copyfile(Path(args.init_from) / "tokenizer.model", out / "tokenizer.model")
    tokenizer = load_tokenizer(out / "tokenizer.model")
    stats = corpus.corpus_statistics(texts, tokenizer=_NoBos(tokenizer))

    previous = None
    if args.init_from is not None and (Path(args.init_from) / "train_log.json").is_file():
        previous = json.loads((Path(args.init_from) / "train_log.json").read_text())
        previous.pop("evaluation", None)
        stats = previous.pop("corpus_statistics", stats)  # the card describes the tokenizer's text
    model, log = train(args, tokenizer, out)
    if previous is not None:
        log["previous_stages"] = previous.pop("previous_stages", []) + [previous]
    save_checkpoint(model, tokenizer, out)
    plot_loss_curve(log, out / "loss_curve.png")
    log["corpus_statistics"] = stats
    figures = evaluate(model, tokenizer, ioi_n=args.final_ioi_prompts, sample_tokens=args.sample_tokens)
    log["evaluation"] = figures
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    write_model_card(out, log, figures, stats)
    print(f"wrote {out}: held-out loss {log['evals']['heldout_loss'][-1]:.3f}, "
          f"IOI {figures['ioi']['accuracy']:.3f}, induction {figures['best_heads']['induction']['score']:.3f}, "
          f"previous-token {figures['best_heads']['previous_token']['score']:.3f}")
    return 0


def rewrite_card(out: Path) -> int:
    """Evaluate the checkpoint in ``out`` again and rewrite its card and curve from ``train_log.json``."""
    from gemma_lab.loading import load_pretrained
    from gemma_lab.tiny.evaluate import evaluate
    from gemma_lab.tokenizer import load_tokenizer

    log = json.loads((out / "train_log.json").read_text())
    torch.manual_seed(0)
    figures = evaluate(load_pretrained(out, dtype=torch.float32), load_tokenizer(out / "tokenizer.model"))
    log["evaluation"] = figures
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    plot_loss_curve(log, out / "loss_curve.png")
    write_model_card(out, log, figures, log["corpus_statistics"])
    print(f"rewrote {out / 'README.md'}")
    return 0


class _NoBos:
    """The tokenizer as ``corpus_statistics`` wants it: ``encode(text)`` without ``<bos>``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_bos=False)


if __name__ == "__main__":
    raise SystemExit(main())
