"""Placing one model across devices, with CPU and disk offload, in accelerate's conventions.

``load_pretrained(path, device_map=...)`` comes here. A device map names, for each part of the
model, where its weights live::

    {"embed": 0, "blocks.0": 0, ..., "blocks.20": 1, "blocks.21": "cpu", "blocks.22": "disk", "ln_final": 0}

Values are GPU indices (or ``"cuda:1"``), ``"cpu"`` or ``"disk"``; ``"auto"`` asks accelerate's
``infer_auto_device_map`` to fill the GPUs in order, then the CPU, then the disk, within
``max_memory``. The unit of placement is a whole block (the residual stream crosses devices only
between blocks), the embedding and the final norm stay together on the main device (the
unembedding is the embedding matrix itself), and the embedding is never offloaded.

What runs the split is accelerate's ``dispatch_model``: a hook on each block moves its inputs to
the block's device; an offloaded block's weights are brought in just before it runs and dropped
right after. Disk-offloaded weights are read from the memory-mapped safetensors checkpoint itself
(nothing is copied out), so the memory a forward pass needs is about the resident part plus one
block. HookPoint hooks see each activation on the device where it was computed; ``run_with_cache``
keeps it there unless given ``device=``. KV-cache buffers are allocated on each block's device
(``model.block_devices``).
"""

from __future__ import annotations

import difflib
import re
from typing import Mapping

import torch
from torch import nn

# The parts a device map may name: the whole model, one of these top-level modules, or one block.
_TOP_LEVEL = ("embed", "per_layer_embed", "altup_stack", "blocks", "altup_unstack", "ln_final")
# These must sit with the embedding: the final norm feeds the unembedding (the embedding matrix),
# Gemma 4's and 3n's per-layer embeddings are looked up beside the embedding, and Gemma 3n's AltUp
# stacking and unstacking (small) run right after it and right before the unembedding. A device map
# may leave them out: they follow the embedding.
_WITH_EMBED = ("per_layer_embed", "altup_stack", "altup_unstack", "ln_final")


def _accelerate():
    try:
        import accelerate
    except ImportError:
        raise ImportError("device_map= needs the accelerate package: pip install accelerate "
                          "(it leaves torch as it is)") from None
    return accelerate


def plan(model: nn.Module, device_map: str | Mapping, max_memory: Mapping | None,
         dtype: torch.dtype) -> dict[str, int | str]:
    """A complete, checked device map ``{module name: GPU index | "cpu" | "disk"}`` for ``model``
    (still on the meta device), whose weights will have ``dtype``."""
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ValueError(f"device_map={device_map!r}: expected 'auto' or a dict of module name -> device")
        return _auto(model, max_memory, dtype)
    if max_memory is not None:
        raise ValueError("max_memory is only used with device_map='auto'; a dict device_map places everything itself")
    if not isinstance(device_map, Mapping) or not device_map:
        raise TypeError(f"device_map must be 'auto' or a non-empty dict of module name -> device, got {device_map!r}")
    placement = {}
    for name, device in device_map.items():
        _check_name(model, name)
        placement[name] = _device(device, f"device_map[{name!r}]")
    if any(key == "" or key == "embed" for key in placement):
        embed_at = _where(placement, "embed")
        for name in _WITH_EMBED:
            if getattr(model, name, None) is not None and not any(k == "" or k == name for k in placement):
                placement[name] = embed_at
    _check_complete(model, placement)
    return _expanded(model, placement)


def _auto(model: nn.Module, max_memory: Mapping | None, dtype: torch.dtype) -> dict[str, int | str]:
    utils = _accelerate().utils
    sizes = utils.compute_module_sizes(model, dtype=dtype)
    resident = sum(sizes.get(name, 0) for name in ("embed", *_WITH_EMBED))
    largest_block = max(sizes[f"blocks.{i}"] for i in range(len(model.blocks)))
    if max_memory is None:
        memory = utils.get_balanced_memory(model, dtype=dtype, no_split_module_classes=["Block"])
    else:
        if not isinstance(max_memory, Mapping) or not max_memory:
            raise TypeError(f"max_memory must be a dict of device -> bytes (or '8GiB'), got {max_memory!r}")
        memory = {}
        for device, amount in max_memory.items():
            key = _device(device, f"max_memory key {device!r}")
            if key == "disk":
                raise ValueError("max_memory: 'disk' takes no limit; anything that does not fit elsewhere goes there")
            memory[key] = utils.convert_file_size_to_int(amount) if isinstance(amount, str) else int(amount)
    placement = utils.infer_auto_device_map(model, max_memory=memory, no_split_module_classes=["Block"], dtype=dtype)
    main = _where(placement, "embed")
    gpus = [d for d in memory if isinstance(d, int)]
    if main == "disk" or (main == "cpu" and gpus):
        where = f"GPU {min(gpus)}" if gpus else "the CPU"
        room = memory.get(min(gpus) if gpus else "cpu", 0)
        raise ValueError(
            f"max_memory leaves {_gib(room)} on {where}, too little even for the parts that stay resident "
            f"(embedding and final norm, {_gib(resident)}) plus one block brought in at a time "
            f"({_gib(largest_block)}): give it at least {_gib(resident + largest_block)}")
    # The tie: the final norm (and Gemma 4's per-layer embedding) go where the embedding is.
    return _expanded(model, {**placement, **{name: main for name in _WITH_EMBED if name in sizes}})


def _check_name(model: nn.Module, name: str) -> None:
    modules = dict(model.named_modules())
    if name == "" or name in _TOP_LEVEL and name in modules or re.fullmatch(r"blocks\.\d+", name) and name in modules:
        return
    if name in modules:
        raise ValueError(f"device_map names {name!r}: place whole blocks ('blocks.3') or top-level parts "
                         f"({', '.join(n for n in _TOP_LEVEL if n in modules)}), not parts of a block")
    close = difflib.get_close_matches(name, [n for n in modules if n.count(".") <= 1], n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"device_map names {name!r}, which is not a module of this model "
                     f"({len(model.blocks)} blocks: blocks.0 to blocks.{len(model.blocks) - 1}){hint}")


def _device(device, what: str) -> int | str:
    """A device-map value in accelerate's spelling: GPU index, 'cpu', 'mps' or 'disk'; checked to exist."""
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, str) and device in ("cpu", "disk"):
        return device
    if isinstance(device, str) and device == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{what} is 'mps', but this machine has no Apple GPU")
        return device
    if isinstance(device, str) and (match := re.fullmatch(r"cuda(?::(\d+))?", device)):
        device = int(match.group(1) or 0)
    if isinstance(device, bool) or not isinstance(device, int):
        raise ValueError(f"{what} is {device!r}; a device is a GPU index (0, 'cuda:1'), 'cpu' or 'disk'")
    count = torch.cuda.device_count()
    if not 0 <= device < count:
        have = f"GPUs 0 to {count - 1}" if count else "no GPU"
        raise ValueError(f"{what} is GPU {device}, which does not exist (this machine has {have})")
    return device


def _check_complete(model: nn.Module, placement: Mapping[str, int | str]) -> None:
    missing = [name for name, _ in model.named_parameters()
               if not any(key == "" or name == key or name.startswith(key + ".") for key in placement)]
    if missing:
        parts = list(dict.fromkeys(re.match(r"(blocks\.\d+|[^.]+)", n).group(1) for n in missing))
        raise ValueError(f"device_map leaves {', '.join(parts[:6])}{' and more' if len(parts) > 6 else ''} "
                         f"without a device; every block and top-level part needs one")


def _expanded(model: nn.Module, placement: Mapping[str, int | str]) -> dict[str, int | str]:
    """One entry per top-level part and per block (accelerate may merge them), checked for the tie."""
    present = lambda name: getattr(model, name, None) is not None  # noqa: E731  (Gemma 4 / 3n parts)
    names = ["embed", *(n for n in ("per_layer_embed", "altup_stack") if present(n)),
             *(f"blocks.{i}" for i in range(len(model.blocks))),
             *(["altup_unstack"] if present("altup_unstack") else []), "ln_final"]
    full = {name: _where(placement, name) for name in names}
    main, gpus = full["embed"], [d for d in full.values() if isinstance(d, int)]
    if main == "disk" or (main == "cpu" and gpus):
        raise ValueError(f"device_map puts the embedding on {main!r}; it is read on every pass (and is the "
                         f"unembedding too), so it must stay resident on the main device "
                         f"({'a GPU' if gpus else 'cpu'})")
    for name in _WITH_EMBED:
        if name in full and full[name] != main and name in placement:
            raise ValueError(f"device_map puts {name} on {full[name]!r} but the embedding on {main!r}; "
                             f"they must share a device (the unembedding is the embedding matrix)")
        if name in full:
            full[name] = main
    return full


def _where(placement: Mapping[str, int | str], name: str) -> int | str:
    """The device of module ``name`` under ``placement`` (its own entry or its closest parent's)."""
    keys = [k for k in placement if k == "" or name == k or name.startswith(k + ".")]
    return placement[max(keys, key=len)]


def dispatch(model: nn.Module, placement: Mapping[str, int | str], offload_index: Mapping[str, dict],
             offload_folder=None) -> None:
    """Attach accelerate's hooks that run ``model`` across ``placement``.

    ``offload_index``: for each disk-offloaded parameter, where to read it (accelerate's index:
    ``{"safetensors_file", "weight_name", "dtype"}``, or files it wrote to ``offload_folder``).
    """
    accelerate = _accelerate()
    main = placement["embed"]
    model.hf_device_map = dict(placement)  # accelerate's and transformers' name for it
    model.block_devices = [_execution_device(placement[f"blocks.{i}"], main) for i in range(len(model.blocks))]
    if len(set(placement.values())) == 1:  # one device and nothing offloaded: nothing to move
        return
    accelerate.dispatch_model(model, dict(placement), main_device=main, offload_index=dict(offload_index) or None,
                              offload_dir=offload_folder,
                              skip_keys=["kv_cache", "shared_kv"],  # objects the blocks update in place
                              # a whole block's weights at once: attention reads o_proj.weight itself
                              # for per-head results, and one block in memory is the bound we promise
                              preload_module_classes=["Block"])


def _execution_device(device: int | str, main: int | str) -> torch.device:
    """Where a part computes: its own device, or the main one if its weights are offloaded."""
    return torch_device(main if device in ("cpu", "disk") else device)


def load_device(placement: Mapping[str, int | str], tensor_name: str) -> torch.device:
    """Where to load a tensor that is read now: its part's device; for the buffers of a disk-placed
    block (its weights stay in the file), the main device, where accelerate wants them."""
    device = placement[module_of(tensor_name)]
    return torch_device(placement["embed"] if device == "disk" else device)


def torch_device(device: int | str) -> torch.device:
    """A device-map value (not 'disk') as a ``torch.device``."""
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def module_of(param_name: str) -> str:
    """The device-map entry a parameter belongs to: ``blocks.3`` or a top-level part."""
    return re.match(r"blocks\.\d+|[^.]+", param_name).group(0)


def _gib(n: int) -> str:
    if n >= 2**28:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**24 else f"{n:,} bytes"


# ---- what fits where: memory figures from a config ----------------------------------------------------

MEMORY_DTYPES = {"bfloat16": 2, "float32": 4}


def memory_figures(cfg) -> dict[str, int]:
    """Parameter counts of a model's parts: ``total``, ``resident`` (what stays on the main device
    when blocks are offloaded: the embedding, which is also the unembedding, the final norm, Gemma
    4's per-layer embedding) and ``largest_block``. Blocks are built on the meta device (no memory),
    one of each shape."""
    from gemma_lab.model import Block

    counts: dict[tuple, int] = {}
    blocks = []
    for layer in range(cfg.n_layers):
        shape = (cfg.kv_source(layer) == layer, cfg.d_mlp_for(layer), cfg.d_head_for(layer),
                 cfg.n_kv_heads_for(layer), cfg.has_v_proj(layer))
        if shape not in counts:
            with torch.device("meta"):
                counts[shape] = sum(p.numel() for p in Block(cfg, layer).parameters())
        blocks.append(counts[shape])
    total = cfg.n_params()  # tested equal to the model's own count
    return {"total": total, "resident": total - sum(blocks), "largest_block": max(blocks)}


def quantized_weight_bytes(cfg, quantize: str, dtype_bytes: int = 2) -> int:
    """Bytes of a model's weights as ``load_pretrained(..., quantize=quantize)`` stores them, from
    ``quantize.quantized_layout``: int8 weights as one byte each plus a scale per row; int4 weights
    as half a byte each plus a scale and a zero per group of ``INT4_GROUP`` inputs; what is not
    quantized (norm gains, Gemma 3n/4's per-layer embeddings, ...) in the model's dtype, like the
    scales (``dtype_bytes``: 2 for bf16, the dtype quantized models are meant to run in). The
    model is built on the meta device (no memory)."""
    from gemma_lab.model import Gemma
    from gemma_lab.quantize import INT4_GROUP, check_quantize, quantized_layout

    if check_quantize(quantize) is None:
        raise ValueError("quantize must be 'int8' or 'int4'")
    with torch.device("meta"):
        model = Gemma(cfg)
    layout = quantized_layout(model, quantize)
    total = 0
    for name, param in model.named_parameters():
        kind = layout.get(name)
        if kind == "int8":
            total += param.numel() + param.shape[0] * dtype_bytes
        elif kind == "int4":
            rows, cols = param.shape
            total += param.numel() // 2 + (cols // INT4_GROUP) * rows * 2 * dtype_bytes
        else:
            total += param.numel() * dtype_bytes
    return total


def memory_table(presets: list[str] | None = None) -> str:
    """The markdown table of docs/bigger_models.md: each Gemma size's weights in bf16 and fp32, and
    the least memory a forward pass with every block offloaded to disk needs (bf16)."""
    from gemma_lab.config import PRESETS

    names = presets or [name for name in PRESETS if not name.startswith("test-")]
    lines = ["| model | parameters | bf16 weights | fp32 weights | bf16, blocks on disk: resident + one block |",
             "|---|---:|---:|---:|---:|"]
    for name in names:
        figures = memory_figures(PRESETS[name])
        offload = 2 * (figures["resident"] + figures["largest_block"])
        lines.append(f"| {name} | {figures['total'] / 1e9:.2f} B | {_gb(2 * figures['total'])} | "
                     f"{_gb(4 * figures['total'])} | {_gb(offload)} |")
    return "\n".join(lines)


def memory_lines(cfg) -> list[str]:
    """What ``gemma-lab info`` prints under "memory by dtype" for one model."""
    figures = memory_figures(cfg)
    rows = [("dtype", "all weights", "resident part", "largest block", "blocks on disk: resident + one block")]
    for dtype, size in MEMORY_DTYPES.items():
        rows.append((dtype, _gb(size * figures["total"]), _gb(size * figures["resident"]),
                     _gb(size * figures["largest_block"]), _gb(size * (figures["resident"] + figures["largest_block"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _gb(n_bytes: int) -> str:
    """Decimal gigabytes, as GPU and laptop memory is sold (MB below 0.1 GB)."""
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"
