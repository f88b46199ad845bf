"""load_pretrained: real Gemma checkpoints into the from-scratch model, strictly and memory-mapped.

Formats:
  * transformers folders: ``config.json`` + ``model.safetensors`` or shards listed in
    ``model.safetensors.index.json`` (GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM and
    the text tower of Gemma3ForConditionalGeneration; Gemma4ForCausalLM and the text tower of
    Gemma4ForConditionalGeneration, whose vision and audio weights are skipped with a one-line note; the
    same for Gemma3nForCausalLM and Gemma3nForConditionalGeneration);
  * Google's gemma_pytorch ``*.ckpt`` files (``model_state_dict``, fused ``qkv_proj``), read with
    ``torch.load(weights_only=True)``: nothing else is ever unpickled.

The model is built on the ``meta`` device and each tensor is read from the memory-mapped file
straight into its parameter, so weights are copied once (a dtype change is that one copy).
Every tensor is accounted for: a missing, unexpected or mis-shaped one raises an error naming it.

The checkpoint's tensor names and config keys live in ``hf_format.py`` (``hf_name_table``); this
file reads files and checks what it reads.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.hf_format import NON_TEXT, gemma4_skip_reason, hf_name_table, our_name_table, strip_text_prefix
from gemma_lab.hub import resolve_model
from gemma_lab.model import Gemma
from gemma_lab.quantize import check_quantize, quantize_modules, quantize_tensor, quantized_layout

# A checkpoint with fewer bytes than this loads silently; bigger ones show a progress bar.
_PROGRESS_MIN_BYTES = 256 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and tensor at fault."""


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                    *, config: GemmaConfig | str | None = None, progress: bool | None = None,
                    device_map: str | dict | None = None, max_memory: dict | None = None,
                    offload_folder: str | os.PathLike | None = None, tensor_parallel: bool = False,
                    quantize: str | None = None) -> Gemma:
    """A ready ``Gemma`` in eval mode from a checkpoint folder or file, ``"tiny"`` (the bundled model),
    a Hugging Face id (``"google/gemma-2-2b"``, from the local cache or downloaded) or a Kaggle handle.

    dtype: e.g. ``torch.bfloat16`` or ``"float32"``; default: the checkpoint's own dtype.
    config: only for gemma_pytorch files without a config.json beside them: a preset name or a
        GemmaConfig (by default the preset whose tensor shapes match is used).
    progress: show a progress bar (default: for checkpoints above 256 MiB).
    device_map: spread the model over devices instead of ``device``: ``"auto"`` (within
        ``max_memory``, e.g. ``{0: "20GiB", "cpu": "30GiB"}``) or a dict ``{"embed": 0, "blocks.0": 0,
        ..., "blocks.40": "cpu", "blocks.41": "disk", "ln_final": 0}``. Blocks on ``"disk"`` are
        read from the checkpoint file while they run (see ``placement.py``, docs/bigger_models.md).
    offload_folder: where disk-offloaded weights are written for checkpoints that are not
        safetensors (safetensors checkpoints are read in place).
    tensor_parallel: under ``torchrun`` with a process group, split attention heads and MLP
        columns over the ranks, each reading only its slice of the file (``tensor_parallel.py``).
    quantize: ``"int8"`` stores the embedding and every linear layer as int8 rows with one scale
        each; ``"int4"`` stores the linear layers as int4 in groups of 32 inputs (a scale and a
        zero each) and the embedding as int8. Quantized tensor by tensor as the file is read
        (``quantize.py``); activations stay in ``dtype``. Best with bf16: the fused kernels are
        fastest there (3-8x slower in fp32 on AVX2). int4: CPU only. Not combined with ``device_map``
        or ``tensor_parallel``.
    """
    quantize = check_quantize(quantize)
    if quantize and (device_map is not None or tensor_parallel):
        raise ValueError("quantize= is not combined with device_map= or tensor_parallel=: load the int8 model "
                         "on one device (it needs about a quarter of the fp32 model's memory)")
    if quantize == "int4" and torch.device(device).type != "cpu":
        raise ValueError(f"quantize='int4' runs torch's CPU int4 kernel; load on device='cpu', not {device!r} "
                         f"(quantize='int8' runs on other devices too)")
    path = resolve_model(path)  # a local path as it is; "tiny", a Hub id or a Kaggle handle to its folder
    dtype = _parse_dtype(dtype)
    source = _find_checkpoint(path)
    if isinstance(config, str):
        config = GemmaConfig.from_preset(config)
    if config is None:
        config = source.config()
    total_bytes = source.total_bytes()
    show = progress if progress is not None else total_bytes >= _PROGRESS_MIN_BYTES

    with torch.device("meta"), _SkipWeightInit():
        model = Gemma(config)
    placement, on_disk, offloaded = None, None, {}
    if device_map is not None:
        from gemma_lab import placement as placing

        if torch.device(device) != torch.device("cpu"):
            raise ValueError("pass either device= (one device) or device_map= (several), not both")
        placement = placing.plan(model, device_map, max_memory, dtype or source.stored_dtype())
        params = {name for name, _ in model.named_parameters()}
        on_disk = lambda name: name in params and placement[placing.module_of(name)] == "disk"  # noqa: E731
    elif max_memory is not None or offload_folder is not None:
        raise ValueError("max_memory and offload_folder only apply with device_map= ('auto' or a dict)")
    splits = {}
    if tensor_parallel:
        from safetensors import safe_open

        from gemma_lab import tensor_parallel as tp

        if device_map is not None:
            raise ValueError("pass either tensor_parallel=True or device_map=, not both")
        if not isinstance(source, _SafetensorsFolder):
            raise CheckpointError(f"{source.describe()}: tensor_parallel=True reads safetensors checkpoints "
                                  f"(each rank reads its slice in place)")
        tp.check(config)
        splits = tp.parallelize(model, torch.device(device))
        on_disk = splits.__contains__  # not read now: each rank reads its own slice below
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}  # Gemma 4: layer_scalar buffers too
    expected.update({name: split.shape for name, split in splits.items()})  # tensor parallel: the whole weight
    to_quantize = quantized_layout(model, quantize) if quantize else {}  # weight name -> int8 / int4
    loaded: dict[str, torch.Tensor] = {}
    non_finite: list[str] = []
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"loading {path.name}", disable=not show)
    try:
        readers = {"row_readers": set(to_quantize)} if isinstance(source, _SafetensorsFolder) else {}
        for our_name, tensor, origin in source.tensors(config, dtype, on_disk=on_disk, **readers):
            if our_name is None:
                continue
            if our_name not in expected:
                raise CheckpointError(f"{origin}: unexpected tensor (not part of a {_describe(config)} model)")
            if tuple(tensor.shape) != expected[our_name]:
                raise CheckpointError(
                    f"{origin}: shape {tuple(tensor.shape)} does not match the config's {expected[our_name]} "
                    f"for {our_name}"
                )
            if our_name in loaded:
                raise CheckpointError(f"{origin}: {our_name} appears twice in the checkpoint")
            if tensor.dtype not in _FLOAT_DTYPES:  # judged on what is stored, before any conversion
                raise CheckpointError(
                    f"{origin}: stored as {tensor.dtype}, which is not a plain float weight; quantized "
                    f"checkpoints (int8/int4/fp8 with scales) are not supported: use the bf16 or fp32 release")
            if our_name in splits:  # tensor parallel: this rank's slice only
                file, weight_name = source.locations[our_name]
                with safe_open(str(file), framework="pt") as handle:
                    local = tp.local_slice(handle.get_slice(weight_name), splits[our_name])
                local = local.to(device=device, dtype=dtype or local.dtype)
                if not bool(torch.isfinite(local).all()):
                    non_finite.append(f"{origin} ({our_name})")
                loaded[our_name] = tp.distributed(local, splits[our_name], model.tp_mesh)
                bar.update(local.numel() * local.element_size())
                continue
            if on_disk is not None and on_disk(our_name):  # stays in the file; read while its block runs
                offloaded[our_name] = tensor
                loaded[our_name] = torch.empty(tensor.shape, dtype=dtype or tensor.dtype, device="meta")
                bar.update(tensor.numel() * tensor.element_size())
                continue
            if our_name in to_quantize:  # quantized a block of rows at a time: no full-precision copy
                buffers = quantize_tensor(tensor, to_quantize[our_name], dtype or tensor.dtype)
                if not all(bool(torch.isfinite(b).all()) for b in buffers.values() if b.is_floating_point()):
                    raise CheckpointError(f"{origin}: NaN or inf values cannot be quantized ({our_name})")
                loaded[our_name] = {key: b.to(device) for key, b in buffers.items()}
            else:
                target = device if placement is None else placing.load_device(placement, our_name)
                loaded[our_name] = tensor.to(device=target, dtype=dtype or tensor.dtype)
                if not bool(torch.isfinite(loaded[our_name]).all()):
                    non_finite.append(f"{origin} ({our_name})")
            bar.update(tensor.numel() * tensor.element_size())
    finally:
        bar.close()
    if non_finite:  # loadable, but every forward pass will carry NaN: say where it comes from
        more = f" and {len(non_finite) - 3} more" if len(non_finite) > 3 else ""
        warnings.warn(f"{source.describe()}: NaN or inf values in {'; '.join(non_finite[:3])}{more}; "
                      f"the model's outputs will not be meaningful", RuntimeWarning, stacklevel=2)
    missing = sorted(set(expected) - set(loaded))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source.describe()}: missing tensors {', '.join(missing[:5])}{more}")
    if quantize:
        loaded = _with_quantized_names(model, loaded, to_quantize, dtype)
    dtypes = {t.dtype for t in loaded.values() if t.is_floating_point()}
    if len(dtypes) > 1:  # mixed-precision files: settle on the final norm's dtype (the embedding's, unquantized)
        settle = loaded["ln_final.weight"].dtype if quantize else loaded["embed.weight"].dtype
        loaded = {k: v.to(settle) if v.is_floating_point() else v for k, v in loaded.items()}
    model.load_state_dict(loaded, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    if placement is not None:
        index = _offload_index(source, offloaded, {k: v.dtype for k, v in loaded.items()}, offload_folder)
        placing.dispatch(model, placement, index, offload_folder)
    return model


def _offload_index(source: "_Source", offloaded: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype],
                   folder: str | os.PathLike | None) -> dict[str, dict]:
    """accelerate's offload index for the disk-placed weights: where in the checkpoint each one is
    (safetensors: read in place, converted to the model's dtype as it is read), or, for a
    gemma_pytorch file, a copy written to ``folder``."""
    index: dict[str, dict] = {}
    for name, tensor in offloaded.items():
        dtype = dtypes[name]
        if not tensor.is_meta:  # a source that cannot be read in place: copy out to the offload folder
            from accelerate.utils import offload_weight, save_offload_index

            if folder is None:
                raise ValueError(f"{source.describe()} is not a safetensors checkpoint, so disk offload writes its "
                                 f"weights to a folder first: pass offload_folder=")
            Path(folder).mkdir(parents=True, exist_ok=True)
            offload_weight(tensor.to(dtype), name, str(folder), index=index)
            save_offload_index(index, str(folder))
            continue
        file, weight_name = source.locations[name]
        index[name] = {"safetensors_file": str(file), "weight_name": weight_name}
        if tensor.dtype != dtype:
            index[name]["dtype"] = str(dtype).removeprefix("torch.")
    return index


def _with_quantized_names(model: Gemma, loaded: dict, to_quantize: dict[str, str], dtype: torch.dtype | None) -> dict:
    """Swap the model's linear layers and embedding for quantized ones; ``name.weight`` -> their buffers
    (``name.qweight``, ``name.scale`` for int8; ``name.packed``, ``name.scale_and_zero`` for int4)."""
    scale_dtype = dtype or loaded["ln_final.weight"].dtype
    with torch.device("meta"):
        quantize_modules(model, scale_dtype, to_quantize)
    renamed = {}
    for name, value in loaded.items():
        if name in to_quantize:
            prefix = name[: -len("weight")]
            renamed.update({prefix + key: buffer for key, buffer in value.items()})
        else:
            renamed[name] = value
    return renamed


class _SkipWeightInit(TorchFunctionMode):
    """Build modules without drawing random initial weights: every one is overwritten by the file.

    On the meta device the draws cost nothing, but the first one imports torch's compiler stack
    (about a second), which would double the time to load the tiny model. The ``torch.nn.init``
    functions dispatch through torch-function modes, so this mode sees each call and returns the
    tensor untouched; it is active only inside its ``with`` block, on this thread, and patches nothing.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _describe(config: GemmaConfig) -> str:
    return f"Gemma {'3n' if config.is_gemma3n else config.family} ({config.n_layers} layers, d_model {config.d_model})"


# What the model computes in; anything else (ints, bools, fp8) in a file is a quantized or broken checkpoint.
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None:
        return dtype
    if isinstance(dtype, torch.dtype):
        if dtype not in _FLOAT_DTYPES[:3]:
            raise ValueError(f"dtype {dtype} is not supported; the model runs in torch.float32, torch.bfloat16 "
                             f"or torch.float16 (quantized weights are not supported)")
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if not isinstance(dtype, str) or dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(names)}")
    return names[dtype]


# ---- checkpoint sources ----------------------------------------------------------------------------

class _Source:
    """One checkpoint on disk: its config and its tensors under our names."""

    def describe(self) -> str:
        raise NotImplementedError

    def config(self) -> GemmaConfig:
        raise NotImplementedError

    def total_bytes(self) -> int:
        raise NotImplementedError

    def stored_dtype(self) -> torch.dtype:
        """The embedding's dtype as stored (what the weights will have unless converted)."""
        raise NotImplementedError

    def tensors(self, config: GemmaConfig, dtype: torch.dtype | None = None, on_disk=None
                ) -> Iterator[tuple[str | None, torch.Tensor, str]]:
        """(our name or None to skip, tensor, 'file: checkpoint name') for every tensor in the files.

        ``dtype``: what the caller will convert to, so a source can release each original early.
        ``on_disk(our_name)``: True for weights that stay in the file; a source that can read them
        in place later yields a meta tensor of the stored shape and dtype (and notes where it is
        in ``locations``), without reading it.
        """
        raise NotImplementedError


class _SafetensorsFolder(_Source):
    def __init__(self, folder: Path, files: list[Path], config_path: Path) -> None:
        self.folder, self.files, self.config_path = folder, files, config_path

    def describe(self) -> str:
        return str(self.folder)

    def config(self) -> GemmaConfig:
        return GemmaConfig.from_hf(self.config_path)

    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def stored_dtype(self) -> torch.dtype:
        from safetensors import safe_open

        for file in self.files:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    if name.endswith("embed_tokens.weight"):
                        return _SAFETENSORS_DTYPES.get(handle.get_slice(name).get_dtype(), torch.float32)
        return torch.float32  # no embedding: the load itself will say so

    def tensors(self, config: GemmaConfig, dtype: torch.dtype | None = None, on_disk=None,
                row_readers: set[str] = frozenset()
                ) -> Iterator[tuple[str | None, torch.Tensor, str]]:
        """``row_readers``: our names to hand over as ``_RowReader`` (read a few rows at a time)."""
        from safetensors import SafetensorError, safe_open

        self.locations: dict[str, tuple[Path, str]] = {}

        table = hf_name_table(config)
        embed_at: tuple[Path, str] | None = None
        lm_head_at: tuple[Path, str, str] | None = None
        skipped: Counter[str] = Counter()  # Gemma 4: what was left out, and why
        for file in self.files:
            _check_safetensors_header(file)
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for name in handle.keys():
                        origin = f"{file}: tensor {name!r}"
                        if (config.family == 4 or config.is_gemma3n) and (reason := gemma4_skip_reason(name, config)):
                            skipped[reason] += 1
                            continue
                        if NON_TEXT.match(name):
                            continue
                        if name.endswith("lm_head.weight"):
                            lm_head_at = (file, name, origin)
                            continue
                        stripped = strip_text_prefix(name)
                        ours = table.get(stripped) if stripped is not None else None
                        if ours is None:
                            raise CheckpointError(f"{origin}: unexpected tensor (not part of a {_describe(config)} model)")
                        if ours == "embed.weight":
                            embed_at = (file, name)
                        stored = _SAFETENSORS_DTYPES.get(handle.get_slice(name).get_dtype())
                        if on_disk is not None and stored is not None and on_disk(ours):
                            self.locations[ours] = (file, name)
                            shape = handle.get_slice(name).get_shape()
                            yield ours, torch.empty(shape, dtype=stored, device="meta"), origin
                        elif ours in row_readers:  # quantized as it is read: never whole in memory
                            yield ours, _RowReader(file, name, handle.get_slice(name).get_shape(), stored), origin
                        elif dtype is not None and stored != dtype:
                            # Converting: read through a handle of its own, so the original's pages
                            # are unmapped as soon as the converted copy exists (peak ~ model bytes).
                            yield ours, _read_tensor(file, name), origin
                        else:  # kept as stored: the parameter is the memory-mapped view itself
                            yield ours, handle.get_tensor(name), origin
            except SafetensorError as exc:
                raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({exc})") from None
        for reason, count in skipped.items():
            warnings.warn(f"{self.folder}: skipped {count} {reason}", stacklevel=4)
        if lm_head_at is not None:  # Gemma ties the unembedding to the embedding: a separate copy must agree
            file, name, origin = lm_head_at
            lm_head = _read_tensor(file, name)
            embed = _read_tensor(*embed_at) if embed_at is not None else None
            if embed is None or lm_head.shape != embed.shape or not torch.equal(lm_head, embed):
                raise CheckpointError(f"{origin}: lm_head differs from embed_tokens; Gemma's unembedding is tied")


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


class _RowReader:
    """A 2-D tensor in a safetensors file, read a block of rows at a time through short-lived handles.

    Quantizing at load reads each matrix this way, so neither the matrix nor the file's pages
    (a handle maps the whole file) stay in memory beyond one block.
    """

    def __init__(self, file: Path, name: str, shape: list[int], dtype: torch.dtype | None) -> None:
        self.file, self.name, self.shape, self.dtype = file, name, torch.Size(shape), dtype
        self.device = torch.device("cpu")

    def __getitem__(self, rows: slice) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as handle:
            return handle.get_slice(self.name)[rows].clone()

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size() if self.dtype is not None else 1


def _read_tensor(file: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name)


def _check_safetensors_header(file: Path) -> None:
    """Catch truncated or corrupt files before safetensors does, with a message naming the file."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes, no header)")
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8 or header_len > 100 * 2**20:
            raise CheckpointError(f"{file}: corrupt safetensors header (claims {header_len} bytes, file has {size})")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{file}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (a {type(header).__name__}, not an object)")
    data_end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
            raise CheckpointError(f"{file}: corrupt safetensors header: tensor {key!r} has no valid data_offsets")
        data_end = max(data_end, offsets[1])
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{file}: truncated safetensors file: tensors need {8 + header_len + data_end} bytes, file has {size}"
        )


class _GemmaPytorchCheckpoint(_Source):
    """Google's gemma_pytorch format: one pickle-free-loadable state dict, q/k/v fused."""

    def __init__(self, files: list[Path], config_path: Path | None) -> None:
        self.files, self.config_path = files, config_path
        self._state: dict[str, torch.Tensor] | None = None

    def describe(self) -> str:
        return str(self.files[0]) if len(self.files) == 1 else str(self.files[0].parent)

    def state(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            self._state = {}
            for file in self.files:
                try:
                    loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                except Exception as exc:  # torch raises many kinds; all mean "not a safe, valid checkpoint"
                    raise CheckpointError(f"{file}: not a readable gemma_pytorch checkpoint "
                                          f"({_without_unsafe_advice(exc)})") from None
                state = loaded.get("model_state_dict", loaded) if isinstance(loaded, dict) else None
                if not isinstance(state, dict):
                    raise CheckpointError(f"{file}: expected a dict with 'model_state_dict'")
                self._state.update(state)
        return self._state

    def config(self) -> GemmaConfig:
        if self.config_path is not None:
            return GemmaConfig.from_hf(self.config_path)
        return _config_from_shapes(self.state(), self.describe())

    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def stored_dtype(self) -> torch.dtype:
        state = self.state()
        embed = state.get("embedder.weight", state.get("text_token_embedder.weight"))
        return embed.dtype if embed is not None else torch.float32

    def tensors(self, config: GemmaConfig, dtype: torch.dtype | None = None, on_disk=None
                ) -> Iterator[tuple[str | None, torch.Tensor, str]]:
        table = hf_name_table(config)
        q_rows = config.n_heads * config.d_head
        kv_rows = config.n_kv_heads * config.d_head
        renames = {"embedder.weight": "embed_tokens.weight", "text_token_embedder.weight": "embed_tokens.weight",
                   "query_norm": "q_norm", "key_norm": "k_norm"}
        for name, tensor in self.state().items():
            origin = f"{self.describe()}: tensor {name!r}"
            if name.endswith("freqs_cis"):  # precomputed rotary tables: we compute our own
                continue
            if name.startswith(("siglip_vision_model.", "mm_soft_embedding_norm", "mm_input_projection")):
                continue  # gemma_pytorch's multimodal Gemma 3: not part of the text model
            if name.endswith("weight_scaler"):
                raise CheckpointError(f"{origin}: int8-quantized checkpoints are not supported; use the bf16 one")
            hf_name = renames.get(name, name)
            hf_name = hf_name.replace("self_attn.query_norm", "self_attn.q_norm").replace("self_attn.key_norm", "self_attn.k_norm")
            stripped = strip_text_prefix(hf_name) if hf_name.startswith("model.") else hf_name
            if stripped is not None and stripped.endswith("self_attn.qkv_proj.weight"):
                if tensor.shape[0] != q_rows + 2 * kv_rows:
                    raise CheckpointError(
                        f"{origin}: fused qkv_proj has {tensor.shape[0]} rows; the config needs "
                        f"{q_rows} + 2 x {kv_rows} = {q_rows + 2 * kv_rows}"
                    )
                q, k, v = tensor.split([q_rows, kv_rows, kv_rows], dim=0)  # row blocks [q | k | v]
                layer_prefix = stripped[: -len("qkv_proj.weight")]
                for part, piece in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                    yield table.get(f"{layer_prefix}{part}.weight"), piece, f"{origin} ({part})"
                continue
            ours = table.get(stripped) if stripped is not None else None
            if ours is None:
                raise CheckpointError(f"{origin}: unexpected tensor (not part of a {_describe(config)} model)")
            yield ours, tensor, origin


def _without_unsafe_advice(error: Exception) -> str:
    """torch's load error, minus its advice to load with weights_only=False (never safe for a download)."""
    if isinstance(error, __import__("pickle").UnpicklingError) or "weights_only" in str(error):
        return ("it holds Python objects besides tensors, which gemma_lab never unpickles; "
                "re-save it as a plain state dict or safetensors")
    return " ".join(str(error).split())[:300] or type(error).__name__


def _config_from_shapes(state: dict[str, torch.Tensor], where: str) -> GemmaConfig:
    """The preset whose shapes match a gemma_pytorch state dict (these files carry no config)."""
    embed = state.get("embedder.weight", state.get("text_token_embedder.weight"))
    if embed is None:
        raise CheckpointError(f"{where}: no embedder.weight: not a gemma_pytorch checkpoint")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    qkv = state.get("model.layers.0.self_attn.qkv_proj.weight")
    for preset in PRESETS.values():
        if (preset.d_model == embed.shape[1] and preset.n_layers == len(layers) and qkv is not None
                and qkv.shape[0] == (preset.n_heads + 2 * preset.n_kv_heads) * preset.d_head
                and preset.vocab_size in (embed.shape[0], embed.shape[0] + 64)):
            return preset.replace(vocab_size=int(embed.shape[0]))
    raise CheckpointError(
        f"{where}: no preset matches its shapes (vocab {embed.shape[0]}, d_model {embed.shape[1]}, "
        f"{len(layers)} layers); pass config='<preset>' or put a config.json beside it"
    )


def _find_checkpoint(path: Path) -> _Source:
    if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
        raise CheckpointError(f"{path}: not a regular file (a pipe or device?); checkpoints are read from files")
    if path.is_file():
        if path.suffix in (".ckpt", ".bin", ".pt", ".pth"):
            config = path.parent / "config.json"
            return _GemmaPytorchCheckpoint([path], config if config.is_file() else None)
        if path.suffix == ".safetensors":
            return _safetensors_folder(path.parent, [path])
        raise CheckpointError(f"{path}: unknown checkpoint file type (expected .safetensors or a gemma_pytorch .ckpt)")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return _safetensors_folder(path, _files_from_index(index))
    single = path / "model.safetensors"
    if single.is_file():
        return _safetensors_folder(path, [single])
    shards = sorted(p for p in path.glob("*.safetensors") if p.is_file())  # is_file: never open a FIFO
    if shards:
        return _safetensors_folder(path, shards)
    torch_index = path / "pytorch_model.bin.index.json"
    if torch_index.is_file():
        config = path / "config.json"
        return _GemmaPytorchCheckpoint(_files_from_index(torch_index), config if config.is_file() else None)
    ckpts = sorted(p for p in path.glob("*.ckpt") if p.is_file())
    bins = [path / "pytorch_model.bin"] if (path / "pytorch_model.bin").is_file() else []
    if len(ckpts + bins) == 1:
        config = path / "config.json"
        return _GemmaPytorchCheckpoint(ckpts + bins, config if config.is_file() else None)
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise FileNotFoundError(
        f"{path}: no checkpoint found (looked for model.safetensors, model.safetensors.index.json, "
        f"*.safetensors, pytorch_model.bin, one gemma_pytorch *.ckpt); the folder holds: {found}"
    )


def _safetensors_folder(folder: Path, files: list[Path]) -> _SafetensorsFolder:
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: config.json is missing next to the safetensors weights")
    return _SafetensorsFolder(folder, files, config)


def _files_from_index(index: Path) -> list[Path]:
    try:
        content = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: not a valid index file (not JSON: {exc})") from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: not a valid index file (expected an object with a 'weight_map' "
                              f"of tensor name -> shard file name)")
    folder = index.parent.resolve()
    files = []
    for name in dict.fromkeys(weight_map.values()):
        file = (index.parent / name)
        if Path(name).is_absolute() or folder not in file.resolve().parents:
            raise CheckpointError(f"{index}: shard {name!r} lies outside the checkpoint folder; refused")
        files.append(file)
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{index}: lists shard {file.name}, which is missing")
    return files


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The weight files a checkpoint path refers to (for ``gemma-lab info``)."""
    source = _find_checkpoint(resolve_model(path))
    return list(getattr(source, "files", []))



def save_pretrained(model: Gemma, folder: str | os.PathLike, **token_ids: int) -> Path:
    """Write ``model`` as a transformers checkpoint: ``config.json`` + ``model.safetensors`` under transformers'
    names (the tied embedding stored once), which ``load_pretrained`` and ``from_pretrained`` read back.

    For sliced or edited models (``gemma_lab.matformer``). ``token_ids``: ``bos_id``, ``eos_id``, ``pad_id`` when
    they differ from Gemma's 2, 1, 0. Quantized models are refused: their tensors have no transformers names.
    """
    from safetensors.torch import save_file

    state = model.state_dict()
    names = our_name_table(model.cfg)
    if set(state) != set(names):
        unnamed = sorted(set(state) - set(names))[:3]
        raise ValueError(f"model: tensors without a transformers name ({', '.join(unnamed)}...); "
                         "save the model before quantizing it")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = str(model.dtype).removeprefix("torch.")
    tensors = {names[ours]: tensor.detach().contiguous().cpu() for ours, tensor in state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.cfg.to_hf(**token_ids) | {"dtype": dtype}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
