"""Sparse autoencoders and transcoders: the published formulas, splicing into the model (the error term
leaves every logit bit-identical; hooks are gone afterwards, also on errors), loading Gemma Scope 1 / 2
and SAELens folders written here on the spot, the errors for files that do not fit, and parity with
SAELens itself on the same parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import gemma_lab
from gemma_lab.sae import SAE, SAEConfig, SAEConfigError, Transcoder, load_sae, make_sae

D_MODEL = 128  # the bundled tiny Gemma
LAYER = 1


@pytest.fixture(scope="module")
def model():
    return gemma_lab.load_pretrained("tiny")


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(8, 3000, (2, 14), generator=torch.Generator().manual_seed(0))


def random_sae(cfg: SAEConfig, seed: int = 0, use_error_term: bool = False) -> SAE:
    """An SAE with random weights whose features fire often enough to matter."""
    sae = make_sae(cfg, use_error_term)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if name != "threshold" else 0.2))
            if name == "threshold":
                param.abs_()
    return sae


def resid_cfg(architecture="jumprelu", **changes) -> SAEConfig:
    k = 8 if architecture == "topk" else None
    return SAEConfig(d_in=D_MODEL, d_sae=256, architecture=architecture, k=k,
                     hook_name=f"blocks.{LAYER}.hook_resid_post", **changes)


def transcoder_cfg(**changes) -> SAEConfig:
    return SAEConfig(d_in=D_MODEL, d_sae=256, hook_name=f"blocks.{LAYER}.ln2.hook_normalized",
                     hook_name_out=f"blocks.{LAYER}.hook_mlp_out", **changes)


def no_hooks_left(model) -> bool:
    return not any(point.has_hooks for point in model.hook_dict.values())


# ---- the maths, against the published formulas --------------------------------------------------------


def test_jumprelu_is_gemma_scopes_formula():
    sae = random_sae(resid_cfg("jumprelu"))
    x = torch.randn(5, D_MODEL)
    pre = x @ sae.W_enc + sae.b_enc
    expected_acts = (pre > sae.threshold) * torch.relu(pre)  # Gemma Scope's model card
    acts = sae.encode(x)
    torch.testing.assert_close(acts, expected_acts, rtol=0, atol=0)
    torch.testing.assert_close(sae.decode(acts), expected_acts @ sae.W_dec + sae.b_dec, rtol=0, atol=0)
    assert 0 < (acts > 0).float().mean() < 1  # some features fire, not all


def test_relu_and_topk():
    x = torch.randn(6, D_MODEL)
    relu = random_sae(resid_cfg("relu", apply_b_dec_to_input=True))
    torch.testing.assert_close(relu.encode(x), torch.relu((x - relu.b_dec) @ relu.W_enc + relu.b_enc))
    topk = random_sae(resid_cfg("topk"))
    acts = topk.encode(x)
    pre = x @ topk.W_enc + topk.b_enc
    assert ((acts > 0).sum(dim=-1) <= 8).all()
    for row in range(x.shape[0]):  # the kept entries are the 8 largest pre-activations, relu'd
        kept = pre[row].topk(8).indices
        torch.testing.assert_close(acts[row, kept], torch.relu(pre[row, kept]))
        mask = torch.ones(256, dtype=torch.bool)
        mask[kept] = False
        assert (acts[row, mask] == 0).all()


def test_config_errors():
    with pytest.raises(SAEConfigError, match="unknown SAE architecture 'gated'"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    with pytest.raises(SAEConfigError, match="k=None"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk")
    with pytest.raises(SAEConfigError, match="hook_name_out"):
        Transcoder(resid_cfg())


# ---- splicing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["jumprelu", "relu", "topk"])
def test_error_term_leaves_logits_bit_identical(model, tokens, architecture):
    sae = random_sae(resid_cfg(architecture), use_error_term=True)
    plain_logits, plain_cache = model.run_with_cache(tokens)
    logits, cache = model.run_with_cache(tokens, saes=[sae])
    assert torch.equal(logits, plain_logits)
    name = f"blocks.{LAYER}.hook_resid_post"
    acts = cache[f"{name}.hook_sae_acts_post"]
    assert acts.shape == (2, 14, 256) and (acts > 0).any()
    torch.testing.assert_close(acts, sae.encode(plain_cache[name]))
    torch.testing.assert_close(cache[f"{name}.hook_sae_recons"] + cache[f"{name}.hook_sae_error"],
                               plain_cache[name], rtol=0, atol=1e-5)
    fused_logits = model(tokens)  # no hook wants patterns: the fused-attention path
    with model.hooks(saes=[sae]):
        assert torch.equal(model(tokens), fused_logits)
    assert no_hooks_left(model)


def test_without_error_term_the_reconstruction_flows_on(model, tokens):
    sae = random_sae(resid_cfg())
    name = f"blocks.{LAYER}.hook_resid_post"
    _, clean = model.run_with_cache(tokens, names_filter=name)
    logits, cache = model.run_with_cache(tokens, saes=[sae], names_filter=[name, f"blocks.{LAYER + 1}.hook_resid_pre"])
    torch.testing.assert_close(cache[f"blocks.{LAYER + 1}.hook_resid_pre"], sae(clean[name]))
    assert not torch.allclose(logits, model(tokens))


def test_ablating_a_feature_changes_only_what_it_wrote(model, tokens):
    sae = random_sae(resid_cfg(), use_error_term=True)
    name = f"blocks.{LAYER}.hook_resid_post"
    _, cache = model.run_with_cache(tokens, saes=[sae], names_filter=f"{name}.hook_sae_acts_post")
    acts = cache[f"{name}.hook_sae_acts_post"]
    feature = int(acts.sum(dim=(0, 1)).argmax())

    def ablate(acts, hook):
        acts = acts.clone()
        acts[..., feature] = 0
        return acts

    with model.hooks(fwd_hooks=[(f"{name}.hook_sae_acts_post", ablate)], saes=[sae]):
        _, patched = model.run_with_cache(tokens, names_filter=f"blocks.{LAYER + 1}.hook_resid_pre")
    _, plain = model.run_with_cache(tokens, names_filter=name)
    # resid = plain - (what the feature wrote: its activation times its decoder row)
    expected = plain[name] - acts[..., feature, None] * sae.W_dec[feature]
    torch.testing.assert_close(patched[f"blocks.{LAYER + 1}.hook_resid_pre"], expected, rtol=1e-5, atol=1e-5)
    assert no_hooks_left(model)


def test_hooks_are_removed_also_on_errors(model, tokens):
    sae = random_sae(resid_cfg(), use_error_term=True)
    names_before = model.hook_names()
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(saes=[sae]):
            assert f"blocks.{LAYER}.hook_resid_post.hook_sae_acts_post" in model.hook_names()
            raise RuntimeError("boom")
    assert model.hook_names() == names_before and no_hooks_left(model)
    assert sae.hook_sae_acts_post.name == "hook_sae_acts_post"  # its own name again
    assert not any(point.has_hooks for point in sae.hook_dict.values())

    def broken(acts, hook):
        raise ValueError("broken hook")

    with pytest.raises(ValueError, match="broken hook"):
        model.run_with_hooks(tokens, saes=[sae], fwd_hooks=[(f"blocks.{LAYER}.hook_resid_post.hook_sae_acts_pre", broken)])
    assert model.hook_names() == names_before and no_hooks_left(model)


def test_spliced_points_are_listed_after_their_site(model):
    sae = random_sae(resid_cfg())
    with model.hooks(saes=[sae]):
        names = model.hook_names()
        site = names.index(f"blocks.{LAYER}.hook_resid_post")
        assert names[site + 1: site + 6] == [f"blocks.{LAYER}.hook_resid_post.{n}" for n in
                                             ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post",
                                              "hook_sae_recons", "hook_sae_error")]
        assert model.hook_dict[f"blocks.{LAYER}.hook_resid_post.hook_sae_acts_post"].layer == LAYER
    with pytest.raises(ValueError, match="only one SAE per hook point"):
        with model.hooks(saes=[sae, random_sae(resid_cfg())]):
            pass
    assert no_hooks_left(model)


def test_generation_with_saes(model):
    prompt = torch.tensor([2, 300, 301, 302, 300, 301])
    plain = gemma_lab.generate(model, prompt, max_new_tokens=6)
    sae = random_sae(resid_cfg(), use_error_term=True)
    with model.hooks(saes=[sae]):
        spliced = gemma_lab.generate(model, prompt, max_new_tokens=6)
    assert spliced.token_ids == plain.token_ids
    sae.use_error_term = False  # now the random reconstruction replaces the stream
    with model.hooks(saes=[sae]):
        _, cache = model.run_with_cache(prompt, names_filter=lambda n: "hook_sae" in n)
    assert cache[f"blocks.{LAYER}.hook_resid_post.hook_sae_acts_post"].shape == (1, 6, 256)
    assert no_hooks_left(model)


def test_transcoder_replaces_the_mlp(model, tokens):
    tc = random_sae(transcoder_cfg(), use_error_term=True)
    assert isinstance(tc, Transcoder)
    plain_logits, plain = model.run_with_cache(tokens)
    logits, cache = model.run_with_cache(tokens, saes=[tc])
    assert torch.equal(logits, plain_logits)
    out = f"blocks.{LAYER}.hook_mlp_out"
    torch.testing.assert_close(cache[f"{out}.hook_sae_acts_post"],
                               tc.encode(plain[f"blocks.{LAYER}.ln2.hook_normalized"]))
    torch.testing.assert_close(cache[f"{out}.hook_sae_error"],
                               plain[out] - tc.reconstruct_without_hooks(plain[f"blocks.{LAYER}.ln2.hook_normalized"]))
    tc.use_error_term = False
    _, cache = model.run_with_cache(tokens, saes=[tc], names_filter=out)
    torch.testing.assert_close(cache[out], tc(plain[f"blocks.{LAYER}.ln2.hook_normalized"]))
    with pytest.raises(ValueError, match="needs the real MLP output"):
        Transcoder(transcoder_cfg(), use_error_term=True)(torch.zeros(1, D_MODEL))
    assert no_hooks_left(model)


def test_hook_z_sae_reads_the_heads_flattened(model, tokens):
    cfg = model.cfg
    sae = random_sae(SAEConfig(d_in=cfg.n_heads * cfg.d_head, d_sae=64, hook_name=f"blocks.{LAYER}.attn.hook_z"),
                     use_error_term=True)
    plain_logits, plain = model.run_with_cache(tokens, names_filter=f"blocks.{LAYER}.attn.hook_z")
    logits, cache = model.run_with_cache(tokens, saes=[sae], names_filter=lambda n: "hook_z" in n)
    assert torch.equal(logits, model(tokens))
    z = plain[f"blocks.{LAYER}.attn.hook_z"]
    torch.testing.assert_close(cache[f"blocks.{LAYER}.attn.hook_z.hook_sae_input"], z.flatten(-2))


def test_sae_for_another_model_or_site_is_refused(model, tokens):
    too_wide = random_sae(SAEConfig(d_in=2304, d_sae=16, hook_name="blocks.1.hook_resid_post",
                                    model_name="gemma-2-2b"))
    with pytest.raises(SAEConfigError, match=r"gemma-2-2b\) reads width 2304 at blocks.1.hook_resid_post.*width 128"):
        model.run_with_cache(tokens, saes=[too_wide])
    deep = random_sae(SAEConfig(d_in=D_MODEL, d_sae=16, hook_name="blocks.12.hook_resid_post"))
    with pytest.raises(SAEConfigError, match="blocks.12.hook_resid_post, which this model does not have.*4 layers"):
        with model.hooks(saes=[deep]):
            pass
    assert no_hooks_left(model) and "blocks.1.hook_resid_post.hook_sae_input" not in model.hook_names()


# ---- loading ------------------------------------------------------------------------------------------


def scope_arrays(d_in=D_MODEL, d_sae=64, d_out=None, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d_out = d_out or d_in
    return {"W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
            "W_dec": rng.normal(size=(d_sae, d_out)).astype(np.float32),
            "b_enc": rng.normal(size=d_sae).astype(np.float32),
            "b_dec": rng.normal(size=d_out).astype(np.float32),
            "threshold": np.abs(rng.normal(size=d_sae)).astype(np.float32)}


def test_gemma_scope_1_folder(tmp_path, model, tokens):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_2" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    arrays = scope_arrays()
    np.savez(folder / "params.npz", **arrays)
    sae = load_sae(folder, model=model)
    assert sae.cfg.hook_name == "blocks.2.hook_resid_post" and sae.cfg.architecture == "jumprelu"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_MODEL, 64)
    x = torch.randn(3, D_MODEL)
    pre = x @ torch.from_numpy(arrays["W_enc"]) + torch.from_numpy(arrays["b_enc"])
    torch.testing.assert_close(sae.encode(x), (pre > torch.from_numpy(arrays["threshold"])) * torch.relu(pre))
    # the site from the path, and the layer: mlp and transcoders
    for repo, hook_in, hook_out in (("gemma-scope-9b-it-mlp", "blocks.3.hook_mlp_out", None),
                                    ("gemma-scope-2b-pt-transcoders", "blocks.3.ln2.hook_normalized",
                                     "blocks.3.hook_mlp_out")):
        other = tmp_path / repo / "layer_3" / "width_16k" / "average_l0_10"
        other.mkdir(parents=True)
        np.savez(other / "params.npz", **arrays)
        loaded = load_sae(other)
        assert (loaded.cfg.hook_name, loaded.cfg.hook_name_out) == (hook_in, hook_out)
    # a folder elsewhere needs hook_name; a conflicting one is refused
    plain = tmp_path / "my_sae"
    plain.mkdir()
    np.savez(plain / "params.npz", **arrays)
    with pytest.raises(SAEConfigError, match="pass hook_name="):
        load_sae(plain)
    assert load_sae(plain, hook_name="blocks.0.hook_resid_post").cfg.layer == 0
    with pytest.raises(SAEConfigError, match="made for blocks.2.hook_resid_post, not blocks.2.hook_mlp_out"):
        load_sae(folder, hook_name="blocks.2.hook_mlp_out")


def test_gemma_scope_1_files_that_do_not_fit(tmp_path, model):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    arrays = scope_arrays()
    arrays["b_dec"] = arrays["b_dec"][:-1]
    np.savez(folder / "params.npz", **arrays)
    with pytest.raises(SAEConfigError, match=r"params.npz: tensor b_dec has shape \(127,\).*needs \(128,\)"):
        load_sae(folder)
    np.savez(folder / "params.npz", **{k: v for k, v in scope_arrays().items() if k != "threshold"})
    with pytest.raises(SAEConfigError, match="params.npz: missing tensor.*threshold"):
        load_sae(folder)
    np.savez(folder / "params.npz", **scope_arrays(), extra=np.zeros(3))
    with pytest.raises(SAEConfigError, match="params.npz: unexpected tensor.*extra"):
        load_sae(folder)
    np.savez(folder / "params.npz", **scope_arrays(), note=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SAEConfigError, match="without unpickling"):
        load_sae(folder)
    np.savez(folder / "params.npz", **scope_arrays(d_in=2304))
    with pytest.raises(SAEConfigError, match="width 2304 at blocks.1.hook_resid_post"):
        load_sae(folder, model=model)


def write_scope2(folder: Path, hook_in: str, hook_out: str | None = None, affine: bool = False, d_sae=64, seed=0,
                 config: dict | None = None) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    arrays = scope_arrays(d_sae=d_sae, seed=seed)
    tensors = {key.lower(): torch.from_numpy(value) for key, value in arrays.items()}
    if affine:
        tensors["affine_skip_connection"] = torch.randn(D_MODEL, D_MODEL, generator=torch.Generator().manual_seed(seed))
    save_file(tensors, folder / "params.safetensors")
    meta = config or {"architecture": "jump_relu", "hf_hook_point_in": hook_in, "model_name": "gemma-v3-270m-pt",
                      **({"hf_hook_point_out": hook_out} if hook_out else {}), "affine_connection": affine}
    (folder / "config.json").write_text(json.dumps(meta))
    return tensors


@pytest.mark.parametrize("hf_name, ours", [
    ("model.layers.2.output", "blocks.2.hook_resid_post"),
    ("model.layers.2.post_feedforward_layernorm.output", "blocks.2.hook_mlp_out"),
])
def test_gemma_scope_2_hook_points(tmp_path, model, tokens, hf_name, ours):
    write_scope2(tmp_path / "sae", hf_name, hf_name)
    sae = load_sae(tmp_path / "sae", model=model, use_error_term=True)
    assert sae.cfg.hook_name == ours and not sae.cfg.is_transcoder
    logits, cache = model.run_with_cache(tokens, saes=[sae], names_filter=lambda n: n.startswith(ours))
    assert torch.equal(logits, model.run_with_cache(tokens, names_filter=lambda n: n.startswith(ours))[0])
    torch.testing.assert_close(cache[f"{ours}.hook_sae_acts_post"], sae.encode(cache[ours]))


def test_gemma_scope_2_attention_sae_reads_hook_z(tmp_path, model):
    write_scope2(tmp_path / "attn", "model.layers.0.self_attn.o_proj.input")
    sae = load_sae(tmp_path / "attn", model=model)
    assert sae.cfg.hook_name == "blocks.0.attn.hook_z"  # the input of o_proj, not hook_attn_out


def test_gemma_scope_2_affine_transcoder(tmp_path, model, tokens):
    tensors = write_scope2(tmp_path / "tc", "model.layers.1.pre_feedforward_layernorm.output",
                           "model.layers.1.post_feedforward_layernorm.output", affine=True)
    tc = load_sae(tmp_path / "tc", model=model, use_error_term=True)
    assert isinstance(tc, Transcoder) and tc.cfg.affine_skip
    assert (tc.cfg.hook_name, tc.cfg.hook_name_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    x = torch.randn(4, D_MODEL)
    pre = x @ tensors["w_enc"] + tensors["b_enc"]
    acts = (pre > tensors["threshold"]) * torch.relu(pre)
    expected = acts @ tensors["w_dec"] + tensors["b_dec"] + x @ tensors["affine_skip_connection"]
    tc.use_error_term = False
    torch.testing.assert_close(tc(x), expected, rtol=1e-5, atol=1e-4)
    tc.use_error_term = True
    plain, _ = model.run_with_cache(tokens)
    assert torch.equal(model.run_with_cache(tokens, saes=[tc])[0], plain)


def test_gemma_scope_2_without_config_reads_the_folder_name(tmp_path):
    folder = tmp_path / "transcoder_all" / "layer_3_width_16k_l0_small"
    write_scope2(folder, "unused")
    (folder / "config.json").unlink()
    tc = load_sae(folder)
    assert (tc.cfg.hook_name, tc.cfg.hook_name_out) == ("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")


def test_gemma_scope_2_errors(tmp_path):
    write_scope2(tmp_path / "a", "model.layers.1.mlp.down_proj.output")
    with pytest.raises(SAEConfigError, match=r"config.json: hf_hook_point_in='model.layers.1.mlp.down_proj.output'"):
        load_sae(tmp_path / "a")
    write_scope2(tmp_path / "b", "", config={"architecture": "batch_topk", "hf_hook_point_in": "model.layers.1.output"})
    with pytest.raises(SAEConfigError, match="config.json: unknown architecture 'batch_topk'"):
        load_sae(tmp_path / "b")
    write_scope2(tmp_path / "c", "model.layers.1.output")
    with pytest.raises(SAEConfigError, match="made for blocks.1.hook_resid_post, not blocks.1.hook_mlp_out"):
        load_sae(tmp_path / "c", hook_name="blocks.1.hook_mlp_out")
    with pytest.raises(FileNotFoundError, match="no such SAE folder"):
        load_sae(tmp_path / "missing")


# ---- SAELens: its saved format, and the same numbers from the same parameters --------------------------

SAELENS_CASES = [
    ("standard", {}),
    ("jumprelu", {}),
    ("topk", {"k": 12}),
    ("jumprelu_transcoder", {"d_out": D_MODEL}),
    ("jumprelu_skip_transcoder", {"d_out": D_MODEL}),
]


@pytest.mark.slow
@pytest.mark.parametrize("architecture, extra", SAELENS_CASES)
def test_parity_with_saelens(tmp_path, model, tokens, architecture, extra):
    import sae_lens  # in the test extra: the oracle, as transformers is for the model

    transcoder = "transcoder" in architecture
    hook_in = f"blocks.{LAYER}.ln2.hook_normalized" if transcoder else f"blocks.{LAYER}.hook_resid_post"
    metadata = {"hook_name": hook_in, "model_name": "tiny-gemma"}
    if transcoder:
        metadata["hook_name_out"] = f"blocks.{LAYER}.hook_mlp_out"
    config = {"architecture": architecture, "d_in": D_MODEL, "d_sae": 256, "dtype": "float32", "device": "cpu",
              "apply_b_dec_to_input": not transcoder, "metadata": metadata, **extra}
    theirs = sae_lens.SAE.from_dict(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            if name == "threshold":
                param.abs_()
    theirs.save_model(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae", model=model)
    assert ours.cfg.hook_name == hook_in and ours.cfg.is_transcoder == transcoder

    _, cache = model.run_with_cache(tokens, names_filter=hook_in)
    x = cache[hook_in]
    with torch.no_grad():
        their_acts, our_acts = theirs.encode(x), ours.encode(x)
        torch.testing.assert_close(our_acts, their_acts, rtol=1e-5, atol=1e-5)
        if architecture != "jumprelu_skip_transcoder":  # SAELens adds the skip path in forward, not decode
            torch.testing.assert_close(ours.decode(their_acts, x), theirs.decode(their_acts), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert (our_acts > 0).float().mean() > 0.01  # a comparison of zeros would prove nothing
    fired = (our_acts > 0).float().sum(dim=-1)
    assert fired.min() > 0


def test_saelens_format_errors(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 4, "d_sae": 8,
                                                 "metadata": {"hook_name": "blocks.0.hook_resid_post"}}))
    save_file({"W_enc": torch.zeros(4, 8)}, folder / "sae_weights.safetensors")
    with pytest.raises(SAEConfigError, match="cfg.json: unknown architecture 'gated'"):
        load_sae(folder)
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 4, "d_sae": 8,
                                                 "normalize_activations": "expected_average_only_in",
                                                 "metadata": {"hook_name": "blocks.0.hook_resid_post"}}))
    with pytest.raises(SAEConfigError, match="normalize_activations='expected_average_only_in'"):
        load_sae(folder)
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 4, "d_sae": 8,
                                                 "metadata": {"hook_name": "blocks.0.hook_resid_post"}}))
    with pytest.raises(SAEConfigError, match="sae_weights.safetensors: missing tensor.*W_dec"):
        load_sae(folder)
