"""The bundled tiny SAEs: a residual-stream SAE and an MLP transcoder on layer 1 of the tiny Gemma.

    python -m gemma_lab.tiny.sae --out data/tiny-sae --docs 3000 --eval-docs 600 --d-sae 512 --batch-size 512 --steps 400 --warmup 50 --dead-after 50000

Collects the activations of the first ``--docs`` training documents of the tiny corpus and of
``--eval-docs`` held-out ones (``<bos>`` left out), trains both with ``gemma_lab.sae.training``
(TopK + AuxK), measures L0, FVU and dead features on the held-out tokens, and saves each in
SAELens' format with the run recorded in its ``cfg.json`` (``"gemma_lab"``: recipe, settings,
figures, seconds, command). The card ``data/tiny-sae/README.md`` is written by hand from those
figures and the features' top contexts; ``tests/test_tiny_sae.py`` holds it to them.

Part of the tiny model's pipeline: imports the library, nothing in the library imports it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import asdict
from pathlib import Path

import torch

import gemma_lab
from gemma_lab.sae import SAEConfig
from gemma_lab.sae.training import TrainConfig, collect_activations, evaluate, save_sae, train_sae
from gemma_lab.tiny import corpus


def tiny_token_rows(tokenizer, n_docs: int, seed: int, split: str) -> tuple[list[list[int]], list[str]]:
    """``<bos> document`` token rows of the first ``n_docs`` documents of the tiny corpus, and their kinds."""
    rows, kinds = [], []
    for kind, text in itertools.islice(corpus.iter_tagged_documents(seed, split), n_docs):
        rows.append(tokenizer.encode(text, add_bos=True))
        kinds.append(kind)
    return rows, kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the bundled tiny SAE and transcoder on the tiny Gemma.")
    parser.add_argument("--out", type=Path, default=Path("data/tiny-sae"))
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--docs", type=int, default=3000, help="training documents of the tiny corpus")
    parser.add_argument("--eval-docs", type=int, default=600, help="held-out documents for the figures")
    for field, default in asdict(TrainConfig()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    train = TrainConfig(**{field: getattr(args, field) for field in asdict(TrainConfig())})
    torch.manual_seed(train.seed)
    command = "python -m gemma_lab.tiny.sae " + " ".join(argv if argv is not None else sys.argv[1:])

    model = gemma_lab.load_pretrained("tiny")
    tokenizer = gemma_lab.load_tokenizer("tiny")
    resid, mlp_in, mlp_out = (f"blocks.{args.layer}.hook_resid_post", f"blocks.{args.layer}.ln2.hook_normalized",
                              f"blocks.{args.layer}.hook_mlp_out")
    rows, _ = tiny_token_rows(tokenizer, args.docs, seed=train.seed, split="train")
    held_rows, _ = tiny_token_rows(tokenizer, args.eval_docs, seed=train.seed, split="heldout")
    acts = collect_activations(model, rows, [resid, mlp_in, mlp_out])
    held = collect_activations(model, held_rows, [resid, mlp_in, mlp_out])

    common = dict(d_sae=train.d_sae, architecture="topk", k=train.k, model_name="tiny-gemma")
    runs = {
        "resid": (SAEConfig(d_in=model.cfg.d_model, hook_name=resid, apply_b_dec_to_input=True, **common),
                  acts[resid], None, held[resid], None),
        "transcoder": (SAEConfig(d_in=model.cfg.d_model, hook_name=mlp_in, hook_name_out=mlp_out, **common),
                       acts[mlp_in], acts[mlp_out], held[mlp_in], held[mlp_out]),
    }
    for name, (cfg, x, y, held_x, held_y) in runs.items():
        sae, log = train_sae(cfg, x, y, train)
        metrics = evaluate(sae, held_x, held_y)
        extra = {"recipe": "TopK + AuxK (Gao et al., 2024)", "train": asdict(train), "train_tokens": x.shape[0],
                 "heldout": metrics, "seconds": log["seconds"], "command": command.strip(), "log": log}
        save_sae(sae, args.out / name, extra)
        print(f"{name}: L0 {metrics['l0']}, FVU {metrics['fvu']}, dead {metrics['dead']}/{cfg.d_sae}, "
              f"{log['seconds']} s, {x.shape[0]} training tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
