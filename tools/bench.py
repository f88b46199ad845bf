"""Benchmarks: our Gemma against transformers' on the same weights, reported as ratios.

    python -m tools.bench [forward|memory|hooks|generate|decode|all] [--layers N [N ...]] [--repeats R] [--quick]
                          [--new-tokens T] [--dtypes fp32 bf16] [--no-watched] [--compile] [--checkpoint-dtype D]

Role. Answers "what does readability cost?" with numbers a user can reproduce on their own
machine. Every figure that matters is a RATIO against a peer measured side by side in the same
run, because absolute times on a shared or laptop CPU move by 2x from one minute to the next:

  * forward   our forward pass over a 128-token prompt against transformers' default attention
              (what ``from_pretrained`` gives a user) and its eager attention, fp32 and bf16.
  * hooks     the same plain forward (every HookPoint present, none attached) against
              transformers, and ``run_with_cache`` storing every activation against that plain
              forward.
  * memory    the peak resident memory of load + first forward, over the checkpoint's bytes,
              ours and transformers', each in a fresh subprocess so peaks never mix.
  * generate  greedy decoding of 32 tokens, tokens per second, ours against transformers'
              ``generate``; a bare KV-cache loop over our model (what the generation module
              adds); the prompt pass alone; and the memory-bandwidth bound (bytes read per
              token / measured bandwidth), i.e. how close either gets to what the hardware allows.
  * decode    greedy decode speed as a fraction of the memory-bandwidth bound (bytes every token
              reads / the machine's measured read bandwidth) for fp32, bf16 and the quantized
              models (int8, and int4 where the loader offers it), ours (fast path; with a hook
              attached; with ``--compile``, ``compile=True``) beside transformers with its static
              cache (and, with ``--compile``, under torch.compile), interleaved; the quantized
              models' error against bf16; the peak memory of loading Gemma-7B-shaped weights
              (``--quantized-load-layers`` of its 28 layers) as int8. ``--layers 2 18`` runs the
              quick and the real layer count one after the other; ``--new-tokens``, ``--dtypes``
              and ``--no-watched`` keep an 18-layer run bounded.

Method. The weights are random but Gemma-2B-shaped (d_model 2048, 8 heads, 1 kv head, d_head
256, d_mlp 16384, vocab 256000) with only a few layers, written once by transformers'
``save_pretrained`` into a temporary folder, so both libraries load the very same file.
Timings run under ``torch.inference_mode``; every callable gets a warm-up run, then the callables
take turns (a, b, c, a, b, c, ... with the order reversed every other round, so slow drift on a
shared machine hits all of them alike). Reported: median times, the ratio of the medians, and
the range of the per-round ratios (a range that straddles the target means "within noise").

Must not be imported by the package (it imports transformers, which the package never needs).
Results and their interpretation: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

SECTIONS = ("forward", "hooks", "memory", "generate", "decode")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- shapes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The model and workload one benchmark run uses."""

    vocab: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    n_layers: int
    prompt_len: int  # tokens in the forward / hooks / memory prompt (batch 1)
    gen_prompt_len: int  # tokens in the generation prompt: short, so decoding dominates
    new_tokens: int  # tokens generated greedily
    bandwidth_mb: int  # size of the tensor copied to measure memory bandwidth

    def describe(self) -> str:
        return (f"{self.n_layers} layers, d_model {self.d_model}, {self.n_heads} heads / {self.n_kv_heads} kv head, "
                f"d_head {self.d_head}, d_mlp {self.d_mlp}, vocab {self.vocab}")


def gemma_2b_shape(n_layers: int = 2) -> Shape:
    """Gemma 2B's widths with only ``n_layers`` layers (the 2B has 18)."""
    return Shape(vocab=256000, d_model=2048, n_heads=8, n_kv_heads=1, d_head=256, d_mlp=16384, n_layers=n_layers,
                 prompt_len=128, gen_prompt_len=16, new_tokens=32, bandwidth_mb=512)


def tiny_shape(n_layers: int = 2) -> Shape:
    """Tiny shapes for tests: every code path, none of the cost (the ratios mean little)."""
    return Shape(vocab=512, d_model=64, n_heads=4, n_kv_heads=1, d_head=16, d_mlp=128, n_layers=n_layers,
                 prompt_len=16, gen_prompt_len=8, new_tokens=8, bandwidth_mb=16)


def gemma_7b_shape(n_layers: int = 28) -> Shape:
    """Gemma 7B's widths (the 7B has 28 layers): for the quantized loading measurement."""
    return Shape(vocab=256000, d_model=3072, n_heads=16, n_kv_heads=16, d_head=256, d_mlp=24576, n_layers=n_layers,
                 prompt_len=16, gen_prompt_len=16, new_tokens=8, bandwidth_mb=512)


def write_checkpoint(folder: Path, shape: Shape, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Random Gemma (1) weights saved by transformers' own ``save_pretrained`` (fp32 unless told, one file)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    config = transformers.GemmaConfig(
        vocab_size=shape.vocab, hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads, head_dim=shape.d_head, max_position_embeddings=8192,
    )
    # Built on the meta device and filled once: transformers' own initialisation would be a second pass.
    with torch.device("meta"):
        model = transformers.GemmaForCausalLM._from_config(config, dtype=dtype)
    model.to_empty(device="cpu")
    model.tie_weights()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:  # norm gains are stored as offsets from 1: make them non-zero
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(folder, max_shard_size="100GB")
    return folder


def checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


# ---- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    section: str
    what: str
    dtype: str
    ratio: float  # the headline: ours / reference (time, memory) unless `ratio_of` says otherwise
    ratio_of: str  # what the ratio divides, e.g. "ours/transformers time"
    target: float | None  # the ratio we aim to stay at or below (None: informational)
    ours: str  # context: the absolute figures
    reference: str
    spread: str = ""  # range of the per-round ratios

    def verdict(self, low: float | None = None, high: float | None = None) -> str:
        if self.target is None or math.isnan(self.ratio):
            return ""
        if low is not None and high is not None and low <= self.target < high:
            return "noise"  # some rounds meet the target, some do not
        return "yes" if self.ratio <= self.target else "NO"


@dataclass
class Timed:
    """Per-callable times from one interleaved measurement."""

    times: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, ours: str, theirs: str) -> tuple[float, float, float]:
        """(ratio of medians, lowest and highest per-round ratio)."""
        per_round = [a / b for a, b in zip(self.times[ours], self.times[theirs])]
        return self.median(ours) / self.median(theirs), min(per_round), max(per_round)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timed:
    """Time each callable ``repeats`` times, taking turns, after ``warmup`` untimed runs each."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        for round_ in range(repeats):
            for name in (names if round_ % 2 == 0 else reversed(names)):
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
    return Timed(times)


def _seconds(t: float) -> str:
    return f"{t:.3f} s" if t >= 0.01 else f"{t * 1e3:.2f} ms"


# ---- the two implementations -----------------------------------------------------------------


def load_ours(folder: Path, dtype: torch.dtype, quantize: str | None = None):
    import gemma_lab

    return gemma_lab.load_pretrained(folder, dtype=dtype, progress=False, **({"quantize": quantize} if quantize else {}))


def load_theirs(folder: Path, dtype: torch.dtype, attn_implementation: str | None = None):
    """transformers' model as a user gets it: ``attn_implementation=None`` is its default."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).eval()


def prompt(shape: Shape, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, shape.vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def ours_generate(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy decoding with ``gemma_lab.generation.generate``, else a minimal KV-cache loop."""
    try:
        from gemma_lab.generation import generate
    except ImportError:
        return _minimal_greedy_loop(model, ids, new_tokens)
    result = generate(model, ids[0], max_new_tokens=new_tokens, stop=[])  # stop=[]: always all the tokens
    return list(result.token_ids)


def ours_prefill(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The prompt pass of our generation (``generation.prefill``), filling a fresh KV cache."""
    try:
        from gemma_lab.generation import prefill
    except ImportError:
        from gemma_lab import KVCache

        cache = KVCache.for_model(model, batch_size=1, max_len=ids.shape[1] + new_tokens)
        return model(ids, kv_cache=cache, **_last_position_only(model))[:, -1]
    return prefill(model, ids, max_len=ids.shape[1] + new_tokens)[0]


def _last_position_only(model) -> dict:
    """``last_position_only=True`` where the model's forward takes it: a prompt pass needs one row of logits."""
    return {"last_position_only": True} if "last_position_only" in inspect.signature(model.forward).parameters else {}


def ours_generate_name() -> str:
    try:
        import gemma_lab.generation  # noqa: F401
    except ImportError:
        return "KVCache greedy loop"
    return "gemma_lab.generation.generate"


def _minimal_greedy_loop(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    from gemma_lab import KVCache

    cache = KVCache.for_model(model, batch_size=1, max_len=ids.shape[1] + new_tokens)
    with torch.inference_mode():
        logits = model(ids, kv_cache=cache, **_last_position_only(model))[:, -1]
        tokens: list[int] = []
        while True:
            token = logits.argmax(dim=-1)
            tokens.append(int(token))
            if len(tokens) == new_tokens:
                return tokens
            logits = model(token[:, None], kv_cache=cache)[:, -1]


def theirs_generate(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None)  # no early stop: always all the tokens
    return out[0, ids.shape[1]:].tolist()


# ---- sections ------------------------------------------------------------------------------------


def bench_forward(folder: Path, shape: Shape, dtype_name: str, repeats: int, with_eager: bool = True,
                  with_cache: bool = False) -> list[Row]:
    """Forward over ``prompt_len`` tokens: ours vs transformers default and eager (and run_with_cache)."""
    dtype = DTYPES[dtype_name]
    ours = load_ours(folder, dtype)
    default = load_theirs(folder, dtype)
    default_name = default.config._attn_implementation
    ids = prompt(shape, shape.prompt_len)
    fns = {"ours": lambda: ours(ids), "default": lambda: default(ids).logits}
    if with_eager:
        eager = load_theirs(folder, dtype, "eager")
        fns["eager"] = lambda: eager(ids).logits
    if with_cache:
        fns["cache"] = lambda: ours.run_with_cache(ids)
    timed = interleaved(fns, repeats)
    what = f"forward, {shape.prompt_len} tokens"
    rows = [Row("forward", f"{what}: ours / transformers ({default_name}, default)", dtype_name,
                *_ratio_fields(timed, "ours", "default", 1.0))]
    if with_eager:
        rows.append(Row("forward", f"{what}: ours / transformers (eager)", dtype_name,
                        *_ratio_fields(timed, "ours", "eager", 1.0)))
    if with_cache:
        rows.append(Row("hooks", f"{what}, hook points present, none attached: ours / transformers ({default_name})",
                        dtype_name, *_ratio_fields(timed, "ours", "default", 1.0)))
        rows.append(Row("hooks", f"run_with_cache (all {len(ours.hook_names())} hook points) / plain forward of ours",
                        dtype_name, *_ratio_fields(timed, "cache", "ours", 1.3, "cached/plain time")))
    return rows


def _ratio_fields(timed: Timed, a: str, b: str, target: float, ratio_of: str = "ours/transformers time"):
    """Row fields from ``a / b`` timings: ratio, its meaning, target, both medians, per-round range."""
    ratio, low, high = timed.ratio(a, b)
    return ratio, ratio_of, target, _seconds(timed.median(a)), _seconds(timed.median(b)), f"{low:.2f}-{high:.2f}"


def bench_generate(folder: Path, shape: Shape, dtype_name: str, repeats: int) -> tuple[list[Row], dict]:
    """Greedy decoding of ``new_tokens`` tokens: ours vs transformers' generate.

    Also returns the tokens/s and the bytes each decode step must read, for the bandwidth bound.
    """
    dtype = DTYPES[dtype_name]
    ours = load_ours(folder, dtype)
    theirs = load_theirs(folder, dtype)
    ids = prompt(shape, shape.gen_prompt_len, seed=1)
    n = shape.new_tokens
    outputs: dict[str, list[int]] = {}

    def run_ours() -> None:
        outputs["ours"] = ours_generate(ours, ids, n)

    def run_loop() -> None:
        outputs["loop"] = _minimal_greedy_loop(ours, ids, n)

    def run_theirs() -> None:
        outputs["theirs"] = theirs_generate(theirs, ids, n)

    fns = {"ours": run_ours, "theirs": run_theirs}
    with_loop = ours_generate_name() != "KVCache greedy loop"  # else "ours" is that loop already
    if with_loop:
        fns["loop"] = run_loop
    with torch.inference_mode():  # warm-up on short runs (a full one would double the section's time)
        ours_generate(ours, ids, 2)
        theirs_generate(theirs, ids, 2)
    timed = interleaved(fns, repeats, warmup=0)
    rates = {name: n / timed.median(name) for name in fns}
    agreement = "same tokens" if outputs["ours"] == outputs["theirs"] else "tokens differ"
    what = f"greedy {n} tokens after {shape.gen_prompt_len}-token prompt"
    rows = [Row("generate", f"{what} ({agreement}): ours / transformers generate", dtype_name,
                *_ratio_fields(timed, "ours", "theirs", 1.0))]
    if with_loop:  # the same model without the generation module: what the loop itself costs
        rows.append(Row("generate", f"{what}: bare KVCache greedy loop / transformers generate", dtype_name,
                        *_ratio_fields(timed, "loop", "theirs", 1.0, "loop/transformers time")))
    for row, name in zip(rows, ("ours", "loop")):  # rates read better than times
        row.ours, row.reference = f"{rates[name]:.2f} tok/s", f"{rates['theirs']:.2f} tok/s"
    # The prompt pass alone: transformers' generate asks for the last position's logits only.
    prefill = interleaved({"ours": lambda: ours_prefill(ours, ids, n),
                           "theirs": lambda: theirs(ids, use_cache=True, logits_to_keep=1).logits}, repeats)
    rows.append(Row("generate", "its prompt pass: ours / transformers (logits_to_keep=1)", dtype_name,
                    *_ratio_fields(prefill, "ours", "theirs", 1.0)))
    # Each decode step reads every weight once (the tied embedding as the unembedding) plus the KV cache.
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    kv_bytes = 2 * shape.n_layers * shape.n_kv_heads * shape.d_head * (shape.gen_prompt_len + n) * dtype.itemsize
    return rows, {"ours": rates["ours"], "theirs": rates["theirs"], "bytes_per_token": weight_bytes + kv_bytes}


def theirs_generate_static(model, ids: torch.Tensor, new_tokens: int, compile: bool = False) -> list[int]:
    """transformers' greedy generate with its preallocated (static) KV cache; ``compile``: and its
    forward under torch.compile (transformers compiles only on accelerators unless told, as here)."""
    extra = {}
    if compile:
        from transformers import CompileConfig

        config = CompileConfig()
        config._compile_all_devices = True  # its switch for compiling on CPU
        extra["compile_config"] = config
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None, cache_implementation="static", **extra)
    return out[0, ids.shape[1]:].tolist()


def ours_watched_generate(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """Our generate with an identity hook attached: the path every hook sees (no fast path)."""
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: None)]):
        return ours_generate(model, ids, new_tokens)


def ours_compiled_generate(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """Our generate with the decode step under torch.compile (inductor)."""
    from gemma_lab.generation import generate

    return list(generate(model, ids[0], max_new_tokens=new_tokens, stop=[], compile=True).token_ids)


def model_bytes(model) -> int:
    """Bytes of every parameter and buffer (int8 weights and their scales included)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def measure_read_bandwidth(megabytes: int, repeats: int = 5) -> float:
    """Bytes per second read by summing a large fp32 tensor (decoding reads weights, writes little)."""
    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    src.sum()  # fault the pages in
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        times.append(time.perf_counter() - start)
    return src.numel() * 4 / min(times)


QUANTIZED = ("int8", "int4")  # weight-only schemes the decode section tries (those the loader accepts)


def _load_quantized(folder: Path, scheme: str):
    """Our model quantized at load, or None when this version of the loader does not offer ``scheme``."""
    try:
        return load_ours(folder, torch.bfloat16, quantize=scheme)
    except ValueError as error:
        if "quantize" in str(error) and scheme in str(error):
            return None
        raise


DECODE_LABELS = {"ours": "ours (fast path)", "watched": "ours, a hook attached", "compiled": "ours, compile=True",
                 "static": "transformers static cache", "static_compiled": "transformers static cache + compile",
                 "int8": "ours int8", "int4": "ours int4"}


def bench_decode(folder: Path, shape: Shape, repeats: int, bandwidth: Callable[[], float], *,
                 dtypes: tuple[str, ...] = ("fp32", "bf16"), watched: bool = True, compile: bool = False,
                 log: Callable[[str], None] = lambda msg: None) -> list[Row]:
    """Greedy decode speed as a fraction of the memory-bandwidth bound: fp32, bf16 and int8 side by side.

    Per dtype, in one interleaved timing: our generate (the fast path), the same with a hook
    attached (``watched``), and transformers' generate with its static cache; with ``compile``,
    also ours with ``compile=True`` and transformers' static cache under torch.compile (their
    first call, which compiles, is reported on its own). The quantized models (bf16 activations)
    join the bf16 round. Then the int8 model's error against bf16. ``bandwidth()`` measures the
    machine's read bandwidth in bytes/s; the best seen around each round is the bound's.
    """
    n, ids = shape.new_tokens, prompt(shape, shape.gen_prompt_len, seed=1)
    rows: list[Row] = []
    kv_per_token = 2 * shape.n_layers * shape.n_kv_heads * shape.d_head * (shape.gen_prompt_len + n)
    done = 0  # rows already shown
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        log(f"decode {dtype_name}: loading ...")
        models = {"ours": load_ours(folder, dtype)}
        if dtype_name == "bf16":
            for scheme in QUANTIZED:
                quantized = _load_quantized(folder, scheme)
                if quantized is not None:
                    models[scheme] = quantized
        theirs = load_theirs(folder, dtype)
        outputs: dict[str, list[int]] = {}

        def keep(name: str, fn: Callable[[], list[int]]) -> Callable[[], None]:
            return lambda: outputs.__setitem__(name, fn())

        fns = {name: keep(name, lambda m=m: ours_generate(m, ids, n)) for name, m in models.items()}
        if watched:
            fns["watched"] = keep("watched", lambda: ours_watched_generate(models["ours"], ids, n))
        fns["static"] = keep("static", lambda: theirs_generate_static(theirs, ids, n))
        if compile:
            fns["compiled"] = keep("compiled", lambda: ours_compiled_generate(models["ours"], ids, n))
            fns["static_compiled"] = keep("static_compiled", lambda: theirs_generate_static(theirs, ids, n, True))
        first_call: dict[str, float] = {}
        with torch.inference_mode():
            for name, fn in fns.items():  # warm-up; the compiled callables compile here
                log(f"decode {dtype_name}: warm-up {name} ...")
                start = time.perf_counter()
                fn()
                first_call[name] = time.perf_counter() - start
        before = bandwidth()
        log(f"decode {dtype_name}: {repeats} interleaved rounds of {', '.join(fns)} ...")
        timed = interleaved(fns, repeats, warmup=0)
        best = max(before, bandwidth())
        same = all(outputs[name] == outputs["ours"] for name in fns if name in ("watched", "static", "compiled",
                                                                                "static_compiled"))
        for name in fns:
            m = models.get(name, theirs if name.startswith("static") else models["ours"])
            per_token = model_bytes(m) + kv_per_token * (dtype.itemsize if name not in QUANTIZED else 2)
            rate = n / timed.median(name)
            bound = best / per_token
            rows.append(Row("decode", f"{shape.n_layers} layers, greedy {n} tokens, {DECODE_LABELS[name]}: "
                                      f"tokens/s / bandwidth bound ({per_token / 1e9:.2f} GB/token at "
                                      f"{best / 1e9:.1f} GB/s)",
                            name if name in QUANTIZED else dtype_name, rate / bound, "fraction of bound", None,
                            f"{rate:.2f} tok/s", f"bound {bound:.2f} tok/s"))
        rows.append(Row("decode", f"{shape.n_layers} layers, greedy decode ({'same tokens' if same else 'TOKENS DIFFER'}):"
                                  " ours / transformers static cache", dtype_name,
                        *_ratio_fields(timed, "ours", "static", 0.8)))
        if watched:
            rows.append(Row("decode", f"{shape.n_layers} layers, greedy decode: fast path / a hook attached",
                            dtype_name, *_ratio_fields(timed, "ours", "watched", 1.0, "fast/watched time")))
        if compile:
            rows.append(Row("decode", f"{shape.n_layers} layers, greedy decode: ours compile=True / ours eager",
                            dtype_name, *_ratio_fields(timed, "compiled", "ours", 1.0, "compiled/eager time")))
            rows.append(Row("decode", f"{shape.n_layers} layers, greedy decode: ours compile=True / transformers "
                                      "static cache + compile", dtype_name,
                            *_ratio_fields(timed, "compiled", "static_compiled", 0.8)))
            for name in ("compiled", "static_compiled"):
                rows.append(Row("decode", f"{shape.n_layers} layers, first call of {DECODE_LABELS[name]} "
                                          "(compiles) / a timed call", dtype_name,
                                first_call[name] / timed.median(name), "first/timed call", None,
                                _seconds(first_call[name]), _seconds(timed.median(name))))
        for scheme in QUANTIZED:
            if scheme in fns:
                rows.append(Row("decode", f"{shape.n_layers} layers, greedy decode: {scheme} / bf16 (ours both)",
                                scheme, *_ratio_fields(timed, scheme, "ours", 1.0, f"{scheme}/bf16 time")))
                rows += quantization_error_rows(models["ours"], models[scheme], shape, scheme)
        log(f"decode {dtype_name} done:\n" + format_table(rows[done:]))  # a long run shows each round as it ends
        done = len(rows)
        del models, theirs, fns
    return rows


def quantization_error_rows(full, quantized, shape: Shape, scheme: str = "int8") -> list[Row]:
    """A quantized model against bf16 on a fixed token sequence: logits, top-1 agreement, perplexity."""
    ids = prompt(shape, shape.prompt_len, seed=2)
    with torch.inference_mode():
        a, b = full(ids).float(), quantized(ids).float()
    rel = ((b - a).abs().max() / a.abs().max()).item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()

    def perplexity(logits):
        return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())

    what = f"{shape.n_layers} layers, {scheme} vs bf16 on {shape.prompt_len} fixed tokens"
    return [Row("decode", f"{what}: top-1 agreement", scheme, top1, "fraction", None, f"{top1:.1%}",
                f"max |logit diff| / max |logit| {rel:.3f}"),
            Row("decode", f"{what}: perplexity {scheme} / bf16", scheme, perplexity(b) / perplexity(a),
                "ppl ratio", None, f"{perplexity(b):.1f}", f"{perplexity(a):.1f}")]


def bench_quantized_memory(shape: Shape) -> list[Row]:
    """Peak RSS of loading a bf16 checkpoint as int8, over the checkpoint's bytes, in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="gemma_lab_bench_q_") as tmp:
        folder = write_checkpoint(Path(tmp) / "checkpoint", shape, dtype=torch.bfloat16)
        size = checkpoint_bytes(folder)
        report = _memory_children([("ours", "int8"), ("ours", "bf16")], folder, shape, at_once=size < 64 * 2**20)
    rows = []
    for peak, label in zip(report, ("int8", "bf16")):
        rows.append(Row("memory", f"load {shape.n_layers}-layer d_model {shape.d_model} bf16 checkpoint as {label}"
                                  f" + first forward: peak / checkpoint bytes", label, peak["peak"] / size,
                        "peak/checkpoint bytes", 0.6 if label == "int8" else 1.3,
                        f"{peak['peak'] / 2**20:.0f} MiB peak", f"ckpt {size / 2**20:.0f} MiB, "
                        f"model {peak['model_bytes'] / 2**20:.0f} MiB"))
    return rows


def bound_row(dtype_name: str, rates: dict, bandwidth: float) -> Row:
    """Tokens/s as a fraction of what memory bandwidth allows when every step reads all the weights."""
    per_token = rates["bytes_per_token"]
    bound = bandwidth / per_token
    return Row("generate", f"tokens/s / memory-bandwidth bound ({per_token / 1e9:.2f} GB per token at "
                           f"{bandwidth / 1e9:.1f} GB/s = {bound:.2f} tok/s)", dtype_name, rates["ours"] / bound,
               "fraction of bound", None, f"{rates['ours'] / bound:.0%} of bound",
               f"{rates['theirs'] / bound:.0%} of bound")


def measure_bandwidth(megabytes: int, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (each byte read once and written once)."""
    src = torch.ones(megabytes * 2**20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() / statistics.median(times)


def bench_memory(folder: Path, shape: Shape, convert: bool = True) -> list[Row]:
    """Peak RSS of load + first forward over the checkpoint's bytes, each case in a fresh process.

    convert: also load the fp32 checkpoint as bf16 (two more processes).
    """
    size = checkpoint_bytes(folder)
    rows = []
    cases = [("", "checkpoint's dtype (fp32)"), ("bf16", "fp32 checkpoint loaded as bf16")]
    cases = cases if convert else cases[:1]
    impls = ("ours", "transformers")
    reports = iter(_memory_children([(impl, dtype_name) for dtype_name, _ in cases for impl in impls], folder,
                                    shape, at_once=size < 64 * 2**20))
    for dtype_name, label in cases:
        peaks = {impl: next(reports) for impl in impls}
        ours, theirs = peaks["ours"], peaks["transformers"]
        held = ours["model_bytes"]
        for impl, peak in peaks.items():
            note = f"{peak['peak'] / 2**20:.0f} MiB peak ({peak['file_backed'] / 2**20:.0f} MiB file-backed at the end)"
            rows.append(Row("memory", f"load + first forward, {label}: {impl} peak / checkpoint bytes",
                            dtype_name or "fp32", peak["peak"] / size, "peak/checkpoint bytes",
                            1.3 if impl == "ours" else None, note,
                            f"ckpt {size / 2**20:.0f} MiB, model {held / 2**20:.0f} MiB"))
        rows.append(Row("memory", f"load + first forward, {label}: ours / transformers peak", dtype_name or "fp32",
                        ours["peak"] / theirs["peak"], "ours/transformers peak", 1.0,
                        f"{ours['peak'] / 2**20:.0f} MiB", f"{theirs['peak'] / 2**20:.0f} MiB"))
    return rows


def _memory_children(cases: list[tuple[str, str]], folder: Path, shape: Shape, at_once: bool) -> list[dict]:
    """Run one fresh process per (implementation, dtype) case; return their reports in order.

    at_once: start them all together (only for tiny checkpoints: at full size, memory pressure
    from a neighbour could make the kernel drop one's file-backed pages and lower its peak).
    """
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    commands = [[sys.executable, "-m", "tools.bench", "_memory_child", impl, str(folder), dtype_name or "none",
                 str(shape.prompt_len), str(shape.vocab)] for impl, dtype_name in cases]
    reports = []
    running = []
    for command in commands:
        running.append((command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True, env=env)))
        if not at_once:
            reports.append(_child_report(*running.pop()))
    return reports + [_child_report(command, process) for command, process in running]


def _child_report(command: list[str], process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({' '.join(command)}):\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def _memory_child(impl: str, folder: str, dtype_name: str, prompt_len: int, vocab: int) -> None:
    """In a fresh process: the RSS high-water mark of load + first forward above the baseline."""
    if impl == "ours":
        import gemma_lab  # noqa: F401  (imported before the baseline: we measure load + forward)
    else:
        import transformers  # noqa: F401
    quantize = "int8" if dtype_name == "int8" else None
    dtype = torch.bfloat16 if quantize else DTYPES.get(dtype_name)
    ids = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    for warm in (torch.float32, torch.bfloat16):  # start the thread pool and BLAS before the baseline
        torch.nn.functional.linear(torch.ones(4, 64, dtype=warm), torch.ones(64, 64, dtype=warm))
    reset = _reset_peak_rss()
    baseline, baseline_file = _rss_now(), _proc_status().get("RssFile", 0)
    if impl == "ours":
        model = load_ours(Path(folder), dtype, quantize=quantize)
    else:
        model = load_theirs(Path(folder), dtype)
    load_peak = _peak_rss()
    with torch.inference_mode():
        model(ids)
    peak = _peak_rss()
    status = _proc_status()
    print(json.dumps({"peak": peak - baseline, "load_peak": load_peak - baseline, "baseline": baseline,
                      "peak_reset": reset,
                      "model_bytes": model_bytes(model),
                      "file_backed": status.get("RssFile", 0) - baseline_file}))


def _proc_status() -> dict[str, int]:
    """Memory lines of /proc/self/status in bytes (empty off Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so import-time spikes do not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_now() -> int:
    status = _proc_status()
    if "VmRSS" in status:
        return status["VmRSS"]
    return _peak_rss()  # no /proc: the high-water mark so far is the best baseline there is


def _peak_rss() -> int:
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


# ---- the run -------------------------------------------------------------------------------------


def machine_description() -> str:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {platform.system()}; "
            f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


@dataclass(frozen=True)
class DecodeOptions:
    """What the decode section times (the defaults: every row; fewer keep an 18-layer run bounded)."""

    dtypes: tuple[str, ...] = ("fp32", "bf16")  # bf16 brings the quantized models with it
    watched: bool = True  # also time our generate with a hook attached
    compile: bool = False  # also time compile=True and transformers' static cache + torch.compile
    checkpoint_dtype: str = "fp32"  # the file's dtype: bf16 halves an 18-layer file (then fp32 would copy it)


def run(sections: list[str], shape: Shape, repeats: int, gen_repeats: int, log: Callable[[str], None] = print,
        convert_memory: bool = True, quantized_memory_shape: Shape | None = None,
        decode: DecodeOptions = DecodeOptions()) -> tuple[list[Row], dict]:
    """Run the sections on one freshly written checkpoint; return the rows and the run's context."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gemma_lab_bench_") as tmp:
        folder = write_checkpoint(Path(tmp) / "checkpoint", shape, dtype=DTYPES[decode.checkpoint_dtype])
        context = {"checkpoint_bytes": checkpoint_bytes(folder), "generate_impl": ours_generate_name()}
        log(f"checkpoint written: {context['checkpoint_bytes'] / 2**20:.0f} MiB")
        if "memory" in sections:
            log("memory ...")
            rows += bench_memory(folder, shape, convert=convert_memory)
        # Bandwidth is a property of the hardware: on a shared machine the best of several
        # measurements, spread over the run, is the closest to it.
        bandwidths: list[float] = []
        rates: dict[str, dict] = {}
        for dtype_name in DTYPES:  # one dtype's models at a time in memory
            if "forward" in sections or ("hooks" in sections and dtype_name == "fp32"):
                log(f"forward {dtype_name} ...")
                found = bench_forward(folder, shape, dtype_name, repeats, with_eager="forward" in sections,
                                      with_cache="hooks" in sections and dtype_name == "fp32")
                rows += [r for r in found if r.section in sections]
            if "generate" in sections:
                log(f"generate {dtype_name} ...")
                bandwidths.append(measure_bandwidth(shape.bandwidth_mb))
                found, rates[dtype_name] = bench_generate(folder, shape, dtype_name, gen_repeats)
                rows += found
                bandwidths.append(measure_bandwidth(shape.bandwidth_mb))
        if "decode" in sections:
            reads: list[float] = []

            def read_bandwidth() -> float:  # decoding reads its weights: the bound uses the best read rate
                reads.append(measure_read_bandwidth(shape.bandwidth_mb))
                bandwidths.append(measure_bandwidth(shape.bandwidth_mb))
                return max(reads)

            rows += bench_decode(folder, shape, repeats, read_bandwidth, dtypes=decode.dtypes,
                                 watched=decode.watched, compile=decode.compile, log=log)
            context["read_bandwidth"], context["read_bandwidths"] = max(reads), reads
        if bandwidths:
            context["bandwidth"] = max(bandwidths)
            context["bandwidths"] = bandwidths
            rows += [bound_row(dtype_name, found, context["bandwidth"]) for dtype_name, found in rates.items()]
    order = {name: i for i, name in enumerate(SECTIONS)}
    if "decode" in sections and quantized_memory_shape is not None:
        log(f"memory of a quantized load: {quantized_memory_shape.describe()} ...")
        rows += bench_quantized_memory(quantized_memory_shape)
    rows.sort(key=lambda r: order[r.section])  # stable: within a section, fp32 before bf16
    return rows, context


def format_table(rows: list[Row]) -> str:
    header = ("section", "measurement", "dtype", "ratio", "target", "met", "ours", "reference", "per-round")
    lines = [header]
    for row in rows:
        low, high = (float(x) for x in row.spread.split("-")) if row.spread else (None, None)
        lines.append((row.section, row.what, row.dtype, f"{row.ratio:.2f}x",
                      f"<= {row.target:g}" if row.target is not None else "-", row.verdict(low, high) or "-",
                      row.ours, row.reference, row.spread or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_memory_child"]:  # internal: one measurement in a fresh process
        impl, folder, dtype_name, prompt_len, vocab = argv[1:6]
        _memory_child(impl, folder, dtype_name, int(prompt_len), int(vocab))
        return 0
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=(*SECTIONS, "all"))
    parser.add_argument("--layers", type=int, nargs="+", default=[2],
                        help="transformer layers (Gemma 2B has 18; default 2); several counts run one after another")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per comparison (default 3; whole generations: about half)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, memory in the checkpoint's dtype only: checks the code paths, not the speed")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--quantized-load-layers", type=int, default=4,
                        help="decode: layers of the Gemma-7B-shaped checkpoint loaded as int8 (the 7B has 28; 0 skips)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens each timed generation makes (default 32)")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES),
                        help="decode: the rounds to run (bf16 brings int8/int4 with it)")
    parser.add_argument("--no-watched", action="store_true", help="decode: skip the row with a hook attached")
    parser.add_argument("--compile", action="store_true",
                        help="decode: also time compile=True and transformers' static cache + torch.compile")
    parser.add_argument("--checkpoint-dtype", choices=tuple(DTYPES), default="fp32",
                        help="the random checkpoint's dtype (bf16 halves an 18-layer file)")
    args = parser.parse_args(argv)

    repeats = args.repeats or 3
    gen_repeats = max(2, (repeats + 1) // 2)
    sections = list(SECTIONS) if args.what == "all" else [args.what]
    decode = DecodeOptions(dtypes=tuple(args.dtypes), watched=not args.no_watched, compile=args.compile,
                           checkpoint_dtype=args.checkpoint_dtype)
    command = "python -m tools.bench " + shlex.join(argv)
    print(f"gemma_lab benchmark: {command}")
    print(f"machine: {machine_description()}")
    start = time.perf_counter()
    all_rows, contexts = [], []
    for i, layers in enumerate(args.layers):
        shape = tiny_shape(layers) if args.quick else gemma_2b_shape(layers)
        if args.new_tokens:
            shape = replace(shape, new_tokens=args.new_tokens)
        print(f"weights: random, Gemma-2B-shaped{' (tiny: --quick)' if args.quick else ''}: {shape.describe()}")
        # --quick skips the dtype-converting memory case: two fewer processes, the same code path.
        big = (tiny_shape(layers) if args.quick else gemma_7b_shape(args.quantized_load_layers)) \
            if args.quantized_load_layers and i == len(args.layers) - 1 else None
        rows, context = run(sections, shape, repeats, gen_repeats, log=lambda msg: print(f"  {msg}", flush=True),
                            convert_memory=not args.quick, quantized_memory_shape=big, decode=decode)
        print(f"checkpoint: {context['checkpoint_bytes'] / 2**20:.0f} MiB {args.checkpoint_dtype} safetensors "
              f"written by transformers; our generation: {context['generate_impl']}; timed rounds: {repeats} "
              f"(generate {gen_repeats})")
        if "read_bandwidth" in context:
            spread = ", ".join(f"{b / 1e9:.1f}" for b in context["read_bandwidths"])
            print(f"memory read bandwidth (sum of a {shape.bandwidth_mb} MiB fp32 tensor): "
                  f"{context['read_bandwidth'] / 1e9:.1f} GB/s, the best of {spread}")
        if "bandwidth" in context:
            spread = ", ".join(f"{b / 1e9:.1f}" for b in context["bandwidths"])
            print(f"memory bandwidth (tensor copy, read + write): {context['bandwidth'] / 1e9:.1f} GB/s, "
                  f"the best of {spread}")
        print()
        print(format_table(rows), flush=True)
        print()
        all_rows += rows
        contexts.append(dict(context, layers=layers))
    print(f"ratio: ours / reference unless the measurement says otherwise; lower is better. "
          f"met: 'noise' = the per-round ratios straddle the target. took {time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command, "context": contexts[0] if len(contexts) == 1 else contexts,
                                         "rows": [asdict(r) for r in all_rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
