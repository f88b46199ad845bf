"""Model ids: Hugging Face Hub repositories and Kaggle handles, resolved to local folders.

Every loader that takes a path also takes an id, through this module:

    resolve_model("google/gemma-2-2b")           # -> the snapshot folder in the local Hub cache
    resolve_model("google/gemma-2/transformers/gemma-2-2b")  # a Kaggle handle, through kagglehub
    resolve_sae("google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")

The order is always: an existing local file or folder wins; then ``"tiny"`` (the bundled model);
then a preset name, which has no weights and says where they are; then a Kaggle handle
(``owner/model/framework/variation[/version]``); then a Hub id (``owner/name``).

Hub ids go through ``huggingface_hub``, the ecosystem's own client, so its cache is shared with
transformers and SAELens. The local cache is tried first, without touching the network: a model
downloaded once loads offline. Only the files a loader needs are fetched (config, safetensors
weights, tokenizer), with huggingface_hub's progress bar. ``HF_HOME`` / ``HF_HUB_CACHE``,
``HF_TOKEN``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` are read when an id is resolved, not when
Python started, so setting them in a notebook cell works.

Imports nothing heavy at module level (no torch); ``huggingface_hub`` is imported when an id is
resolved. Used by loading, the tokenizer, the SAE loader, the notebooks helper and the CLI.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gemma_lab import bundled

#: Files a model folder needs: config, safetensors weights (single or sharded), tokenizer.
MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
               "model.safetensors.index.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"]
#: What ``load_tokenizer`` needs (config.json tells the chat format).
TOKENIZER_FILES = ["config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json"]

#: Where the weights of each preset architecture are published (the pretrained release).
PRESET_IDS = {
    "gemma-2b": "google/gemma-2b", "gemma-7b": "google/gemma-7b",
    "gemma2-2b": "google/gemma-2-2b", "gemma2-9b": "google/gemma-2-9b", "gemma2-27b": "google/gemma-2-27b",
    "gemma3-270m": "google/gemma-3-270m", "gemma3-1b": "google/gemma-3-1b-pt", "gemma3-4b": "google/gemma-3-4b-pt",
    "gemma3-12b": "google/gemma-3-12b-pt", "gemma3-27b": "google/gemma-3-27b-pt",
    "gemma4-e2b": "google/gemma-4-E2B", "gemma4-e4b": "google/gemma-4-E4B", "gemma4-31b": "google/gemma-4-31B",
    "gemma4-26b-a4b": "google/gemma-4-26B-A4B",
    "gemma3n-e2b": "google/gemma-3n-E2B", "gemma3n-e4b": "google/gemma-3n-E4B",
}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_KAGGLE_HANDLE = re.compile(r"[\w-]+/[\w.-]+/[\w-]+/[\w.-]+(/\d+)?")
_HUB_SITE = "https://huggingface.co"


class HubError(OSError):
    """An id that cannot be resolved; the message says why and what to do."""


def is_hub_id(name: object) -> bool:
    """True for ``owner/name`` (a Hugging Face Hub repository id) that is not an existing local path."""
    return isinstance(name, str) and bool(_HUB_ID.fullmatch(name)) and not Path(name).exists()


def is_kaggle_handle(name: object) -> bool:
    """True for ``owner/model/framework/variation[/version]`` that is not an existing local path."""
    return isinstance(name, str) and bool(_KAGGLE_HANDLE.fullmatch(name)) and not Path(name).exists()


def resolve_model(name: str | os.PathLike, *, tokenizer_only: bool = False) -> Path:
    """The local folder (or file) for ``name``: a path, ``"tiny"``, a Hub id or a Kaggle handle.

    tokenizer_only: fetch only the tokenizer files of a Hub id (``load_tokenizer``), not the weights.
    A path that exists is returned as it is, even if it looks like an id.
    """
    if not isinstance(name, str):
        return Path(name)
    if Path(name).exists():
        return Path(name)
    if bundled.is_tiny_name(name):
        return bundled.tiny_model_dir()
    if name in PRESET_IDS or name.startswith("test-gemma"):
        where = (f"; its published weights are the Hugging Face id {PRESET_IDS[name]!r}" if name in PRESET_IDS
                 else "; it has no published weights (a small size for tests: GemmaConfig.from_preset + init_weights)")
        raise HubError(f"{name!r} is a preset, an architecture without weights, not a downloadable model{where}")
    if is_kaggle_handle(name):
        return _kaggle(name)
    if is_hub_id(name):
        if tokenizer_only:
            return hub_snapshot(name, TOKENIZER_FILES, needs=_has_tokenizer)
        return hub_snapshot(name, MODEL_FILES, needs=_model_needs)
    raise FileNotFoundError(f"{name}: no such checkpoint file or folder, and not a model id (a Hugging Face id such as "
                            f"google/gemma-2-2b, a Kaggle handle such as google/gemma-2/transformers/gemma-2-2b, "
                            f"or 'tiny')")


def resolve_sae(release: str, sae_id: str) -> Path:
    """The local folder of one SAE in a release on the Hub: ``sae_id`` is its folder in the repository
    (``layer_12/width_16k/average_l0_82`` in ``google/gemma-scope-2b-pt-res``)."""
    sae_id = sae_id.strip("/")
    folder = hub_snapshot(release, [f"{sae_id}/*"], needs=lambda snapshot: (snapshot / sae_id).is_dir(),
                          lacking=f"no folder {sae_id!r} (check the SAE id against the release's files)")
    return folder / sae_id


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSettings:
    """What huggingface_hub is told, read from the environment now (it reads its own at import)."""

    cache_dir: Path
    endpoint: str | None
    offline: bool
    token: str | None


def hub_settings() -> HubSettings:
    from huggingface_hub import constants, get_token

    env = os.environ
    if env.get("HF_HUB_CACHE"):
        cache = Path(env["HF_HUB_CACHE"])
    elif env.get("HF_HOME"):
        cache = Path(env["HF_HOME"]) / "hub"
    else:
        cache = Path(constants.HF_HUB_CACHE)
    offline_env = env.get("HF_HUB_OFFLINE", env.get("TRANSFORMERS_OFFLINE"))
    offline = offline_env.strip().upper() in ("1", "ON", "YES", "TRUE") if offline_env is not None \
        else constants.HF_HUB_OFFLINE
    return HubSettings(cache_dir=cache.expanduser(), endpoint=(env.get("HF_ENDPOINT") or "").rstrip("/") or None,
                       offline=offline, token=get_token())


def hub_snapshot(repo_id: str, files: list[str], needs=None, lacking: str = "") -> Path:
    """The snapshot folder of ``repo_id`` holding ``files`` (patterns): from the cache if it is
    there (``needs(folder)`` says whether what is cached is enough), else downloaded.
    ``lacking``: what the error says the repository has when even the download is not enough."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    settings = hub_settings()
    common = {"cache_dir": settings.cache_dir, "allow_patterns": files}
    try:  # the cache first, with no network at all
        cached = Path(snapshot_download(repo_id, local_files_only=True, **common))
        if needs is None or needs(cached):
            return cached
    except LocalEntryNotFoundError:  # not cached, or cached incompletely
        pass
    if settings.offline:
        raise HubError(f"{repo_id} is not in the local Hugging Face cache ({settings.cache_dir}) and HF_HUB_OFFLINE "
                       f"is set, so it cannot be downloaded: run `gemma-lab download {repo_id}` on a machine "
                       "with internet (with the same HF_HOME), or unset HF_HUB_OFFLINE")
    print(f"downloading {repo_id} from the Hugging Face Hub into {settings.cache_dir}", file=sys.stderr)
    with _hub_errors(repo_id, settings):
        folder = Path(snapshot_download(repo_id, endpoint=settings.endpoint, token=settings.token, **common))
    if needs is not None and not needs(folder):
        lacking = lacking or f"not all the files gemma_lab loads ({', '.join(files)})"
        raise HubError(f"{repo_id} has {lacking}; see {_HUB_SITE}/{repo_id}/tree/main")
    return folder


def _model_needs(folder: Path) -> bool:
    """A model folder is complete with its config, its weights and a tokenizer."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return False
        weights = all((folder / shard).is_file() for shard in shards)
    else:
        weights = (folder / "model.safetensors").is_file()
    return (folder / "config.json").is_file() and weights and _has_tokenizer(folder)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()


class _hub_errors:
    """Turns huggingface_hub's errors into one message that says what to do."""

    def __init__(self, repo_id: str, settings: HubSettings) -> None:
        self.repo_id, self.settings = repo_id, settings

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None:
            return False
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)

        repo, page = self.repo_id, f"{_HUB_SITE}/{self.repo_id}"
        login = ("log in on this machine with `hf auth login` (or set HF_TOKEN to a read token from "
                 f"{_HUB_SITE}/settings/tokens)")
        if isinstance(error, GatedRepoError):
            if self.settings.token:
                raise HubError(f"{repo} is gated and the account of your Hugging Face token has not been granted "
                               f"access: open {page} while logged in to that account and accept the licence (access "
                               "is usually granted at once), then try again") from None
            raise HubError(f"{repo} is gated: accept its licence at {page} (logged in to Hugging Face), then "
                           f"{login}") from None
        if isinstance(error, RepositoryNotFoundError):
            private = "" if self.settings.token else f", or it is private and you are not logged in ({login})"
            raise HubError(f"{repo}: no such local folder, and no such model on the Hugging Face Hub{private}") from None
        if isinstance(error, RevisionNotFoundError):
            raise HubError(f"{repo}: {error}") from None
        if isinstance(error, LocalEntryNotFoundError):  # the Hub could not be reached
            cause = error.__cause__ or error
            raise HubError(f"{repo} could not be downloaded: the Hugging Face Hub ({self.settings.endpoint or _HUB_SITE}) "
                           f"could not be reached ({type(cause).__name__}) and it is not in the local cache "
                           f"({self.settings.cache_dir})") from None
        return False


@dataclass(frozen=True)
class PlannedFile:
    name: str
    size: int
    cached: bool


def download_plan(repo_id: str, files: list[str] | None = None) -> list[PlannedFile]:
    """The files of ``repo_id`` a download would fetch (``files`` patterns, default ``MODEL_FILES``),
    with their sizes and whether the cache has them, asked of the Hub without downloading anything."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.utils import filter_repo_objects

    settings = hub_settings()
    if settings.offline:
        raise HubError(f"HF_HUB_OFFLINE is set: cannot ask the Hub about {repo_id}")
    with _hub_errors(repo_id, settings):
        info = HfApi(endpoint=settings.endpoint, token=settings.token).model_info(repo_id, files_metadata=True)
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    wanted = filter_repo_objects(list(sizes), allow_patterns=files or MODEL_FILES)
    return [PlannedFile(name, sizes[name], isinstance(try_to_load_from_cache(
        repo_id, name, cache_dir=settings.cache_dir, revision=info.sha), str)) for name in wanted]


def fetch_file(repo_id: str, filename: str) -> Path:
    """One file of ``repo_id`` (e.g. its config.json), from the cache or downloaded."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    settings = hub_settings()
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=settings.cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        if settings.offline:
            raise HubError(f"{repo_id}/{filename} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                           "is set") from None
    with _hub_errors(repo_id, settings):
        return Path(hf_hub_download(repo_id, filename, cache_dir=settings.cache_dir, endpoint=settings.endpoint,
                                    token=settings.token))


# ---------------------------------------------------------------------------------------------
# Kaggle
# ---------------------------------------------------------------------------------------------


def _kaggle(handle: str) -> Path:
    try:
        import kagglehub
    except ModuleNotFoundError:
        raise HubError(f"{handle} is a Kaggle handle, which needs the kagglehub package: pip install kagglehub "
                       "(then log in with kagglehub.login() or set KAGGLE_USERNAME and KAGGLE_KEY, and accept the "
                       "model's licence on kaggle.com). The same weights are on the Hugging Face Hub, e.g. "
                       "google/gemma-2-2b") from None
    return Path(kagglehub.model_download(handle))
