"""Hook points, run_with_hooks / run_with_cache, ActivationCache: checked against transformers' own
outputs (eager attention, checkpoints it wrote, Gemma 1/2/3, GQA, sequences longer than the
sliding window) and against the model's own unhooked runs, bit for bit where the maths is the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_checkpoints import load_hf, write_checkpoint

from tools import hook_table

import gemma_lab
from gemma_lab import hook_points

SEQ = 20  # longer than the sliding window (8) of the test configs
FAMILIES = [1, 2, 3]
PRESETS = hook_table.FAMILY_PRESETS
DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"

# ---- the pinned list of hook names, per family, in the order they fire ------------------------------------
_NORM = ["hook_inv_rms", "hook_normalized"]
_ATTN_IN = ["blocks.{layer}.hook_resid_pre"] + [f"blocks.{{layer}}.ln1.{h}" for h in _NORM] + [
    "blocks.{layer}.attn.hook_q", "blocks.{layer}.attn.hook_k", "blocks.{layer}.attn.hook_v"]
_QK_NORM = [f"blocks.{{layer}}.attn.{n}.{h}" for n in ("q_norm", "k_norm") for h in _NORM]
_ATTN = [f"blocks.{{layer}}.attn.hook_{h}" for h in
         ("rot_q", "rot_k", "attn_scores_pre_softcap", "attn_scores", "pattern", "z", "result")]
_LN1_POST = [f"blocks.{{layer}}.ln1_post.{h}" for h in _NORM]
_MID = ["blocks.{layer}.hook_attn_out", "blocks.{layer}.hook_resid_mid"] + [
    f"blocks.{{layer}}.ln2.{h}" for h in _NORM] + [
    "blocks.{layer}.mlp.hook_pre", "blocks.{layer}.mlp.hook_pre_linear", "blocks.{layer}.mlp.hook_post"]
_LN2_POST = [f"blocks.{{layer}}.ln2_post.{h}" for h in _NORM]
_OUT = ["blocks.{layer}.hook_mlp_out", "blocks.{layer}.hook_resid_post"]
_FINAL = [f"ln_final.{h}" for h in _NORM] + ["hook_logits"]
PINNED = {
    1: ["hook_embed"] + _ATTN_IN + _ATTN + _MID + _OUT + _FINAL,
    2: ["hook_embed"] + _ATTN_IN + _ATTN + _LN1_POST + _MID + _LN2_POST + _OUT + _FINAL,
    3: ["hook_embed"] + _ATTN_IN + _QK_NORM + _ATTN + _LN1_POST + _MID + _LN2_POST + _OUT + _FINAL,
}


def small_model(family: int, seed: int = 0, **changes) -> gemma_lab.Gemma:
    cfg = gemma_lab.GemmaConfig.from_preset(PRESETS[family]).replace(**changes)
    return gemma_lab.init_weights(gemma_lab.Gemma(cfg), seed=seed, std=0.1).eval()


def tokens(batch=2, seq=SEQ, vocab=300, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def everything(name: str) -> bool:
    return True


def patterns_only(name: str) -> bool:
    return name.endswith("hook_pattern")


def identity(activation, hook):
    return None


@pytest.fixture(scope="module", params=FAMILIES, ids=[f"gemma{f}" for f in FAMILIES])
def pair(request, tmp_path_factory):
    """(ours, transformers') loaded from one random checkpoint that transformers wrote; GQA 4:2."""
    family = request.param
    folder = tmp_path_factory.mktemp(f"gemma{family}")
    overrides = dict(num_hidden_layers=6) if family == 3 else {}  # Gemma 3: five local layers, one global
    write_checkpoint(folder, family, seed=20 + family, **overrides)
    return gemma_lab.load_pretrained(folder), load_hf(folder)


# ---- names and shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_hook_names_are_pinned_and_fire_in_listed_order(family):
    model = small_model(family)
    names = model.hook_names()
    assert hook_table.family_hook_names(family) == PINNED[family]
    layer_names = [hook_points.generic_name(n) for n in names if n.startswith("blocks.0.")]
    assert ["hook_embed"] + layer_names + _FINAL == PINNED[family]
    fired = []
    with torch.no_grad():
        model.run_with_hooks(tokens(1, 5), fwd_hooks=[(everything, lambda x, hook: fired.append(hook.name))])
    assert fired == names  # every point fires (hook_result too, once hooked), in hook_names() order


@pytest.mark.parametrize("family", FAMILIES)
def test_every_listed_shape_matches_real_activations(family):
    model = small_model(family)
    batch, seq = 2, 11
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(batch, seq))
    sizes = hook_table.axis_sizes(model.cfg, batch, seq)
    assert sorted(cache) == sorted(model.hook_names())
    for name, activation in cache.items():
        shape, _ = hook_points.HOOKS[hook_points.generic_name(name)]
        assert tuple(activation.shape) == hook_table.expected_shape(shape, sizes), name


def test_docs_table_is_generated_from_the_model():
    text = DOCS.read_text()
    table = text.split(hook_table.BEGIN, 1)[1].split(hook_table.END, 1)[0]
    assert table.strip() == hook_table.markdown_table().strip(), "run: python -m tools.hook_table --update docs/hooks.md"
    pinned = {name for family in FAMILIES for name in PINNED[family]}
    # Gemma 4 and 3n: tests/test_gemma4.py, tests/test_gemma3n.py
    assert set(hook_points.HOOKS) == pinned | set(hook_table.family_hook_names(4)) | set(hook_table.family_hook_names("3n"))


# ---- against transformers ----------------------------------------------------------------------------------

def test_pattern_equals_transformers_output_attentions(pair):
    ours, hf = pair
    ids = tokens(seq=SEQ)
    with torch.no_grad():
        _, cache = ours.run_with_cache(ids, names_filter=patterns_only)
        attentions = hf(ids, output_attentions=True).attentions
    assert len(attentions) == ours.cfg.n_layers
    for layer, expected in enumerate(attentions):
        assert torch.equal(cache["pattern", layer], expected), layer
    # Sliding-window layers really are windowed in this test: nothing beyond 8 keys back.
    local = [layer for layer in range(ours.cfg.n_layers) if ours.cfg.layer_types and ours.cfg.is_local(layer)]
    for layer in local:
        assert cache["pattern", layer][..., SEQ - 1, : SEQ - 8].abs().max() == 0


def test_residual_stream_equals_transformers_hidden_states(pair):
    ours, hf = pair
    ids = tokens(seq=SEQ)
    n_layers = ours.cfg.n_layers
    with torch.no_grad():
        _, cache = ours.run_with_cache(ids, names_filter=lambda n: "resid" in n or n.startswith("ln_final"))
        hidden = hf(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == n_layers + 1
    for layer in range(n_layers):
        torch.testing.assert_close(cache["resid_pre", layer], hidden[layer], rtol=1e-5, atol=1e-5)
        if layer < n_layers - 1:
            torch.testing.assert_close(cache["resid_post", layer], hidden[layer + 1], rtol=1e-5, atol=1e-5)
    # transformers 5.x: the last hidden state is after the final norm (our ln_final.hook_normalized),
    # not the last block's output.
    torch.testing.assert_close(cache["ln_final.hook_normalized"], hidden[n_layers], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cache["resid_post", n_layers - 1], hidden[n_layers])


def test_zero_ablating_a_head_equals_zeroing_its_o_proj_columns(pair):
    ours, hf = pair
    layer, head, d_head = 1, 2, ours.cfg.d_head
    ids = tokens(seq=SEQ)

    def zero_head(z, hook):
        z[:, :, head] = 0.0

    o_proj = hf.model.layers[layer].self_attn.o_proj.weight
    saved = o_proj.detach().clone()
    with torch.no_grad():
        plain = ours(ids)
        ablated = ours.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])
        try:
            o_proj[:, head * d_head:(head + 1) * d_head] = 0.0
            expected = hf(ids).logits
        finally:
            o_proj.copy_(saved)
    scale = expected.abs().max()
    assert (ablated - expected).abs().max() / scale <= 1e-5
    assert (plain - expected).abs().max() / scale > 1e-3  # the ablation matters


# ---- the model against itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_identity_hooks_on_every_point_leave_logits_bit_identical(family):
    model = small_model(family)
    ids = tokens()
    with torch.no_grad():
        fused = model(ids)
        explicit = model.run_with_hooks(ids, fwd_hooks=[(patterns_only, identity)])
        on_everything = model.run_with_hooks(ids, fwd_hooks=[(everything, identity)])
        scores_untouched = model.run_with_hooks(
            ids, fwd_hooks=[(lambda n: "attn_scores" not in n and "pattern" not in n, identity)])
    assert torch.equal(on_everything, explicit)  # hooks on scores/patterns choose the explicit path...
    assert torch.equal(scores_untouched, fused)  # ...and only those do


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_a_run_with_its_own_cache_changes_nothing(family):
    model = small_model(family)
    ids = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
        patched = model.run_with_hooks(ids, fwd_hooks=[(everything, lambda x, hook: cache[hook.name])])
    assert torch.equal(patched, logits)


@pytest.mark.parametrize("family", [1, 3, 2])
def test_fused_attention_equals_explicit_path(family):
    # Gemma 2's attention softcap always takes the explicit path; without it the fused one runs.
    model = small_model(family, attn_softcap=None)
    ids = tokens(seq=SEQ)
    with torch.no_grad():
        fused = model(ids)
        explicit = model.run_with_hooks(ids, fwd_hooks=[(patterns_only, identity)])
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def test_head_results_sum_to_attention_output():
    model = small_model(1)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens())
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["result", layer].sum(dim=2), cache["attn_out", layer], rtol=1e-5, atol=1e-5)


def test_hooked_head_result_flows_into_the_output():
    model = small_model(1)
    ids = tokens()

    def drop_head_1(result, hook):
        result[:, :, 1] = 0.0

    with torch.no_grad():
        via_result = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_result", drop_head_1)])
        via_z = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: z.index_fill(2, torch.tensor([1]), 0.0))])
    torch.testing.assert_close(via_result, via_z, rtol=1e-5, atol=1e-5)


# ---- scoping -----------------------------------------------------------------------------------------------

def no_hooks_anywhere(model) -> bool:
    return all(not point.fwd_fns and not point.bwd_fns for point in model.hook_dict.values())


def test_hooks_are_removed_when_the_body_raises():
    model = small_model(2)
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[(everything, identity)], bwd_hooks=[(everything, identity)]):
            assert not no_hooks_anywhere(model)
            raise RuntimeError("boom")
    assert no_hooks_anywhere(model)

    def failing(x, hook):
        raise ValueError("hook failed")

    with pytest.raises(ValueError, match="hook failed"):
        model.run_with_hooks(tokens(), fwd_hooks=[("blocks.1.hook_resid_pre", failing)])
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        model.run_with_hooks(tokens(), fwd_hooks=[("hook_embed", lambda x, hook: x[:, :1])])
    with pytest.raises(KeyError, match="did you mean"):
        model.run_with_cache(tokens(), names_filter="blocks.0.hook_resid_pr")
    model.run_with_cache(tokens(), incl_bwd=True)
    assert no_hooks_anywhere(model)


def test_nested_hook_blocks_remove_only_their_own_hooks():
    model = small_model(1)
    seen = []

    def outer(x, hook):
        seen.append("outer")

    with model.hooks(fwd_hooks=[("hook_embed", outer)]):
        with model.hooks(fwd_hooks=[("hook_embed", identity)]):
            assert len(model.hook_dict["hook_embed"].fwd_fns) == 2
        assert model.hook_dict["hook_embed"].fwd_fns == [outer]
        with torch.no_grad():
            model(tokens())
    assert seen == ["outer"] and no_hooks_anywhere(model)


def test_hooks_see_name_layer_positions_and_step():
    model = small_model(3)
    seen = []

    def record(x, hook):
        seen.append((hook.name, hook.layer, hook.positions.clone(), hook.step))

    prompt = tokens(1, 6)
    kv = gemma_lab.KVCache.for_model(model, batch_size=1, max_len=10)
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.2.attn.hook_z", record)]):
        model(prompt, kv_cache=kv)
        model.run_context.step = 1  # what generation code does before each decode step
        try:
            model(tokens(1, 1), kv_cache=kv)
        finally:
            model.run_context.step = None
    (name, layer, prompt_positions, step0), (_, _, decode_positions, step1) = seen
    assert name == "blocks.2.attn.hook_z" and layer == 2
    assert prompt_positions.tolist() == [list(range(6))] and step0 is None
    assert decode_positions.tolist() == [[6]] and step1 == 1


# ---- gradients ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [1, 2])
def test_backward_hooks_and_incl_bwd_receive_the_true_gradient(family):
    model = small_model(family)
    ids = tokens()
    name = "blocks.1.hook_resid_mid"
    kept, received = {}, {}

    def keep(x, hook):
        x.retain_grad()
        kept["activation"] = x

    def receive(grad, hook):
        received["grad"] = grad.clone()

    logits = model.run_with_hooks(ids, fwd_hooks=[(name, keep)], bwd_hooks=[(name, receive)])
    assert no_hooks_anywhere(model)
    logits[:, -1, 7].sum().backward()  # after the block: the hooks belong to this pass's graph
    assert torch.equal(received["grad"], kept["activation"].grad)

    logits, cache = model.run_with_cache(ids, names_filter=[name, "hook_embed"], incl_bwd=True)
    logits[:, -1, 7].sum().backward()
    assert torch.equal(cache[name + "_grad"], kept["activation"].grad)
    assert cache["hook_embed_grad"].shape == cache["hook_embed"].shape
    with torch.no_grad(), pytest.raises(RuntimeError, match="outside torch.no_grad"):
        model.run_with_cache(ids, incl_bwd=True)
    # A backward hook may replace the gradient: zero it at the stream after layer 0 and nothing
    # reaches the embedding.
    grads = {}
    logits = model.run_with_hooks(
        ids, bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: torch.zeros_like(g)),
                        ("hook_embed", lambda g, hook: grads.setdefault("embed", g))])
    logits[:, -1, 7].sum().backward()
    assert grads["embed"].abs().max() == 0


# ---- run_with_cache and ActivationCache ----------------------------------------------------------------------

def test_names_filter_stores_only_what_was_asked():
    model = small_model(1)
    ids = tokens()
    with torch.no_grad():
        _, one = model.run_with_cache(ids, names_filter="blocks.1.attn.hook_pattern")
        _, some = model.run_with_cache(ids, names_filter=["hook_embed", "blocks.0.hook_resid_post"])
        _, predicate = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_z"))
        _, single = model.run_with_cache(ids[:1], names_filter="hook_embed", remove_batch_dim=True, device="cpu")
    assert list(one) == ["blocks.1.attn.hook_pattern"]
    assert list(some) == ["hook_embed", "blocks.0.hook_resid_post"]
    assert list(predicate) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert single["embed"].shape == (SEQ, model.cfg.d_model)
    assert not one["pattern", 1].requires_grad


def test_cache_lookup_by_shorthand():
    model = small_model(3)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens())
    n = model.cfg.n_layers
    assert cache["pattern", 3] is cache["blocks.3.attn.hook_pattern"]
    assert cache["pattern", -1] is cache[f"blocks.{n - 1}.attn.hook_pattern"]
    assert cache["normalized", 0, "ln1"] is cache["blocks.0.ln1.hook_normalized"]
    assert cache["inv_rms", 2, "q_norm"] is cache["blocks.2.attn.q_norm.hook_inv_rms"]
    assert cache["normalized", None, "ln_final"] is cache["ln_final.hook_normalized"]
    assert cache["embed"] is cache["hook_embed"] and cache["logits"] is cache["hook_logits"]
    assert ("pattern", 0) in cache and ("pattern", 99) not in cache
    assert list(cache.keys()) == model.hook_names()
    assert cache.stack_activation("pattern").shape == (n, 2, model.cfg.n_heads, SEQ, SEQ)
    with pytest.raises(KeyError, match="names_filter"):
        model.run_with_cache(tokens(), names_filter="hook_embed")[1]["pattern", 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_decompositions_sum_to_what_the_model_computed(family):
    model = small_model(family)
    ids = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
    n = model.cfg.n_layers
    final = cache["resid_post", n - 1]
    close = dict(rtol=1e-5, atol=1e-5)

    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:3] == ["embed", "0_attn_out", "0_mlp_out"] and len(labels) == 1 + 2 * n
    torch.testing.assert_close(parts.sum(0), final, **close)
    torch.testing.assert_close(cache.decompose_resid(layer=1, mlp_input=True).sum(0), cache["resid_mid", 1], **close)

    acc, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels[:3] == ["0_pre", "0_mid", "1_pre"] and labels[-1] == "final_post" and len(acc) == 2 * n + 1
    assert torch.equal(acc[-1], final) and torch.equal(acc[1], cache["resid_mid", 0])

    # Applying the final norm with the cached inv_rms: components sum to its actual output.
    normalised = cache.apply_ln_to_stack(parts)
    torch.testing.assert_close(normalised.sum(0), cache["ln_final.hook_normalized"], **close)
    torch.testing.assert_close(cache.apply_ln_to_stack(acc[-1:], layer=None)[0], cache["ln_final.hook_normalized"], **close)
    torch.testing.assert_close(cache.accumulated_resid(layer=1, apply_ln=True)[-1], cache["normalized", 1, "ln1"], **close)

    # Heads (linearised post-attention norm for Gemma 2/3) sum to each layer's attn_out.
    heads, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert labels[:2] == ["L0H0", "L0H1"] and labels[-1] == "remainder"
    per_layer = heads[:-1].reshape(n, model.cfg.n_heads, *heads.shape[1:]).sum(1)
    for layer in range(n):
        torch.testing.assert_close(per_layer[layer], cache["attn_out", layer], **close)
    torch.testing.assert_close(heads.sum(0), final, **close)

    # Logit attribution: a full decomposition sums to the logits before the final softcap.
    target = torch.tensor([5, 9])
    attrs = cache.logit_attrs(parts, target)
    pre_softcap = cache["ln_final.hook_normalized"] @ model.embed.weight.T
    torch.testing.assert_close(attrs.sum(0), pre_softcap[torch.arange(2), :, target], **close)
    last = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), 5, incorrect_tokens=9, pos_slice=-1)
    assert last.shape == (1 + 2 * n, 2)
    torch.testing.assert_close(last.sum(0), pre_softcap[:, -1, 5] - pre_softcap[:, -1, 9], **close)
    if model.cfg.final_softcap is not None:
        softcap = model.cfg.final_softcap
        torch.testing.assert_close(softcap * torch.tanh(pre_softcap / softcap), logits, **close)
        assert (pre_softcap - logits).abs().max() > 1e-4  # the attributed logits really are pre-softcap
    else:
        torch.testing.assert_close(pre_softcap, logits, **close)


# ---- hardening: bad hook specs and bad inputs get errors that say what was expected ----------------

def test_a_bare_pair_instead_of_a_list_of_pairs_is_explained():
    model = small_model(1)
    with pytest.raises(TypeError, match="takes a list of .name, fn. pairs.*bare pair"):
        model.run_with_hooks(tokens(), fwd_hooks=("hook_embed", identity))
    with pytest.raises(TypeError, match="got the entry 'hook_embed'"):
        model.run_with_hooks(tokens(), fwd_hooks=["hook_embed", identity])
    assert no_hooks_anywhere(model)


@pytest.mark.parametrize("names_filter", [3, [1, 2], {"hook_embed": 1}.values(), b"hook_embed"])
def test_bad_names_filter_types_say_what_is_accepted(names_filter):
    with pytest.raises(TypeError, match="names_filter must be a hook name, a list of names or a predicate"):
        small_model(1).run_with_cache(tokens(), names_filter=names_filter)


def test_a_hook_returning_another_dtype_is_named():
    def to_double(activation, hook):
        return activation.double()

    with pytest.raises(ValueError, match=r"hook on blocks\.0\.hook_resid_pre returned a torch\.float64"):
        small_model(1).run_with_hooks(tokens(), fwd_hooks=[("blocks.0.hook_resid_pre", to_double)])


def test_gradients_of_a_frozen_model_say_how_to_enable_them():
    model = small_model(1).requires_grad_(False)
    with pytest.raises(RuntimeError, match=r"requires_grad_\(True\)"):
        model.run_with_cache(tokens(), incl_bwd=True)


def test_positions_masks_and_lengths_are_checked():
    model = small_model(1)
    ids = tokens(batch=1, seq=4)
    with pytest.raises(ValueError, match="must not decrease"):
        model(ids, positions=torch.tensor([[0, 1, 3, 2]]))
    with pytest.raises(ValueError, match="positions must lie in 0 to"):
        model(ids, positions=torch.tensor([[-1, 0, 1, 2]]))
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        model(ids, attention_mask=torch.tensor([[1, 2, 1, 1]]))
    too_long = torch.zeros(1, model.cfg.max_seq_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceed the model's max_seq_len"):
        model(too_long)
