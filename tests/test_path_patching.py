"""Noising beside denoising, and path patching (gemma_lab.interp): each checked against a quantity
computed by hand from cached activations, or against ordinary activation patching where the two
must agree."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

import gemma_lab
from gemma_lab import interp

PRESETS = {1: "test-gemma", 2: "test-gemma2", 3: "test-gemma3"}


def small_model(family: int, seed: int = 0) -> gemma_lab.Gemma:
    cfg = gemma_lab.GemmaConfig.from_preset(PRESETS[family]).replace(n_layers=3)
    return gemma_lab.init_weights(gemma_lab.Gemma(cfg), seed=seed, std=0.1).eval()


def prompts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(seed))
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 100) % 512  # one changed token
    return clean, corrupted


def metric(logits):
    return (logits[:, -1, 5] - logits[:, -1, 9]).mean()


def cached(model, tokens):
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return float(metric(logits)), cache


def test_noising_runs_clean_with_corrupted_values_and_denoising_the_reverse():
    model = small_model(3)
    clean, corrupted = prompts()
    clean_metric, clean_cache = cached(model, clean)
    corrupted_metric, corrupted_cache = cached(model, corrupted)
    assert abs(clean_metric - corrupted_metric) > 1e-3
    # Replacing the whole stream entering a layer gives the other run exactly.
    for direction, expected in (("denoise", clean_metric), ("noise", corrupted_metric)):
        whole = interp.activation_patching(model, clean, corrupted, metric, direction=direction, by="layer",
                                           activation="resid_pre", progress=False)
        torch.testing.assert_close(whole, torch.full_like(whole, expected), rtol=1e-5, atol=1e-5)
    noised = interp.activation_patching(model, clean, corrupted, metric, direction="noise", by="head", progress=False)
    torch.testing.assert_close(noised, interp.patch_by_head(model, clean, corrupted_cache, metric, progress=False))
    denoised = interp.activation_patching(model, clean, corrupted, metric, by="layer", activation="mlp_out",
                                          progress=False)
    torch.testing.assert_close(denoised, interp.patch_by_layer(model, corrupted, clean_cache, metric,
                                                               activation="mlp_out", progress=False))
    with pytest.raises(ValueError, match="direction"):
        interp.activation_patching(model, clean, corrupted, metric, direction="forward")
    with pytest.raises(ValueError, match="by must be"):
        interp.activation_patching(model, clean, corrupted, metric, by="neuron")
    with pytest.raises(ValueError, match="same shape"):
        interp.activation_patching(model, clean, corrupted[:, :5], metric)


def test_path_patching_along_every_path_is_activation_patching_of_the_sender():
    model = small_model(3)
    clean, corrupted = prompts(1)
    _, clean_cache = cached(model, clean)
    _, corrupted_cache = cached(model, corrupted)
    noised = interp.path_patch_heads(model, clean, corrupted, metric, freeze="none", progress=False)
    torch.testing.assert_close(noised, interp.patch_by_head(model, clean, corrupted_cache, metric, progress=False))
    denoised = interp.path_patch(model, clean, corrupted, metric, [(1, 2), (2, 0)], freeze="none", direction="denoise")
    with torch.no_grad():
        by_hand = {1: clean_cache["z", 1], 2: clean_cache["z", 2]}
        hooks = [(f"blocks.{layer}.attn.hook_z", lambda z, hook, layer=layer, head=head: torch.cat(
            [z[:, :, :head], by_hand[layer][:, :, head:head + 1], z[:, :, head + 1:]], dim=2))
            for layer, head in ((1, 2), (2, 0))]
        expected = float(metric(model.run_with_hooks(corrupted, fwd_hooks=hooks)))
    assert denoised == pytest.approx(expected, abs=1e-5)


def _patched_attn_out(model, base_cache, source_cache, layer, heads):
    """What attention writes into the stream in ``layer`` when ``heads`` take their source z (by hand)."""
    z = base_cache["z", layer].clone()
    z[:, :, heads] = source_cache["z", layer][:, :, heads]
    block = model.blocks[layer]
    out = block.attn.o_proj(rearrange(z, "batch pos head d_head -> batch pos (head d_head)"))
    return block.ln1_post(out) if block.ln1_post is not None else out


@pytest.mark.parametrize("family", [1, 2, 3])
def test_the_direct_path_to_the_logits_equals_the_hand_computed_readout(family):
    """freeze="all": every other head and every MLP keeps its clean value, so the final stream is the
    clean one plus the change in the sender layer's attention output, read by the final norm."""
    model = small_model(family, seed=family)
    clean, corrupted = prompts(2)
    _, clean_cache = cached(model, clean)
    _, corrupted_cache = cached(model, corrupted)
    last = model.cfg.n_layers - 1
    for senders in ([(0, 1)], [(1, 0), (1, 3)]):
        layer, heads = senders[0][0], [head for _, head in senders]
        with torch.no_grad():
            change = _patched_attn_out(model, clean_cache, corrupted_cache, layer, heads) - clean_cache["attn_out", layer]
            expected = float(metric(interp.unembed(model, clean_cache["resid_post", last] + change)))
        got = interp.path_patch(model, clean, corrupted, metric, senders, freeze="all")
        assert got == pytest.approx(expected, abs=1e-4)
    # With only heads frozen, the MLPs recompute: a different number, between nothing and everything.
    heads_frozen = interp.path_patch(model, clean, corrupted, metric, (0, 1))
    assert heads_frozen != pytest.approx(interp.path_patch(model, clean, corrupted, metric, (0, 1), freeze="all"))


@pytest.mark.parametrize("receiver_input", ["q", "k"])
def test_a_path_into_a_receivers_input_equals_the_input_computed_by_hand(receiver_input):
    model = small_model(3, seed=4)
    clean, corrupted = prompts(3)
    _, clean_cache = cached(model, clean)
    _, corrupted_cache = cached(model, corrupted)
    sender, (receiver_layer, index) = (0, 2), (2, 1)
    block = model.blocks[receiver_layer]
    with torch.no_grad():
        change = _patched_attn_out(model, clean_cache, corrupted_cache, 0, [2]) - clean_cache["attn_out", 0]
        projection = block.attn.q_proj if receiver_input == "q" else block.attn.k_proj
        received = rearrange(projection(block.ln1(clean_cache["resid_pre", receiver_layer] + change)),
                             "batch pos (head d_head) -> batch pos head d_head", d_head=block.attn.d_head)

        def receive(activation, hook):
            patched = activation.clone()
            patched[:, :, index] = received[:, :, index]
            return patched

        name = f"blocks.{receiver_layer}.attn.hook_{receiver_input}"
        expected = float(metric(model.run_with_hooks(clean, fwd_hooks=[(name, receive)])))
    got = interp.path_patch(model, clean, corrupted, metric, sender, [(receiver_layer, index)],
                            receiver_input=receiver_input, freeze="all")
    assert got == pytest.approx(expected, abs=1e-4)
    if receiver_input != "q":
        return
    grid = interp.path_patch_heads(model, clean, corrupted, metric, [(receiver_layer, index)],
                                   receiver_input=receiver_input, freeze="all", progress=False)
    assert grid.shape == (3, model.cfg.n_heads) and grid[2].isnan().all() and not grid[:2].isnan().any()
    assert float(grid[sender]) == pytest.approx(got, abs=1e-6)


def test_path_patching_names_bad_arguments():
    model = small_model(1)
    clean, corrupted = prompts()
    with pytest.raises(ValueError, match="later layers"):
        interp.path_patch(model, clean, corrupted, metric, (1, 0), [(1, 2)])
    with pytest.raises(ValueError, match="receiver_input"):
        interp.path_patch(model, clean, corrupted, metric, (0, 0), [(1, 2)], receiver_input="z")
    with pytest.raises(ValueError, match="freeze"):
        interp.path_patch(model, clean, corrupted, metric, (0, 0), freeze="mlps")
    with pytest.raises(ValueError, match=r"\(0, 9\) is not a head"):
        interp.path_patch(model, clean, corrupted, metric, (0, 9))
    with pytest.raises(ValueError, match="kv_head"):
        interp.path_patch(model, clean, corrupted, metric, (0, 0), [(2, model.cfg.n_kv_heads)], receiver_input="v")
