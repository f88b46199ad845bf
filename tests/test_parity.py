"""Our logits equal transformers' (attn_implementation="eager") on checkpoints it wrote itself."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from hf_checkpoints import hf_config, hf_model, load_hf, perturb, write_checkpoint

import gemma_lab

SEQ = 40  # longer than the sliding window (8) of the test configs
SHAPES = {  # query heads : key/value heads
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
}
GEMMA3_LINEAR_ROPE = dict(
    num_hidden_layers=7,  # five local, one global, one local: the pattern wraps
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                     "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}},
)
# fp32: max |difference| relative to the logits' scale. bf16: the fused (SDPA) path rounds
# differently from eager attention; the explicit path is bit-identical (checked below).
FP32_RTOL = 1e-4
BF16_RTOL = 5e-2  # transformers' own SDPA and eager paths differ by as much in bf16


def tokens(batch=2, seq=SEQ, vocab=300, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def force_explicit(model):
    """An identity hook on every pattern forces the explicit einsum attention path."""
    return [(lambda name: name.endswith("hook_pattern"), lambda x, hook: None)]


def max_rel_diff(ours, theirs):
    return ((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()).item()


@pytest.mark.parametrize("family", [1, 2, 3])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fp32_logits_match(tmp_path, family, shape):
    overrides = dict(SHAPES[shape], **(GEMMA3_LINEAR_ROPE if family == 3 else {}))
    write_checkpoint(tmp_path, family, seed=family, **overrides)
    ids = tokens()
    with torch.no_grad():
        expected = load_hf(tmp_path)(ids).logits
        model = gemma_lab.load_pretrained(tmp_path)
        assert max_rel_diff(model(ids), expected) <= FP32_RTOL
        assert max_rel_diff(model.run_with_hooks(ids, fwd_hooks=force_explicit(model)), expected) <= FP32_RTOL


@pytest.mark.parametrize("family", [1, 2, 3])
def test_bf16_logits_match(tmp_path, family):
    write_checkpoint(tmp_path, family, seed=10 + family)
    ids = tokens()
    with torch.no_grad():
        expected = load_hf(tmp_path, dtype=torch.bfloat16)(ids).logits
        model = gemma_lab.load_pretrained(tmp_path, dtype=torch.bfloat16)
        assert model.dtype == torch.bfloat16
        assert max_rel_diff(model(ids), expected) <= BF16_RTOL
        explicit = model.run_with_hooks(ids, fwd_hooks=force_explicit(model))
    # Same operations in the same order as the reference: bit-identical even in bf16.
    assert torch.equal(explicit, expected)


@pytest.mark.parametrize("family", [1, 2, 3])
def test_sharded_checkpoint_equals_unsharded(tmp_path, family):
    write_checkpoint(tmp_path / "one", family, seed=3)
    write_checkpoint(tmp_path / "shards", family, seed=3, max_shard_size="60KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    ids = tokens()
    with torch.no_grad():
        one = gemma_lab.load_pretrained(tmp_path / "one")(ids)
        shards = gemma_lab.load_pretrained(tmp_path / "shards")(ids)
    assert torch.equal(one, shards)


@pytest.mark.parametrize("family", [1, 2, 3])
def test_left_padded_batch_equals_unpadded_rows(tmp_path, family):
    write_checkpoint(tmp_path, family, seed=4)
    model = gemma_lab.load_pretrained(tmp_path)
    short, long = tokens(1, 13, seed=1)[0], tokens(1, 30, seed=2)[0]
    batch = torch.zeros(2, 30, dtype=torch.long)
    batch[0, 30 - 13:], batch[1] = short, long
    mask = batch.ne(0)
    mask[0, :30 - 13], mask[1] = False, True
    mask[0, 30 - 13:] = True
    with torch.no_grad():
        padded = model(batch, attention_mask=mask)
        alone_short, alone_long = model(short[None]), model(long[None])
        hf = load_hf(tmp_path)
        hf_short = hf(short[None]).logits
    torch.testing.assert_close(padded[0, 30 - 13:], alone_short[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1], alone_long[0], rtol=1e-5, atol=1e-5)
    assert max_rel_diff(padded[0, 30 - 13:], hf_short[0]) <= FP32_RTOL


def test_gemma2_softcap_and_transformers_default_attention(tmp_path):
    """transformers 4.48-5.17 ran Gemma 2 through SDPA by default, which silently skipped the
    attention softcap; newer releases refuse SDPA for Gemma 2 and fall back to eager.

    We follow Google's code and transformers' eager path (softcap applied). This test documents
    what the installed transformers does by default, so users comparing against it are not surprised.
    """
    model_hf = hf_model(2, seed=5)
    with torch.no_grad():  # large query/key weights so that scores reach the softcap's range
        for layer in model_hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(12)
            layer.self_attn.k_proj.weight.mul_(12)
    model_hf.save_pretrained(tmp_path)
    ids = tokens()
    with torch.no_grad():
        eager = load_hf(tmp_path)(ids).logits
        model = gemma_lab.load_pretrained(tmp_path)
        ours = model(ids)
        no_softcap = gemma_lab.Gemma(model.cfg.replace(attn_softcap=None))
        no_softcap.load_state_dict(model.state_dict())
        without = no_softcap(ids)
        default = transformers.Gemma2ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
        default_logits = default(ids).logits
    assert max_rel_diff(ours, eager) <= FP32_RTOL
    assert max_rel_diff(without, eager) > 1e-2  # the softcap matters at these scores
    if default.config._attn_implementation == "sdpa":  # transformers 4.48 - 5.17
        assert max_rel_diff(default_logits, without) <= 1e-3
    else:  # newer transformers: eager by default, softcap applied
        assert max_rel_diff(default_logits, ours) <= FP32_RTOL


def test_legacy_hub_config_spelling(tmp_path):
    """Published Gemma 3 checkpoints carry rope_theta / rope_local_base_freq / rope_scaling /
    sliding_window_pattern instead of rope_parameters / layer_types."""
    write_checkpoint(tmp_path, 3, seed=6, **GEMMA3_LINEAR_ROPE)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("rope_parameters", "layer_types"):
        config.pop(key, None)
    config.update(rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, sliding_window_pattern=6,
                  rope_scaling={"rope_type": "linear", "factor": 8.0})
    config_path.write_text(json.dumps(config))
    ours = gemma_lab.load_pretrained(tmp_path)
    assert ours.cfg.rope_scale == 8.0 and ours.cfg.layer_types[5] == "global" and ours.cfg.layer_types[6] == "local"
    ids = tokens()
    with torch.no_grad():
        expected = load_hf(tmp_path)(ids).logits
        assert max_rel_diff(ours(ids), expected) <= FP32_RTOL


def test_gemma2_legacy_config_without_layer_types(tmp_path):
    write_checkpoint(tmp_path, 2, seed=7)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("layer_types")
    config.pop("rope_parameters")
    config.update(rope_theta=10_000.0, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                  cache_implementation="hybrid", sliding_window_size=8)
    config_path.write_text(json.dumps(config))
    ours = gemma_lab.load_pretrained(tmp_path)
    assert ours.cfg.layer_types == ("local", "global", "local", "global")
    ids = tokens()
    with torch.no_grad():
        assert max_rel_diff(ours(ids), load_hf(tmp_path)(ids).logits) <= FP32_RTOL


def test_gemma1_legacy_gelu_means_tanh(tmp_path):
    write_checkpoint(tmp_path, 1, seed=8, hidden_act="gelu")
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_act"] = "gelu"  # as the first Gemma releases shipped it
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = gemma_lab.load_pretrained(tmp_path)
    assert ours.cfg.activation == "gelu_tanh"
    ids = tokens()
    with torch.no_grad():
        assert max_rel_diff(ours(ids), load_hf(tmp_path)(ids).logits) <= FP32_RTOL


def test_gemma3_multimodal_checkpoint_loads_text_tower(tmp_path):
    text = hf_config(3, vocab_size=320, num_hidden_layers=6)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=310, boi_token_index=308, eoi_token_index=309)
    torch.manual_seed(0)
    full = transformers.Gemma3ForConditionalGeneration._from_config(config, attn_implementation="eager")
    perturb(full, seed=9).eval()
    full.save_pretrained(tmp_path)
    ours = gemma_lab.load_pretrained(tmp_path)
    assert ours.cfg.family == 3 and ours.cfg.vocab_size == 320
    ids = tokens(vocab=300)
    with torch.no_grad():
        reloaded = transformers.Gemma3ForConditionalGeneration.from_pretrained(
            tmp_path, attn_implementation="eager", dtype=torch.float32).eval()
        expected = reloaded(input_ids=ids).logits
        assert max_rel_diff(ours(ids), expected) <= FP32_RTOL


def test_gemma3_multimodal_legacy_key_prefix(tmp_path):
    """Hub files of Gemma 3 4B/12B/27B name text weights language_model.model.*."""
    from safetensors.torch import load_file, save_file

    write_checkpoint(tmp_path, 3, seed=10)
    weights = load_file(tmp_path / "model.safetensors")
    renamed = {"language_model." + k: v for k, v in weights.items()}
    renamed["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(2, 3)
    save_file(renamed, tmp_path / "model.safetensors")
    ids = tokens()
    with torch.no_grad():
        ours = gemma_lab.load_pretrained(tmp_path)(ids)
        base = hf_model(3, seed=10)(ids).logits
    assert max_rel_diff(ours, base) <= FP32_RTOL


@pytest.mark.parametrize("family", [1, 2, 3])
def test_gemma_pytorch_checkpoint_with_fused_qkv(tmp_path, family):
    """Google's gemma_pytorch layout: embedder.weight, fused qkv_proj, query_norm/key_norm."""
    hf = hf_model(family, seed=11)
    state = {}
    for name, tensor in hf.model.state_dict().items():
        if name == "embed_tokens.weight":
            state["embedder.weight"] = tensor
            continue
        name = "model." + name
        if ".self_attn.q_proj." in name:
            prefix = name.split("self_attn.")[0] + "self_attn."
            attn = hf.model.state_dict()
            layer_prefix = prefix[len("model."):]
            state[prefix + "qkv_proj.weight"] = torch.cat(
                [attn[layer_prefix + "q_proj.weight"], attn[layer_prefix + "k_proj.weight"],
                 attn[layer_prefix + "v_proj.weight"]])
            continue
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        name = name.replace("self_attn.q_norm", "self_attn.query_norm").replace("self_attn.k_norm", "self_attn.key_norm")
        state[name] = tensor
    state["freqs_cis"] = torch.zeros(4, 4)  # a buffer gemma_pytorch saves; ignored on load
    torch.save({"model_state_dict": state}, tmp_path / "model.ckpt")
    hf.config.save_pretrained(tmp_path)  # config.json beside the .ckpt
    ids = tokens()
    with torch.no_grad():
        ours = gemma_lab.load_pretrained(tmp_path / "model.ckpt")(ids)
        assert max_rel_diff(ours, hf(ids).logits) <= FP32_RTOL


PUBLISHED_PARAMS = {
    "gemma-2b": 2_506_172_416, "gemma-7b": 8_537_680_896, "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984, "gemma2-27b": 27_227_128_320, "gemma3-270m": 268_098_176,
    "gemma3-1b": 999_885_952, "gemma3-4b": 3_880_263_168, "gemma3-12b": 11_766_034_176,
    "gemma3-27b": 27_009_346_304,
}


@pytest.mark.parametrize("preset", list(PUBLISHED_PARAMS))
def test_full_size_parameter_counts_on_meta_device(preset):
    with torch.device("meta"):
        model = gemma_lab.Gemma(gemma_lab.GemmaConfig.from_preset(preset))
    assert model.n_params() == PUBLISHED_PARAMS[preset] == model.cfg.n_params()


@pytest.mark.parametrize("preset", ["gemma-2b", "gemma2-9b", "gemma3-1b", "gemma3-4b"])
def test_presets_equal_transformers_configs(preset):
    """Our preset and transformers' config for the same model build the same shapes."""
    cfg = gemma_lab.GemmaConfig.from_preset(preset)
    hf_cfgs = {
        "gemma-2b": transformers.GemmaConfig(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                                             num_attention_heads=8, num_key_value_heads=1, head_dim=256),
        "gemma2-9b": transformers.Gemma2Config(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                               num_attention_heads=16, num_key_value_heads=8, head_dim=256),
        "gemma3-1b": transformers.Gemma3TextConfig(vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                                                   num_hidden_layers=26, num_attention_heads=4,
                                                   num_key_value_heads=1, head_dim=256, sliding_window=512,
                                                   max_position_embeddings=32768),
        "gemma3-4b": transformers.Gemma3TextConfig(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                                                   num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                                                   sliding_window=1024,
                                                   rope_scaling={"rope_type": "linear", "factor": 8.0}),
    }
    from_hf = gemma_lab.GemmaConfig.from_hf(hf_cfgs[preset].to_dict())
    assert from_hf.replace(name=cfg.name) == cfg


@pytest.mark.parametrize("preset", ["test-gemma", "test-gemma2", "test-gemma3"])
def test_last_position_only_equals_the_last_row(preset):
    model = gemma_lab.init_weights(gemma_lab.Gemma(gemma_lab.GemmaConfig.from_preset(preset)), seed=1)
    ids = tokens(vocab=512)
    with torch.no_grad():
        full = model(ids)
        last = model(ids, last_position_only=True)
    assert last.shape == (2, 1, 512)
    # One row through the unembedding may take another matmul kernel than many: equal to rounding.
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", list(gemma_lab.PRESETS))
def test_config_json_written_by_us_reads_back_and_transformers_agrees(preset):
    """hf_format both ways: GemmaConfig -> config.json -> GemmaConfig, and transformers' reading of it."""
    cfg = gemma_lab.GemmaConfig.from_preset(preset)
    written = cfg.to_hf()
    assert gemma_lab.GemmaConfig.from_hf(written).replace(name=cfg.name) == cfg
    config_class = transformers.AutoConfig.for_model(written["model_type"]).__class__
    theirs = config_class(**{k: v for k, v in written.items() if k != "model_type"})
    assert gemma_lab.GemmaConfig.from_hf(theirs.to_dict()).replace(name=cfg.name) == cfg


@pytest.mark.parametrize("preset", ["test-gemma", "test-gemma2", "test-gemma3"])
def test_unembed_is_the_end_of_forward(preset):
    model = gemma_lab.init_weights(gemma_lab.Gemma(gemma_lab.GemmaConfig.from_preset(preset)), seed=1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens(vocab=512), names_filter=lambda name: "resid_post" in name)
    assert isinstance(cache, gemma_lab.ActivationCache)
    assert torch.equal(model.unembed(cache["resid_post", -1]), logits)
    assert not torch.equal(model.unembed(cache["resid_post", 0]), logits)
