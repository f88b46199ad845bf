"""MatFormer: Gemma 3n with one MLP width per layer, and sub-models sliced out of a bigger one (gemma_lab.matformer).

The oracle for slicing is transformers itself: the test cuts transformers' own state dict with plain tensor
indexing, following Google's MatFormer Lab notebook (gemma-cookbook), loads it into a Gemma3nForCausalLM
built from the reduced config, and compares logits with our sliced model's. Tolerances as in test_gemma3n.py.
"""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from hf_checkpoints import GEMMA3N_SMALL, hf_model, load_hf

import gemma_lab
from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.loading import save_pretrained
from gemma_lab.matformer import PUBLISHED_SLICES, slice_gemma3n, sliced_config
from gemma_lab.model import Gemma

SEQ, VOCAB = 40, 300
EXACT, FP32_RTOL = 1e-5, 1e-4
WIDTHS = [96, 64, 128, 32, 96, 80]  # GEMMA3N_SMALL's six layers, each its own MLP width
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokens(batch=2, seq=SEQ, seed=0):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def rel(ours, theirs):
    return ((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()).item()


@pytest.fixture(scope="module")
def hf_wide():
    """A transformers Gemma 3n whose MLPs are 96, 64, 128, 32, 96 and 80 neurons wide."""
    return hf_model("3n", seed=3, intermediate_size=WIDTHS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, hf_wide):
    folder = tmp_path_factory.mktemp("gemma3n_widths")
    hf_wide.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(checkpoint):
    return gemma_lab.load_pretrained(checkpoint)


# ---- per-layer MLP widths ---------------------------------------------------------------------------


def test_per_layer_mlp_widths_load_and_match_transformers(checkpoint, model):
    assert model.cfg.d_mlp_per_layer == tuple(WIDTHS) and model.cfg.d_mlp == 128
    assert [block.mlp.gate_proj.out_features for block in model.blocks] == WIDTHS
    ids = tokens()
    with torch.no_grad():
        ours = model(ids)
        eager = load_hf(checkpoint)(ids).logits
        sdpa = load_hf(checkpoint, attn_implementation="sdpa")(ids).logits
    assert rel(ours, sdpa) <= EXACT
    assert rel(ours, eager) <= FP32_RTOL


def test_per_layer_widths_round_trip_and_count_like_transformers(hf_wide):
    cfg = GemmaConfig.from_hf(hf_wide.config.to_dict())
    assert GemmaConfig.from_hf(cfg.to_hf()) == cfg
    assert cfg.to_hf()["intermediate_size"] == WIDTHS
    n_theirs = sum(p.numel() for name, p in hf_wide.named_parameters()
                   if name != "lm_head.weight" and not _unused_kv(name, cfg))
    assert Gemma(cfg).n_params() == cfg.n_params() == n_theirs
    # One width on every layer is the plain config, whichever way it is written.
    assert GemmaConfig.from_hf(dict(hf_wide.config.to_dict(), intermediate_size=[96] * 6)).d_mlp_per_layer == ()
    assert cfg.replace(n_layers=8).d_mlp_per_layer == tuple(WIDTHS) + (128, 128)


def _unused_kv(name: str, cfg: GemmaConfig) -> bool:
    """transformers keeps k_proj/v_proj/k_norm on KV-shared layers; they are never used (ours has none)."""
    match = re.search(r"layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm)", name)
    return bool(match) and cfg.is_kv_shared(int(match.group(1)))


# ---- the oracle: transformers' weights sliced by hand, as the MatFormer Lab notebook does ----------------


def hf_sliced(hf: transformers.Gemma3nForCausalLM, layers_to_skip, ffn_dims):
    """A transformers model holding ``hf``'s weights cut down with plain indexing, and its reduced config."""
    config = hf.config
    n_layers, d_per_layer = config.num_hidden_layers, config.hidden_size_per_layer_input
    kept = [layer for layer in range(n_layers) if layer not in layers_to_skip]
    first_shared = n_layers - config.num_kv_shared_layers
    reduced = transformers.Gemma3nTextConfig(**dict(
        GEMMA3N_SMALL,
        num_hidden_layers=len(kept),
        intermediate_size=list(ffn_dims),
        layer_types=[config.layer_types[layer] for layer in kept],
        activation_sparsity_pattern=[config.activation_sparsity_pattern[layer] for layer in kept],
        num_kv_shared_layers=config.num_kv_shared_layers - sum(layer >= first_shared for layer in layers_to_skip),
    ))
    state = {}
    for name, tensor in hf.state_dict().items():
        match = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if match:
            old, rest = int(match.group(1)), match.group(2)
            if old not in kept:
                continue
            new = kept.index(old)
            name, width = f"model.layers.{new}.{rest}", ffn_dims[new]
            if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                tensor = tensor[:width, :]
            elif rest == "mlp.down_proj.weight":
                tensor = tensor[:, :width]
        elif name == "model.embed_tokens_per_layer.weight":  # [vocab, layer * d_per_layer]
            tensor = tensor.reshape(tensor.shape[0], n_layers, d_per_layer)[:, kept].reshape(tensor.shape[0], -1)
        elif name == "model.per_layer_model_projection.weight":  # [layer * d_per_layer, d_model]
            tensor = tensor.reshape(n_layers, d_per_layer, -1)[kept].reshape(len(kept) * d_per_layer, -1)
        state[name] = tensor.clone()
    small = transformers.Gemma3nForCausalLM._from_config(reduced, attn_implementation="eager", dtype=torch.float32)
    small.load_state_dict(state, strict=True)
    return small.eval()


# GEMMA3N_SMALL: layer types L L G L | L G, the last two KV-shared (reading layers 3 and 2).
SLICES = {
    # E2B's recipe in small: the first KV-shared layer skipped, every MLP halved.
    "e2b_like": ([4], [48, 32, 64, 16, 40]),
    # Mix-n-match with a non-shared layer skipped and widths of every kind, one at its full width.
    "mix_n_match": ([1], [50, 128, 7, 96, 1]),
    "widths_only": ([], [8, 16, 24, 32, 40, 48]),
}


@pytest.mark.parametrize("name", list(SLICES))
def test_slice_equals_transformers_on_the_weights_sliced_by_hand(hf_wide, model, name):
    layers_to_skip, ffn_dims = SLICES[name]
    small = slice_gemma3n(model, layers_to_skip=layers_to_skip, ffn_dims=ffn_dims)
    oracle = hf_sliced(hf_wide, layers_to_skip, ffn_dims)
    assert small.cfg == GemmaConfig.from_hf(oracle.config.to_dict()).replace(name=small.cfg.name)
    ids = tokens(seed=1)
    with torch.no_grad():
        ours, theirs = small(ids), oracle(ids).logits
    assert rel(ours, theirs) <= FP32_RTOL
    assert small.n_params() < model.n_params()


def test_identity_slice_is_the_model_and_slicing_leaves_the_original_alone(model):
    same = slice_gemma3n(model)
    assert same.cfg.replace(name="") == model.cfg.replace(name="")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    after = same.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    ids = tokens(seed=2)
    with torch.no_grad():
        assert torch.equal(same(ids), model(ids))
        for param in same.parameters():  # copies, not views: editing the slice leaves the original as it was
            param.zero_()
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_saved_slice_loads_in_gemma_lab_and_transformers(tmp_path, model):
    small = slice_gemma3n(model, layers_to_skip=[4], ffn_dims=32)
    save_pretrained(small, tmp_path)
    ids = tokens(seed=3)
    with torch.no_grad():
        ours = small(ids)
        assert torch.equal(gemma_lab.load_pretrained(tmp_path)(ids), ours)
        assert rel(ours, load_hf(tmp_path)(ids).logits) <= FP32_RTOL


# ---- the published configurations ---------------------------------------------------------------------


def test_e2b_preset_turns_the_e4b_config_into_the_published_e2b():
    e4b, e2b = PRESETS["gemma3n-e4b"], PRESETS["gemma3n-e2b"]
    recipe = PUBLISHED_SLICES["e2b"]
    sliced = sliced_config(e4b, recipe.layers_to_skip, recipe.ffn_dims)
    assert sliced.replace(name=e2b.name) == e2b  # 30 layers, 8192 wide, 10 KV-shared, same sparsity and pattern
    assert sliced_config(e4b, *_skip_and_widths("e4b")).replace(name=e4b.name) == e4b
    for name, published in PUBLISHED_SLICES.items():
        cfg = sliced_config(e4b, published.layers_to_skip, published.ffn_dims)
        assert cfg.n_layers == published.n_layers - len(published.layers_to_skip), name
    mix = sliced_config(e4b, *_skip_and_widths("e2.54b-layer-level"))
    assert e2b.n_params() < mix.n_params() < e4b.n_params()
    # The MatFormer Lab notebook prints E2B's text parameters as transformers counts them: 4,456,156,768, of
    # which 1,905,495,648 "effective" (without the two embedding tables). transformers also keeps k_proj,
    # v_proj and k_norm on the 10 KV-shared layers, which never run; ours has none.
    unused_kv = sliced.n_kv_shared_layers * (2 * sliced.d_model * sliced.n_kv_heads * sliced.d_head + sliced.d_head)
    embeddings = sliced.vocab_size * sliced.d_model + sliced.vocab_per_layer * sliced.n_layers * sliced.d_per_layer
    assert sliced.n_params() + unused_kv == 4_456_156_768
    assert sliced.n_params() + unused_kv - embeddings == 1_905_495_648


def test_e2b_preset_slices_an_e4b_shaped_model():
    with torch.device("meta"):  # E4B's shapes without its 27 GB of fp32 weights
        e4b = Gemma(PRESETS["gemma3n-e4b"])
    e2b = slice_gemma3n(e4b, preset="e2b")
    assert e2b.cfg.replace(name="") == PRESETS["gemma3n-e2b"].replace(name="")
    assert e2b.n_params() == PRESETS["gemma3n-e2b"].n_params()
    assert e2b.per_layer_embed.embed.weight.shape == (262144, 30 * 256)
    assert e2b.blocks[29].mlp.down_proj.weight.shape == (2048, 8192)


def _skip_and_widths(name):
    return PUBLISHED_SLICES[name].layers_to_skip, PUBLISHED_SLICES[name].ffn_dims


# ---- errors name the parameter ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers_to_skip=[6]), r"layers_to_skip: \[6\] not layer indices"),
    (dict(layers_to_skip=[-1]), r"layers_to_skip: \[-1\] not layer indices"),
    (dict(layers_to_skip=[1, 1]), "layers_to_skip: .* names a layer twice"),
    (dict(layers_to_skip=list(range(6))), "layers_to_skip: skips every layer"),
    (dict(layers_to_skip=[3]), "layers_to_skip: layer 3 holds the keys and values KV-shared layer 4"),
    (dict(layers_to_skip=[2]), "layers_to_skip: layer 2 holds the keys and values KV-shared layer 5"),
    (dict(ffn_dims=[96] * 5), "ffn_dims: 5 widths for the 6 layers kept"),
    (dict(ffn_dims=[96, 65, 128, 32, 96, 80]), r"ffn_dims\[1\] = 65: kept layer 1 has an MLP 64 wide"),
    (dict(layers_to_skip=[0], ffn_dims=[0, 1, 1, 1, 1]), r"ffn_dims\[0\] = 0"),
    (dict(preset="e2b"), "preset: 'e2b' slices Gemma 3n E4B"),
    (dict(preset="e9b"), "preset: unknown slice 'e9b'"),
    (dict(preset="e2b", layers_to_skip=[1]), "preset: give either a preset or layers_to_skip"),
])
def test_bad_slices_raise_naming_the_parameter(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        slice_gemma3n(model, **kwargs)


def test_skipping_a_kv_source_together_with_its_readers_is_allowed(model):
    small = slice_gemma3n(model, layers_to_skip=[2, 5])  # the global source and its only reader
    assert small.cfg.n_kv_shared_layers == 1 and small.cfg.kv_source(3) == 2


def test_only_gemma3n_is_sliced():
    with pytest.raises(ValueError, match="model: MatFormer slicing applies to Gemma 3n"):
        slice_gemma3n(Gemma(PRESETS["test-gemma3"]), layers_to_skip=[0])


def test_quantized_models_are_neither_sliced_nor_saved(tmp_path, checkpoint):
    quantized = gemma_lab.load_pretrained(checkpoint, quantize="int8")
    with pytest.raises(ValueError, match="model: slice the full-precision model"):
        slice_gemma3n(quantized, layers_to_skip=[4])
    with pytest.raises(ValueError, match="model: tensors without a transformers name"):
        save_pretrained(quantized, tmp_path)
