"""HookedGemma: the TransformerLens-style pairing of a Gemma model with its tokenizer.

Every view and alias is checked against the model's own activations: weights against the hooks
they produce, alias hooks against the real hook they are computed from, loss against a hand
computation, text helpers against the tokenizer.
"""

from __future__ import annotations

import pytest
import torch

import gemma_lab
from gemma_lab import FactoredMatrix, GemmaConfig, HookedGemma, init_weights, interp, load_tokenizer
from gemma_lab.model import Gemma
from gemma_lab.tl_aliases import rms_norm

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def tiny() -> HookedGemma:
    return HookedGemma.from_pretrained("tiny")


def random_hooked(family: int, seed: int = 0) -> HookedGemma:
    """A random-weight Gemma 1/2/3 test model with the tiny tokenizer (vocabulary widened to fit it)."""
    preset = {1: "test-gemma", 2: "test-gemma2", 3: "test-gemma3"}[family]
    cfg = GemmaConfig.from_preset(preset).replace(vocab_size=3072)
    model = init_weights(Gemma(cfg), seed=seed, std=0.1)
    with torch.no_grad():  # norm gains away from 1, so a forgotten gain shows
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return HookedGemma(model, load_tokenizer("tiny"))


@pytest.fixture(scope="module", params=[1, 2, 3])
def any_family(request) -> HookedGemma:
    return random_hooked(request.param)


# ---- the pairing: text in and out -------------------------------------------------------------

def test_model_holds_no_tokenizer_and_wrapper_delegates(tiny):
    assert not any("tokenizer" in name for name in vars(tiny.model))
    assert tiny.n_params() == tiny.model.n_params()
    assert tiny.to("cpu") is tiny and tiny.eval() is tiny


def test_to_tokens_and_back(tiny):
    tokens = tiny.to_tokens(PROMPT)
    assert tokens.tolist() == [tiny.tokenizer.encode(PROMPT)]
    assert tiny.to_tokens(PROMPT, prepend_bos=False).tolist() == [tiny.tokenizer.encode(PROMPT, add_bos=False)]
    assert tiny.to_str_tokens(PROMPT)[:3] == ["<bos>", "When", " Mary"]
    assert tiny.to_str_tokens(tokens) == tiny.to_str_tokens(PROMPT) == tiny.to_str_tokens(tokens[0].tolist())
    assert tiny.to_string(tokens[0]) == "<bos>" + PROMPT
    assert tiny.to_string(tokens[:, 1:]) == [PROMPT]
    mary = tiny.to_single_token(" Mary")
    assert tiny.to_string([mary]) == " Mary"
    assert tiny.get_token_position(" John", PROMPT) == 4
    assert tiny.get_token_position(" John", PROMPT, mode="last") == 10
    with pytest.raises(ValueError, match="not one"):
        tiny.to_single_token(" Mary and John")


def test_padded_batches_left_and_right_give_each_row_its_own_logits(tiny):
    texts = ["The cat sat on the mat", "Hi"]
    alone = [tiny(text)[0] for text in texts]
    for side in ("right", "left"):
        tokens = tiny.to_tokens(texts, padding_side=side)
        logits = tiny(texts, padding_side=side)
        n = len(tiny.to_tokens(texts[1])[0])
        short = logits[1, :n] if side == "right" else logits[1, -n:]
        torch.testing.assert_close(short, alone[1], rtol=0, atol=1e-5)
        torch.testing.assert_close(logits[0], alone[0], rtol=0, atol=1e-5)
        # Padding is left out of the loss.
        losses = [tiny(text, return_type="loss") for text in texts]
        n_predicted = [len(tiny.to_tokens(t)[0]) - 1 for t in texts]
        expected = sum(l * k for l, k in zip(losses, n_predicted)) / sum(n_predicted)
        torch.testing.assert_close(tiny(texts, return_type="loss", padding_side=side), expected)
        if side == "left":  # a left-padded token batch finds its mask itself
            torch.testing.assert_close(tiny(tokens, padding_side="left")[1, -n:], alone[1], rtol=0, atol=1e-5)


def test_return_types_and_loss_by_hand(tiny):
    tokens = tiny.to_tokens(PROMPT)
    logits = tiny.model(tokens)
    assert torch.equal(tiny(tokens), logits) and torch.equal(tiny(PROMPT), logits)
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)
    by_hand = -torch.stack([log_probs[t, tokens[0, t + 1]] for t in range(tokens.shape[1] - 1)])
    torch.testing.assert_close(tiny(tokens, return_type="loss").double(), by_hand.mean(), rtol=1e-6, atol=1e-6)
    per_token = tiny(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (1, tokens.shape[1] - 1)
    torch.testing.assert_close(per_token[0].double(), by_hand, rtol=1e-5, atol=1e-5)
    both_logits, both_loss = tiny(tokens, return_type="both")
    assert torch.equal(both_logits, logits) and torch.equal(both_loss, tiny.loss_fn(logits, tokens))
    assert tiny(tokens, return_type=None) is None
    with pytest.raises(ValueError, match="return_type"):
        tiny(tokens, return_type="probs")


def test_stop_at_layer_returns_the_residual_stream(tiny):
    # Cache only the residual stream, so attention runs the same (fused) kernel as in the plain pass.
    _, cache = tiny.run_with_cache(PROMPT, names_filter=lambda name: "resid" in name)
    n = tiny.cfg.n_layers
    for layer in range(n):
        assert torch.equal(tiny(PROMPT, stop_at_layer=layer), cache["resid_pre", layer])
    assert torch.equal(tiny(PROMPT, stop_at_layer=-1), cache["resid_pre", n - 1])
    assert torch.equal(tiny(PROMPT, stop_at_layer=n), cache["resid_post", n - 1])
    assert not any(point.has_hooks for point in tiny.model.hook_dict.values())


def test_generate_greedy_matches_gemma_lab_generate(tiny):
    text = tiny.generate("The capital of France is", max_new_tokens=6, do_sample=False, verbose=False)
    plain = gemma_lab.generate(tiny.model, "The capital of France is", tokenizer=tiny.tokenizer,
                               max_new_tokens=6, stop=[tiny.tokenizer.eos_id])
    assert text == "The capital of France is" + plain.text
    tokens = tiny.generate(tiny.to_tokens("The capital of France is"), max_new_tokens=6, do_sample=False)
    assert tokens[0, -6:].tolist() == plain.token_ids
    sampled = tiny.generate("The capital of France is", max_new_tokens=4, temperature=0.7, seed=3)
    assert sampled.startswith("The capital of France is")


# ---- hook.layer() and cfg ---------------------------------------------------------------------

def test_hook_layer_is_an_int_and_callable(tiny):
    seen = []

    def record(activation, hook):
        seen.append((hook.layer(), hook.layer, hook.name))

    tiny.run_with_hooks(PROMPT, fwd_hooks=[(lambda name: name.endswith("hook_pattern"), record)])
    assert [layer for layer, _, _ in seen] == list(range(tiny.cfg.n_layers))
    assert all(isinstance(a, int) and a == b and torch.zeros(4)[b].ndim == 0 for a, b, _ in seen)
    assert repr(seen[1][1]) == "1"
    assert tiny.model.hook_dict["hook_embed"].layer is None


def test_cfg_has_transformerlens_names(any_family):
    cfg, gemma = any_family.cfg, any_family.model.cfg
    assert (cfg.d_vocab, cfg.n_ctx, cfg.n_key_value_heads) == (gemma.vocab_size, gemma.max_seq_len, gemma.n_kv_heads)
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp) == (
        gemma.n_layers, gemma.n_heads, gemma.d_head, gemma.d_model, gemma.d_mlp)
    assert cfg.device == torch.device("cpu") and cfg.dtype == torch.float32
    assert cfg.attn_scale == pytest.approx(gemma.attn_scale ** -1)
    assert cfg.original_architecture == {1: "GemmaForCausalLM", 2: "Gemma2ForCausalLM",
                                         3: "Gemma3ForCausalLM"}[gemma.family]
    with pytest.raises(AttributeError, match="read-only"):
        cfg.n_layers = 3


@pytest.mark.parametrize("preset, expected", [("test-gemma4", "Gemma4ForCausalLM"), ("test-gemma3n", "Gemma3nForCausalLM")])
def test_cfg_names_gemma4_and_3n_architectures(preset, expected):
    """Gemma 4 raised KeyError here, and 3n was reported as Gemma 3."""
    from gemma_lab.tl_views import TLConfig

    model = Gemma(GemmaConfig.from_preset(preset))
    assert TLConfig(model).original_architecture == expected


# ---- weight views -----------------------------------------------------------------------------

def test_weight_views_reproduce_the_activations(any_family):
    model = any_family
    cfg = model.cfg
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(model.W_E[tokens], cache["embed"])
    assert torch.equal(model.embed(tokens), cache["embed"])
    assert model.W_Q.shape == model.W_K.shape == model.W_V.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.W_O.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)
    group = cfg.n_heads // cfg.n_kv_heads
    for layer in range(cfg.n_layers):
        x = cache["normalized", layer, "ln1"]
        for head in range(cfg.n_heads):
            torch.testing.assert_close(x @ model.W_Q[layer, head], cache["q", layer][:, :, head])
            # GQA expanded TransformerLens's way: query head h reads kv head h // group.
            torch.testing.assert_close(x @ model.W_K[layer, head], cache["k", layer][:, :, head // group])
            torch.testing.assert_close(x @ model.blocks[layer].attn.W_V[head], cache["v", layer][:, :, head // group])
        heads = torch.einsum("bphd,hdm->bpm", cache["z", layer], model.W_O[layer])
        if model.model.blocks[layer].ln1_post is None:
            torch.testing.assert_close(heads, cache["attn_out", layer])
        else:
            torch.testing.assert_close(rms_norm(model.model.blocks[layer].ln1_post, heads), cache["attn_out", layer])
        x2 = cache["normalized", layer, "ln2"]
        torch.testing.assert_close(x2 @ model.W_gate[layer], cache["pre", layer])
        torch.testing.assert_close(x2 @ model.W_in[layer], cache["pre_linear", layer])
        mlp = cache["post", layer] @ model.W_out[layer]
        torch.testing.assert_close(mlp, model.model.blocks[layer].mlp(x2))
    logits = cache["unembed.hook_in"] @ model.W_U + model.b_U
    if model.model.cfg.final_softcap is not None:
        logits = model.model.cfg.final_softcap * torch.tanh(logits / model.model.cfg.final_softcap)
    torch.testing.assert_close(logits, cache["logits"])
    for name, shape in [("b_Q", (cfg.n_layers, cfg.n_heads, cfg.d_head)), ("b_O", (cfg.n_layers, cfg.d_model)),
                        ("b_in", (cfg.n_layers, cfg.d_mlp)), ("b_out", (cfg.n_layers, cfg.d_model))]:
        bias = getattr(model, name)
        assert bias.shape == shape and not bias.any()
    assert torch.equal(model.blocks[0].ln1.w, 1 + model.model.blocks[0].ln1.weight)
    with pytest.raises(AttributeError, match="RoPE"):
        model.W_pos  # noqa: B018 (the access itself raises)


def test_ov_and_qk_circuits(any_family):
    model = any_family
    for layer, head in [(0, 0), (1, model.cfg.n_heads - 1)]:
        ov = model.OV[layer, head]
        expanded = model.W_V[layer, head] @ model.W_O[layer, head]
        torch.testing.assert_close(ov.AB, expanded)
        torch.testing.assert_close(model.blocks[layer].attn.OV[head].AB, expanded)
        torch.testing.assert_close(model.QK[layer, head].AB, model.W_Q[layer, head] @ model.W_K[layer, head].T)
        full = torch.linalg.eigvals(expanded.double())
        top = full[full.abs().argsort(descending=True)[: model.cfg.d_head]]
        ours = ov.eigenvalues.to(torch.complex128)
        for value in top:  # every non-zero eigenvalue of the d_model x d_model product is one of ours
            assert (ours - value).abs().min() < 1e-4 * max(1.0, value.abs())
        torch.testing.assert_close(ov.S, torch.linalg.svdvals(expanded)[: model.cfg.d_head], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ov.norm(), torch.linalg.matrix_norm(expanded))


def test_tokens_to_residual_directions(tiny):
    mary, john = tiny.to_single_token(" Mary"), tiny.to_single_token(" John")
    assert torch.equal(tiny.tokens_to_residual_directions(" Mary"), tiny.W_U[:, mary])
    pair = tiny.tokens_to_residual_directions(torch.tensor([[mary, john]]))
    assert pair.shape == (1, 2, tiny.cfg.d_model) and torch.equal(pair[0, 1], tiny.W_U[:, john])


# ---- FactoredMatrix -----------------------------------------------------------------------------

def test_factored_matrix_algebra():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 20, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, 20, generator=g, dtype=torch.float64)
    m = FactoredMatrix(A, B)
    assert m.shape == (3, 20, 20) and m.mdim == 4
    U, S, Vh = m.svd()
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh.transpose(-2, -1), m.AB)
    torch.testing.assert_close(U.transpose(-2, -1) @ U, torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    torch.testing.assert_close(m.T.AB, m.AB.transpose(-2, -1))
    torch.testing.assert_close(m.make_even().AB, m.AB)
    torch.testing.assert_close(m.BA, B @ A)
    other = torch.randn(20, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close((m @ other).AB, m.AB @ other)
    torch.testing.assert_close((other.T @ m).AB, other.T @ m.AB)
    torch.testing.assert_close((m @ m).AB, m.AB @ m.AB)
    torch.testing.assert_close((2 * m).AB, 2 * m.AB)
    rows, cols = torch.tensor([1, 5, 7]), torch.tensor([0, 2])
    torch.testing.assert_close(m[1, rows, cols].AB, m.AB[1][rows][:, cols])
    torch.testing.assert_close(m.collapse_r() @ m.V.transpose(-2, -1), m.AB)
    assert torch.equal(m.V, m.Vh)
    with pytest.raises(ValueError, match="do not chain"):
        FactoredMatrix(A, A)


# ---- alias hook points ----------------------------------------------------------------------------

def test_rms_norm_helper_is_bit_equal_to_the_module(any_family):
    norm = any_family.model.blocks[0].ln2
    x = torch.randn(2, 5, any_family.cfg.d_model)
    assert torch.equal(rms_norm(norm, x), norm(x))


def test_scale_alias_reads_and_writes_the_rms(any_family):
    model = any_family
    _, cache = model.run_with_cache(PROMPT)
    for key in [("scale", 0, "ln1"), ("scale", 1, "ln2"), ("scale",)]:
        inv = cache[("inv_rms",) + key[1:]]
        torch.testing.assert_close(cache[key], 1 / inv)
    # Doubling TL's scale is halving our inv_rms.
    double = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.1.ln2.hook_scale", lambda s, hook: s * 2)])
    half = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.1.ln2.hook_inv_rms", lambda r, hook: (1 / (1 / r * 2)))])
    torch.testing.assert_close(double, half)
    assert not torch.allclose(double, model(PROMPT))


def test_identity_alias_hooks_leave_the_logits_bit_identical(any_family):
    model = any_family
    model.set_use_split_qkv_input(True)
    model.set_use_attn_in(True)
    model.set_use_hook_mlp_in(True)
    try:
        logits, cache = model.run_with_cache(PROMPT)
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_attn_in(False)
        model.set_use_hook_mlp_in(False)
    without_aliases, _ = model.run_with_cache(PROMPT)  # the same attention kernel (explicit: patterns cached)
    assert torch.equal(logits, without_aliases)
    assert cache["q_input", 0].shape == (1, cache["resid_pre", 0].shape[1], model.cfg.n_heads, model.cfg.d_model)
    assert cache["k_input", 0].shape[2] == model.cfg.n_key_value_heads
    assert torch.equal(cache["attn_in", 1][:, :, 2], cache["resid_pre", 1])
    assert torch.equal(cache["mlp_in", 1], cache["resid_mid", 1])
    assert torch.equal(cache["hook_tokens"], model.to_tokens(PROMPT))
    assert "blocks.0.hook_q_input" not in model.run_with_cache(PROMPT)[1]  # listed only when switched on


def test_plain_forward_attaches_nothing_for_aliases(tiny):
    """Aliases cost nothing unless hooked: after any use, no hook is left on any real point."""
    tiny.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_q_input", lambda x, hook: x),
                                           ("blocks.0.ln1.hook_scale", lambda x, hook: x)])
    assert not any(point.has_hooks for point in tiny.model.hook_dict.values())
    assert not tiny.hook_tokens.has_hooks


def test_q_input_patch_equals_patching_that_heads_queries(any_family):
    model = any_family
    clean, corrupt = model.to_tokens(PROMPT), model.to_tokens(PROMPT.replace("Mary", "Anna"))
    if clean.shape != corrupt.shape:
        pytest.skip("names tokenised to different lengths")
    model.set_use_split_qkv_input(True)
    _, corrupt_cache = model.run_with_cache(corrupt)
    model.set_use_split_qkv_input(False)
    layer, head = 1, 1

    def patch_input(x, hook):
        x[:, :, head] = corrupt_cache[hook.name][:, :, head]
        return x

    def patch_q(q, hook):
        q[:, :, head] = corrupt_cache[hook.name][:, :, head]
        return q

    via_input = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.hook_q_input", patch_input)])
    via_q = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_q", patch_q)])
    torch.testing.assert_close(via_input, via_q, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(via_q, model(clean))


def test_mlp_in_edit_reaches_the_mlp_only(any_family):
    model = any_family
    clean = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(clean)

    def zero_pos_3(x, hook):
        x[:, 3] = 0.5  # in place, returning None, as TL hooks often do

    def same_on_ln2(x, hook):
        x[:, 3] = rms_norm(model.model.blocks[1].ln2, torch.full_like(cache["resid_mid", 1][:, 3], 0.5))
        return x

    via_alias = model.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_mlp_in", zero_pos_3)])
    via_ln2 = model.run_with_hooks(clean, fwd_hooks=[("blocks.1.ln2.hook_normalized", same_on_ln2)])
    assert torch.equal(via_alias, via_ln2)
    assert not torch.allclose(via_alias, model(clean))


def test_attn_in_on_grouped_heads_must_agree_within_a_group(tiny):
    def one_head(x, hook):
        x[:, :, 0] = 0.0
        return x

    with pytest.raises(ValueError, match="share a key/value head"):
        tiny.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_attn_in", one_head)])

    def whole_group(x, hook):
        x[:, :, 0:2] = 0.0
        return x

    tiny.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_attn_in", whole_group)])


def test_hook_tokens_can_replace_the_tokens(tiny):
    other = tiny.to_tokens(PROMPT.replace("drink", "book"))

    def swap(tokens, hook):
        return other

    assert torch.equal(tiny.run_with_hooks(tiny.to_tokens(PROMPT), fwd_hooks=[("hook_tokens", swap)]), tiny(other))


# ---- the cache ------------------------------------------------------------------------------------

def test_cache_tl_spellings_and_methods(tiny):
    tiny.set_use_attn_result(True)
    try:
        _, cache = tiny.run_with_cache(PROMPT)
    finally:
        tiny.set_use_attn_result(False)
    _, plain = tiny.run_with_cache(PROMPT)
    assert "blocks.0.attn.hook_result" in cache and "blocks.0.attn.hook_result" not in plain
    plain.compute_head_results()
    torch.testing.assert_close(plain["result", 2], cache["result", 2])
    assert cache.cache_dict is cache._store
    assert torch.equal(cache["resid_pre3"], cache["blocks.3.hook_resid_pre"])
    assert torch.equal(cache["pattern", -1], cache["blocks.3.attn.hook_pattern"])
    moved = cache.to("cpu")
    assert type(moved) is type(cache) and torch.equal(moved["scale"], cache["ln_final.hook_scale"])
    _, single = tiny.run_with_cache(PROMPT, remove_batch_dim=True)
    assert torch.equal(single["pattern", 0], cache["pattern", 0][0])
    assert type(single) is type(cache)
    with pytest.raises(KeyError, match="norm's name"):
        cache["scale", 0]
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), " Mary", " John", pos_slice=-1)
    logits = tiny(PROMPT)[0, -1]
    torch.testing.assert_close(attrs.sum(0)[0], logits[tiny.to_single_token(" Mary")] - logits[tiny.to_single_token(" John")],
                               rtol=1e-4, atol=1e-4)


# ---- docs/transformerlens.md ------------------------------------------------------------------------

def test_transformerlens_doc_code_runs_as_written(capsys):
    """Every python block of the page, in order, in one namespace (as a reader would paste them)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "transformerlens.md").read_text()
    blocks = re.findall(r"```python\n(.+?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, "docs/transformerlens.md", "exec"), namespace)  # noqa: S102 (the page's own code)
    finally:
        torch.set_grad_enabled(True)  # the page turns gradients off, as TL notebooks do
    out = capsys.readouterr().out
    assert "['<bos>', 'When', ' Mary', ' and']" in out and "Ranks of the answer tokens" in out


def test_readme_links_the_transformerlens_page():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "docs/transformerlens.md" in readme


def test_gemma_lab_functions_take_the_pair_too(tiny):
    """interp's functions given a HookedGemma compute what they compute on its Gemma (its own
    ``unembed`` is TransformerLens's linear map, not Gemma.unembed)."""
    tokens = tiny.to_tokens(PROMPT)
    assert torch.equal(interp.unembed(tiny, tokens.float()[..., None].expand(-1, -1, tiny.cfg.d_model)),
                       tiny.model.unembed(tokens.float()[..., None].expand(-1, -1, tiny.cfg.d_model)))
    lens, plain = interp.logit_lens(tiny, tokens), interp.logit_lens(tiny.model, tokens)
    assert torch.equal(lens.top_tokens, plain.top_tokens)
    assert torch.equal(tiny.unembed(tokens.float()[..., None].expand(-1, -1, tiny.cfg.d_model)),
                       tokens.float()[..., None].expand(-1, -1, tiny.cfg.d_model) @ tiny.W_U)
