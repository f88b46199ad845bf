"""load_pretrained(device_map=...): a model placed across devices and offloaded computes exactly
what the one-device model computes; bad device maps are refused with a message naming the fault.

This machine has no GPU, so the split exercised here is CPU plus disk offload (blocks read from
the safetensors checkpoint while they run, through accelerate's hooks); the GPU-only paths
(moving activations between GPUs) use the same hooks with other device values.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gemma_lab
from gemma_lab.generation import decode_step, prefill
from hf_checkpoints import hf_config, hf_model, write_checkpoint

pytest.importorskip("accelerate")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=[2, 3, 4, "3n"], ids=lambda f: f"gemma{f}")
def checkpoint(request, tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp(f"g{request.param}"), request.param, seed=5)
    return folder, gemma_lab.load_pretrained(folder)


def alternating(model) -> dict:
    """Even blocks resident on the CPU, odd ones left on disk."""
    n = model.cfg.n_layers
    return {"embed": "cpu", **{f"blocks.{i}": "disk" if i % 2 else "cpu" for i in range(n)}, "ln_final": "cpu"}


def tokens(n=2, length=20):
    return torch.randint(0, 300, (n, length), generator=torch.Generator().manual_seed(1))


def test_offloaded_model_equals_the_one_device_model(checkpoint):
    folder, reference = checkpoint
    model = gemma_lab.load_pretrained(folder, device_map=alternating(reference))
    assert model.blocks[1].mlp.up_proj.weight.is_meta  # on disk: not in memory between passes
    assert not model.blocks[0].mlp.up_proj.weight.is_meta
    ids = tokens()
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    assert torch.equal(model(ids, attention_mask=mask), reference(ids, attention_mask=mask))

    # hooks: every activation, read and edited, in resident and offloaded blocks alike
    names = lambda name: name.startswith(("blocks.1.", "blocks.2.")) or name == "hook_logits"  # noqa: E731
    _, cache = model.run_with_cache(ids, names_filter=names)
    _, expected = reference.run_with_cache(ids, names_filter=names)
    assert set(cache.keys()) == set(expected.keys()) and len(expected.keys()) > 10
    assert all(torch.equal(cache[k], expected[k]) for k in expected.keys())

    def ablate(z, hook):
        z[:, :, 0] = 0
        return z

    fwd = [("blocks.1.attn.hook_z", ablate)]
    edited = model.run_with_hooks(ids, fwd_hooks=fwd)
    assert torch.equal(edited, reference.run_with_hooks(ids, fwd_hooks=fwd))
    assert not torch.equal(edited, reference(ids))

    # cached decoding: a prompt, then token by token, equals the one-device model's
    logits, cache_split = prefill(model, ids[:, :12], max_len=20)
    want, cache_one = prefill(reference, ids[:, :12], max_len=20)
    assert torch.equal(logits, want)
    for step in range(12, 16):
        assert torch.equal(decode_step(model, ids[:, step], cache_split), decode_step(reference, ids[:, step], cache_one))


def test_auto_placement_within_max_memory(checkpoint):
    folder, reference = checkpoint
    block_bytes = sum(p.numel() * 4 for p in reference.blocks[0].parameters())
    resident = [getattr(reference, name, None) for name in ("embed", "per_layer_embed", "altup_stack", "altup_unstack",
                                                            "ln_final")]  # what stays with the embedding
    resident_bytes = sum(p.numel() * 4 for module in resident if module is not None for p in module.parameters())
    budget = resident_bytes + 2.5 * block_bytes
    model = gemma_lab.load_pretrained(folder, device_map="auto", max_memory={"cpu": int(budget)})
    placed = model.hf_device_map
    assert placed["embed"] == placed["ln_final"] == "cpu"  # the tie: unembedding where the embedding is
    assert placed["blocks.0"] == "cpu" and placed[f"blocks.{reference.cfg.n_layers - 1}"] == "disk"
    ids = tokens()
    assert torch.equal(model(ids), reference(ids))
    result = gemma_lab.generate(model, ids[0, :6].tolist(), max_new_tokens=5, stop=[])
    assert result.token_ids == gemma_lab.generate(reference, ids[0, :6].tolist(), max_new_tokens=5, stop=[]).token_ids


def test_dtype_conversion_of_offloaded_blocks(checkpoint):
    folder, _ = checkpoint
    reference = gemma_lab.load_pretrained(folder, dtype="bfloat16")
    model = gemma_lab.load_pretrained(folder, dtype="bfloat16", device_map=alternating(reference))
    ids = tokens()
    assert torch.equal(model(ids), reference(ids))


def test_gemma_pytorch_checkpoint_offloads_to_a_folder(tmp_path):
    hf = hf_model(1, seed=3)
    state = {"embedder.weight": hf.model.embed_tokens.weight}
    for name, tensor in hf.model.state_dict().items():
        if ".self_attn.q_proj." in name:
            prefix = name.split("q_proj")[0]
            parts = [hf.model.state_dict()[f"{prefix}{p}_proj.weight"] for p in "qkv"]
            state[f"model.{prefix}qkv_proj.weight"] = torch.cat(parts)
        elif name != "embed_tokens.weight" and ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
            state[f"model.{name}"] = tensor
    torch.save({"model_state_dict": state}, tmp_path / "model.ckpt")
    hf.config.save_pretrained(tmp_path)
    reference = gemma_lab.load_pretrained(tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match="not a safetensors checkpoint.*offload_folder="):
        gemma_lab.load_pretrained(tmp_path / "model.ckpt", device_map=alternating(reference))
    model = gemma_lab.load_pretrained(tmp_path / "model.ckpt", device_map=alternating(reference),
                                      offload_folder=tmp_path / "offload")
    assert (tmp_path / "offload" / "index.json").is_file()
    ids = tokens()
    assert torch.equal(model(ids), reference(ids))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp("small"), 3, seed=2)
    return folder, gemma_lab.load_pretrained(folder)


@pytest.mark.parametrize("change, message", [
    ({"blocks.9": "cpu"}, r"'blocks\.9', which is not a module of this model \(4 blocks: blocks\.0 to blocks\.3\)"),
    ({"embedding": "cpu"}, r"'embedding', which is not a module.*did you mean 'embed'"),
    ({"blocks.0.attn": "cpu"}, r"place whole blocks"),
    ({"blocks.1": 0}, r"device_map\['blocks\.1'\] is GPU 0, which does not exist"),
    ({"blocks.1": "cuda:3"}, r"GPU 3, which does not exist"),
    ({"blocks.1": "gpu"}, r"device_map\['blocks\.1'\] is 'gpu'; a device is a GPU index"),
    ({"ln_final": "disk"}, r"puts ln_final on 'disk' but the embedding on 'cpu'; they must share a device"),
    ({"embed": "disk", "ln_final": "disk"}, r"puts the embedding on 'disk'.*must stay resident"),
])
def test_bad_device_maps_are_named(small, change, message):
    folder, reference = small
    device_map = {**alternating(reference), **change}
    if "blocks.0.attn" in change:
        del device_map["blocks.0"]
    with pytest.raises(ValueError, match=message):
        gemma_lab.load_pretrained(folder, device_map=device_map)


def test_incomplete_and_conflicting_arguments(small):
    folder, reference = small
    partial = {k: v for k, v in alternating(reference).items() if k not in ("blocks.2", "ln_final")}
    with pytest.raises(ValueError, match=r"leaves blocks\.2 without a device"):
        gemma_lab.load_pretrained(folder, device_map=partial)
    with pytest.raises(ValueError, match="either device= .* or device_map="):
        gemma_lab.load_pretrained(folder, device="meta", device_map="auto")
    with pytest.raises(ValueError, match="max_memory is only used with device_map='auto'"):
        gemma_lab.load_pretrained(folder, device_map=alternating(reference), max_memory={"cpu": 10**9})
    with pytest.raises(ValueError, match="only apply with device_map="):
        gemma_lab.load_pretrained(folder, max_memory={"cpu": 10**9})
    with pytest.raises(ValueError, match="device_map='balanced': expected 'auto' or a dict"):
        gemma_lab.load_pretrained(folder, device_map="balanced")


def test_memory_too_small_even_for_one_block(small):
    folder, reference = small
    with pytest.raises(ValueError, match=r"max_memory leaves 1,000 bytes on the CPU, too little .*give it at least"):
        gemma_lab.load_pretrained(folder, device_map="auto", max_memory={"cpu": 1000})
    with pytest.raises(ValueError, match=r"max_memory key 'cuda:0' is GPU 0, which does not exist"):
        gemma_lab.load_pretrained(folder, device_map="auto", max_memory={"cuda:0": "1GiB", "cpu": "1GiB"})


# ---- memory: an offloaded forward pass holds about one block, not the model --------------------------

_MEASURE = textwrap.dedent("""
    import gc, json, sys, torch, gemma_lab
    folder = sys.argv[1]
    torch.set_num_threads(1)
    def on_disk(n):
        return {"embed": "cpu", "ln_final": "cpu", **{f"blocks.{i}": "disk" for i in range(n)}}
    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
    # Page in the code an offloaded pass runs (accelerate's hooks import torch's compiler) first.
    warm = gemma_lab.load_pretrained("tiny", device_map=on_disk(gemma_lab.load_pretrained("tiny").cfg.n_layers))
    warm(torch.tensor([[1, 2, 3]]))
    del warm
    n = gemma_lab.GemmaConfig.from_hf(folder + "/config.json").n_layers
    measured = {}
    for mode in ("offload", "resident"):  # the peer, side by side: the same pass with every weight loaded
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:  # Linux: restart the peak-RSS count (VmHWM) here
            f.write("5")
        before = status("VmRSS")
        model = gemma_lab.load_pretrained(folder, device_map=on_disk(n) if mode == "offload" else None)
        with torch.no_grad():
            model(torch.arange(16)[None])
        measured[mode] = status("VmHWM") - before
        del model
    print(json.dumps(measured))
""")


def write_large_checkpoint(folder: Path) -> Path:
    """A Gemma 3 checkpoint of 8 blocks of 27 MiB in transformers' format, written directly
    (random init through transformers takes most of a minute at this size)."""
    from safetensors.torch import save_file
    from transformers import Gemma3ForCausalLM

    config = hf_config(3, hidden_size=512, intermediate_size=4096, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=64, num_hidden_layers=8)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in Gemma3ForCausalLM(config).state_dict().items() if name != "lm_head.weight"}
    generator = torch.Generator().manual_seed(0)
    save_file({name: torch.randn(shape, generator=generator) * 0.05 for name, shape in shapes.items()},
              str(folder / "model.safetensors"))
    config.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is read from Linux's /proc")
def test_offloaded_forward_peak_memory_is_about_one_block(tmp_path):
    folder = write_large_checkpoint(tmp_path)
    model_bytes = (folder / "model.safetensors").stat().st_size
    block_bytes = 4 * (3 * 512 * 4096 + 2 * 512 * 512 + 2 * 512 * 256)
    embed_bytes = 4 * 300 * 512
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(folder)], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"model {model_bytes / 2**20:.0f} MiB, one block {block_bytes / 2**20:.0f} MiB: peak RSS increase "
          f"offloaded {measured['offload'] / 2**20:.0f} MiB, all resident {measured['resident'] / 2**20:.0f} MiB")
    assert measured["resident"] > 0.8 * model_bytes  # the peer really holds the model
    # Generous: one block, the embedding, activations, allocator slack; well below the model's 8 blocks.
    assert measured["offload"] < embed_bytes + 3 * block_bytes < 0.5 * model_bytes


# ---- the "Bigger models" page and gemma-lab info ------------------------------------------------------

def test_the_docs_memory_table_is_the_generated_one():
    from gemma_lab.placement import memory_table

    text = (Path(__file__).parents[1] / "docs" / "bigger_models.md").read_text()
    table = text.split("<!-- memory-table:begin (gemma_lab.placement.memory_table) -->", 1)[1]
    table = table.split("<!-- memory-table:end -->", 1)[0]
    assert table.strip() == memory_table().strip(), "paste gemma_lab.placement.memory_table() into the page"


def test_memory_figures_add_up_to_the_model():
    from gemma_lab.loading import _SkipWeightInit
    from gemma_lab.placement import memory_figures

    for preset in ("gemma2-2b", "gemma3-27b", "gemma4-e2b", "gemma4-26b-a4b"):  # Gemma 4: blocks differ in shape
        cfg = gemma_lab.GemmaConfig.from_preset(preset)
        with torch.device("meta"), _SkipWeightInit():
            model = gemma_lab.Gemma(cfg)
        blocks = [sum(p.numel() for p in block.parameters()) for block in model.blocks]
        assert memory_figures(cfg) == {"total": model.n_params(), "resident": model.n_params() - sum(blocks),
                                       "largest_block": max(blocks)}, preset


def test_info_prints_the_memory_table(capsys):
    from gemma_lab.cli import main

    assert main(["info", "gemma3-27b"]) == 0
    out = capsys.readouterr().out
    rows = out.split("memory by dtype", 1)[1].splitlines()[1:4]
    assert rows[0].split()[:3] == ["dtype", "all", "weights"]
    assert rows[1].split()[:3] == ["bfloat16", "54.0", "GB"] and rows[2].split()[:3] == ["float32", "108.0", "GB"]
    assert rows[1].split()[-2:] == ["3.6", "GB"]  # the docs table's offload column for gemma3-27b
