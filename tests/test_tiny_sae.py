"""The SAE and transcoder bundled in data/tiny-sae: they load as documented, splice into the tiny Gemma,
the card's figures are the ones in their cfg.json and are reproduced on the held-out documents, and
every feature the card names does what the card says on its top-activating contexts."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch

import gemma_lab
from gemma_lab.tiny import corpus
from gemma_lab.tiny.sae import tiny_token_rows
from gemma_lab.sae import Transcoder, load_sae
from gemma_lab.sae import features as F
from gemma_lab.sae import training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "data" / "tiny-sae" / "README.md"
NAMES = {" " + name for name in corpus.NAMES}

# feature -> (what the card calls it, the centre tokens allowed, how many of the top 10 must be one)
RESID_CLAIMS = {
    288: ("a person's name", NAMES, 10),
    209: ("` Monday`", {" Monday"}, 10),
    372: ("the digit `5`", {"5"}, 10),
    73: ("` to` before the recipient in IOI sentences", {" to"}, 9),
    4: ("`<end_of_turn>`", {"<end_of_turn>"}, 10),
    420: ("`model` after `<start_of_turn>`", {"model"}, 10),
}
TRANSCODER_CLAIMS = {
    14: ("` color` / ` colour` in questions", {" color", " colour"}, 10),
    43: ("`user` after `<start_of_turn>`", {"user"}, 10),
    105: ("` to` in IOI sentences", {" to"}, 10),
    71: ("` after` (\"what comes after\")", {" after"}, 10),
}


@pytest.fixture(scope="module")
def model():
    return gemma_lab.load_pretrained("tiny")


@pytest.fixture(scope="module")
def tokenizer():
    return gemma_lab.load_tokenizer("tiny")


def test_bundled_saes_load_and_splice(model):
    sae, tc = load_sae("tiny", model=model), load_sae("tiny-transcoder", model=model, use_error_term=True)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name, sae.cfg.d_sae) == (
        "topk", 16, "blocks.1.hook_resid_post", 512)
    assert isinstance(tc, Transcoder) and (tc.cfg.hook_name, tc.cfg.hook_name_out) == (
        "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    tokens = torch.tensor([[2, 651, 8, 300, 301, 302, 300, 301]])
    sae.use_error_term = True
    assert torch.equal(model.run_with_hooks(tokens, saes=[sae, tc]), model(tokens))


def card_figures() -> dict[str, dict[str, float]]:
    """``{"resid": {"l0": ..., "fvu": ..., "dead": ...}, "transcoder": {...}}`` from the card's table."""
    text = CARD.read_text()
    figures = {}
    for name in ("resid", "transcoder"):
        row = re.search(rf"^\| `{name}` \|(.+)$", text, re.M).group(1).split("|")
        figures[name] = {"l0": float(row[3]), "fvu": float(row[4]), "dead": int(row[5].split("/")[0])}
    return figures


def test_card_figures_are_the_saved_ones():
    for name, figures in card_figures().items():
        saved = json.loads((ROOT / "data" / "tiny-sae" / name / "cfg.json").read_text())["gemma_lab"]["heldout"]
        assert figures == {key: saved[key] for key in figures}, name
    assert "python -m gemma_lab.tiny.sae --out data/tiny-sae" in CARD.read_text()


@pytest.mark.slow
def test_card_figures_are_reproduced_on_the_heldout_documents(model, tokenizer):
    saved = json.loads((ROOT / "data" / "tiny-sae" / "resid" / "cfg.json").read_text())["gemma_lab"]
    n_docs = 600  # --eval-docs of the card's command
    rows, _ = tiny_token_rows(tokenizer, n_docs, seed=saved["train"]["seed"], split="heldout")
    sites = ["blocks.1.hook_resid_post", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"]
    acts = training.collect_activations(model, rows, sites, progress=False)
    figures = card_figures()
    resid = training.evaluate(load_sae("tiny"), acts[sites[0]])
    tc = training.evaluate(load_sae("tiny-transcoder"), acts[sites[1]], acts[sites[2]])
    for name, measured in (("resid", resid), ("transcoder", tc)):
        assert measured["l0"] == pytest.approx(figures[name]["l0"], abs=2e-3)
        assert measured["fvu"] == pytest.approx(figures[name]["fvu"], abs=2e-4)
        assert measured["dead"] == figures[name]["dead"]


@pytest.fixture(scope="module")
def heldout_rows(tokenizer):
    docs = itertools.islice(corpus.iter_tagged_documents(0, "heldout"), 300)
    return [tokenizer.encode(text) for _, text in docs]


@pytest.mark.slow
@pytest.mark.parametrize("name, claims", [("tiny", RESID_CLAIMS), ("tiny-transcoder", TRANSCODER_CLAIMS)])
def test_named_features_do_what_the_card_says(model, tokenizer, heldout_rows, name, claims):
    sae = load_sae(name)
    acts = []
    for start in range(0, len(heldout_rows), 32):
        acts += F.feature_acts_of_rows(model, sae, heldout_rows[start:start + 32])
    card = CARD.read_text()
    for feature, (meaning, allowed, needed) in claims.items():
        assert f"| {feature} | {meaning} |" in card, (feature, meaning)
        found = F.contexts_from_acts(heldout_rows, acts, feature, k=10)
        assert (found.values > 0).all(), f"feature {feature} fires on fewer than 10 tokens"
        centres = [tokenizer.to_str_tokens([context[centre]], add_bos=False)[0]
                   for context, centre in zip(found.contexts, found.centre)]
        hits = sum(token in allowed for token in centres)
        assert hits >= needed, (feature, centres)
        if "after `<start_of_turn>`" in meaning:
            previous = [tokenizer.to_str_tokens([context[centre - 1]], add_bos=False)[0]
                        for context, centre in zip(found.contexts, found.centre)]
            assert set(previous) == {"<start_of_turn>"}, previous


def test_docs_example_runs_as_written():
    """docs/sae.md's example, executed exactly as written."""
    text = (ROOT / "docs" / "sae.md").read_text()
    blocks = re.findall(r"```python\n(.+?)\n```", text, re.S)
    assert blocks, "docs/sae.md has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "docs/sae.md", "exec"), namespace)
    assert not torch.equal(namespace["ablated"], namespace["logits"])
