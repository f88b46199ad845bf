"""The bundled tiny Gemma (data/tiny-gemma): it loads like any checkpoint, in gemma_lab and in
transformers with the same logits, and it has the circuits its model card promises.

Also a smoke test of the script that trains it (``gemma_lab.tiny.train``), at toy size, so the
script keeps working. The thresholds here are the issue's; the card reports the measured figures.
"""

from __future__ import annotations

import itertools
import json
import random
import time

import pytest
import torch

import gemma_lab
from gemma_lab.tiny import corpus
from gemma_lab.tiny import evaluate as tiny_eval
from gemma_lab.tiny import train as train_tiny
from gemma_lab.bundled import tiny_model_dir
from gemma_lab.tokenizer import load_tokenizer

SPAN = 50

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    # The loader builds the model on the meta device; the first meta-device use in a process makes
    # torch import its reference kernels (seconds on a busy CPU). Pay that once here, so the timing
    # below measures reading this checkpoint, which is what the bound is about.
    with torch.device("meta"):
        gemma_lab.Gemma(gemma_lab.GemmaConfig.from_preset("test-gemma3"))
    start = time.perf_counter()
    model = gemma_lab.load_pretrained("tiny")
    tokenizer = load_tokenizer("tiny")
    seconds = time.perf_counter() - start
    return model, tokenizer, seconds


@pytest.fixture(scope="module")
def repeated(tiny):
    _, tokenizer, _ = tiny
    return tiny_eval.repeated_tokens_batch(tokenizer, batch=8, span=SPAN)


def test_loads_like_any_checkpoint_and_fast(tiny):
    model, tokenizer, seconds = tiny
    assert seconds < 2.0, f"loading the tiny model took {seconds:.2f} s"
    assert not model.training
    assert model.dtype == torch.float32
    assert model.cfg.family == 3 and model.cfg.qk_norm and model.cfg.sandwich_norms
    assert set(model.cfg.layer_types) == {"local", "global"}
    assert model.cfg.attention_kind == "grouped-query"
    assert tokenizer.vocab_size == model.cfg.vocab_size
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 2)


def test_shipped_files():
    folder = tiny_model_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "README.md", "loss_curve.png"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size < 20 * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["architectures"] == ["Gemma3ForCausalLM"]


def test_has_induction_and_previous_token_heads(tiny, repeated):
    model, _, _ = tiny
    scores = tiny_eval.head_scores(model, repeated, SPAN)
    assert scores["induction"].max() >= 0.5, scores["induction"]
    assert scores["previous_token"].max() >= 0.5, scores["previous_token"]


def test_copies_in_context(tiny, repeated):
    model, _, _ = tiny
    copying = tiny_eval.copying_loss(model, repeated, SPAN)
    assert copying["second_copy"] < 0.3 * copying["first_copy"], copying


@pytest.mark.parametrize("span, with_bos", [(20, True), (100, True), (50, False)])
def test_induction_holds_for_other_spans_and_any_token_ids(tiny, span, with_bos):
    """Spans short and long (up to the sliding window), ids drawn from the whole vocabulary (control
    tokens included, as ``torch.randint(0, vocab)`` draws them), with and without ``<bos>``."""
    model, tokenizer, _ = tiny
    ids = torch.randint(0, tokenizer.vocab_size, (6, span), generator=torch.Generator().manual_seed(span))
    tokens = torch.cat([ids, ids], dim=1)
    if with_bos:
        tokens = torch.cat([torch.full((6, 1), tokenizer.bos_id), tokens], dim=1)
    first = 1 if with_bos else 0  # index of the first copy's first token
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    second = torch.arange(first + span, first + 2 * span)
    best = max(cache["pattern", layer][:, :, second, second - span + 1].mean(dim=(0, 2)).max().item()
               for layer in range(model.cfg.n_layers))
    assert best >= 0.5, best
    logits = model(tokens)[:, :-1]
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    losses = losses.view(tokens.shape[0], -1)  # index i predicts token i + 1
    first_copy, second_copy = losses[:, first : first + span - 1].mean(), losses[:, first + span :].mean()
    assert second_copy < 0.3 * first_copy, (first_copy, second_copy)


def test_indirect_object_identification_on_heldout_prompts(tiny):
    model, tokenizer, _ = tiny
    ioi = tiny_eval.ioi_accuracy(model, tokenizer, n=200)
    assert ioi["accuracy"] >= 0.9, ioi


def test_classic_ioi_prompt(tiny):
    model, tokenizer, _ = tiny
    logits = model(torch.tensor([tokenizer.encode("When Mary and John went to the store, John gave a drink to")]))
    mary, john = (tokenizer.encode(" " + name, add_bos=False)[0] for name in ("Mary", "John"))
    assert logits[0, -1, mary] > logits[0, -1, john]


def test_factual_recall_is_reported(tiny):
    model, tokenizer, _ = tiny
    facts = tiny_eval.factual_recall(model, tokenizer)
    assert 0.0 <= facts["accuracy"] <= 1.0 and facts["n"] > 50


def test_transformers_gives_the_same_logits(tiny):
    transformers = pytest.importorskip("transformers")
    model, tokenizer, _ = tiny
    hf = transformers.Gemma3ForCausalLM.from_pretrained(
        str(tiny_model_dir()), attn_implementation="eager", dtype=torch.float32
    ).eval()
    text = "When Mary and John went to the store, John gave a drink to Mary. " * 10  # > sliding window
    tokens = torch.tensor([tokenizer.encode(text)])
    assert tokens.shape[1] > model.cfg.sliding_window
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_training_script_runs(tmp_path):
    out = tmp_path / "toy"
    argv = ["--out", str(out), "--steps", "3", "--d-model", "32", "--n-layers", "2", "--vocab-size", "512",
            "--tokenizer-docs", "2000", "--batch-size", "2", "--seq-len", "64", "--sliding-window", "16",
            "--eval-every", "2", "--eval-batches", "1", "--ioi-prompts", "10", "--final-ioi-prompts", "10",
            "--sample-tokens", "2", "--threads", "1"]
    assert train_tiny.main(argv) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.model", "README.md", "loss_curve.png"):
        assert (out / name).is_file(), name
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps_done"] == 3 and len(log["history"]["train_loss"]) == 3
    model = gemma_lab.load_pretrained(out)
    assert model.cfg.d_model == 32 and model.cfg.vocab_size == 512
    assert "--steps 3" in (out / "README.md").read_text()


def _segments(row: list[int], bos: int) -> list[list[int]]:
    """The ``<bos>``-separated segments of a row (the first starts at index 0)."""
    assert row[0] == bos
    cuts = [i for i, t in enumerate(row) if t == bos] + [len(row)]
    return [row[a + 1 : b] for a, b in itertools.pairwise(cuts)]


def test_repeat_rows_hold_spans_written_twice_and_alternating_pairs(tiny):
    _, tokenizer, _ = tiny
    rng = random.Random(0)
    kinds = {"span": 0, "alternation": 0}
    for _ in range(50):
        row = train_tiny.repeat_row(rng, tokenizer, 257, alternations=0.5)
        assert len(row) == 257
        *whole, _cut = _segments(row, tokenizer.bos_id)  # the last segment may be cut by the row's end
        for segment in whole:
            assert min(segment) >= len(corpus.SPECIAL_PIECES), "random segments never hold control tokens"
            half = len(segment) // 2
            if len(segment) >= 8 and segment[:2] * (len(segment) // 2) == segment and segment[0] != segment[1]:
                kinds["alternation"] += 1
            else:
                assert segment[:half] == segment[half:], "a span is written twice"
                kinds["span"] += 1
    assert kinds["span"] > 10 and kinds["alternation"] > 10, kinds
    only_spans = train_tiny.repeat_row(random.Random(1), tokenizer, 257, alternations=0.0)
    for segment in _segments(only_spans, tokenizer.bos_id)[:-1]:
        assert segment[: len(segment) // 2] == segment[len(segment) // 2 :]
    short = train_tiny.repeat_row(random.Random(2), tokenizer, 257, alternations=0.0, span_lengths=(3, 5))
    lengths = {len(segment) // 2 for segment in _segments(short, tokenizer.bos_id)[:-1]}
    assert lengths == {3, 4, 5}, "span_lengths bounds the spans (lesson 18 varies them to rule out a positional trick)"


def test_damp_block_outputs_sets_only_the_post_norm_gains():
    model = gemma_lab.init_weights(gemma_lab.Gemma(gemma_lab.GemmaConfig.from_preset("test-gemma3")), seed=0)
    before = {name: p.clone() for name, p in model.named_parameters()}
    train_tiny.damp_block_outputs(model, 0.1)
    for name, param in model.named_parameters():
        if "_post" in name:
            torch.testing.assert_close(1 + param, torch.full_like(param, 0.1))  # stored as offsets from 1
        else:
            assert torch.equal(param, before[name]), name
