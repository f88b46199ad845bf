"""Gemma 4's text model equals transformers' ``models/gemma4`` on checkpoints it wrote itself.

Three small layouts cover every Gemma 4 feature: dense with per-layer embeddings (PLE) and K=V
global layers; KV-shared layers with a double-wide MLP (and PLE); the mixture of experts (with
K=V and the final softcap). Norm gains are 1 +- 0.3 and layer_scalar buffers in [0.5, 1.5]
(tests/hf_checkpoints.py); sequences of 40 tokens run five sliding windows of 8.

Tolerances. Our fused attention (torch SDPA) and transformers' SDPA path give bit-identical
logits, and so do our explicit einsum path (taken whenever a hook wants scores or patterns, e.g.
in run_with_cache) and transformers' eager path: the checks below ask for <= 1e-5 relative and
get 0. Eager and SDPA differ from each other by up to ~3e-5 in fp32 in transformers itself, so
crossing them is held to the suite's usual 1e-4.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers
from hf_checkpoints import hf_config, hf_model, load_hf, perturb_gemma4, write_checkpoint

import gemma_lab
from gemma_lab import generation, interp
from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.generation import decode_step, prefill
from gemma_lab.model import Gemma, init_weights

SEQ = 40  # five sliding windows of 8
VOCAB = 300
EXACT = 1e-5  # same kernels as the reference: in practice 0
FP32_RTOL = 1e-4  # across transformers' own eager / SDPA gap
BF16_RTOL = 5e-2  # as tests/test_parity.py
PLE = dict(hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB)
K_EQ_V = dict(attention_k_eq_v=True, num_global_key_value_heads=1)
VARIANTS = {
    "dense-ple-k=v": dict(PLE, **K_EQ_V),
    "kv-shared-double-wide": dict(PLE, num_kv_shared_layers=2, use_double_wide_mlp=True),
    "moe": dict(K_EQ_V, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
                final_logit_softcapping=30.0),
}


def tokens(batch=2, seq=SEQ, seed=0):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def rel(ours, theirs):
    return ((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()).item()


def explicit(model):
    """An identity hook on every pattern: the explicit einsum attention path."""
    return [(lambda name: name.endswith("hook_pattern"), lambda x, hook: None)]


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    write_checkpoint(folder, 4, seed=len(request.param), **VARIANTS[request.param])
    return folder


# ---- parity -----------------------------------------------------------------------------------


def test_fp32_logits_match_plain_and_through_run_with_cache(checkpoint):
    ids = tokens()
    with torch.no_grad():
        eager = load_hf(checkpoint)(ids, output_hidden_states=True)
        sdpa = load_hf(checkpoint, attn_implementation="sdpa")(ids).logits
        model = gemma_lab.load_pretrained(checkpoint)
        plain = model(ids)
        cached_logits, cache = model.run_with_cache(ids)
    assert model.cfg.family == 4
    assert rel(plain, sdpa) <= EXACT  # same fused kernel as transformers' SDPA path
    assert rel(cached_logits, eager.logits) <= EXACT  # explicit path (patterns hooked) = eager
    assert rel(plain, eager.logits) <= FP32_RTOL
    for layer in range(model.cfg.n_layers):  # every block's input equals transformers' hidden state
        assert rel(cache["resid_pre", layer], eager.hidden_states[layer]) <= EXACT, layer


def test_bf16_logits_match(checkpoint):
    """In bf16 these random models amplify rounding: transformers' own eager and SDPA logits differ by
    up to ~20% of the largest logit. Each of our paths is held to the reference path with the same
    kernels, where the suite's bf16 bound has room to spare: they come out bit-identical."""
    ids = tokens()
    with torch.no_grad():
        eager = load_hf(checkpoint, dtype=torch.bfloat16)(ids).logits
        sdpa = load_hf(checkpoint, dtype=torch.bfloat16, attn_implementation="sdpa")(ids).logits
        model = gemma_lab.load_pretrained(checkpoint, dtype=torch.bfloat16)
        assert model.dtype == torch.bfloat16
        plain = model(ids)
        explicit_path = model.run_with_hooks(ids, fwd_hooks=explicit(model))
    assert rel(plain, sdpa) <= BF16_RTOL
    assert torch.equal(explicit_path, eager)  # same operations in the same order: bit-identical


def test_left_padded_batch_equals_unpadded_rows(checkpoint):
    model = gemma_lab.load_pretrained(checkpoint)
    short, long = tokens(1, 13, seed=1)[0], tokens(1, 30, seed=2)[0]
    batch = torch.zeros(2, 30, dtype=torch.long)
    batch[0, 17:], batch[1] = short, long
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, :17] = False
    with torch.no_grad():
        padded = model(batch, attention_mask=mask)
        hf = load_hf(checkpoint)
        hf_short, hf_long = hf(short[None]).logits[0], hf(long[None]).logits[0]
    assert rel(padded[0, 17:], hf_short) <= FP32_RTOL
    assert rel(padded[1], hf_long) <= FP32_RTOL


def test_router_matches_transformers_router_probabilities(tmp_path):
    write_checkpoint(tmp_path, 4, seed=3, **VARIANTS["moe"])
    ids = tokens()
    with torch.no_grad():
        hf = load_hf(tmp_path)(ids, output_router_logits=True)
        model = gemma_lab.load_pretrained(tmp_path)
        _, cache = model.run_with_cache(ids, names_filter=lambda n: "router" in n)
    for layer, theirs in enumerate(hf.router_logits):  # transformers records the router's softmax there
        ours = cache[f"blocks.{layer}.moe.router.hook_probs"]
        assert rel(ours.reshape(theirs.shape), theirs) <= EXACT
        chosen = cache[f"blocks.{layer}.moe.router.hook_chosen"]
        assert torch.equal(chosen, ours.topk(2, dim=-1).indices)
        weights = cache[f"blocks.{layer}.moe.router.hook_weights"]
        scale = model.blocks[layer].moe.router.per_expert_scale[chosen]
        torch.testing.assert_close((weights / scale).sum(dim=-1), torch.ones(chosen.shape[:2]))  # renormalised


# ---- configs and presets --------------------------------------------------------------------------

# The published sizes as transformers builds them from the hub's config.json spelling
# (global_head_dim, num_global_key_value_heads): our presets must give the same architecture.
HUB_CONFIGS = {
    "gemma4-e2b": dict(hidden_size=1536, num_hidden_layers=35, intermediate_size=6144, num_attention_heads=8,
                       num_key_value_heads=1, num_kv_shared_layers=20, use_double_wide_mlp=True,
                       layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 7),
    "gemma4-e4b": dict(hidden_size=2560, num_hidden_layers=42, intermediate_size=10240, num_attention_heads=8,
                       num_key_value_heads=2, num_kv_shared_layers=18),
    "gemma4-31b": dict(hidden_size=5376, num_hidden_layers=60, intermediate_size=21504, num_attention_heads=32,
                       num_key_value_heads=16, num_global_key_value_heads=4, attention_k_eq_v=True,
                       hidden_size_per_layer_input=0, sliding_window=1024, max_position_embeddings=262144),
    "gemma4-26b-a4b": dict(hidden_size=2816, num_hidden_layers=30, intermediate_size=2112, num_attention_heads=16,
                           num_key_value_heads=8, num_global_key_value_heads=2, attention_k_eq_v=True,
                           hidden_size_per_layer_input=0, sliding_window=1024, max_position_embeddings=262144,
                           enable_moe_block=True, num_experts=128, top_k_experts=8, moe_intermediate_size=704),
}


def hub_config(preset):
    return transformers.Gemma4TextConfig(global_head_dim=512, final_logit_softcapping=30.0, **HUB_CONFIGS[preset])


@pytest.mark.parametrize("preset", list(HUB_CONFIGS))
def test_presets_equal_transformers_configs(preset):
    hf = hub_config(preset)
    saved = GemmaConfig.from_hf(hf.to_dict())  # what save_pretrained writes (per_layer_config)
    cfg = PRESETS[preset]
    assert saved.replace(name=cfg.name) == cfg
    hub_spelling = {k: v for k, v in hf.to_dict().items() if k != "per_layer_config"}
    hub_spelling.update(global_head_dim=512, num_global_key_value_heads=HUB_CONFIGS[preset].get(
        "num_global_key_value_heads"))
    assert GemmaConfig.from_hf({"model_type": "gemma4", "text_config": hub_spelling}).replace(name=cfg.name) == cfg


@pytest.mark.parametrize("preset", list(HUB_CONFIGS))
def test_parameter_counts_equal_transformers_on_meta_device(preset):
    with torch.device("meta"):
        ours = Gemma(PRESETS[preset])
        theirs = transformers.Gemma4ForCausalLM(hub_config(preset))
    n_theirs = sum(p.numel() for name, p in theirs.named_parameters() if name != "lm_head.weight")
    assert ours.n_params() == PRESETS[preset].n_params() == n_theirs


def test_kv_shared_layers_read_the_last_non_shared_layer_of_their_kind():
    e2b = PRESETS["gemma4-e2b"]  # 35 layers, global every fifth, the last 20 shared
    assert [e2b.kv_source(i) for i in (14, 15, 19, 33, 34)] == [14, 13, 14, 13, 14]
    assert e2b.d_mlp_for(14) == 6144 and e2b.d_mlp_for(15) == 12288  # double-wide where shared
    e4b = PRESETS["gemma4-e4b"]
    assert [e4b.kv_source(i) for i in (24, 29, 41)] == [22, 23, 23]
    with pytest.raises(ValueError, match="no earlier non-shared layer of its kind"):
        PRESETS["test-gemma4"].replace(n_kv_shared_layers=4)


def test_config_errors_name_the_field(tmp_path):
    base = hf_config(4).to_dict()
    with pytest.raises(ValueError, match="use_bidirectional_attention='all'"):
        GemmaConfig.from_hf(dict(base, use_bidirectional_attention="all"))
    with pytest.raises(ValueError, match="per_layer_config"):
        GemmaConfig.from_hf(dict(base, per_layer_config={"0": {"head_dim": 32}}))  # layer 0 is sliding
    with pytest.raises(ValueError, match="RoPE type 'yarn'"):
        GemmaConfig.from_hf(dict(base, rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 1e6}}))


# ---- loading ----------------------------------------------------------------------------------------


def test_multimodal_checkpoint_loads_the_text_tower_and_says_what_it_skipped(tmp_path):
    text = hf_config(4, **PLE)
    vision = transformers.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                             patch_size=4, position_embedding_size=64, pooling_kernel_size=2)
    audio = transformers.Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           subsampling_conv_channels=[8, 4], output_proj_dims=32, conv_kernel_size=3)
    config = transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=audio,
                                       boi_token_id=290, eoi_token_id=291, image_token_id=292, video_token_id=293,
                                       boa_token_id=294, eoa_token_index=295, audio_token_id=296)
    torch.manual_seed(0)
    full = transformers.Gemma4ForConditionalGeneration._from_config(config, attn_implementation="eager")
    perturb_gemma4(full, seed=5).eval()
    full.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped \d+ vision/audio tower tensors"):
        ours = gemma_lab.load_pretrained(tmp_path)
    ids = tokens(seq=20)
    with torch.no_grad():
        reloaded = transformers.Gemma4ForConditionalGeneration.from_pretrained(
            tmp_path, attn_implementation="eager", dtype=torch.float32).eval()
        expected = reloaded(input_ids=ids).logits
        assert rel(ours.run_with_hooks(ids, fwd_hooks=explicit(ours)), expected) <= EXACT


def test_kv_projections_of_shared_layers_are_skipped_with_a_note_and_others_stay_strict(tmp_path):
    """Some published files carry k/v weights for the KV-shared layers, which never use them."""
    from safetensors.torch import load_file, save_file

    write_checkpoint(tmp_path, 4, seed=6, **VARIANTS["kv-shared-double-wide"])
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.5.self_attn.k_proj.weight"] = torch.zeros(32, 64)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match="skipped 1 key/value weights of KV-shared layers"):
        gemma_lab.load_pretrained(tmp_path)
    weights["model.layers.5.self_attn.v_norm.weight"] = torch.zeros(32)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(gemma_lab.CheckpointError, match="layers.5.self_attn.v_norm.weight.*unexpected"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gemma_lab.load_pretrained(tmp_path)
    del weights["model.layers.5.self_attn.v_norm.weight"], weights["model.layers.1.layer_scalar"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(gemma_lab.CheckpointError, match="missing tensors blocks.1.layer_scalar"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gemma_lab.load_pretrained(tmp_path)


def test_legacy_hub_config_spelling(tmp_path):
    """Hub configs say global_head_dim / num_global_key_value_heads instead of per_layer_config."""
    write_checkpoint(tmp_path, 4, seed=7, **VARIANTS["dense-ple-k=v"])
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config.pop("per_layer_config")
    config.update(global_head_dim=32, num_global_key_value_heads=1)
    path.write_text(json.dumps(config))
    ours = gemma_lab.load_pretrained(tmp_path)
    assert (ours.cfg.d_head_global, ours.cfg.n_kv_heads_global, ours.cfg.k_eq_v) == (32, 1, True)
    ids = tokens()
    with torch.no_grad():
        assert rel(ours.run_with_hooks(ids, fwd_hooks=explicit(ours)), load_hf(tmp_path)(ids).logits) <= EXACT
