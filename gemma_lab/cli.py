"""The ``gemma-lab`` command: generate text, chat, inspect a checkpoint, train the tiny model, open the lessons.

    gemma-lab generate --model tiny "The capital of France is" --show-top-k 5
    gemma-lab chat --model path/to/gemma-2b-it
    gemma-lab info path/to/gemma-2b
    gemma-lab download google/gemma-2-2b
    gemma-lab train-tiny --minutes 15
    gemma-lab lab

Role: a thin layer of argument parsing over ``loading``, ``tokenizer`` and ``generation``; no
model or sampling logic lives here. Errors are reported as one line on stderr
(``gemma-lab: error: ...``, exit code 1; usage errors exit with 2) unless ``--debug`` asks for
the traceback. ``main(argv)`` returns the exit code, so tests call it in-process.

Must not import: plotting or widgets. Heavy modules (torch, the model) are imported when a
subcommand needs them, so ``gemma-lab --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from gemma_lab import __version__  # the package facade imports nothing heavy

PROG = "gemma-lab"
DTYPES = ("auto", "float32", "bfloat16", "float16")


MAX_NEW_TOKENS = {"generate": 64, "chat": 256}


class CLIError(Exception):
    """An error to report as one line, without a traceback."""


# ---------------------------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="gemma_lab: a readable Gemma you can run, inspect and step through.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of one command.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when something fails")

    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument("--model", default="tiny", metavar="MODEL",
                               help="checkpoint folder or file, a model id such as google/gemma-3-270m (Hugging "
                                    "Face cache, downloaded if missing), or 'tiny' for the bundled model (default: tiny)")
    model_options.add_argument("--tokenizer", metavar="PATH",
                               help="tokenizer file or folder (default: the one next to the model)")
    model_options.add_argument("--dtype", choices=DTYPES, default="auto",
                               help="weight dtype (default: auto, the checkpoint's own)")
    model_options.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")

    sampling = argparse.ArgumentParser(add_help=False)
    group = sampling.add_argument_group("sampling")
    # No default here: the parent parser is shared, so each command sets its own (see MAX_NEW_TOKENS).
    group.add_argument("--max-new-tokens", type=int, metavar="N",
                       help="most tokens to generate (default: 64 for generate, 256 per reply for chat)")
    group.add_argument("--temperature", type=float, default=0.0, metavar="T",
                       help="0 = greedy (default), 1 = the model's own distribution, higher = flatter")
    group.add_argument("--top-k", type=int, metavar="K", help="sample only from the K most likely tokens")
    group.add_argument("--top-p", type=float, metavar="P",
                       help="nucleus sampling: the smallest set of tokens holding at least P of the probability")
    group.add_argument("--min-p", type=float, metavar="P",
                       help="keep tokens at least P times as likely as the most likely one")
    group.add_argument("--repetition-penalty", type=float, metavar="R",
                       help="make tokens seen before less likely (CTRL penalty; 1 = off)")
    group.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="also stop when TEXT appears (repeatable); <eos> and <end_of_turn> always stop")

    gen = commands.add_parser(
        "generate", parents=[common, model_options, sampling], help="continue a prompt, streaming the text",
        description="Continue PROMPT with the model, printing the new text as it is generated.")
    gen.add_argument("prompt", help="the text to continue (<bos> is added)")
    gen.add_argument("--show-top-k", type=int, default=0, metavar="N",
                     help="print, for every step, the N most likely next tokens and their probabilities")

    chat = commands.add_parser(
        "chat", parents=[common, model_options, sampling], help="chat with an instruction-tuned checkpoint",
        description="Chat using the checkpoint's chat template. Reads one message per line from stdin "
                    "until end of input or /exit; /reset starts a new conversation.")
    chat.add_argument("--system", metavar="TEXT", help="a system message (Gemma 3 and 4 chat templates)")

    info = commands.add_parser(
        "info", parents=[common], help="architecture, size and files of a checkpoint (weights are not read)",
        description="Print the architecture, parameter count, memory and files of a checkpoint. Reads "
                    "config.json only. PATH may also be 'tiny', a preset name such as gemma2-2b, or a model id.")
    info.add_argument("path", metavar="PATH", help="checkpoint folder or file, 'tiny', a preset name, or a Hugging "
                                                   "Face id (its config.json only is fetched)")

    download = commands.add_parser(
        "download", parents=[common], help="fetch a model into the Hugging Face cache, showing its size first",
        description="Show the download size of MODEL_ID and the memory it needs to run (from its config), then "
                    "fetch it into the Hugging Face cache (HF_HOME), where load_pretrained and GEMMA_LAB_MODEL find "
                    "it offline. Gated models (all Gemma) need their licence accepted and a token (hf auth login).")
    download.add_argument("model_id", metavar="MODEL_ID", help="a Hugging Face id such as google/gemma-2-2b, or a "
                                                               "Kaggle handle (needs kagglehub)")
    download.add_argument("--dry-run", action="store_true", help="show the sizes only; download nothing")

    commands.add_parser(
        "train-tiny", add_help=False, help="train the bundled tiny model (options: gemma-lab train-tiny --help)",
        description="Train the tiny Gemma that ships with gemma_lab; every option is passed on.")

    lab = commands.add_parser(
        "lab", parents=[common], help="open the lesson notebooks in JupyterLab",
        description="Start JupyterLab on the lesson notebooks. Options it does not know are passed to JupyterLab.")
    lab.add_argument("--model", metavar="MODEL",
                     help="checkpoint folder or model id the lessons use (sets GEMMA_LAB_MODEL; default: the "
                          "bundled tiny model)")
    for command_parser in commands.choices.values():  # so that usage errors show the command's usage
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in ("train-tiny", "lab"):
            getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help, or a usage error argparse has already printed
        return _exit_code(exit_)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _tolerate_unencodable_output()
    try:
        if args.command == "train-tiny":
            return run_train_tiny(extra)
        if args.command == "lab":
            return run_lab(args, extra)
        if getattr(args, "max_new_tokens", 0) is None:
            args.max_new_tokens = MAX_NEW_TOKENS[args.command]
        return {"generate": run_generate, "chat": run_chat, "info": run_info, "download": run_download}[args.command](args)
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush stays quiet too
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except SystemExit as exit_:
        return _exit_code(exit_)
    except Exception as error:  # every failure becomes one readable line
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 1


def _exit_code(exit_: SystemExit) -> int:
    if exit_.code is None:
        return 0
    return exit_.code if isinstance(exit_.code, int) else 1


def _one_line(error: BaseException) -> str:
    message = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and len(error.args) == 1:
        message = str(error.args[0])
    return " ".join(message.split())


def _tolerate_unencodable_output() -> None:
    # Generated text may hold characters the terminal's encoding cannot show; print "?" for them.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "strict") == "strict":
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):
                pass


# ---------------------------------------------------------------------------------------------
# generate and chat
# ---------------------------------------------------------------------------------------------


def _load(args):
    """(model, tokenizer) as the options say."""
    from gemma_lab.loading import load_pretrained
    from gemma_lab.tokenizer import load_tokenizer

    model = load_pretrained(args.model, dtype=None if args.dtype == "auto" else args.dtype, device=args.device)
    tokenizer_path = args.tokenizer or args.model
    if not args.tokenizer and Path(args.model).is_file():
        tokenizer_path = Path(args.model).parent
    # No vocabulary-size check: Gemma 3's tokenizer.json has one more entry than the 1B model's
    # embedding (<image_soft_token>); an id the model lacks is reported when it is used.
    return model, load_tokenizer(tokenizer_path)


def _check_fits(ids: list[int], model, tokenizer) -> None:
    """Name a tokenizer/model mismatch at once instead of failing on an anonymous id."""
    too_big = [i for i in ids if i >= model.cfg.vocab_size]
    if too_big:
        raise CLIError(f"the tokenizer gave id {too_big[0]} ({tokenizer.id_to_piece(too_big[0])!r}), but the model's "
                       f"vocabulary has {model.cfg.vocab_size} entries and the tokenizer's {tokenizer.vocab_size}: "
                       f"they do not belong together (pass the model's own tokenizer with --tokenizer)")


def _sampling(args, model, tokenizer) -> dict:
    from gemma_lab.generation import default_stop_ids

    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed,
                stop=default_stop_ids(model, tokenizer) + list(args.stop))


def run_generate(args) -> int:
    from gemma_lab.generation import stream

    if args.show_top_k < 0:
        raise CLIError(f"--show-top-k must be 0 or more, got {args.show_top_k}")
    if not args.prompt:
        raise CLIError("the prompt is empty: give some text to continue, e.g. "
                       f"{PROG} generate \"The capital of France is\"")
    model, tokenizer = _load(args)
    _check_fits(tokenizer.encode(args.prompt), model, tokenizer)
    out = sys.stdout
    started, n_tokens, reason = time.perf_counter(), 0, None
    records = stream(model, args.prompt, tokenizer=tokenizer, max_new_tokens=args.max_new_tokens,
                     top_k_candidates=args.show_top_k, **_sampling(args, model, tokenizer))
    if args.show_top_k:
        show_probs = "model prob" if args.temperature == 0 else "prob after the filters (model prob)"
        print(f"step  token (id)  ->  top {args.show_top_k} candidates: {show_probs}", file=out)
    text = []
    for record in records:
        n_tokens, reason = n_tokens + 1, record.stop_reason
        text.append(record.text)
        if args.show_top_k:
            print(_step_line(record, tokenizer, sampled=args.temperature != 0), file=out, flush=True)
        else:
            out.write(record.text)
            out.flush()
    if args.show_top_k:
        print("\n" + "".join(text), file=out)
    else:
        print(file=out)
    elapsed = time.perf_counter() - started
    print(f"[{n_tokens} tokens in {elapsed:.2f} s, {n_tokens / max(elapsed, 1e-9):.1f} tokens/s; "
          f"stopped: {reason or 'max_new_tokens'}]", file=sys.stderr)
    return 0


def _step_line(record, tokenizer, sampled: bool) -> str:
    def show(candidate) -> str:
        probs = f"{candidate.prob:.3f} ({candidate.model_prob:.3f})" if sampled else f"{candidate.model_prob:.3f}"
        return f"{candidate.piece!r} {probs}"

    from gemma_lab.tokenizer import readable_piece

    chosen = readable_piece(tokenizer.id_to_piece(record.token_id))
    return f"{record.step:4d}  {chosen!r} ({record.token_id})  ->  " + ", ".join(show(c) for c in record.candidates)


def run_chat(args) -> int:
    from gemma_lab.generation import stream

    model, tokenizer = _load(args)
    if args.system and tokenizer.chat_template is None and tokenizer.chat_format != "gemma3":
        raise CLIError("--system needs a Gemma 3 or 4 chat template; Gemma 1/2 have no system role")
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # bytes that are not UTF-8 become U+FFFD, not a crash
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {args.model}. /reset starts over, /exit or Ctrl-D ends.", file=sys.stderr)
    history: list[dict] = []
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        message = line.strip()
        if not message:
            continue
        if message in ("/exit", "/quit"):
            break
        if message == "/reset":
            history.clear()
            print("(new conversation)", file=sys.stderr)
            continue
        system = [{"role": "system", "content": args.system}] if args.system else []
        turns = history + [{"role": "user", "content": message}]
        prompt = tokenizer.apply_chat_template(system + turns, add_generation_prompt=True, tokenize=True)
        _check_fits(prompt, model, tokenizer)
        room = model.cfg.max_seq_len - len(prompt)
        if room < 1:
            print(f"{PROG}: the conversation ({len(prompt)} tokens) no longer fits the model's "
                  f"{model.cfg.max_seq_len}; /reset to start over", file=sys.stderr)
            continue
        if interactive:
            print("model> ", end="", flush=True)
        reply = []
        for record in stream(model, prompt, tokenizer=tokenizer, max_new_tokens=min(args.max_new_tokens, room),
                             top_k_candidates=0, **_sampling(args, model, tokenizer)):
            reply.append(record.text)
            sys.stdout.write(record.text)
            sys.stdout.flush()
        print()
        history = turns + [{"role": "assistant", "content": "".join(reply)}]
    return 0


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------


def run_info(args) -> int:
    from gemma_lab.bundled import is_tiny_name, tiny_model_dir
    from gemma_lab.config import PRESETS, GemmaConfig
    from gemma_lab.loading import checkpoint_files

    from gemma_lab.hub import fetch_file, is_hub_id

    path = args.path
    if is_tiny_name(path):
        path = tiny_model_dir()
    path = Path(path)
    files: list[Path] = []
    if is_hub_id(args.path):  # reads config.json only (from the cache, or fetched alone)
        cfg, title = GemmaConfig.from_hf(fetch_file(args.path, "config.json")), f"{args.path} (Hugging Face Hub)"
    elif not path.exists() and args.path in PRESETS:
        cfg, title = PRESETS[args.path], f"preset {args.path} (architecture only, no files)"
    else:
        if not path.exists():
            raise CLIError(f"{path}: no such checkpoint file or folder, and not a preset "
                           f"(presets: {', '.join(PRESETS)})")
        folder = path if path.is_dir() else path.parent
        if not (folder / "config.json").is_file():
            where = f"{folder}" if path.is_dir() else f"{path}: the folder it is in ({folder})"
            raise CLIError(f"{where} has no config.json, which info reads the architecture from")
        cfg = GemmaConfig.from_hf(folder / "config.json")
        title = str(path)
        files = [folder / "config.json"] + checkpoint_files(path)
        extras = ("model.safetensors.index.json", "tokenizer.model", "tokenizer.json")
        files += [folder / name for name in extras if (folder / name).is_file()]
    for line in describe_config(cfg, title):
        print(line)
    from gemma_lab.placement import memory_lines

    print("memory by dtype (weights; GB = 10^9 bytes; docs/bigger_models.md says what fits where)")
    for line in memory_lines(cfg):
        print(line)
    if files:
        print("files")
        width = max(len(f.name) for f in files)
        for file in dict.fromkeys(files):
            print(f"  {file.name:<{width}}  {_size(file.stat().st_size):>10}")
        total = sum(f.stat().st_size for f in dict.fromkeys(files))
        print(f"  {'total':<{width}}  {_size(total):>10}")
    return 0


def run_download(args) -> int:
    from gemma_lab import hub
    from gemma_lab.config import GemmaConfig

    name = args.model_id
    if Path(name).exists():
        raise CLIError(f"{name} is a local path: nothing to download (gemma-lab info {name} describes it)")
    if hub.is_kaggle_handle(name):  # kagglehub shows no sizes beforehand: fetch, then describe
        if args.dry_run:
            raise CLIError("--dry-run needs a Hugging Face id; kagglehub cannot list sizes before downloading")
        folder = hub.resolve_model(name)
        print(f"{name} (Kaggle) is in {folder}")
        for line in _memory_lines(GemmaConfig.from_hf(folder / "config.json")):
            print(line)
        return 0
    if not hub.is_hub_id(name):
        hub.resolve_model(name)  # says what it is instead: a preset, 'tiny', a missing path
        raise CLIError(f"{name}: not a model id (owner/name, e.g. google/gemma-2-2b)")
    plan = hub.download_plan(name)
    total = sum(f.size for f in plan)
    missing = sum(f.size for f in plan if not f.cached)
    print(f"{name} (Hugging Face Hub)")
    print(f"  files     {len(plan)}, {_size(total)} in all; {_size(missing)} to download "
          f"({_size(total - missing)} already in {hub.hub_settings().cache_dir})")
    try:
        cfg = GemmaConfig.from_hf(hub.fetch_file(name, "config.json"))
    except (ValueError, KeyError, OSError) as error:
        if isinstance(error, hub.HubError):
            raise
        print(f"  memory    unknown: its config.json is not one gemma_lab reads ({_one_line(error)})")
    else:
        for line in _memory_lines(cfg):
            print(line)
    if args.dry_run:
        return 0
    sys.stdout.flush()
    folder = hub.resolve_model(name)
    print(f"ready: {folder}\nuse it with load_pretrained({name!r}), --model {name} or GEMMA_LAB_MODEL={name} "
          "(offline too: HF_HUB_OFFLINE=1)")
    return 0


def _memory_lines(cfg) -> list[str]:
    """Parameters and the memory the weights take in each precision (what a workshop machine needs)."""
    n = cfg.n_params()
    return [f"  parameters {n:,} ({_count(n)}, text model)",
            f"  memory    weights alone: {_weight_sizes(cfg, 'fp32', 'bf16', 'int8', 'int4')} "
            "(plus the KV cache and activations; int8 and int4: load_pretrained(..., quantize=...), "
            "with bf16 scales)"]


def _weight_sizes(cfg, *dtypes: str) -> str:
    """``"fp32 1.2 GB, bf16 ..."``: the weights in each of ``dtypes``; int8 and int4 as
    ``load_pretrained(quantize=...)`` lays them out (``placement.quantized_weight_bytes``)."""
    from gemma_lab.placement import quantized_weight_bytes

    n = cfg.n_params()
    sizes = {"fp32": lambda: 4 * n, "bf16": lambda: 2 * n,
             "int8": lambda: quantized_weight_bytes(cfg, "int8"),
             "int4": lambda: quantized_weight_bytes(cfg, "int4")}
    return ", ".join(f"{dtype} {_size(sizes[dtype]())}" for dtype in dtypes)


def describe_config(cfg, title: str) -> list[str]:
    """The lines ``gemma-lab info`` prints for a config."""
    layer_letters = "".join("L" if cfg.is_local(i) else "G" for i in range(cfg.n_layers))
    n_local = layer_letters.count("L")
    rows = [
        ("family", f"Gemma {'3n' if cfg.is_gemma3n else cfg.family}"),
        ("layers", f"{cfg.n_layers} ({n_local} local sliding-window, {cfg.n_layers - n_local} global)"),
        ("layer pattern", f"{layer_letters}  (L = local, G = global)"),
        ("d_model", f"{cfg.d_model}"),
        ("heads", f"{cfg.n_heads} query, {cfg.n_kv_heads} key/value ({cfg.attention_kind}), d_head {cfg.d_head}"),
        ("d_mlp", f"{cfg.d_mlp} (GeGLU, {cfg.activation})" + (
            f"; per layer: {', '.join(map(str, cfg.d_mlp_per_layer))}" if cfg.d_mlp_per_layer else "")),
        ("vocab", f"{cfg.vocab_size}"),
        ("context", f"{cfg.max_seq_len} tokens"),
        ("sliding window", f"{cfg.sliding_window} tokens" if cfg.sliding_window and n_local else "none"),
        ("attention scale", f"1/sqrt({cfg.query_pre_attn_scalar or cfg.d_head:g})" if cfg.family < 4
         else "1 (q_norm and k_norm carry the scale)"),
        ("softcaps", f"attention {cfg.attn_softcap}, final {cfg.final_softcap}"),
        ("norms", ("sandwich (pre and post)" if cfg.sandwich_norms else "pre-norm")
         + (", q/k norm" if cfg.qk_norm else "")),
        ("rope theta", f"global {cfg.rope_theta:g} (scale {cfg.rope_scale:g}), local {cfg.rope_theta_local:g}"),
    ] + _gemma4_rows(cfg) + [_kv_cache_row(cfg)]
    n_params = cfg.n_params()
    rows += [
        ("parameters", f"{n_params:,} ({_count(n_params)}; embedding {cfg.vocab_size * cfg.d_model:,})"),
        ("memory", f"{_weight_sizes(cfg, 'bf16', 'fp32', 'int8', 'int4')} (weights only; int8 and int4 "
                   "as load_pretrained(quantize=...) stores them)"),
    ]
    width = max(len(name) for name, _ in rows)
    return [title] + [f"  {name:<{width}}  {value}" for name, value in rows]


def _gemma4_rows(cfg) -> list[tuple[str, str]]:
    """What only Gemma 4 has (nothing for Gemma 1-3)."""
    if cfg.family < 4:
        return []
    global_layer = cfg.layer_types.index("global")
    shared = [layer for layer in range(cfg.n_layers) if cfg.is_kv_shared(layer)]
    rows = [("global heads", f"d_head {cfg.d_head_for(global_layer)}, {cfg.n_kv_heads_for(global_layer)} key/value"
             + (", keys are values (K=V)" if cfg.k_eq_v else "")
             + f", RoPE on {cfg.rope_fraction_global:g} of each head")]
    if shared:
        sources = sorted({cfg.kv_source(layer) for layer in shared})
        rows.append(("kv sharing", f"layers {shared[0]}-{shared[-1]} reuse the keys and values of layers "
                     f"{', '.join(map(str, sources))}" + (f" (MLP {2 * cfg.d_mlp} wide there)" if cfg.double_wide_mlp else "")))
    if cfg.d_per_layer:
        rows.append(("per-layer embeddings", f"{cfg.d_per_layer} per layer, table {cfg.vocab_per_layer} x "
                     f"{cfg.n_layers * cfg.d_per_layer} ({cfg.vocab_per_layer * cfg.n_layers * cfg.d_per_layer:,} parameters)"))
    if cfg.n_experts:
        rows.append(("experts", f"{cfg.n_experts_active} of {cfg.n_experts} per token, d_expert {cfg.d_expert}, "
                     "beside the dense MLP"))
    return rows


def _kv_cache_row(cfg) -> tuple[str, str]:
    """KV cache bytes per token in bf16: what global layers keep for every token, local ones only within
    their window; Gemma 4's KV-shared layers keep nothing."""
    own = [layer for layer in range(cfg.n_layers) if not cfg.is_kv_shared(layer)]
    per_layer = {layer: 2 * 2 * cfg.n_kv_heads_for(layer) * cfg.d_head_for(layer) for layer in own}  # k, v; bf16
    global_bytes = sum(b for layer, b in per_layer.items() if not cfg.is_local(layer))
    local_bytes = sum(b for layer, b in per_layer.items() if cfg.is_local(layer))
    text = f"bf16 {_size(global_bytes)} per token (global layers)"
    if local_bytes:
        text += f" + {_size(local_bytes)} per token of the last {cfg.sliding_window} (local layers)"
    if len(own) < cfg.n_layers:
        text += f"; {cfg.n_layers - len(own)} KV-shared layers store none"
    return ("kv cache", text)


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# train-tiny and lab
# ---------------------------------------------------------------------------------------------


def run_train_tiny(argv: list[str]) -> int:
    try:
        module = importlib.import_module("gemma_lab.tiny.train")
    except ModuleNotFoundError as error:
        if error.name != "gemma_lab.tiny.train":
            raise
        raise CLIError("train-tiny is not available: this installation has no gemma_lab.tiny.train") from None
    return module.main(argv) or 0


def run_lab(args, extra: list[str]) -> int:
    if importlib.util.find_spec("jupyterlab") is None:
        raise CLIError("JupyterLab is not installed; install it with: pip install -e \".[lab]\"")
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    if not notebooks.is_dir():
        raise CLIError(f"the lesson notebooks were not found (looked in {notebooks}); they come with the "
                       "source checkout")
    lessons = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    env = dict(os.environ)
    if args.model:
        env["GEMMA_LAB_MODEL"] = args.model
    command = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebooks}", *extra]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
        command.append("--allow-root")  # containers and workshop VMs often run as root; Jupyter refuses otherwise
    if lessons:
        command.append(str(lessons[0]))
    return subprocess.call(command, env=env)
