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
    (dict(family=4), "family must be 1, 2 or 3"),
    (dict(d_head=15), "d_head must be even"),
    (dict(activation="relu"), "activation must be"),
])
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        gemma_lab.GemmaConfig.from_preset("test-gemma").replace(**change)
