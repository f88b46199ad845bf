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
from hf_checkpoints import (GEMMA4_K_EQ_V, GEMMA4_MOE, hf_config, hf_model, load_hf, perturb_gemma4,
                            write_checkpoint)

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
VARIANTS = {
    "dense-ple-k=v": dict(PLE, **GEMMA4_K_EQ_V),
    "kv-shared-double-wide": dict(PLE, num_kv_shared_layers=2, use_double_wide_mlp=True),
    "moe": GEMMA4_MOE,
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


# ---- hooks and interpretability -------------------------------------------------------------------


def small_model(seed=0, **changes) -> Gemma:
    """test-gemma4: every Gemma 4 feature at once, random weights, gains 1 +- 0.3."""
    model = init_weights(Gemma(PRESETS["test-gemma4"].replace(**changes)), seed=seed, std=0.1).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        for block in model.blocks:
            block.layer_scalar.fill_(0.5 + torch.rand(1, generator=generator).item())
    return model


def test_every_hook_fires_in_order_with_the_listed_shape():
    from tools import hook_table

    from gemma_lab import hook_points

    model = small_model()
    ids = tokens(2, 11)
    fired = []
    with torch.no_grad():
        model.run_with_hooks(ids, fwd_hooks=[(lambda n: True, lambda x, hook: fired.append(hook.name))])
        _, cache = model.run_with_cache(ids)
    assert fired == model.hook_names() == list(cache)
    for name, activation in cache.items():
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else 0
        axes, _ = hook_points.HOOKS[hook_points.generic_name(name)]
        sizes = hook_table.axis_sizes(model.cfg, 2, 11, layer)
        assert tuple(activation.shape) == hook_table.expected_shape(axes, sizes), name
    assert "blocks.4.attn.hook_k" not in cache and "blocks.4.attn.hook_shared_k" in cache  # a shared layer
    assert cache["blocks.2.attn.hook_z"].shape[-1] == 32 and cache["blocks.1.attn.hook_z"].shape[-1] == 16


def test_identity_hooks_and_self_patching_leave_logits_bit_identical():
    model = small_model(seed=1)
    ids = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
        explicit_path = model.run_with_hooks(ids, fwd_hooks=explicit(model))
        patched = model.run_with_hooks(ids, fwd_hooks=[(lambda n: True, lambda x, hook: cache[hook.name])])
    assert torch.equal(logits, explicit_path) and torch.equal(patched, logits)


def test_shared_kv_hooks_show_the_source_layer_and_patch_only_the_reader():
    model = small_model(seed=2)
    assert [block.attn.kv_source for block in model.blocks] == [0, 1, 2, 3, 3, 2]
    ids = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
        assert torch.equal(cache["blocks.4.attn.hook_shared_k"], cache["rot_k", 3])
        assert torch.equal(cache["blocks.5.attn.hook_shared_k"], cache["rot_k", 2])
        assert torch.equal(cache["blocks.5.attn.hook_shared_v"], cache["blocks.2.attn.v_norm.hook_normalized"])
        watched = ["blocks.2.hook_attn_out", "blocks.5.attn.hook_z"]
        _, unpatched = model.run_with_cache(ids, names_filter=watched)
        with model.hooks(fwd_hooks=[("blocks.5.attn.hook_shared_v", lambda v, hook: torch.zeros_like(v))]):
            zeroed, patched = model.run_with_cache(ids, names_filter=watched)
    assert torch.equal(patched["attn_out", 2], unpatched["attn_out", 2])  # the source layer is untouched
    assert patched["z", 5].abs().max() == 0 and rel(zeroed, logits) > 1e-3


def test_k_eq_v_values_are_the_normalised_key_projection():
    model = small_model(seed=3)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens())
    assert model.blocks[2].attn.v_proj is None and model.blocks[1].attn.v_proj is not None
    assert torch.equal(cache["v", 2], cache["k", 2])  # K=V global layer: raw keys serve as values
    v = cache["v", 2].float()
    expected = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps)
    torch.testing.assert_close(cache["blocks.2.attn.v_norm.hook_normalized"], expected)


def test_moe_and_per_layer_hooks_add_up_to_what_the_block_adds():
    model = small_model(seed=4)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens())
    close = dict(rtol=1e-5, atol=1e-5)
    for layer, block in enumerate(model.blocks):
        moe = f"blocks.{layer}.moe."
        summed = cache[moe + "experts.hook_expert_out"].sum(dim=2)
        torch.testing.assert_close(block.moe.post_norm(summed), cache[moe + "hook_experts_out"], **close)
        both = cache[moe + "hook_dense_out"] + cache[moe + "hook_experts_out"]
        torch.testing.assert_close(block.ln2_post(both), cache["mlp_out", layer], **close)
        chosen = cache[moe + "router.hook_chosen"]
        assert torch.equal(chosen, cache[moe + "router.hook_logits"].topk(2, dim=-1).indices)
        gated = cache[f"blocks.{layer}.per_layer.hook_gate"] * cache[f"blocks.{layer}.per_layer.hook_input"]
        assert torch.equal(cache[f"blocks.{layer}.per_layer.hook_gated"], gated)
        assert torch.equal(cache[f"blocks.{layer}.per_layer.hook_input"], cache["per_layer_embed.hook_inputs"][:, :, layer])
        resid = (cache["resid_mid", layer] + cache["mlp_out", layer] + cache[f"blocks.{layer}.hook_per_layer_out"])
        assert torch.equal(cache["resid_post", layer], resid * block.layer_scalar)


def test_choosing_other_experts_through_the_router_hook():
    model = small_model(seed=5)
    ids = tokens()
    with torch.no_grad():
        logits = model(ids)
        with model.hooks(fwd_hooks=[("blocks.0.moe.router.hook_chosen", lambda c, hook: 3 - c)]):
            flipped, cache = model.run_with_cache(ids, names_filter=lambda n: n.startswith("blocks.0.moe.router"))
    assert rel(flipped, logits) > 1e-3
    probs, chosen = cache["blocks.0.moe.router.hook_probs"], cache["blocks.0.moe.router.hook_chosen"]
    expected = probs.gather(-1, chosen)
    expected = expected / expected.sum(-1, keepdim=True) * model.blocks[0].moe.router.per_expert_scale[chosen]
    torch.testing.assert_close(cache["blocks.0.moe.router.hook_weights"], expected)


def test_decomposition_and_direct_logit_attribution_are_exact():
    model = small_model(seed=6)
    ids = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
        parts, labels = cache.decompose_resid(return_labels=True)
        attribution = interp.direct_logit_attribution(model, ids, target=5, incorrect=9)
    n = model.cfg.n_layers
    assert labels[:4] == ["embed", "0_attn_out", "0_mlp_out", "0_per_layer_out"] and len(labels) == 1 + 3 * n
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.sum(0), cache["resid_post", n - 1].float(), **close)
    torch.testing.assert_close(cache.decompose_resid(layer=3, mlp_input=True).sum(0), cache["resid_mid", 3].float(), **close)
    heads = cache.stack_head_results(incl_remainder=True)
    torch.testing.assert_close(heads.sum(0), cache["resid_post", n - 1].float(), **close)
    torch.testing.assert_close(cache.apply_ln_to_stack(parts).sum(0), cache["ln_final.hook_normalized"], **close)
    parts_sum = (attribution.embed + attribution.heads.sum() + attribution.mlps.sum() + attribution.per_layer.sum())
    torch.testing.assert_close(parts_sum, attribution.total, **close)
    assert attribution.heads.shape == (n, model.cfg.n_heads) and attribution.per_layer.shape == (n,)
    expected = (logits[:, -1, 5] - logits[:, -1, 9]).mean()  # no final softcap on test-gemma4
    torch.testing.assert_close(attribution.total, expected, **close)


def test_head_ablation_patching_and_logit_lens_on_gemma4():
    model = small_model(seed=7)
    ids = tokens(1, 20)
    with torch.no_grad():
        plain = model(ids)
        ablated = model.run_with_hooks(ids, fwd_hooks=[("blocks.2.attn.hook_z", interp.head_ablation_hook(1))])
        o_proj = model.blocks[2].attn.o_proj.weight  # global layer: heads 32 wide
        saved = o_proj.clone()
        o_proj[:, 32:64] = 0
        expected = model(ids)
        o_proj.copy_(saved)
        _, clean = model.run_with_cache(ids)
        metric = lambda logits: logits[0, -1, 5] - logits[0, -1, 9]
        same = interp.patch_by_layer(model, ids, clean, metric, activation="resid_pre")
    assert rel(ablated, expected) <= 1e-5 and rel(plain, expected) > 1e-4
    torch.testing.assert_close(same, torch.full_like(same, metric(plain).item()), rtol=1e-5, atol=1e-5)
    lens = interp.logit_lens(model, ids[0], k=3)
    final = plain[0].softmax(-1).topk(3).indices
    assert torch.equal(torch.as_tensor(lens.top_tokens[-1]), final)


# ---- KV cache and generation -----------------------------------------------------------------------


def teacher_forced(model, ids, prompt_len, attention_mask=None):
    logits, cache = prefill(model, ids[:, :prompt_len], attention_mask=attention_mask, max_len=ids.shape[1])
    steps = [logits] + [decode_step(model, ids[:, i], cache) for i in range(prompt_len, ids.shape[1])]
    return torch.stack(steps, dim=1), cache


def test_cached_decoding_equals_full_recomputation_across_windows():
    model = small_model(seed=8)
    ids = torch.randint(3, 512, (2, 65), generator=torch.Generator().manual_seed(1))  # eight windows of 8
    with torch.no_grad():
        full = model(ids)
        cached, cache = teacher_forced(model, ids, prompt_len=5)
        chunked_cache = gemma_lab.KVCache.for_model(model, 2, 65)
        chunks = [model(ids[:, a:b], kv_cache=chunked_cache) for a, b in [(0, 5), (5, 19), (19, 22), (22, 40)]]
    # One token at a time runs other kernel shapes than the full pass: fp32 reorderings, ~1e-5 here.
    for step in range(61):
        assert rel(cached[:, step], full[:, 4 + step]) <= FP32_RTOL, step
    assert rel(torch.cat(chunks, dim=1), full[:, :40]) <= FP32_RTOL
    # Shared layers keep nothing of their own and read their source's keys.
    assert cache.keys[4].numel() == cache.keys[5].numel() == 0 and cache.values[5].numel() == 0
    assert torch.equal(cache.layer_kv(5).keys, cache.layer_kv(2).keys)
    assert cache.keys[2].shape == (2, 1, 65, 32) and cache.keys[0].shape == (2, 2, 8, 16)


def test_left_padded_batch_decodes_like_each_row_alone():
    model = small_model(seed=9)
    prompts = [torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (3, 11)]
    continuation = torch.randint(3, 512, (2, 30), generator=torch.Generator().manual_seed(99))
    prompt_ids, mask = generation.left_pad(prompts)
    ids = torch.cat([prompt_ids, continuation], dim=1)
    with torch.no_grad():
        cached, _ = teacher_forced(model, ids, prompt_ids.shape[1], attention_mask=mask)
        for row, prompt in enumerate(prompts):
            alone = model(torch.cat([torch.tensor(prompt), continuation[row]])[None])[0]
            assert rel(cached[row], alone[len(prompt) - 1:]) <= FP32_RTOL, row


def test_kv_cache_bytes_count_shared_layers_as_nothing():
    e2b = PRESETS["gemma4-e2b"]
    with torch.device("meta"):
        cache = gemma_lab.KVCache(e2b, batch_size=1, max_len=4096, dtype=torch.bfloat16, device="meta")
    own = [layer for layer in range(e2b.n_layers) if not e2b.is_kv_shared(layer)]
    assert len(own) == 15
    local, global_ = [l for l in own if e2b.is_local(l)], [l for l in own if not e2b.is_local(l)]
    expected = 2 * 2 * 1 * (256 * 512 * len(local) + 512 * 4096 * len(global_))  # k and v, bf16, 1 kv head
    assert cache.nbytes() == expected
    assert e2b.kv_numbers_per_token() == 2 * (256 * len(local) + 512 * len(global_))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_generation_equals_transformers(tmp_path, variant):
    hf = hf_model(4, seed=11, **VARIANTS[variant])
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(0.2)  # let attention and MLPs, not the tied embedding, pick tokens
    hf.save_pretrained(tmp_path)
    prompt = tokens(1, 6, seed=4)
    with torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0,
                          output_scores=True, return_dict_in_generate=True)
    expected = out.sequences[0, 6:].tolist()
    scores = torch.stack(out.scores)[:, 0]
    top2 = scores.topk(2, dim=-1).values
    assert ((top2[:, 0] - top2[:, 1]) / scores.abs().amax(dim=-1)).min() > 1e-4  # no near-ties
    model = gemma_lab.load_pretrained(tmp_path)
    result = gemma_lab.generate(model, prompt[0], max_new_tokens=30, stop=[])
    assert result.token_ids == expected and len(set(expected)) >= 3


def test_info_and_the_lesson_reference_count_shared_layers_and_wide_heads(capsys):
    from gemma_lab.cli import main
    from gemma_lab.exercises.lesson14_real_weights import kv_cache_bytes_reference

    assert main(["info", "gemma4-e2b"]) == 0
    out = capsys.readouterr().out
    # 15 layers keep keys/values: 3 global (1 kv head x 512) and 12 local (1 x 256); k and v, 2 bytes each.
    assert "bf16 6.00 KiB per token (global layers) + 12.00 KiB per token of the last 512" in out
    assert "20 KV-shared layers store none" in out and "layers 15-34 reuse the keys and values of layers 13, 14" in out
    e2b = PRESETS["gemma4-e2b"]
    with torch.device("meta"):
        cache = gemma_lab.KVCache(e2b, batch_size=1, max_len=3000, dtype=torch.bfloat16, device="meta")
    assert kv_cache_bytes_reference(e2b, 3000, torch.bfloat16) == cache.nbytes() == 3 * 4 * 512 * 3000 + 12 * 4 * 256 * 512


# ---- tokenizer ------------------------------------------------------------------------------------


# A chat template in the shape of Gemma 4's (written for this test, not Google's file): an optional system
# turn that switches thinking on with <|think|>, "assistant" written "model", reasoning kept out of
# earlier turns, tools listed as JSON, and an empty thought channel in the generation prompt when thinking
# is off, as some Gemma 4 sizes have. It exercises every rendering convention that must match transformers:
# trim_blocks/lstrip_blocks, loop controls, namespace, tojson, raise_exception and {% generation %}.
GEMMA4_STYLE_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set ns.system = messages[0]['content'] | trim -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if enable_thinking or ns.system or tools -%}
<|turn>system
{% if enable_thinking %}<|think|>{% endif %}{{ ns.system }}
{%- if tools %}

Tools:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}
{%- endif %}<turn|>
{% endif -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}{{ raise_exception('a system message may only come first') }}{%- endif -%}
    {%- if loop.index0 > 40 -%}{%- break -%}{%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
<|turn>{{ role }}
{% if role == 'model' %}{% generation %}{{ message['content'] | trim }}{% endgeneration %}{% else %}{{ message['content'] | trim }}{% endif %}<turn|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|turn>model
{% if not enable_thinking %}<|channel>thought
<channel|>{% endif %}
{%- endif -%}"""


def test_gemma4_chat_template_renders_the_checkpoints_own_template_as_transformers_does(tmp_path):
    """A Gemma-4-style tokenizer.json written on the spot (its turn tokens as added specials) with a
    chat_template.jinja beside it: plain text and turn tokens encode as transformers does, and the
    checkpoint's template renders to the same text and ids as transformers' apply_chat_template, with
    and without thinking, system turns and tools; without a template the tokenizer refuses rather than
    render Gemma 3's turns."""
    from test_tokenizer import train_gemma_like  # the suite's SentencePiece trainer with Gemma's settings

    model_file = train_gemma_like(tmp_path / "spm", ["<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>"])
    transformers.GemmaTokenizer.from_pretrained(model_file.parent, add_bos_token=True).save_pretrained(tmp_path / "json")
    ours = gemma_lab.load_tokenizer(tmp_path / "json" / "tokenizer.json")
    oracle = transformers.AutoTokenizer.from_pretrained(tmp_path / "json")
    prompt = "<bos><|turn>user\nHello there, 1234 times!<turn|>\n<|turn>model\n"
    for text in ("Alice said: hello  world\n\n", prompt):
        assert ours.encode(text, add_bos=False) == oracle.encode(text, add_special_tokens=False)
    assert ours.is_gemma4 and ours.chat_template is None
    with pytest.raises(ValueError, match="Gemma 4 tokenizer.*no chat template was found"):
        ours.apply_chat_template([{"role": "user", "content": "Hi"}])

    (tmp_path / "json" / "chat_template.jinja").write_text(GEMMA4_STYLE_TEMPLATE)
    ours = gemma_lab.load_tokenizer(tmp_path / "json")
    oracle = transformers.AutoTokenizer.from_pretrained(tmp_path / "json")
    assert ours.chat_template is not None and "chat_template.jinja" in repr(ours)
    assert ours.end_of_turn_id == ours.piece_to_id("<turn|>") and ours.start_of_turn_id == ours.piece_to_id("<|turn>")
    tool = {"type": "function", "function": {"name": "weather", "description": "Wetter <heute> & morgen",
                                             "parameters": {"type": "object", "properties": {}}}}
    conversations = [
        ([{"role": "user", "content": "  Hi!  "}], {}),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"},
          {"role": "assistant", "content": "Rayleigh scattering.", "reasoning_content": "short"},
          {"role": "user", "content": "And at sunset?"}], {"enable_thinking": True}),
        ([{"role": "user", "content": "Weather?"}], {"tools": [tool]}),
    ]
    for messages, options in conversations:
        for add_generation_prompt in (True, False):
            text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **options)
            expected = oracle.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False, **options)
            assert text == expected
            ids = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                           **options)
            assert ids == oracle.encode(expected, add_special_tokens=False)
            assert ids.count(ours.bos_id) == 1 and ids[0] == ours.bos_id
    assert "<|think|>" in ours.apply_chat_template(conversations[1][0], enable_thinking=True)
    assert ours.apply_chat_template(conversations[0][0]).endswith("<|turn>model\n<|channel>thought\n<channel|>")
    bad = [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]
    with pytest.raises(ValueError, match=r"chat_template\.jinja refused this conversation: a system message"):
        ours.apply_chat_template(bad)


def test_gemma4_generation_without_a_tokenizer_stops_at_eos_only():
    """Gemma 4's end-of-turn id is not assumed from an older family's table: without a tokenizer the
    default stop set is <eos> alone (Gemma 3's 106 would be a guess about Gemma 4's vocabulary)."""
    from gemma_lab.generation import default_stop_ids

    model = small_model()
    assert default_stop_ids(model) == [1]
    result = gemma_lab.generate(model, [2, 5, 6], max_new_tokens=3)  # raised KeyError before
    assert 1 <= len(result.token_ids) <= 3 and result.prompt_ids == [2, 5, 6]
    assert (result.stop_reason == "stop_token") == (result.token_ids[-1] == 1)
