"""How good is the bundled tiny Gemma? The figures its model card reports, as pure functions.

Each function takes ``(model, tokenizer)`` (and a seed where it draws data) and returns numbers:

* ``head_scores``: per-head induction and previous-token scores on repeated random tokens
  (Olsson et al., 2022, "In-context Learning and Induction Heads").
* ``copying_loss``: mean loss on the first and on the second copy of a random token span; in-context
  copying shows as a second-copy loss far below the first.
* ``ioi_accuracy``: how often the indirect object's logit beats the subject's on held-out IOI prompts
  (Wang et al., 2022), whose name pairs never met in training and half of whose frames are new.
* ``factual_recall``: greedy top-1 accuracy on "The capital of France is" -> " Paris" style prompts.
* ``sample_generations``: greedy continuations of a few prompts.

``evaluate`` gathers them all; ``python -m gemma_lab.tiny.evaluate [--model tiny]`` prints them.

Head scores and the copying loss are ``gemma_lab.interp``'s (on this module's repeated tokens),
continuations are ``gemma_lab.generation.generate``'s: the card's figures come from the same code
the notebooks use. It never imports plotting or widgets, and the data it evaluates on comes from
``gemma_lab.tiny.corpus``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from gemma_lab import interp
from gemma_lab.generation import generate
from gemma_lab.tiny import corpus

__all__ = [
    "repeated_tokens_batch",
    "head_scores",
    "copying_loss",
    "ioi_accuracy",
    "fact_prompts",
    "factual_recall",
    "greedy_generate",
    "sample_generations",
    "evaluate",
    "main",
]

#: Seeds of the evaluation data, far from the training seeds (the training loop uses seed 0).
EVAL_SEED = 10_000
#: Prompts whose greedy continuations the model card shows.
SAMPLE_PROMPTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "Monday Tuesday Wednesday",
    "Repeat after me: red fox blue sky. red fox",
    "The opposite of hot is",
)


def repeated_tokens_batch(tokenizer, batch: int = 8, span: int = 50, seed: int = EVAL_SEED) -> torch.Tensor:
    """``[batch, 1 + 2 * span]``: ``<bos>`` then a span of random non-special tokens, written twice."""
    low = len(corpus.SPECIAL_PIECES)  # never a control token: the span must carry no special meaning
    rows = [[tokenizer.bos_id] + corpus.repeated_random_tokens(seed, i, low, tokenizer.vocab_size, span)
            for i in range(batch)]
    return torch.tensor(rows)


def head_scores(model, tokens: torch.Tensor, span: int) -> dict[str, torch.Tensor]:
    """Per-head ``[layer, head]`` induction and previous-token scores on ``tokens`` = ``<bos>`` + span
    + span: ``interp.head_scores`` on these tokens (queries in the second copy)."""
    scores = interp.head_scores(model, span, tokens=tokens)
    return {"induction": scores["induction"], "previous_token": scores["previous_token"]}


def copying_loss(model, tokens: torch.Tensor, span: int) -> dict[str, float]:
    """Mean next-token loss on the first copy and on the second (each after its first token):
    ``interp.in_context_loss`` on these tokens."""
    loss = interp.in_context_loss(model, span, tokens=tokens)
    first, second = loss["first_copy"].item(), loss["second_copy"].item()
    return {"first_copy": first, "second_copy": second, "ratio": second / first}


@torch.no_grad()
def _last_logits(model, tokenizer, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """``[len(prompts), vocab]`` logits at the last token of each prompt (left-padded batches)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer.encode(p) for p in prompts[start : start + batch_size]]
        width = max(map(len, encoded))
        tokens = torch.tensor([[tokenizer.pad_id] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        out.append(model(tokens, attention_mask=mask)[:, -1].float())
    return torch.cat(out)


def _first_token(tokenizer, text: str) -> int:
    return tokenizer.encode(text, add_bos=False)[0]


def ioi_accuracy(model, tokenizer, n: int = 200, seed: int = EVAL_SEED, split: str = "heldout") -> dict:
    """Share of IOI prompts where the indirect object's logit beats the subject's, and the mean logit gap."""
    prompts = corpus.ioi_prompts(seed=seed, n=n, split=split)
    logits = _last_logits(model, tokenizer, [p["prompt"] for p in prompts])
    io_ids = torch.tensor([_first_token(tokenizer, " " + p["io_name"]) for p in prompts])
    s_ids = torch.tensor([_first_token(tokenizer, " " + p["s_name"]) for p in prompts])
    rows = torch.arange(len(prompts))
    gap = logits[rows, io_ids] - logits[rows, s_ids]
    top1 = logits.argmax(dim=-1) == io_ids
    seen = torch.tensor([p["template_seen"] for p in prompts])
    return {
        "accuracy": _share(gap > 0),
        "accuracy_seen_templates": _share(gap[seen] > 0),
        "accuracy_new_templates": _share(gap[~seen] > 0),
        "top1_is_io": top1.float().mean().item(),
        "mean_logit_diff": gap.mean().item(),
        "n": len(prompts),
    }


def _share(flags: torch.Tensor) -> float | None:
    """Fraction of True entries; None for an empty selection (e.g. no new frames in the train split)."""
    return flags.float().mean().item() if flags.numel() else None


def fact_prompts() -> list[tuple[str, str]]:
    """(prompt, answer) pairs in the corpus's most common phrasing of each fact."""
    pairs = [(f"The capital of {country} is", " " + capital) for country, capital in corpus.CAPITALS.items()]
    pairs += [(f"The colour of {thing} is", " " + colour) for thing, colour in corpus.COLOURS_OF_THINGS.items()]
    pairs += [(f"The {animal} says", " " + sound) for animal, (sound, _) in corpus.ANIMAL_SOUNDS.items()]
    for word, opposite in corpus.OPPOSITES.items():
        pairs += [(f"The opposite of {word} is", " " + opposite), (f"The opposite of {opposite} is", " " + word)]
    return pairs


def factual_recall(model, tokenizer) -> dict:
    """Greedy top-1 accuracy on the first token of each fact's answer, overall and per topic."""
    pairs = fact_prompts()
    logits = _last_logits(model, tokenizer, [p for p, _ in pairs])
    answers = torch.tensor([_first_token(tokenizer, a) for _, a in pairs])
    correct = (logits.argmax(dim=-1) == answers).tolist()
    topics: dict[str, list[bool]] = {}
    for (prompt, _), ok in zip(pairs, correct):
        topic = ("capital" if "capital" in prompt else "colour" if "colour" in prompt
                 else "opposite" if "opposite" in prompt else "sound")
        topics.setdefault(topic, []).append(ok)
    return {
        "accuracy": sum(correct) / len(correct),
        "n": len(correct),
        "by_topic": {topic: sum(oks) / len(oks) for topic, oks in topics.items()},
    }


def greedy_generate(model, tokenizer, prompt: str, max_new_tokens: int = 20) -> str:
    """The prompt's greedy continuation, up to ``<eos>`` or ``<end_of_turn>`` (``generation.generate``)."""
    return generate(model, prompt, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=0.0).text


def sample_generations(model, tokenizer, prompts=SAMPLE_PROMPTS, max_new_tokens: int = 20) -> list[dict]:
    return [{"prompt": p, "completion": greedy_generate(model, tokenizer, p, max_new_tokens)} for p in prompts]


def evaluate(model, tokenizer, span: int = 50, batch: int = 8, *, ioi_n: int = 200,
             sample_tokens: int = 20) -> dict:
    """Every figure of the model card, as plain Python numbers.

    ``span`` is shortened when ``<bos>`` + two copies would not fit the model's context (toy runs).
    """
    span = min(span, (model.cfg.max_seq_len - 1) // 2)
    tokens = repeated_tokens_batch(tokenizer, batch=batch, span=span)
    scores = head_scores(model, tokens, span)
    best = {}
    for kind, table in scores.items():
        flat = int(table.argmax())
        layer, head = divmod(flat, table.shape[1])
        best[kind] = {"layer": layer, "head": head, "score": table.max().item()}
    return {
        "head_scores": {kind: table.tolist() for kind, table in scores.items()},
        "best_heads": best,
        "copying": copying_loss(model, tokens, span),
        "ioi": ioi_accuracy(model, tokenizer, n=ioi_n),
        "ioi_train_distribution": ioi_accuracy(model, tokenizer, n=ioi_n, split="train"),
        "facts": factual_recall(model, tokenizer),
        "samples": sample_generations(model, tokenizer, max_new_tokens=sample_tokens),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gemma_lab.tiny.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="checkpoint folder, or 'tiny' for the bundled model")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)

    from gemma_lab.loading import load_pretrained
    from gemma_lab.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = load_pretrained(args.model, dtype=torch.float32)
    tokenizer = load_tokenizer(args.model)
    figures = evaluate(model, tokenizer)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(format_report(figures))
    return 0


def format_report(figures: dict) -> str:
    """The figures as a few readable lines."""
    lines = []
    for kind, best in figures["best_heads"].items():
        lines.append(f"best {kind} head: L{best['layer']}H{best['head']}  score {best['score']:.3f}")
    for kind, table in figures["head_scores"].items():
        lines.append(f"{kind} scores [layer][head]:")
        lines += ["  L%d  " % i + "  ".join(f"{s:.3f}" for s in row) for i, row in enumerate(table)]
    c = figures["copying"]
    lines.append(f"copying loss: first copy {c['first_copy']:.3f}, second copy {c['second_copy']:.3f}, "
                 f"ratio {c['ratio']:.3f}")
    for key in ("ioi", "ioi_train_distribution"):
        i = figures[key]
        lines.append(f"{key}: accuracy {i['accuracy']:.3f} (seen frames {_fmt(i['accuracy_seen_templates'])}, "
                     f"new frames {_fmt(i['accuracy_new_templates'])}), IO top-1 {i['top1_is_io']:.3f}, "
                     f"mean logit diff {i['mean_logit_diff']:.2f}, n={i['n']}")
    f = figures["facts"]
    lines.append(f"factual recall: {f['accuracy']:.3f} of {f['n']} " +
                 ", ".join(f"{t} {a:.2f}" for t, a in f["by_topic"].items()))
    for sample in figures["samples"]:
        lines.append(f"{sample['prompt']!r} -> {sample['completion']!r}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
