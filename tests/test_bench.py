"""tools.bench runs end to end on tiny shapes and reports a ratio for every comparison.

No assertion is about speed: timings on a shared CPU are noise at these sizes. The point is that
``python -m tools.bench all`` keeps working as the model, loader and generation change.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tools import bench

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_reports_every_section(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["all", "--quick", "--repeats", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "python -m tools.bench all --quick" in printed  # the command line is printed
    assert "ratio" in printed and "target" in printed
    rows = json.loads(out.read_text())["rows"]
    assert {row["section"] for row in rows} == set(bench.SECTIONS)
    for row in rows:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    whats = " | ".join(row["what"] for row in rows)
    for expected in ("transformers (eager)", "run_with_cache", "peak / checkpoint bytes", "bandwidth bound",
                     "transformers generate", "prompt pass"):
        assert expected in whats
    assert {row["dtype"] for row in rows if row["section"] == "forward"} == {"fp32", "bf16"}
    assert "same tokens" in whats  # greedy decoding agrees with transformers' generate
    decode = " | ".join(row["what"] for row in rows if row["section"] == "decode")
    for expected in ("ours (fast path)", "a hook attached", "transformers static cache", "ours int8",
                     "top-1 agreement", "perplexity int8 / bf16"):
        assert expected in decode
    assert "TOKENS DIFFER" not in decode  # fast, watched and transformers' static cache agree
    assert {row["dtype"] for row in rows if row["section"] == "decode"} >= {"fp32", "bf16", "int8"}
    assert "as int8 + first forward" in whats  # the quantized load's peak memory


def test_memory_is_measured_in_a_fresh_process(tmp_path):
    """The child process the memory section starts, run by hand: it reports a peak and the model's size."""
    shape = bench.tiny_shape()
    folder = bench.write_checkpoint(tmp_path / "checkpoint", shape)
    done = subprocess.run([sys.executable, "-m", "tools.bench", "_memory_child", "ours", str(folder), "bf16",
                           "4", str(shape.vocab)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["peak"] > 0
    # bf16 parameters: half the fp32 file, give or take its JSON header.
    assert 0 <= bench.checkpoint_bytes(folder) - 2 * report["model_bytes"] < 20_000


def test_fallback_greedy_loop_matches_generate(tmp_path):
    """The KV-cache loop used when gemma_lab.generation is missing decodes what generate decodes."""
    pytest.importorskip("gemma_lab.generation")
    shape = bench.tiny_shape()
    model = bench.load_ours(bench.write_checkpoint(tmp_path / "checkpoint", shape), None)
    ids = bench.prompt(shape, 5)
    assert bench._minimal_greedy_loop(model, ids, 6) == bench.ours_generate(model, ids, 6)


def test_interleaved_takes_turns_and_ratios_are_paired():
    calls = []
    timed = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then turns, reversed every other round
    assert all(len(times) == 3 for times in timed.times.values())
    ratio, low, high = bench.Timed({"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 2.0]}).ratio("a", "b")
    assert (ratio, low, high) == (4.0, 2.0, 4.0)


def test_table_marks_targets():
    rows = [bench.Row("forward", "x", "fp32", 0.9, "ours/transformers time", 1.0, "1 s", "1.1 s", "0.85-0.95"),
            bench.Row("forward", "y", "fp32", 1.1, "ours/transformers time", 1.0, "1 s", "0.9 s", "0.90-1.20"),
            bench.Row("memory", "z", "fp32", 1.5, "peak/checkpoint bytes", 1.3, "a", "b")]
    lines = bench.format_table(rows).splitlines()
    assert lines[0].split()[:6] == ["section", "measurement", "dtype", "ratio", "target", "met"]
    assert " yes " in lines[2] and " noise " in lines[3] and " NO " in lines[4]


def test_decode_options_add_and_drop_rows(tmp_path, monkeypatch):
    """--compile adds the compiled rows (compilers stubbed out here: the bench's own plumbing is under
    test), --no-watched drops the hooked one, --dtypes picks the rounds, --new-tokens sets the length."""
    shape = bench.replace(bench.tiny_shape(), new_tokens=3)
    folder = bench.write_checkpoint(tmp_path / "checkpoint", shape)
    static = bench.theirs_generate_static
    monkeypatch.setattr(bench, "ours_compiled_generate", bench.ours_generate)
    monkeypatch.setattr(bench, "theirs_generate_static", lambda m, ids, n, compile=False: static(m, ids, n))
    rows = bench.bench_decode(folder, shape, 1, lambda: 1e10, dtypes=("fp32",), watched=False, compile=True)
    whats = " | ".join(row["what"] if isinstance(row, dict) else row.what for row in rows)
    assert "a hook attached" not in whats and "int8" not in whats
    for expected in ("ours, compile=True: tokens/s", "transformers static cache + compile: tokens/s",
                     "ours compile=True / ours eager", "first call of ours, compile=True", "greedy 3 tokens",
                     "(same tokens)"):
        assert expected in whats
    assert {row.dtype for row in rows} == {"fp32"}
