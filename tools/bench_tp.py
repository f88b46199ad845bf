"""Tensor parallelism on this machine: one process against 2 gloo ranks, side by side in one run.

    python -m tools.bench_tp [--layers 4] [--vocab 16384] [--repeats 3] [--quick]

Writes a random checkpoint with Gemma 1 2B's widths (d_model 2048, 8 heads and one key/value head,
so the multi-query case: k/v replicated, d_mlp 16384) with ``--layers`` of its 18 layers and a
``--vocab`` of its 256000 (the replicated embedding would otherwise dominate the memory of a
shortened model), then starts itself under ``torchrun --nproc-per-node 2``. In that run rank 0
also loads the one-process model, and the callables take turns: the one-process forward on
rank 0 (rank 1 waits) with one thread and with two (the cores the two ranks use together), then
the 2-rank forward. A 128-token prompt, fp32, ``torch.inference_mode``. Reported: median times
and their ratios; weights per rank (local slices counted) against the one-process model's, for
the shortened model and, counted the same way on the meta device, for whole models (``WHOLE``).
``--quick``: tiny widths, one round (for the test that keeps this tool working; the ratios mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


WHOLE = ("gemma-2b", "gemma3-27b", "gemma4-e2b", "gemma4-31b", "gemma4-26b-a4b")


def _local_bytes(model) -> int:
    return sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in model.parameters())


def _worker(folder: str, repeats: int, out: str) -> None:
    import torch.distributed as dist

    import gemma_lab
    from gemma_lab.config import GemmaConfig
    from gemma_lab.model import Gemma
    from gemma_lab import tensor_parallel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    split = gemma_lab.load_pretrained(folder, tensor_parallel=True, progress=False)
    one = gemma_lab.load_pretrained(folder, progress=False) if rank == 0 else None
    ids = torch.randint(0, split.cfg.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))

    def single(threads: int):
        def run():
            if rank == 0:
                torch.set_num_threads(threads)
                one(ids)
                torch.set_num_threads(1)
            dist.barrier()
        return run

    fns = {"one process, 1 thread": single(1), "one process, 2 threads": single(2),
           "2 ranks, 1 thread each": lambda: (split(ids), dist.barrier())}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up
            fn()
        for round_ in range(repeats):
            for name in (list(fns) if round_ % 2 == 0 else reversed(list(fns))):
                dist.barrier()
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
        logits = split(ids)  # every rank takes part
        agree = float((logits - one(ids)).abs().max() / one(ids).abs().max()) if rank == 0 else None

    # Whole models, split the same way on the meta device (nothing is allocated): bf16 weights.
    wholes = {}
    for preset in WHOLE:
        with torch.device("meta"):
            whole = Gemma(GemmaConfig.from_preset(preset)).to(torch.bfloat16)
        one_bytes = _local_bytes(whole)
        tensor_parallel.parallelize(whole, torch.device("cpu"))
        wholes[preset] = (one_bytes, _local_bytes(whole))
    result = {"times": times, "rank": rank, "split_bytes": _local_bytes(split), "agree": agree,
              "one_bytes": _local_bytes(one) if one is not None else None, "wholes": wholes,
              "vm_hwm_kb": int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # folder, results folder (under torchrun)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker[0], args.repeats, args.worker[1])

    from dataclasses import replace

    from tools.bench import gemma_2b_shape, tiny_shape, write_checkpoint

    shape = tiny_shape(args.layers) if args.quick else replace(gemma_2b_shape(args.layers), vocab=args.vocab)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint(Path(tmp, "ckpt"), shape)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "tools.bench_tp", "--repeats", str(repeats), "--worker", str(folder), tmp],
                       check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in (0, 1)]
    times = {name: statistics.median(t) for name, t in ranks[0]["times"].items()}
    tp = times["2 ranks, 1 thread each"]
    print(f"{shape.describe()}, 128 tokens, fp32, gloo; logits agree to {ranks[0]['agree']:.1e} (relative)")
    for name, t in times.items():
        print(f"  {name:<24} {t:7.3f} s   2 ranks / this: {tp / t:.2f}")
    gb = 1e9
    one, split = ranks[0]["one_bytes"], ranks[1]["split_bytes"]
    print(f"  weights: one process {one / gb:.2f} GB, each rank {split / gb:.2f} GB ({split / one:.2f}x); "
          f"rank 1 peak RSS {ranks[1]['vm_hwm_kb'] / 1e6:.2f} GB")
    print("  whole models, bf16 weights (split on the meta device):")
    for preset, (whole_one, whole_split) in ranks[0]["wholes"].items():
        print(f"    {preset:<16} one process {whole_one / gb:5.1f} GB, each of 2 ranks {whole_split / gb:5.1f} GB "
              f"({whole_split / whole_one:.2f}x)")


if __name__ == "__main__":
    main()
