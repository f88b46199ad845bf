"""load_sae: sparse autoencoders and transcoders from folders, checked strictly.

Formats (the first one found in the folder wins):
  * Gemma Scope 2 (Gemma 3): ``params.safetensors`` (lowercase ``w_enc, w_dec, b_enc, b_dec,
    threshold``, and ``affine_skip_connection [d_in, d_out]`` for affine transcoders) with a
    ``config.json`` naming transformers hook points, mapped onto ours by ``HF_HOOK_POINTS``.
    Without a config.json the site is read off the released folder name
    (``resid_post/layer_5_width_16k_l0_small``).
  * Gemma Scope 1 (Gemma 2): ``params.npz`` (``W_enc, W_dec, b_enc, b_dec, threshold``), read with
    ``allow_pickle=False``. The site comes from ``hook_name`` or from the released path
    (``gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82``).
  * SAELens' own saved format: ``cfg.json`` + ``sae_weights.safetensors``.
  * ``"tiny"`` / ``"tiny-transcoder"``: the SAE and the transcoder trained in this repository on
    the bundled tiny Gemma (``data/tiny-sae/``; see its README for how).

Every tensor is accounted for: a missing, unexpected or mis-shaped one raises ``SAEConfigError``
naming the file and the tensor. Pass ``model=`` to also check that the SAE fits the model (its
site exists and has the SAE's width). A release on the Hugging Face Hub is loaded by its id and
the SAE's folder in it, as SAELens names them (``load_sae("google/gemma-scope-2b-pt-res",
"layer_12/width_16k/average_l0_82")``): fetched into the Hub cache once (``gemma_lab.hub``).

Imports: torch, numpy, safetensors, ``gemma_lab.hub`` and ``gemma_lab.sae.autoencoder``; never the model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from gemma_lab.bundled import bundled_dir
from gemma_lab.hub import is_hub_id, resolve_sae
from gemma_lab.sae.autoencoder import SAE, SAEConfig, SAEConfigError, check_site, make_sae

#: transformers hook points of Gemma Scope 2 configs -> our hook names ({L}: the layer).
HF_HOOK_POINTS = {
    r"model\.layers\.(\d+)\.output": "blocks.{L}.hook_resid_post",
    r"model\.layers\.(\d+)\.post_feedforward_layernorm\.output": "blocks.{L}.hook_mlp_out",
    # The input of o_proj is every head's z side by side: our hook_z flattened, not hook_attn_out.
    r"model\.layers\.(\d+)\.self_attn\.o_proj\.input": "blocks.{L}.attn.hook_z",
    # Transcoders read the MLP input: after the pre-MLP norm, its gain applied.
    r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.output": "blocks.{L}.ln2.hook_normalized",
}

#: Sites in Gemma Scope release names (repository for Gemma Scope 1, folder for Gemma Scope 2).
_SCOPE1_SITES = {"res": "blocks.{L}.hook_resid_post", "mlp": "blocks.{L}.hook_mlp_out",
                 "att": "blocks.{L}.attn.hook_z", "transcoders": "blocks.{L}.ln2.hook_normalized"}
_SCOPE2_SITES = {"resid_post": "blocks.{L}.hook_resid_post", "mlp_out": "blocks.{L}.hook_mlp_out",
                 "attn_out": "blocks.{L}.attn.hook_z", "transcoder": "blocks.{L}.ln2.hook_normalized"}

#: Other names for our hook points that SAE files use (TransformerLens has hook_mlp_in).
_ALIASES = {r"blocks\.(\d+)\.hook_mlp_in": "blocks.{L}.ln2.hook_normalized"}

#: SAELens architecture names -> (ours, transcoder?, affine skip?).
_SAELENS_ARCHITECTURES = {
    "standard": ("relu", False, False), "jumprelu": ("jumprelu", False, False), "topk": ("topk", False, False),
    "transcoder": ("relu", True, False), "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False), "jumprelu_skip_transcoder": ("jumprelu", True, True),
    "topk_transcoder": ("topk", True, False),  # gemma_lab's own (the bundled tiny transcoder); not in SAELens
}

TINY_SAES = {"tiny": "resid", "tiny-sae": "resid", "tiny-transcoder": "transcoder"}


def load_sae(path: str | os.PathLike, hook_name: str | None = None, *, sae_id: str | None = None, model=None,
             use_error_term: bool = False, device: str | torch.device = "cpu",
             dtype: torch.dtype | str | None = None) -> SAE:
    """An ``SAE`` (or ``Transcoder``) from a folder in one of the formats above, a bundled name, or
    a release on the Hugging Face Hub with the SAE's folder in it.

    path: a folder, ``"tiny"`` / ``"tiny-transcoder"``, a release id (``google/gemma-scope-2b-pt-res``),
        or a release id and the SAE's folder in one (``google/gemma-scope-2b-pt-res/layer_12/...``).
    hook_name: where it sits, in our names (``blocks.12.hook_resid_post``); needed only when the
        folder does not say (a Gemma Scope 1 folder outside its released path). If the folder
        does say, the two must agree. A transcoder's ``hook_name`` is its input site. For a
        release id, a second argument with a ``/`` in it is the ``sae_id`` (hook names have none).
    sae_id: the SAE's folder in a release (``layer_12/width_16k/average_l0_82``), as SAELens names it.
    model: check that the SAE fits this model (its sites exist and have its widths).
    dtype: e.g. ``torch.float32``; default: the file's.
    """
    if isinstance(path, str) and path in TINY_SAES:
        path = bundled_dir("tiny-sae") / TINY_SAES[path]
    if isinstance(path, str) and sae_id is None and path.count("/") >= 2 and not Path(path).exists():
        owner, name, inner = path.split("/", 2)  # "release/sae_id" in one string (GEMMA_LAB_SAE can hold it)
        if is_hub_id(f"{owner}/{name}"):
            path, sae_id = f"{owner}/{name}", inner
    if is_hub_id(path):
        if sae_id is None and hook_name is not None and "/" in hook_name:
            sae_id, hook_name = hook_name, None
        if sae_id is None:
            raise ValueError(f"{path} is a release id: say which SAE in it, e.g. load_sae({str(path)!r}, "
                             f"'layer_12/width_16k/average_l0_82') (its folder in the repository)")
        path = resolve_sae(str(path), sae_id)
    elif sae_id is not None:
        path = Path(path) / sae_id  # a release downloaded by hand: the SAE's folder inside it
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such SAE folder (expected params.safetensors + config.json, "
                                f"params.npz, or cfg.json + sae_weights.safetensors)")
    if (path / "params.safetensors").is_file():
        cfg, tensors = _gemma_scope_2(path)
    elif (path / "params.npz").is_file():
        cfg, tensors = _gemma_scope_1(path, hook_name)
    elif (path / "cfg.json").is_file():
        cfg, tensors = _saelens(path)
    else:
        raise SAEConfigError(f"{path}: no SAE here (looked for params.safetensors, params.npz and cfg.json)")
    if hook_name is not None:
        cfg = _agree(cfg, _our_name(hook_name, "hook_name argument"))
    if dtype is not None:
        cfg = cfg.replace(dtype=str(dtype).removeprefix("torch."))
    sae = _build(cfg, tensors, use_error_term)
    if model is not None:
        check_fits(sae, model)
    return sae.to(device)


# ---------------------------------------------------------------------------------------------
# The formats
# ---------------------------------------------------------------------------------------------


def _gemma_scope_2(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    weights = path / "params.safetensors"
    raw = load_file(weights)
    tensors = {"W_enc": raw.pop("w_enc", None), "W_dec": raw.pop("w_dec", None), "b_enc": raw.pop("b_enc", None),
               "b_dec": raw.pop("b_dec", None), "threshold": raw.pop("threshold", None)}
    skip = raw.pop("affine_skip_connection", None)
    if skip is not None:
        tensors["W_skip"] = skip.T.contiguous()  # stored [d_in, d_out]; ours is [d_out, d_in]
    _no_leftovers(weights, raw)
    _all_present(weights, tensors, ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"), lowercase=True)

    config_file = path / "config.json"
    if config_file.is_file():
        meta = _read_json(config_file)
        architecture = meta.get("architecture", "jump_relu")
        if architecture not in ("jump_relu", "jumprelu"):
            raise SAEConfigError(f"{config_file}: unknown architecture {architecture!r} (Gemma Scope 2 is jump_relu)")
        if "hf_hook_point_in" not in meta:
            raise SAEConfigError(f"{config_file}: no 'hf_hook_point_in' (the transformers hook point it reads)")
        hook_in = _from_hf(meta["hf_hook_point_in"], config_file, "hf_hook_point_in")
        hook_out = meta.get("hf_hook_point_out")
        hook_out = _from_hf(hook_out, config_file, "hf_hook_point_out") if hook_out else None
        model_name = str(meta.get("model_name", ""))
    else:  # released folder names say the site: transcoder/layer_5_width_16k_l0_small_affine
        hook_in, hook_out = _site_from_scope2_folder(path)
        model_name = ""
    if hook_out == hook_in:
        hook_out = None  # an SAE: reads and writes the same activation
    is_transcoder = hook_in.endswith("ln2.hook_normalized")
    if is_transcoder and hook_out is None:
        hook_out = hook_in.replace("ln2.hook_normalized", "hook_mlp_out")
    if hook_out is not None and not is_transcoder:
        raise SAEConfigError(f"{path}: reads {hook_in} but writes {hook_out}; gemma_lab splices transcoders "
                             "from the MLP input to hook_mlp_out only")
    d_in, d_sae = _shape(weights, tensors, "W_enc", 2)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", hook_name=hook_in, hook_name_out=hook_out,
                    d_out=tensors["W_dec"].shape[-1] if is_transcoder else None, affine_skip=skip is not None,
                    dtype=_dtype_name(tensors["W_enc"]), model_name=model_name, source=str(weights))
    return cfg, tensors


def _gemma_scope_1(path: Path, hook_name: str | None) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    weights = path / "params.npz"
    try:
        with np.load(weights, allow_pickle=False) as data:
            raw = {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except ValueError as error:  # object arrays need pickle: refused
        raise SAEConfigError(f"{weights}: cannot be read without unpickling ({error}); refused") from None
    tensors = {key: raw.pop(key, None) for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    _no_leftovers(weights, raw)
    _all_present(weights, tensors, tuple(tensors))
    site = _site_from_scope1_path(path)
    if site is None and hook_name is None:
        raise SAEConfigError(f"{weights}: the folder path does not say where this SAE sits (no "
                             "gemma-scope-*-{res,mlp,att,transcoders}/layer_N in it): pass hook_name=")
    hook_in = site if site is not None else _our_name(hook_name, "hook_name argument")
    is_transcoder = hook_in.endswith("ln2.hook_normalized")
    hook_out = hook_in.replace("ln2.hook_normalized", "hook_mlp_out") if is_transcoder else None
    d_in, d_sae = _shape(weights, tensors, "W_enc", 2)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", hook_name=hook_in, hook_name_out=hook_out,
                    d_out=tensors["W_dec"].shape[-1] if is_transcoder else None,
                    dtype=_dtype_name(tensors["W_enc"]), source=str(weights))
    return cfg, tensors


def _saelens(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    config_file, weights = path / "cfg.json", path / "sae_weights.safetensors"
    meta = _read_json(config_file)
    if not weights.is_file():
        raise SAEConfigError(f"{path}: cfg.json but no sae_weights.safetensors beside it")
    metadata = meta.get("metadata") or {}
    architecture = meta.get("architecture", "standard")
    if architecture not in _SAELENS_ARCHITECTURES:
        raise SAEConfigError(f"{config_file}: unknown architecture {architecture!r}; gemma_lab reads "
                             f"{', '.join(_SAELENS_ARCHITECTURES)}")
    ours, is_transcoder, skip = _SAELENS_ARCHITECTURES[architecture]
    for field, fine in (("normalize_activations", ("none", None, False)), ("reshape_activations", ("none", "hook_z", None)),
                        ("rescale_acts_by_decoder_norm", (False, None)), ("hook_head_index", (None,))):
        value = meta.get(field, metadata.get(field))
        if value not in fine:
            raise SAEConfigError(f"{config_file}: {field}={value!r} is not supported by gemma_lab's SAE")
    hook_in = metadata.get("hook_name") or meta.get("hook_name") or meta.get("hook_point")
    if not hook_in:
        raise SAEConfigError(f"{config_file}: no hook_name (in metadata or at the top level)")
    hook_in = _our_name(hook_in, f"{config_file} hook_name")
    hook_out = metadata.get("hook_name_out") or meta.get("hook_name_out")
    hook_out = _our_name(hook_out, f"{config_file} hook_name_out") if hook_out else None
    if is_transcoder and hook_out is None:
        raise SAEConfigError(f"{config_file}: a {architecture} needs hook_name_out (where it writes)")

    raw = load_file(weights)
    if "log_threshold" in raw:  # older JumpReLU checkpoints store the threshold's log
        raw["threshold"] = raw.pop("log_threshold").exp()
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if ours == "jumprelu" else []) + (
        ["W_skip"] if skip else [])
    tensors = {name: raw.pop(name, None) for name in names}
    _no_leftovers(weights, raw)
    _all_present(weights, tensors, tuple(names))
    d_in, d_sae = _shape(weights, tensors, "W_enc", 2)
    for field, value in (("d_in", d_in), ("d_sae", d_sae)):
        if field in meta and int(meta[field]) != value:
            raise SAEConfigError(f"{config_file}: {field}={meta[field]} but W_enc in {weights.name} has shape "
                                 f"{tuple(tensors['W_enc'].shape)}")
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=ours, hook_name=hook_in,
                    hook_name_out=hook_out if is_transcoder else None,
                    d_out=tensors["W_dec"].shape[-1] if is_transcoder else None,
                    k=meta.get("k") if ours == "topk" else None,
                    apply_b_dec_to_input=bool(meta.get("apply_b_dec_to_input", not is_transcoder)) and not is_transcoder,
                    affine_skip=skip, dtype=_dtype_name(tensors["W_enc"]),
                    model_name=str(metadata.get("model_name") or meta.get("model_name") or ""), source=str(weights))
    return cfg, tensors


# ---------------------------------------------------------------------------------------------
# Building and checking
# ---------------------------------------------------------------------------------------------


def _build(cfg: SAEConfig, tensors: dict[str, torch.Tensor], use_error_term: bool) -> SAE:
    with torch.device("meta"):
        sae = make_sae(cfg.replace(dtype="float32"), use_error_term)
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    if set(expected) != set(tensors):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise SAEConfigError(f"{cfg.source}: tensors {missing or ''} missing, {extra or ''} unexpected "
                             f"for a {cfg.architecture} SAE")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise SAEConfigError(f"{cfg.source}: tensor {name} has shape {tuple(tensors[name].shape)}; "
                                 f"a {cfg.architecture} SAE with d_in={cfg.d_in}, d_sae={cfg.d_sae}"
                                 f"{f', d_out={cfg.width_out}' if cfg.is_transcoder else ''} needs {shape}")
    dtype = getattr(torch, cfg.dtype)
    sae.load_state_dict({name: t.to(dtype) for name, t in tensors.items()}, assign=True, strict=True)
    sae.cfg = cfg
    return sae.eval()


def _all_present(file: Path, tensors: dict, names: tuple[str, ...], lowercase: bool = False) -> None:
    missing = [name.lower() if lowercase else name for name in names if tensors.get(name) is None]
    if missing:
        raise SAEConfigError(f"{file}: missing tensor(s) {', '.join(missing)}")


def _no_leftovers(file: Path, raw: dict) -> None:
    if raw:
        raise SAEConfigError(f"{file}: unexpected tensor(s) {', '.join(sorted(raw))}")


def _shape(file: Path, tensors: dict, name: str, ndim: int) -> tuple[int, ...]:
    shape = tuple(tensors[name].shape)
    if len(shape) != ndim:
        raise SAEConfigError(f"{file}: tensor {name} has shape {shape}; expected {ndim} dimensions")
    return shape


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise SAEConfigError(f"{file}: not valid JSON ({error})") from None


def _agree(cfg: SAEConfig, hook_name: str) -> SAEConfig:
    """``cfg`` placed at ``hook_name``; an error if the files already say it belongs elsewhere."""
    if cfg.hook_name and cfg.hook_name != hook_name:
        raise SAEConfigError(f"{cfg.source}: this SAE was made for {cfg.hook_name}, not {hook_name}")
    return cfg.replace(hook_name=hook_name)


def _from_hf(hf_name: str, file: Path, field: str) -> str:
    for pattern, ours in HF_HOOK_POINTS.items():
        match = re.fullmatch(pattern, hf_name)
        if match:
            return ours.format(L=match.group(1))
    raise SAEConfigError(f"{file}: {field}={hf_name!r} is not a hook point gemma_lab knows; known: "
                         + ", ".join(p.replace("\\", "").replace("(d+)", "L") for p in HF_HOOK_POINTS))


def _our_name(name: str, where: str) -> str:
    for pattern, ours in _ALIASES.items():
        match = re.fullmatch(pattern, name)
        if match:
            return ours.format(L=match.group(1))
    for pattern in HF_HOOK_POINTS:
        if re.fullmatch(pattern, name):
            return _from_hf(name, Path(where), "hook name")
    return name


def _site_from_scope1_path(path: Path) -> str | None:
    """``.../gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82`` -> ``blocks.12.hook_resid_post``."""
    text = path.resolve().as_posix()
    if re.search(r"gemma-scope-[^/]*?-res[^/]*/(snapshots/[^/]+/)?embedding", text):
        return "hook_embed"  # our hook_embed is already scaled by sqrt(d_model), as these SAEs expect
    site = re.search(r"gemma-scope-[^/]*?-(res|mlp|att|transcoders)\b", text)
    layer = re.search(r"/layer_(\d+)(/|$)", text)
    if site is None or layer is None:
        return None
    return _SCOPE1_SITES[site.group(1)].format(L=layer.group(1))


def _site_from_scope2_folder(path: Path) -> tuple[str, str | None]:
    """``transcoder/layer_5_width_16k_l0_small`` -> (``blocks.5.ln2.hook_normalized``, ``blocks.5.hook_mlp_out``)."""
    site = path.parent.name.removesuffix("_all")
    layer = re.match(r"layer_(\d+)_", path.name)
    if site not in _SCOPE2_SITES or layer is None:
        raise SAEConfigError(f"{path}: params.safetensors without a config.json, and the folder is not named like "
                             "a Gemma Scope 2 release ({resid_post,mlp_out,attn_out,transcoder}/layer_N_...)")
    hook_in = _SCOPE2_SITES[site].format(L=layer.group(1))
    hook_out = hook_in.replace("ln2.hook_normalized", "hook_mlp_out") if site == "transcoder" else None
    return hook_in, hook_out


def check_fits(sae: SAE, model) -> None:
    """Raise ``SAEConfigError`` unless ``sae`` can be spliced into ``model`` (sites exist, widths match)."""
    check_site(sae.cfg, model, sae.cfg.hook_name, sae.cfg.d_in, "reads")
    if sae.cfg.is_transcoder:
        check_site(sae.cfg, model, sae.cfg.hook_name_out, sae.cfg.width_out, "writes")
