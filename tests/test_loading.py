"""Bad input gets an error that names the file, tensor, parameter or limit at fault."""

from __future__ import annotations

import json

import pytest
import torch
from hf_checkpoints import write_checkpoint
from safetensors.torch import load_file, save_file

import gemma_lab
from gemma_lab import CheckpointError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("gemma2"), 2, seed=1)


def copy_checkpoint(checkpoint, folder):
    folder.mkdir(exist_ok=True)
    for file in checkpoint.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        gemma_lab.load_pretrained(tmp_path / "nowhere")


def test_folder_without_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint found.*notes\.txt"):
        gemma_lab.load_pretrained(tmp_path)


def test_safetensors_without_config(checkpoint, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        gemma_lab.load_pretrained(tmp_path)


def test_truncated_safetensors(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        gemma_lab.load_pretrained(folder)


def test_corrupt_safetensors_header(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "bad")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[8:20] = b"not json!!!!"
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt"):
        gemma_lab.load_pretrained(folder)


def test_config_of_another_architecture(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'llama' is not a Gemma"):
        gemma_lab.load_pretrained(folder)


def test_invalid_json_config(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        gemma_lab.load_pretrained(folder)


def test_missing_tensor_is_named(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "missing")
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors blocks\.1\.mlp\.up_proj\.weight"):
        gemma_lab.load_pretrained(folder)


def test_unexpected_tensor_is_named(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "extra")
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.extra_proj\.weight': unexpected tensor"):
        gemma_lab.load_pretrained(folder)


def test_misshaped_tensor_names_tensor_and_shapes(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "shape")
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"k_proj\.weight'.*shape \(8, 64\).*\(32, 64\)"):
        gemma_lab.load_pretrained(folder)


def test_untied_lm_head_is_refused(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "untied")
    weights = load_file(folder / "model.safetensors")
    weights["lm_head.weight"] = torch.randn_like(weights["model.embed_tokens.weight"])
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head differs from embed_tokens"):
        gemma_lab.load_pretrained(folder)


def test_tied_lm_head_copy_is_accepted(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "tied")
    weights = load_file(folder / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, folder / "model.safetensors")
    model = gemma_lab.load_pretrained(folder)
    assert model.n_params() == model.cfg.n_params()


def test_missing_shard(checkpoint, tmp_path):
    folder = write_checkpoint(tmp_path / "shards", 1, seed=2, max_shard_size="60KB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        gemma_lab.load_pretrained(folder)


def test_gemma_pytorch_file_is_never_unpickled_unsafely(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("unsafe code ran",))

    torch.save({"model_state_dict": {"embedder.weight": torch.zeros(4, 4)}, "x": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: not a readable gemma_pytorch checkpoint"):
        gemma_lab.load_pretrained(tmp_path / "evil.ckpt")


def test_gemma_pytorch_file_without_config_needs_a_matching_preset(tmp_path):
    torch.save({"model_state_dict": {"embedder.weight": torch.zeros(10, 8),
                                     "model.layers.0.self_attn.qkv_proj.weight": torch.zeros(24, 8)}},
               tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=r"odd\.ckpt: no preset matches"):
        gemma_lab.load_pretrained(tmp_path / "odd.ckpt")


def test_bad_dtype_name(checkpoint):
    with pytest.raises(ValueError, match="dtype 'float8'"):
        gemma_lab.load_pretrained(checkpoint, dtype="float8")


def test_loaded_model_is_ready(checkpoint):
    model = gemma_lab.load_pretrained(checkpoint, dtype="bfloat16")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.dtype == torch.bfloat16
    assert model.blocks[0].attn.q_proj.weight.device.type == "cpu"
    # tied: the unembedding is the embedding tensor itself
    assert model.embed.weight.data_ptr() == model.embed.weight.data_ptr()
    assert not hasattr(model, "checkpoint_path")  # the model holds no file path


def test_loading_leaves_torch_init_alone(checkpoint, monkeypatch):
    """Weights are not drawn while loading, but torch.nn.init itself is never replaced."""
    originals = {name: getattr(torch.nn.init, name) for name in ("kaiming_uniform_", "uniform_", "normal_")}
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):  # sees every torch call made while loading
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append({name: getattr(torch.nn.init, name) for name in originals})
            return func(*args, **(kwargs or {}))

    with Spy():
        gemma_lab.load_pretrained(checkpoint)
    assert seen and all(current == originals for current in seen)
    drawn = torch.nn.init.normal_(torch.zeros(64), generator=torch.Generator().manual_seed(0))
    assert drawn.std() > 0.5  # initialisation still draws after a load


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[1.0, 2.0]]), "integer token ids"),
    (torch.tensor([[1, 300]]), r"token id 300 is outside the vocabulary \(valid ids: 0 to 299\)"),
    (torch.tensor([[-1, 3]]), "token id -1 is outside"),
    (torch.zeros(1, 0, dtype=torch.long), r"pos >= 1"),
    ([1, 2, 3], "LongTensor"),
])
def test_bad_tokens(checkpoint, bad, message):
    model = gemma_lab.load_pretrained(checkpoint)
    with pytest.raises((ValueError, TypeError), match=message):
        model(bad)


def test_attention_mask_shape_is_checked(checkpoint):
    model = gemma_lab.load_pretrained(checkpoint)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\); tokens have \(1, 4\)"):
        model(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.ones(1, 3))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gemma-3b'"):
        gemma_lab.GemmaConfig.from_preset("gemma-3b")


@pytest.mark.parametrize("change, message", [
    (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(family=5), "family must be 1, 2, 3 or 4"),
    (dict(d_per_layer=8), "d_per_layer is a Gemma 4 feature"),
    (dict(d_head=15), "d_head must be even"),
    (dict(activation="relu"), "activation must be"),
])
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        gemma_lab.GemmaConfig.from_preset("test-gemma").replace(**change)


# ---- hardening: config values that would load and then compute garbage -------------------------

def _config(checkpoint) -> dict:
    return json.loads((checkpoint / "config.json").read_text())


@pytest.mark.parametrize("field, value, message", [
    ("sliding_window", -3, "sliding_window"),
    ("final_logit_softcapping", 0, "final_logit_softcapping must be a positive finite number"),
    ("attn_logit_softcapping", 0, "attn_logit_softcapping must be a positive"),
    ("rms_norm_eps", 0, "rms_norm_eps must be a positive"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps must be a positive"),
    ("rope_parameters.rope_theta", -1.0, "rope_theta must be a positive"),
    ("query_pre_attn_scalar", 0, "query_pre_attn_scalar must be a positive"),
    ("query_pre_attn_scalar", -16, "query_pre_attn_scalar must be a positive"),
    ("num_hidden_layers", 4.7, "num_hidden_layers must be a whole number"),
    ("num_hidden_layers", 2_000_000, "num_hidden_layers = 2000000 exceeds the limit"),
    ("hidden_size", "64", "hidden_size must be a whole number"),
    ("num_attention_heads", True, "num_attention_heads must be a whole number"),
    ("layer_types", "sliding_attention", "layer_types must be a list"),
])
def test_config_values_that_would_compute_garbage_are_refused(checkpoint, tmp_path, field, value, message):
    folder = copy_checkpoint(checkpoint, tmp_path / "cfg")
    config = _config(checkpoint)
    *parents, key = field.split(".")
    target = config
    for parent in parents:
        target = target[parent]
    target[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as raised:
        gemma_lab.load_pretrained(folder)
    assert "config.json" in str(raised.value)  # the file is named


def test_config_that_is_not_an_object_or_has_a_null_text_config(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json: a config must be a JSON object"):
        gemma_lab.GemmaConfig.from_hf(tmp_path / "config.json")
    with pytest.raises(ValueError, match="text_config must be an object"):
        gemma_lab.GemmaConfig.from_hf({"model_type": "gemma3", "text_config": None})


def test_a_whole_float_count_is_still_a_count(checkpoint):
    config = _config(checkpoint)
    config["num_hidden_layers"] = float(config["num_hidden_layers"])
    assert gemma_lab.GemmaConfig.from_hf(config).n_layers == int(config["num_hidden_layers"])


# ---- hardening: stored dtypes ------------------------------------------------------------------

@pytest.mark.parametrize("stored", [torch.int8, torch.int32, torch.bool, torch.float8_e4m3fn])
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_quantized_or_non_float_tensors_are_refused_not_cast(checkpoint, tmp_path, stored, dtype):
    folder = copy_checkpoint(checkpoint, tmp_path / "q")
    tensors = load_file(folder / "model.safetensors")
    name = next(n for n in tensors if n.endswith("layers.0.mlp.up_proj.weight"))
    tensors[name] = tensors[name].to(stored)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"{name}.*stored as {stored}.*quantized"):
        gemma_lab.load_pretrained(folder, dtype=dtype)


def test_a_non_float_dtype_request_is_named(checkpoint):
    with pytest.raises(ValueError, match=r"dtype torch\.int8 is not supported"):
        gemma_lab.load_pretrained(checkpoint, dtype=torch.int8)


# ---- hardening: files ----------------------------------------------------------------------------

@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd"])
def test_an_index_naming_files_outside_the_folder_is_refused(checkpoint, tmp_path, shard):
    folder = copy_checkpoint(checkpoint, tmp_path / "ckpt")
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    names = load_file(folder / "model.safetensors").keys()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        gemma_lab.load_pretrained(folder)


def test_a_fifo_named_like_a_checkpoint_is_never_opened(checkpoint, tmp_path):
    import os

    folder = tmp_path / "fifo"
    folder.mkdir()
    (folder / "config.json").write_text((checkpoint / "config.json").read_text())
    os.mkfifo(folder / "model.safetensors")
    with pytest.raises((CheckpointError, FileNotFoundError), match="(not a regular file|no checkpoint found)"):
        gemma_lab.load_pretrained(folder)
    with pytest.raises(CheckpointError, match="not a regular file"):
        gemma_lab.load_pretrained(folder / "model.safetensors")


def _write_header(path, header: object) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 64)


@pytest.mark.parametrize("header", [[1, 2], {"w": {"dtype": "F32", "shape": [2]}},
                                    {"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}])
def test_malformed_safetensors_headers_name_the_file(checkpoint, tmp_path, header):
    folder = copy_checkpoint(checkpoint, tmp_path / "h")
    _write_header(folder / "model.safetensors", header)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
        gemma_lab.load_pretrained(folder)


@pytest.mark.parametrize("index", ['{"weight_map": [1]}', "[]", '{"weight_map": {"a": 3}}', "{not json"])
def test_malformed_index_files_name_the_file(checkpoint, tmp_path, index):
    folder = copy_checkpoint(checkpoint, tmp_path / "i")
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: not a valid index file"):
        gemma_lab.load_pretrained(folder)


def test_a_folder_holding_only_pytorch_model_bin_loads(checkpoint, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((checkpoint / "config.json").read_text())
    torch.save(load_file(checkpoint / "model.safetensors"), folder / "pytorch_model.bin")
    from_bin, reference = gemma_lab.load_pretrained(folder), gemma_lab.load_pretrained(checkpoint)
    tokens = torch.tensor([[2, 5, 9, 11]])
    assert torch.equal(from_bin(tokens), reference(tokens))


def test_an_unsafe_pickle_error_never_advises_weights_only_false(tmp_path):
    import datetime

    path = tmp_path / "model.ckpt"
    torch.save({"model_state_dict": {"x": datetime.date(2024, 1, 1)}}, path)  # torch's safe loader refuses it
    with pytest.raises(CheckpointError) as raised:
        gemma_lab.load_pretrained(path, config="test-gemma")
    assert "never unpickles" in str(raised.value) and "weights_only=False" not in str(raised.value)


def test_nan_weights_are_named_at_load(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "nan")
    tensors = load_file(folder / "model.safetensors")
    name = next(n for n in tensors if n.endswith("layers.1.self_attn.o_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors")
    with pytest.warns(RuntimeWarning, match=rf"NaN or inf values in .*{name}"):
        model = gemma_lab.load_pretrained(folder)
    logits = model(torch.tensor([[2, 5, 9]]))[:, -1]
    with pytest.raises(ValueError, match="logits hold NaN"):
        gemma_lab.sample(logits)
