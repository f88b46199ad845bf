"""load_pretrained(tensor_parallel=True): heads and MLP columns split over 2 ranks launched by
torchrun (gloo, CPU) compute what the single-process model computes, on every rank, with hooks
seeing whole activations, and generate the same tokens.

Logits agree to float rounding, not bit for bit: the row-parallel projections (o_proj, down_proj)
sum partial products from each rank, an order of additions one process does not use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_checkpoints import write_checkpoint

WORKER = textwrap.dedent("""
    import faulthandler, json, sys
    import torch, torch.distributed as dist
    import gemma_lab
    from gemma_lab.generation import decode_step, prefill

    folder, out = sys.argv[1], sys.argv[2]
    faulthandler.dump_traceback_later(300, exit=True)  # a rank stuck in a collective says where
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    one = gemma_lab.load_pretrained(folder)
    split = gemma_lab.load_pretrained(folder, tensor_parallel=True)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())
    result = {}
    with torch.no_grad():
        logits = split(ids, attention_mask=mask)
        result["logits"] = rel(logits, one(ids, attention_mask=mask))
        gathered = [torch.empty_like(logits) for _ in range(2)]
        dist.all_gather(gathered, logits)
        result["ranks_agree"] = torch.equal(gathered[0], gathered[1])
        _, cache = split.run_with_cache(ids, names_filter=lambda n: n.startswith("blocks.1."))
        _, want = one.run_with_cache(ids, names_filter=lambda n: n.startswith("blocks.1."))
        result["cache_names"] = sorted(want.keys()) == sorted(cache.keys())
        result["cache_shapes"] = all(cache[k].shape == want[k].shape for k in want.keys())
        result["cache"] = max(rel(cache[k], want[k]) for k in want.keys())
        def ablate(z, hook):
            z[:, :, 1] = 0  # head 1 lives on rank 0: rank 1 must see the edit too
            return z
        for name in ("blocks.1.attn.hook_z", "blocks.2.attn.hook_result", "blocks.0.mlp.hook_post"):
            edited = split.run_with_hooks(ids, fwd_hooks=[(name, ablate)])
            result["edit " + name] = rel(edited, one.run_with_hooks(ids, fwd_hooks=[(name, ablate)]))
        logits, kv = prefill(split, ids[:, :12], max_len=20)
        want_logits, want_kv = prefill(one, ids[:, :12], max_len=20)
        steps = [rel(logits, want_logits)]
        for step in range(12, 16):
            steps.append(rel(decode_step(split, ids[:, step], kv), decode_step(one, ids[:, step], want_kv)))
        result["decode"] = max(steps)
        tokens = gemma_lab.generate(split, [5, 6, 7, 8], max_new_tokens=6, stop=[]).token_ids
        result["generate"] = tokens == gemma_lab.generate(one, [5, 6, 7, 8], max_new_tokens=6, stop=[]).token_ids
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in split.parameters())
        result["param_fraction"] = local / one.n_params()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    """Gemma 3: its q/k norms run on split heads too. (Gemma 1 and 2 pass the same worker.)"""
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun is not installed")
    folder = write_checkpoint(tmp_path / "ckpt", 3, seed=6)
    (tmp_path / "worker.py").write_text(WORKER)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(tmp_path / "worker.py"), str(folder), str(tmp_path)],
                          capture_output=True, text=True, timeout=400, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["ranks_agree"] and result["generate"], result
        assert result["cache_names"] and result["cache_shapes"], result
        for key in ("logits", "cache", "decode", *(k for k in result if k.startswith("edit "))):
            assert result[key] < 1e-5, (key, result)
        assert result["param_fraction"] < 0.75  # the blocks' matrices are split; embedding and norms are not
