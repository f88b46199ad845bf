"""load_pretrained: real Gemma checkpoints into the from-scratch model, strictly and memory-mapped.

Formats:
  * transformers folders: ``config.json`` + ``model.safetensors`` or shards listed in
    ``model.safetensors.index.json`` (GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM and
    the text tower of Gemma3ForConditionalGeneration; Gemma4ForCausalLM and the text tower of
    Gemma4ForConditionalGeneration, whose vision and audio weights are skipped with a one-line note);
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
from gemma_lab.hf_format import NON_TEXT, gemma4_skip_reason, hf_name_table, strip_text_prefix
from gemma_lab.hub import resolve_model
from gemma_lab.model import Gemma

# A checkpoint with fewer bytes than this loads silently; bigger ones show a progress bar.
_PROGRESS_MIN_BYTES = 256 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and tensor at fault."""


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                    *, config: GemmaConfig | str | None = None, progress: bool | None = None) -> Gemma:
    """A ready ``Gemma`` in eval mode from a checkpoint folder or file, ``"tiny"`` (the bundled model),
    a Hugging Face id (``"google/gemma-2-2b"``, from the local cache or downloaded) or a Kaggle handle.

    dtype: e.g. ``torch.bfloat16`` or ``"float32"``; default: the checkpoint's own dtype.
    config: only for gemma_pytorch files without a config.json beside them: a preset name or a
        GemmaConfig (by default the preset whose tensor shapes match is used).
    progress: show a progress bar (default: for checkpoints above 256 MiB).
    """
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
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}  # Gemma 4: layer_scalar buffers too
    loaded: dict[str, torch.Tensor] = {}
    non_finite: list[str] = []
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"loading {path.name}", disable=not show)
    try:
        for our_name, tensor, origin in source.tensors(config, dtype):
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
            loaded[our_name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
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
    dtypes = {t.dtype for t in loaded.values()}
    if len(dtypes) > 1:  # mixed-precision files: settle on the embedding's dtype
        loaded = {k: v.to(loaded["embed.weight"].dtype) for k, v in loaded.items()}
    model.load_state_dict(loaded, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    return model


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
    return f"Gemma {config.family} ({config.n_layers} layers, d_model {config.d_model})"


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

    def tensors(self, config: GemmaConfig, dtype: torch.dtype | None = None
                ) -> Iterator[tuple[str | None, torch.Tensor, str]]:
        """(our name or None to skip, tensor, 'file: checkpoint name') for every tensor in the files.

        ``dtype``: what the caller will convert to, so a source can release each original early.
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

    def tensors(self, config: GemmaConfig, dtype: torch.dtype | None = None
                ) -> Iterator[tuple[str | None, torch.Tensor, str]]:
        from safetensors import SafetensorError, safe_open

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
                        if config.family == 4 and (reason := gemma4_skip_reason(name, config)):
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
                        if dtype is not None and stored != dtype:
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

    def tensors(self, config: GemmaConfig, dtype: torch.dtype | None = None
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

