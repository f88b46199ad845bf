"""gemma_lab.interp: each tool checked against a definition it must meet exactly (a model with
hand-set attention for the head scores, the model's own output for the logit lens, plain hooks for
ablation and steering, the clean run for patching)."""

from __future__ import annotations

import pytest
import torch

import gemma_lab
from gemma_lab import interp

PRESETS = {1: "test-gemma", 2: "test-gemma2", 3: "test-gemma3"}


def small_model(family: int, seed: int = 0, **changes) -> gemma_lab.Gemma:
    cfg = gemma_lab.GemmaConfig.from_preset(PRESETS[family]).replace(**changes)
    return gemma_lab.init_weights(gemma_lab.Gemma(cfg), seed=seed, std=0.1).eval()


def tokens(batch=2, seq=8, seed=0):
    return torch.randint(3, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logit_diff_metric(logits):
    return (logits[:, -1, 5] - logits[:, -1, 9]).mean()


# ---- logit lens --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [1, 2, 3])
def test_logit_lens_last_row_is_the_model_output(family):
    model = small_model(family)
    ids = tokens(1, 7)[0]
    lens = interp.logit_lens(model, ids, k=3)
    n = model.cfg.n_layers
    assert lens.labels == ["embed"] + [str(layer) for layer in range(n)]
    assert lens.top_tokens.shape == lens.top_probs.shape == (n + 1, 7, 3)
    assert lens.target_probs.shape == (n + 1, 7)
    with torch.no_grad():
        probs = torch.softmax(model(ids).float(), dim=-1)[0]
    top = probs.topk(3, dim=-1)
    assert torch.equal(lens.top_tokens[-1], top.indices) and torch.equal(lens.top_probs[-1], top.values)
    assert torch.equal(lens.target_tokens, top.indices[:, 0])
    assert torch.equal(lens.target_probs[-1], top.values[:, 0])
    # Row 0 reads the embedding alone through the same final norm and unembedding.
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter="hook_embed")
        embed_probs = torch.softmax(interp.unembed(model, cache["embed"]).float(), dim=-1)[0]
    torch.testing.assert_close(lens.top_probs[0], embed_probs.topk(3, dim=-1).values)

    chosen = torch.arange(7)
    with_mid = interp.logit_lens(model, ids, k=1, targets=chosen, incl_mid=True)
    assert with_mid.labels[:3] == ["embed", "0_mid", "0"] and len(with_mid.labels) == 2 * n + 1
    torch.testing.assert_close(with_mid.target_probs[-1], probs[torch.arange(7), chosen])


# ---- direct logit attribution ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [1, 2, 3])
def test_direct_logit_attribution_sums_to_the_pre_softcap_logit(family):
    model = small_model(family)
    ids = tokens(2, 8)
    dla = interp.direct_logit_attribution(model, ids, target=torch.tensor([5, 6]), incorrect=9)
    n, h = model.cfg.n_layers, model.cfg.n_heads
    assert dla.heads.shape == (n, h) and dla.mlps.shape == (n,) and dla.embed.shape == ()
    total = dla.embed + dla.heads.sum() + dla.mlps.sum()
    torch.testing.assert_close(total, dla.total, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter="ln_final.hook_normalized")
    pre_softcap = cache["ln_final.hook_normalized"][:, -1] @ model.embed.weight.T  # [batch, vocab]
    expected = (pre_softcap[torch.arange(2), torch.tensor([5, 6])] - pre_softcap[:, 9]).mean()
    torch.testing.assert_close(dla.total, expected, rtol=1e-5, atol=1e-5)


# ---- ablation ----------------------------------------------------------------------------------------------

def test_zero_ablation_of_heads_and_neurons_equals_plain_hooks():
    model = small_model(2)
    ids = tokens()

    def zero_heads(z, hook):
        z = z.clone()
        z[:, :, [0, 3]] = 0
        return z

    def zero_neurons(post, hook):
        post = post.clone()
        post[..., 17] = 0
        return post

    with torch.no_grad():
        with interp.ablate_heads(model, [(1, 0), (1, 3)]):
            ablated = model(ids)
        expected = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", zero_heads)])
        with interp.ablate_neurons(model, [(0, 17)]):
            ablated_neuron = model(ids)
        expected_neuron = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.mlp.hook_post", zero_neurons)])
        plain = model(ids)
    assert torch.equal(ablated, expected) and not torch.equal(ablated, plain)
    assert torch.equal(ablated_neuron, expected_neuron) and not torch.equal(ablated_neuron, plain)


def test_mean_ablation_replaces_with_the_mean_over_the_reference_batch():
    model = small_model(3)
    ids, reference = tokens(seed=0), tokens(4, 8, seed=1)
    with torch.no_grad():
        _, ref_cache = model.run_with_cache(reference, names_filter=["blocks.2.attn.hook_z", "blocks.4.mlp.hook_post"])
    head_mean = ref_cache["z", 2][:, :, 1].mean(dim=(0, 1))  # [d_head]
    neuron_mean = ref_cache["post", 4][..., [3, 40]].mean(dim=(0, 1))  # [2]
    seen = {}
    with torch.no_grad():
        # Means are taken when a block is entered, with the hooks active then: the neuron block
        # (layer 4) goes first so that the head ablation (layer 2) does not change its reference run.
        with interp.ablate_neurons(model, [(4, 3), (4, 40)], mode="mean", reference_tokens=reference), \
                interp.ablate_heads(model, [(2, 1)], mode="mean", reference_tokens=reference):
            model.run_with_hooks(ids, fwd_hooks=[
                ("blocks.2.attn.hook_z", lambda z, hook: seen.setdefault("z", z)),
                ("blocks.4.mlp.hook_post", lambda post, hook: seen.setdefault("post", post))])
    torch.testing.assert_close(seen["z"][:, :, 1], head_mean.expand(2, 8, -1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(seen["post"][..., [3, 40]], neuron_mean.expand(2, 8, -1), rtol=1e-6, atol=1e-7)
    untouched = [0, 2, 3]
    assert not torch.allclose(seen["z"][:, :, untouched], head_mean.expand(2, 8, 3, -1))
    with pytest.raises(ValueError, match="reference_tokens"):
        with interp.ablate_heads(model, [(0, 0)], mode="mean"):
            pass


# ---- activation patching -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [1, 2])
def test_patching_a_clean_run_into_itself_gives_the_clean_metric_everywhere(family):
    model = small_model(family)
    clean = tokens(2, 6)
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean)
    clean_metric = float(logit_diff_metric(logits))
    n, h = model.cfg.n_layers, model.cfg.n_heads
    by_pos = interp.patch_by_layer_pos(model, clean, cache, logit_diff_metric, progress=False)
    by_layer = interp.patch_by_layer(model, clean, cache, logit_diff_metric, activation="mlp_out", progress=False)
    by_head = interp.patch_by_head(model, clean, cache, logit_diff_metric, progress=False)
    by_pattern = interp.patch_by_head(model, clean, cache, logit_diff_metric, activation="pattern", progress=False)
    assert by_pos.shape == (n, 6) and by_layer.shape == (n,) and by_head.shape == by_pattern.shape == (n, h)
    for result in (by_pos, by_layer, by_head, by_pattern):
        torch.testing.assert_close(result, torch.full_like(result, clean_metric), rtol=1e-5, atol=1e-5)


def test_patching_the_whole_stream_recovers_clean_and_layer_0_finds_the_changed_token():
    model = small_model(3)
    clean = tokens(2, 6, seed=3)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 100) % 512  # one changed token
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: "resid" in n)
        corrupted_metric = float(logit_diff_metric(model(corrupted)))
    clean_metric = float(logit_diff_metric(clean_logits))
    assert abs(clean_metric - corrupted_metric) > 1e-3
    for activation in ("resid_pre", "resid_post"):
        whole = interp.patch_by_layer(model, corrupted, cache, logit_diff_metric, activation=activation, progress=False)
        torch.testing.assert_close(whole, torch.full_like(whole, clean_metric), rtol=1e-5, atol=1e-5)
    by_pos = interp.patch_by_layer_pos(model, corrupted, cache, logit_diff_metric, progress=False)
    # Before layer 0 the stream holds only the token embeddings: position 2 carries the whole difference.
    torch.testing.assert_close(by_pos[0, 2], torch.tensor(clean_metric), rtol=1e-5, atol=1e-5)
    others = by_pos[0, [0, 1, 3, 4, 5]]
    torch.testing.assert_close(others, torch.full_like(others, corrupted_metric), rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="names_filter"):
        interp.patch_by_head(model, corrupted, cache, logit_diff_metric, progress=False)


# ---- steering ----------------------------------------------------------------------------------------------

def test_steering_adds_the_direction_to_the_stream():
    model = small_model(2)
    ids = tokens()
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(ids)
        with interp.steer(model, torch.zeros(model.cfg.d_model), layer=1):
            zero = model(ids)
        with interp.steer(model, direction, layer=1, coeff=3.0):
            steered = model(ids)
        by_hand = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x + 3.0 * direction)])
    assert torch.equal(zero, plain)
    assert torch.equal(steered, by_hand) and not torch.equal(steered, plain)


def test_steering_by_absolute_position_holds_across_kv_cache_steps():
    model = small_model(3)
    prompt, next_token = tokens(1, 5), tokens(1, 1, seed=7)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2))

    def two_steps():
        kv = gemma_lab.KVCache.for_model(model, batch_size=1, max_len=8)
        return model(prompt, kv_cache=kv), model(next_token, kv_cache=kv)

    with torch.no_grad():
        plain_prompt, plain_next = two_steps()
        with interp.steer(model, direction, layer=2, positions=[5]):  # only the decoded token (position 5)
            steered_prompt, steered_next = two_steps()
    assert torch.equal(steered_prompt, plain_prompt)
    assert not torch.allclose(steered_next, plain_next)


# ---- induction: repeated random tokens ---------------------------------------------------------------------

def test_repeated_tokens():
    toks = interp.repeated_tokens(512, seq_len=10, batch=3, seed=4)
    assert toks.shape == (3, 21) and (toks[:, 0] == 2).all()
    assert torch.equal(toks[:, 1:11], toks[:, 11:]) and toks[:, 1:].min() >= 3
    assert torch.equal(toks, interp.repeated_tokens(512, seq_len=10, batch=3, seed=4))
    assert interp.repeated_tokens(512, seq_len=10, bos=None).shape == (1, 20)


def _fixed_pattern(head: int, key_of):
    """A hook that makes ``head`` of its layer attend, from each query q, to key ``key_of(q)`` only
    (to itself where that key does not exist)."""
    def set_pattern(pattern, hook):
        pattern = pattern.clone()
        n = pattern.shape[-1]
        fixed = torch.zeros(n, n)
        for q in range(n):
            k = key_of(q)
            fixed[q, k if 0 <= k <= q else q] = 1.0
        pattern[:, head] = fixed
        return pattern
    return set_pattern


@pytest.mark.parametrize("family", [1, 3])
def test_head_scores_find_hand_set_heads(family):
    model = small_model(family)
    seq_len = 6
    n, h = model.cfg.n_layers, model.cfg.n_heads
    planted = {"previous_token": (0, 0), "induction": (1, 0), "duplicate_token": (n - 1, 1)}
    keys = {"previous_token": lambda q: q - 1, "induction": lambda q: q - seq_len + 1,
            "duplicate_token": lambda q: q - seq_len}
    hooks = [(f"blocks.{layer}.attn.hook_pattern", _fixed_pattern(head, keys[kind]))
             for kind, (layer, head) in planted.items()]
    with model.hooks(fwd_hooks=hooks):
        scores = interp.head_scores(model, seq_len=seq_len, batch=2, seed=1)
    assert set(scores) == set(planted)
    for kind, (layer, head) in planted.items():
        assert scores[kind].shape == (n, h)
        assert scores[kind][layer, head] == pytest.approx(1.0)
        others = scores[kind].clone()
        others[layer, head] = 0
        assert others.max() < 0.9  # the other (random) heads spread their attention
    assert scores["induction"][0, 0] == 0 and scores["previous_token"][1, 0] == 0


def test_in_context_loss_measures_each_copy():
    model = small_model(1)
    seq_len = 5
    toks = interp.repeated_tokens(model.cfg.vocab_size, seq_len, batch=2, seed=0)

    def oracle_on_second_copy(logits, hook):
        # Predict every next token perfectly, but only from positions inside the second copy.
        logits = logits.clone()
        for t in range(seq_len + 1, 2 * seq_len):
            logits[torch.arange(2), t, toks[:, t + 1]] = 1e4
        return logits

    with model.hooks(fwd_hooks=[("hook_logits", oracle_on_second_copy)]):
        result = interp.in_context_loss(model, seq_len=seq_len, batch=2, seed=0)
    assert result["per_position"].shape == (2 * seq_len,)
    assert result["second_copy"] == pytest.approx(0.0, abs=1e-4)
    assert result["first_copy"] > 1.0
    torch.testing.assert_close(result["first_copy"], result["per_position"][1:seq_len].mean())


# ---- circuits in the weights --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [1, 2, 3])
def test_head_circuits_reproduce_the_heads_on_a_one_token_input(family):
    """With one token at position 0 every head attends only to it (pattern 1, RoPE the identity), so
    the folded circuits must give the cached values exactly, up to the RMS divisions they leave out."""
    model = small_model(family, seed=1)
    with torch.no_grad():  # norm gains away from 1, so that folding them in is tested
        for name, parameter in model.named_parameters():
            if "norm" in name or name.split(".")[-2].startswith("ln"):
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    token = torch.tensor([[7]])
    _, cache = model.run_with_cache(token)
    circuits = interp.head_circuits(model)
    cfg = model.cfg
    assert circuits.ov.shape == circuits.qk.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_model)
    for layer, block in enumerate(model.blocks):
        u = (cache["resid_pre", layer] * cache[f"blocks.{layer}.ln1.hook_inv_rms"])[0, 0]  # ln1 without its gain
        w_o = block.attn.o_proj.weight.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
        for head in range(cfg.n_heads):
            written = cache["z", layer][0, 0, head] @ w_o[head]  # the head's term of o_proj(z)
            if block.ln1_post is not None:
                written = written * block.ln1_post.gain()
            torch.testing.assert_close(u @ circuits.ov[layer, head], written, atol=1e-5, rtol=1e-4)
            score = cache["attn_scores_pre_softcap", layer][0, head, 0, 0] / cfg.attn_scale
            if block.attn.q_norm is not None:  # undo the per-vector RMS divisions the circuit leaves out
                kv_head = head // (cfg.n_heads // cfg.n_kv_heads)
                score = score / (cache[f"blocks.{layer}.attn.q_norm.hook_inv_rms"][0, 0, head, 0]
                                 * cache[f"blocks.{layer}.attn.k_norm.hook_inv_rms"][0, 0, kv_head, 0])
            torch.testing.assert_close(u @ circuits.qk[layer, head] @ u, score, atol=1e-4, rtol=1e-4)


def test_composition_score_is_a_normalised_frobenius_product():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 6, 6, generator=generator), torch.randn(6, 6, generator=generator)
    scores = interp.composition_score(a, b)  # broadcasts: [3]
    for i in range(3):
        expected = (a[i] @ b).norm() / (a[i].norm() * b.norm())
        torch.testing.assert_close(scores[i], expected)
    assert float(interp.composition_score(torch.eye(6), torch.eye(6))) == pytest.approx(6 ** -0.5)
    writes_x = torch.zeros(6, 6)
    writes_x[0, 0] = 1.0  # writes direction 0
    reads_y = torch.zeros(6, 6)
    reads_y[1, 1] = 1.0  # reads direction 1 only
    assert float(interp.composition_score(writes_x, reads_y)) == 0.0
    assert float(interp.composition_score(writes_x, writes_x)) == pytest.approx(1.0)
    big = 100 * torch.randn(8, 8, generator=generator)
    small = torch.randn(8, 8, generator=generator)
    assert float(interp.composition_score(big, small)) == pytest.approx(float(interp.composition_score(big / 100, small)))


@pytest.mark.parametrize("family", [1, 2, 3])
def test_qk_scores_by_offset_equal_the_model_scores_on_real_inputs(family):
    """Fed the residual stream a forward pass saw, the circuit at offset i - j is that pass's score [i, j]:
    on layer 0 with the scaled embeddings of the tokens (the full QK circuit), on every layer with its
    resid_pre. Gemma 2 checks the softcap too (its scores are scaled up so that the cap bends them)."""
    model = small_model(family, seed=2, **({"attn_softcap": 2.0} if family == 2 else {}))
    with torch.no_grad():  # norm gains away from 1
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    ids = tokens(1, 12, seed=3)
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_attn_scores")))
    n = ids.shape[1]
    rows, cols = torch.tril_indices(n, n)
    window = model.cfg.sliding_window or n
    visible = rows - cols < window
    embedded = model.embed.weight[ids[0]] * torch.tensor(model.cfg.embed_scale).to(model.dtype)
    for layer in range(model.cfg.n_layers):
        resid = embedded if layer == 0 else cache["resid_pre", layer][0]
        for head in range(model.cfg.n_heads):
            circuit = interp.qk_scores_by_offset(model, layer, head, resid, resid, torch.arange(n))
            assert circuit.shape == (n, n, n) and circuit.dtype == torch.float32
            real = cache["attn_scores", layer][0, head]
            keep = visible if model.cfg.is_local(layer) else torch.ones_like(visible)
            torch.testing.assert_close(circuit[rows - cols, rows, cols][keep], real[rows, cols][keep],
                                       atol=2e-5, rtol=2e-5)
            absolute = interp.qk_scores_by_offset(model, layer, head, resid[-1:], resid, torch.arange(n),
                                                  query_position=n - 1)  # query at its real position
            torch.testing.assert_close(absolute[n - 1 - torch.arange(n), 0, torch.arange(n)][keep[-n:]],
                                       real[n - 1][keep[-n:]], atol=2e-5, rtol=2e-5)


def test_qk_scores_by_offset_depend_only_on_the_offset_and_refuse_bad_input():
    model = small_model(3, seed=4)
    resid = torch.randn(5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    offsets = [0, 1, 7, 40]
    relative = interp.qk_scores_by_offset(model, 1, 2, resid[:3], resid, offsets)
    assert relative.shape == (4, 3, 5)
    for position in (40, 100):
        moved = interp.qk_scores_by_offset(model, 1, 2, resid[:3], resid, offsets, query_position=position)
        torch.testing.assert_close(moved, relative, atol=1e-4, rtol=1e-4)
    unrotated = interp.qk_scores_by_offset(model, 1, 2, resid[:3], resid, [0])[0]
    assert not torch.allclose(relative[2], unrotated, atol=1e-3)  # RoPE changes the score with the offset
    with pytest.raises(ValueError, match="query_resid must be"):
        interp.qk_scores_by_offset(model, 0, 0, resid[:, :-1], resid, [0])
    with pytest.raises(ValueError, match="out of range"):
        interp.qk_scores_by_offset(model, 0, model.cfg.n_heads, resid, resid, [0])
