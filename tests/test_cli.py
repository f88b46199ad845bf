"""The gemma-lab command, run in-process through ``main([...])`` and once as ``python -m gemma_lab``.

The checkpoint is a random-weight Gemma 2 written by transformers; its tokenizer.model is trained
here with SentencePiece (``gemma_lab.tiny.tokenizer_training``), so no file is downloaded.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hf_checkpoints import write_checkpoint

import gemma_lab
from gemma_lab import cli
from gemma_lab.placement import quantized_weight_bytes
from gemma_lab.tiny.corpus import generate_corpus
from gemma_lab.tiny.tokenizer_training import train_tokenizer
from gemma_lab.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 400


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    train_tokenizer(generate_corpus(seed=0, n_documents=300), folder, vocab_size=VOCAB)
    write_checkpoint(folder, 2, seed=4, vocab_size=VOCAB)
    return folder


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return gemma_lab.load_pretrained(checkpoint), load_tokenizer(checkpoint)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_the_same_text_as_the_api(capsys, checkpoint, loaded):
    model, tokenizer = loaded
    code, out, err = run(capsys, "generate", "--model", checkpoint, "--max-new-tokens", 12, "Mary went to")
    assert code == 0
    expected = gemma_lab.generate(model, "Mary went to", tokenizer=tokenizer, max_new_tokens=12)
    assert out == expected.text + "\n"
    assert "tokens/s" in err and "Traceback" not in err


def test_generate_sampling_flags_are_passed_on(capsys, checkpoint, loaded):
    model, tokenizer = loaded
    flags = ["--temperature", 0.8, "--top-k", 40, "--top-p", 0.9, "--min-p", 0.01, "--repetition-penalty", 1.1,
             "--seed", 5, "--max-new-tokens", 10, "--dtype", "float32"]
    code, out, _ = run(capsys, "generate", "--model", checkpoint, *flags, "The")
    assert code == 0
    expected = gemma_lab.generate(model, "The", tokenizer=tokenizer, max_new_tokens=10, temperature=0.8, top_k=40,
                                  top_p=0.9, min_p=0.01, repetition_penalty=1.1, seed=5)
    assert out == expected.text + "\n"


def test_show_top_k_prints_candidates_per_step(capsys, checkpoint, loaded):
    model, tokenizer = loaded
    code, out, _ = run(capsys, "generate", "--model", checkpoint, "--max-new-tokens", 5, "--show-top-k", 3, "Mary")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("step") and "top 3" in lines[0]
    records = list(gemma_lab.stream(model, "Mary", tokenizer=tokenizer, max_new_tokens=5, top_k_candidates=3))
    assert len(records) == 5
    for line, record in zip(lines[1:6], records, strict=True):
        assert line.split()[0] == str(record.step) and f"({record.token_id})" in line
        assert line.count(f"{record.candidates[0].model_prob:.3f}") >= 1 and line.count(", ") >= 2
    assert out.endswith("\n\n" + "".join(r.text for r in records) + "\n")


def test_chat_reads_piped_stdin_until_exit(capsys, monkeypatch, checkpoint, loaded):
    model, tokenizer = loaded

    def reply(messages):
        prompt = tokenizer.apply_chat_template(messages, tokenize=True)
        return gemma_lab.generate(model, prompt, tokenizer=tokenizer, max_new_tokens=6).text

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n\n/reset\nwho are you?\n/exit\nnot read\n"))
    code, out, err = run(capsys, "chat", "--model", checkpoint, "--max-new-tokens", 6)
    assert code == 0 and "(new conversation)" in err
    hello = reply([{"role": "user", "content": "hello there"}])
    who = reply([{"role": "user", "content": "who are you?"}])  # after /reset: a fresh conversation
    assert out == hello + "\n" + who + "\n"
    # End of input ends the chat too; a second turn carries the first one in its prompt.
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\nand then?\n"))
    code, out, _ = run(capsys, "chat", "--model", checkpoint, "--max-new-tokens", 6)
    then = reply([{"role": "user", "content": "hello there"}, {"role": "assistant", "content": hello},
                  {"role": "user", "content": "and then?"}])
    assert code == 0 and out == hello + "\n" + then + "\n"


def test_chat_system_message_needs_gemma3_template(capsys, monkeypatch, checkpoint):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    code, _, err = run(capsys, "chat", "--model", checkpoint, "--system", "Be brief.")
    assert code == 1 and "system role" in err


def test_info_reads_the_config_only(capsys, checkpoint, loaded, tmp_path):
    model, _ = loaded
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(checkpoint / name, folder / name)
    (folder / "model.safetensors").write_bytes(b"not a checkpoint at all")  # loading it would fail
    code, out, _ = run(capsys, "info", folder)
    assert code == 0
    fields = dict(line.strip().split("  ", 1) for line in out.splitlines()[1:] if line.startswith("  "))
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["family"] == "Gemma 2"
    assert fields["layers"].startswith("4 (2 local sliding-window, 2 global)")
    assert fields["layer pattern"].startswith("LGLG")
    assert fields["d_model"] == "64" and fields["vocab"] == str(VOCAB) and fields["d_mlp"].startswith("96")
    assert fields["heads"] == "4 query, 2 key/value (grouped-query), d_head 16"
    assert fields["sliding window"] == "8 tokens"
    assert fields["parameters"].startswith(f"{model.n_params():,} ")
    assert fields["memory"].startswith("bf16 ")
    for kind in ("int8", "int4"):  # as load_pretrained(quantize=kind) lays the weights out
        assert f"{kind} {cli._size(quantized_weight_bytes(model.cfg, kind))}" in fields["memory"]
    assert "model.safetensors" in out and "23 B" in out and "tokenizer.model" in out and "config.json" in out


def test_info_on_a_preset_and_a_sharded_checkpoint(capsys, tmp_path):
    code, out, _ = run(capsys, "info", "gemma3-1b")
    assert code == 0 and "Gemma 3" in out and "LLLLLG" in out and "\nfiles\n" not in out
    write_checkpoint(tmp_path, 1, max_shard_size="60KB")
    code, out, _ = run(capsys, "info", tmp_path)
    assert code == 0 and "model-00001-of-" in out and "model.safetensors.index.json" in out


def test_errors_are_one_line_without_traceback(capsys, checkpoint, tmp_path):
    cases = [
        (["generate", "--model", tmp_path / "missing", "hi"], 1, "no such checkpoint"),
        (["generate", "--model", checkpoint, "--temperature", "-1", "hi"], 1, "temperature must be"),
        (["generate", "--model", checkpoint, "--max-new-tokens", "100000", "hi"], 1, "exceeds the model's max_seq_len"),
        (["generate", "--model", checkpoint, ""], 1, "empty"),
        (["info", tmp_path / "missing"], 1, "not a preset"),
        (["generate", "--no-such-flag", "hi"], 2, "unrecognized arguments: --no-such-flag"),
        (["generate", "--top-k", "many", "hi"], 2, "invalid int value"),
        (["frobnicate"], 2, "invalid choice"),
    ]
    for argv, expected_code, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == expected_code, argv
        assert message in err and "Traceback" not in err, argv
        if expected_code == 1:
            assert err.startswith("gemma-lab: error: ") and err.count("\n") == 1, err
    with pytest.raises(FileNotFoundError):
        cli.main(["generate", "--debug", "--model", str(tmp_path / "missing"), "hi"])
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "generate", "--model", str(tmp_path / "missing"), "hi"])
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err


def test_help_documents_every_flag(capsys):
    parser = cli.build_parser()
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("generate", "chat", "info", "train-tiny", "lab"):
        assert name in out
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        if name == "train-tiny":
            continue
        code, out, _ = run(capsys, name, "--help")
        assert code == 0
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in out, (name, flag)
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_train_tiny_dispatches_lazily(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("gemma_lab.tiny.train")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "gemma_lab.tiny.train", fake)
    assert cli.main(["train-tiny", "--steps", "3", "--help"]) == 0
    assert calls == [["--steps", "3", "--help"]]
    monkeypatch.setitem(sys.modules, "gemma_lab.tiny.train", None)  # as if the module were missing
    code, _, err = run(capsys, "train-tiny")
    assert code == 1 and "train-tiny is not available" in err


def test_lab_starts_jupyterlab_on_the_lessons(capsys, monkeypatch):
    launched = []
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(cli.subprocess, "call", lambda command, env: launched.append((command, env)) or 0)
    assert cli.main(["lab", "--model", "/some/gemma-2b", "--port", "8899"]) == 0
    (command, env), = launched
    assert command[1:3] == ["-m", "jupyterlab"] and "--port" in command
    assert env["GEMMA_LAB_MODEL"] == "/some/gemma-2b"
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    code, _, err = run(capsys, "lab")
    assert code == 1 and "JupyterLab is not installed" in err


def test_python_dash_m_gemma_lab_runs_in_a_subprocess(checkpoint, loaded):
    model, tokenizer = loaded
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "gemma_lab", "generate", "--model", str(checkpoint), "--max-new-tokens", "8",
         "Mary went to"],
        capture_output=True, env=env, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    expected = gemma_lab.generate(model, "Mary went to", tokenizer=tokenizer, max_new_tokens=8).text
    assert done.stdout.decode("utf-8") == expected + "\n"
    missing = subprocess.run([sys.executable, "-m", "gemma_lab", "info", str(checkpoint / "nope")],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert missing.returncode == 1 and missing.stderr.startswith("gemma-lab: error: ")
    assert "Traceback" not in missing.stderr


# ---- hardening ------------------------------------------------------------------------------------

def test_generate_and_chat_keep_their_own_max_new_tokens(capsys, monkeypatch, checkpoint, loaded):
    """generate and chat share a parent parser: chat's default must not become generate's."""
    args, _ = cli.build_parser().parse_known_args(["generate", "x"])
    assert args.max_new_tokens is None  # filled in per command by main()
    seen = {}
    real_stream = gemma_lab.generation.stream

    def spy(*a, **kw):
        seen.setdefault(len(seen), kw["max_new_tokens"])
        return real_stream(*a, **kw)

    monkeypatch.setattr(gemma_lab.generation, "stream", spy)
    assert run(capsys, "generate", "--model", checkpoint, "Hello")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert run(capsys, "chat", "--model", checkpoint)[0] == 0
    assert seen[0] == cli.MAX_NEW_TOKENS["generate"] == 64 and seen[1] <= cli.MAX_NEW_TOKENS["chat"]


def test_a_closed_pipe_ends_generate_quietly(checkpoint, loaded):
    command = (f"{sys.executable} -m gemma_lab generate --model {checkpoint} 'Hello' --max-new-tokens 40 "
               f"--show-top-k 5 | head -c1")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr


def test_info_on_a_file_names_the_file_and_empty_prompts_get_cli_advice(capsys, tmp_path):
    lone = tmp_path / "weights.safetensors"
    lone.write_bytes(b"")
    code, _, err = run(capsys, "info", lone)
    assert code == 1 and f"{lone}: the folder it is in" in err
    code, _, err = run(capsys, "generate", "")
    assert code == 1 and "the prompt is empty" in err and "gemma-lab generate" in err and "bos_id" not in err


def test_chat_names_a_tokenizer_that_does_not_fit_the_model(capsys, monkeypatch, checkpoint):
    """The bundled tokenizer has 3072 pieces; the test checkpoint's embedding only 400 rows."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there friend\n"))
    code, _, err = run(capsys, "chat", "--model", checkpoint, "--tokenizer", "tiny")
    assert code == 1 and "do not belong together" in err and "3072" in err


def test_chat_on_the_tiny_model_uses_gemma3_formatting_and_survives_bad_bytes(checkpoint):
    done = subprocess.run([sys.executable, "-m", "gemma_lab", "chat", "--model", "tiny", "--system", "Be brief.",
                           "--max-new-tokens", "3"], input="caf\xe9 au lait\nhello\n".encode("latin-1"),
                          capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr
