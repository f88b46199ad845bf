"""TransformerLens itself as an oracle for HookedGemma (optional: skipped unless it is installed).

transformer-lens 4.3.0 installs without moving torch 2.13.0 (``pip install -e ".[tl-oracle]"``);
the tests pass with 3.9.0 too.
Its own functions, given a HookedGemma, must agree with gemma_lab: activation patching with
``gemma_lab.interp``'s to 0.0, ``FactoredMatrix`` decompositions, ``get_act_name`` spellings,
the loss, and ``test_prompt``'s ranks.
"""

from __future__ import annotations

import pytest
import torch

transformer_lens = pytest.importorskip("transformer_lens")
from transformer_lens import patching, utilities

from gemma_lab import (
    FactoredMatrix,
    HookedGemma,
    interp,
    tl_utils,
)

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def setup():
    model = HookedGemma.from_pretrained("tiny", requires_grad=False)
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def metric(logits):
        return logits[0, -1, mary] - logits[0, -1, john]

    _, clean_cache = model.run_with_cache(clean)
    return model, corrupted, clean_cache, metric


def test_transformerlens_patching_agrees_with_interp_exactly(setup):
    model, corrupted, clean_cache, metric = setup
    theirs = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert torch.equal(theirs, interp.patch_by_layer_pos(model.model, corrupted, clean_cache, metric, progress=False))
    theirs = patching.get_act_patch_attn_out(model, corrupted, clean_cache, metric)
    ours = interp.patch_by_layer_pos(model.model, corrupted, clean_cache, metric, activation="attn_out", progress=False)
    assert torch.equal(theirs, ours)
    theirs = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    assert torch.equal(theirs, interp.patch_by_head(model.model, corrupted, clean_cache, metric, progress=False))
    theirs = patching.get_act_patch_attn_head_v_all_pos(model, corrupted, clean_cache, metric)
    ours = interp.patch_by_head(model.model, corrupted, clean_cache, metric, activation="v", progress=False)
    assert torch.equal(theirs[:, : model.cfg.n_key_value_heads], ours)


def test_transformerlens_factored_matrix_agrees(setup):
    model = setup[0]
    ours = model.OV[1]
    theirs = transformer_lens.FactoredMatrix(model.W_V[1], model.W_O[1])
    torch.testing.assert_close(ours.AB, theirs.AB)
    torch.testing.assert_close(ours.S, theirs.S, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.norm(), theirs.norm(), rtol=1e-4, atol=1e-5)
    # Singular vectors agree up to sign, column by column.
    signs = torch.sign((ours.U * theirs.U).sum(dim=-2, keepdim=True))
    torch.testing.assert_close(ours.U * signs, theirs.U, rtol=1e-3, atol=1e-4)
    theirs_v = theirs.V if hasattr(type(theirs), "V") else theirs.Vh  # 4.x renamed Vh (always V) to V
    torch.testing.assert_close(ours.V * signs, theirs_v, rtol=1e-3, atol=1e-4)
    by_size = lambda values: values.gather(-1, values.abs().argsort(dim=-1))
    torch.testing.assert_close(by_size(ours.eigenvalues), by_size(theirs.eigenvalues), rtol=1e-4, atol=1e-5)
    assert isinstance(model.W_E @ ours @ model.W_U, FactoredMatrix)


def test_transformerlens_names_and_loss_agree(setup):
    model, corrupted = setup[0], setup[1]
    for args in [("resid_pre", 1), ("v", 0), ("z", 2, "attn"), ("attn", 1, "attn"), ("pattern", 3), ("post", 1),
                 ("scale", 0, "ln1"), ("scale",), ("normalized", 2, "ln2"), ("q_input", 2), ("mlp_in", 0),
                 ("embed",), ("pattern3",), ("blocks.0.hook_resid_post",)]:
        assert tl_utils.get_act_name(*args) == utilities.get_act_name(*args), args
    logits = model(corrupted)
    torch.testing.assert_close(model.loss_fn(logits, corrupted), utilities.lm_cross_entropy_loss(logits, corrupted))
    torch.testing.assert_close(model.loss_fn(logits, corrupted, per_token=True),
                               utilities.lm_cross_entropy_loss(logits, corrupted, per_token=True))


def test_transformerlens_test_prompt_ranks_agree(setup, capsys):
    model = setup[0]
    utilities.test_prompt("The capital of France is", " Paris", model, prepend_bos=True)
    theirs = capsys.readouterr().out
    ours = tl_utils.test_prompt("The capital of France is", " Paris", model, print_details=False)
    assert f"Rank: {ours.ranks[0]}" in theirs
    assert f"Ranks of the answer tokens: [(' Paris', {ours.ranks[0]})]" in theirs
