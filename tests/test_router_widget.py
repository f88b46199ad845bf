"""RouterExplorer (gemma_lab/widgets/moe.py), driven headless: set its controls, compare what it shows
with an independent forward pass of the same tokens.

The model is a random-weight ``test-gemma4`` with 8 experts (2 per token) and random per-expert
scales, sized to the bundled tiny tokenizer's vocabulary. What it shows must be the router's own
hook values (``torch.equal``), not a recomputation.
"""

from __future__ import annotations

import html

import pytest
import torch

import gemma_lab
from gemma_lab import PRESETS
from gemma_lab.widgets import RouterExplorer
from gemma_lab.widgets._common import MAX_PROMPT_TOKENS
from gemma_lab.widgets.moe import SHOW_PROBS, SHOW_WEIGHTS

pytestmark = pytest.mark.usefixtures("widget_outputs", "one_torch_thread")

TEXT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def tokenizer():
    return gemma_lab.load_tokenizer("tiny")


@pytest.fixture(scope="module")
def model(tokenizer):
    vocab = tokenizer.vocab_size
    cfg = PRESETS["test-gemma4"].replace(vocab_size=vocab, vocab_per_layer=vocab, n_experts=8)
    model = gemma_lab.init_weights(gemma_lab.Gemma(cfg), seed=1, std=0.1).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            block.moe.router.per_expert_scale.copy_(torch.rand(cfg.n_experts, generator=generator) + 0.5)
    return model


def reference_cache(model, tokenizer, text):
    tokens = torch.tensor([tokenizer.encode(text)])
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: ".moe.router." in name)
    return tokens, cache


def test_the_heatmap_is_the_routers_weights_at_the_chosen_experts(model, tokenizer, widget_outputs):
    explorer = RouterExplorer(model, tokenizer, text=TEXT, layer=2)
    tokens, cache = reference_cache(model, tokenizer, TEXT)
    n_pos, top_k, n_experts = tokens.shape[1], model.cfg.n_experts_active, model.cfg.n_experts
    assert torch.equal(explorer.chosen, cache["blocks.2.moe.router.hook_chosen"][0])
    assert torch.equal(explorer.weights, cache["blocks.2.moe.router.hook_weights"][0])
    assert explorer.grid.shape == (n_pos, n_experts)
    for pos in range(n_pos):
        row = explorer.grid[pos]
        chosen = explorer.chosen[pos]
        assert torch.equal(row[chosen], explorer.weights[pos])  # the weights, at the chosen experts
        others = torch.ones(n_experts, dtype=torch.bool)
        others[chosen] = False
        assert torch.all(row[others] == 0)  # nothing anywhere else
    # Renormalised then scaled: the weights divided by the scales sum to 1 per token.
    scales = model.blocks[2].moe.router.per_expert_scale.detach()[explorer.chosen]
    torch.testing.assert_close((explorer.weights / scales).sum(-1), torch.ones(n_pos))
    assert int(explorer.load.sum()) == n_pos * top_k
    assert torch.equal(explorer.load, torch.bincount(explorer.chosen.flatten(), minlength=n_experts))
    # One picture, with one outline per (token, chosen expert).
    assert len(widget_outputs.pngs(explorer.out)) == 1
    outlines = [patch for patch in explorer.figure.axes[0].patches]
    assert len(outlines) == n_pos * top_k
    assert {(round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in outlines} == {
        (expert, pos) for pos in range(n_pos) for expert in explorer.chosen[pos].tolist()}


def test_the_layer_selector_and_the_probability_switch_redraw_from_the_cache(model, tokenizer, widget_outputs):
    explorer = RouterExplorer(model, tokenizer, text=TEXT)
    _, cache = reference_cache(model, tokenizer, TEXT)
    assert torch.equal(explorer.chosen, cache["blocks.0.moe.router.hook_chosen"][0])
    redraws = explorer.redraws
    explorer.layer_select.value = 5
    assert explorer.redraws == redraws + 1
    assert torch.equal(explorer.chosen, cache["blocks.5.moe.router.hook_chosen"][0])
    assert torch.equal(explorer.weights, cache["blocks.5.moe.router.hook_weights"][0])
    assert not torch.equal(cache["blocks.5.moe.router.hook_chosen"], cache["blocks.0.moe.router.hook_chosen"])
    explorer.show.value = SHOW_PROBS
    assert torch.equal(explorer.grid, cache["blocks.5.moe.router.hook_probs"][0])
    torch.testing.assert_close(explorer.grid.sum(-1), torch.ones(explorer.grid.shape[0]))
    assert "router probabilities" in explorer.figure.axes[0].get_title()
    explorer.show.value = SHOW_WEIGHTS
    assert int((explorer.grid > 0).sum()) == explorer.grid.shape[0] * model.cfg.n_experts_active
    assert len(widget_outputs.pngs(explorer.out)) == 1  # each redraw replaces the picture


def test_the_text_box_reruns_the_model_and_bad_text_is_shown_not_raised(model, tokenizer, widget_outputs):
    explorer = RouterExplorer(model, tokenizer, text=TEXT, layer=3)
    explorer.text_box.value = "red fish blue bird"
    tokens, cache = reference_cache(model, tokenizer, "red fish blue bird")
    assert explorer.grid.shape[0] == tokens.shape[1]
    assert torch.equal(explorer.chosen, cache["blocks.3.moe.router.hook_chosen"][0])
    assert "red" in explorer.details.value
    explorer.text_box.value = "a " * (MAX_PROMPT_TOKENS + 10)
    assert explorer.error and "at most" in explorer.error
    assert not widget_outputs.pngs(explorer.out)
    explorer.layer_select.value = 1  # a control moved while the text is bad: nothing breaks
    explorer.text_box.value = TEXT
    assert explorer.error is None and explorer.layer_select.value == 1
    _, cache = reference_cache(model, tokenizer, TEXT)
    assert torch.equal(explorer.chosen, cache["blocks.1.moe.router.hook_chosen"][0])


def test_out_of_range_settings_are_noted_and_a_model_without_experts_is_refused(model, tokenizer):
    explorer = RouterExplorer(model, tokenizer, text=TEXT, layer=99, show="logits")
    assert explorer.layer_select.value == 0 and explorer.show.value == SHOW_WEIGHTS
    notice = html.unescape(explorer.notice.value)
    assert "layer=99" in notice and "show='logits'" in notice
    dense = gemma_lab.init_weights(gemma_lab.Gemma(PRESETS["test-gemma3"].replace(vocab_size=tokenizer.vocab_size)))
    with pytest.raises(ValueError, match="n_experts > 0"):
        RouterExplorer(dense, tokenizer, text=TEXT)
