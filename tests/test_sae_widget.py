"""FeatureExplorer, driven headless (see tests/test_widgets.py for the pattern): set the controls and
check what it shows against gemma_lab.sae.features called directly on the same model and SAE."""

from __future__ import annotations

import pytest
import torch

import gemma_lab
from gemma_lab.sae import SAEConfig, load_sae, make_sae
from gemma_lab.sae import features as F
from gemma_lab.widgets import FeatureExplorer

pytestmark = pytest.mark.usefixtures("widget_outputs", "one_torch_thread")
TEXT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return gemma_lab.load_pretrained("tiny"), gemma_lab.load_tokenizer("tiny")


@pytest.fixture(scope="module")
def sae():
    sae = make_sae(SAEConfig(d_in=128, d_sae=48, architecture="relu", hook_name="blocks.1.hook_resid_post"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return sae


def test_feature_explorer_shows_the_features_numbers(model_and_tokenizer, sae, widget_outputs):
    model, tokenizer = model_and_tokenizer
    explorer = FeatureExplorer(model, tokenizer, sae, TEXT, feature=3, k=5)
    tokens = torch.tensor([tokenizer.encode(TEXT)])
    acts = F.feature_activations(model, sae, tokens)[0]
    assert torch.equal(explorer.prompt_acts, acts[:, 3])
    assert torch.equal(explorer.logit_effects.effects, F.feature_logit_effects(model, sae, 3).effects)
    reference = [tokenizer.encode(t) for t in explorer_reference_texts()]
    expected = F.top_activating_contexts(model, sae, reference, 3, k=5, before=8, after=2)
    torch.testing.assert_close(explorer.contexts.values, expected.values)
    assert explorer.contexts.contexts == expected.contexts
    shown = " ".join(bundle.get("text/html", "") for bundle in explorer.out.recorded)
    assert "<b>feature 3</b>" in shown and f"{float(acts[:, 3].max()):.3f}" in shown

    # pick a token, then its strongest feature
    explorer.token_picker.value = 4
    strongest = int(acts[4].argmax())
    assert explorer.token_features[0][0] == strongest
    explorer.use_top_feature.click()
    assert explorer.feature == strongest and torch.equal(explorer.prompt_acts, acts[:, strongest])

    # ablate it live: the next-token distribution with the feature gone, from ablate_features itself
    explorer.ablate.value = True
    with torch.no_grad(), F.ablate_features(model, sae, strongest):
        expected_probs = torch.softmax(model(tokens)[0, -1].float(), dim=-1)
    assert torch.equal(explorer.ablated_probs, expected_probs)
    plain = torch.softmax(model(tokens)[0, -1].float(), dim=-1)
    assert torch.equal(explorer.next_token_probs, plain) and not torch.equal(expected_probs, plain)
    assert not any(p.has_hooks for p in model.hook_dict.values())

    # a new prompt recomputes; a prompt that is too long is refused with a message
    explorer.text_box.value = "The sky is blue."
    assert explorer.error is None and len(explorer.prompt_acts) == len(tokenizer.encode("The sky is blue."))
    explorer.text_box.value = "word " * 300
    assert explorer.error is not None and "at most" in explorer.error


def explorer_reference_texts():
    from gemma_lab.widgets.features import DEFAULT_REFERENCE_TEXTS

    return DEFAULT_REFERENCE_TEXTS


def test_a_model_without_its_sae_is_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="pass the SAE"):
        FeatureExplorer(model, tokenizer)


def test_defaults_to_the_tiny_gemma_and_its_bundled_sae(monkeypatch):
    monkeypatch.delenv("GEMMA_LAB_MODEL", raising=False)
    explorer = FeatureExplorer(feature=288)  # the card's name feature
    sae = load_sae("tiny")
    tokens = torch.tensor([explorer.tokenizer.encode(explorer.text_box.value)])
    expected = F.feature_activations(explorer.model, sae, tokens)[0, :, 288]
    torch.testing.assert_close(explorer.prompt_acts, expected)
    names = [explorer.tokenizer.to_str_tokens([c[i]], add_bos=False)[0]
             for c, i, v in zip(explorer.contexts.contexts, explorer.contexts.centre, explorer.contexts.values) if v > 0]
    assert names and all(name.strip().istitle() for name in names)  # names in the reference texts
