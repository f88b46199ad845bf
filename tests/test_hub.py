"""Model ids: load_pretrained, load_tokenizer, load_sae, GEMMA_LAB_MODEL and the CLI take Hub ids.

Nothing here touches the internet. The cache tests build the Hugging Face cache layout on the spot
(``models--owner--name/{refs,blobs,snapshots}``) and load from it with ``HF_HUB_OFFLINE=1`` and an
endpoint nobody listens on. The download tests point ``HF_ENDPOINT`` at ``hub_standin.HubStandIn``,
a local HTTP server answering the Hub's API routes, and count what it served.
"""

from __future__ import annotations

import hashlib
import io
import sys
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_standin import HubStandIn, Repo

from gemma_lab import cli, hub
from gemma_lab.bundled import tiny_model_dir
from gemma_lab.loading import load_pretrained
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.sae import load_sae
from gemma_lab.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny forward passes; the machine may be busy

TINY_FILES = ("config.json", "model.safetensors", "tokenizer.model")
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: any request would fail


def tiny_repo_files() -> dict[str, bytes]:
    files = {name: (tiny_model_dir() / name).read_bytes() for name in TINY_FILES}
    files["README.md"] = b"# a model card\n"
    files["gemma-toy.gguf"] = b"GGUF" + bytes(64)  # another format the loader must not fetch
    return files


def write_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], sha: str = "a" * 40) -> Path:
    """The layout huggingface_hub keeps: content-addressed blobs, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob.name))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A private HF_HOME, no token, no network; tests opt into offline mode or a stand-in endpoint."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return tmp_path / "hf" / "hub"


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained("tiny")


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# ---- the local cache, offline ----------------------------------------------------------------


def test_ids_load_from_the_hub_cache_offline(hf_env, monkeypatch, tiny):
    write_hub_cache(hf_env, "google/gemma-toy", tiny_repo_files())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same_weights(load_pretrained("google/gemma-toy"), tiny)
    text = "The cat sat on the mat."
    assert load_tokenizer("google/gemma-toy").encode(text) == load_tokenizer("tiny").encode(text)

    monkeypatch.setenv("GEMMA_LAB_MODEL", "google/gemma-toy")
    model, tokenizer = load_lesson_model()
    assert same_weights(model, tiny) and tokenizer.encode(text) == load_tokenizer("tiny").encode(text)
    assert describe(model).endswith("from google/gemma-toy")

    code, from_id, _ = run_cli("generate", "--model", "google/gemma-toy", "Once upon", "--max-new-tokens", "4")
    assert code == 0
    assert from_id == run_cli("generate", "--model", "tiny", "Once upon", "--max-new-tokens", "4")[1]


def test_hf_hub_cache_and_a_local_folder_that_shadows_an_id(hf_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # wins over HF_HOME, as in huggingface_hub
    write_hub_cache(tmp_path / "elsewhere", "google/gemma-toy", tiny_repo_files())
    assert hub.resolve_model("google/gemma-toy").parents[1] == tmp_path / "elsewhere" / "models--google--gemma-toy"

    monkeypatch.chdir(tmp_path)
    local = tmp_path / "google" / "gemma-toy"  # a folder whose relative path reads like the id
    local.mkdir(parents=True)
    assert hub.resolve_model("google/gemma-toy") == Path("google/gemma-toy")  # the local folder wins
    with pytest.raises(FileNotFoundError, match="google/gemma-toy: no checkpoint found"):
        load_pretrained("google/gemma-toy")  # ... and its (empty) contents are what is loaded


def test_offline_without_the_model_cached_says_how_to_get_it(hf_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"not in the local Hugging Face cache .* HF_HUB_OFFLINE is set.*"
                                           r"gemma-lab download google/gemma-2-2b"):
        load_pretrained("google/gemma-2-2b")


def test_an_incomplete_cache_is_completed_and_offline_is_refused(hf_env, monkeypatch):
    files = tiny_repo_files()
    write_hub_cache(hf_env, "google/gemma-toy", {"config.json": files["config.json"]})  # e.g. after `info`
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="not in the local Hugging Face cache"):
        load_pretrained("google/gemma-toy")


def test_presets_names_and_paths_that_are_not_ids(hf_env):
    with pytest.raises(hub.HubError, match=r"'gemma2-2b' is a preset.*'google/gemma-2-2b'"):
        load_pretrained("gemma2-2b")
    with pytest.raises(hub.HubError, match="'test-gemma3' is a preset.*no published weights"):
        load_tokenizer("test-gemma3")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or folder, and not a model id"):
        load_pretrained("/nowhere/gemma-2-2b")


def test_kaggle_handles_need_kagglehub(hf_env, monkeypatch, tmp_path, tiny):
    handle = "google/gemma-2/transformers/gemma-2-2b"
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # not installed
    with pytest.raises(hub.HubError, match="needs the kagglehub package: pip install kagglehub"):
        load_pretrained(handle)

    asked = []

    def model_download(name):
        asked.append(name)
        return str(tiny_model_dir())

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(model_download=model_download))
    assert same_weights(load_pretrained(handle + "/1"), tiny)
    assert asked == [handle + "/1"]


# ---- downloads, from a local stand-in for the Hub --------------------------------------------


def test_an_id_is_downloaded_once_then_loads_from_the_cache(hf_env, monkeypatch, capsys, tiny):
    with HubStandIn({"google/gemma-toy": Repo(tiny_repo_files())}) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        model = load_pretrained("google/gemma-toy")
        assert "downloading google/gemma-toy from the Hugging Face Hub" in capsys.readouterr().err
        fetched = sorted(path.rsplit("/", 1)[1] for path in standin.downloads())
        assert fetched == sorted(TINY_FILES)  # no README, no gguf
        assert same_weights(model, tiny)

        served = len(standin.requests)
        hub.resolve_model("google/gemma-toy")
        load_tokenizer("google/gemma-toy")
        assert len(standin.requests) == served  # the cache answered, without asking the Hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same_weights(load_pretrained("google/gemma-toy"), model)


def test_the_tokenizer_alone_fetches_no_weights(hf_env, monkeypatch):
    with HubStandIn({"google/gemma-toy": Repo(tiny_repo_files())}) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        assert load_tokenizer("google/gemma-toy").vocab_size == load_tokenizer("tiny").vocab_size
        assert sorted(p.rsplit("/", 1)[1] for p in standin.downloads()) == ["config.json", "tokenizer.model"]
        hub.resolve_model("google/gemma-toy")  # now the weights, into the same snapshot
        assert any(p.endswith("model.safetensors") for p in standin.downloads())


def test_gated_repositories_say_how_to_get_access(hf_env, monkeypatch, tiny):
    gated = Repo(tiny_repo_files(), gated=True, accepted_tokens=("hf_accepted",))
    with HubStandIn({"google/gemma-gated": gated}) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        with pytest.raises(hub.HubError) as no_token:
            load_pretrained("google/gemma-gated")
        message = str(no_token.value)
        assert "gated" in message and "https://huggingface.co/google/gemma-gated" in message
        assert "hf auth login" in message and "HF_TOKEN" in message

        monkeypatch.setenv("HF_TOKEN", "hf_not_accepted")
        with pytest.raises(hub.HubError, match="has not been granted access: open https://huggingface.co/google/"
                                               "gemma-gated while logged in"):
            load_pretrained("google/gemma-gated")

        monkeypatch.setenv("HF_TOKEN", "hf_accepted")  # read when the id is resolved, not at import
        assert same_weights(load_pretrained("google/gemma-gated"), tiny)
        code, _, err = run_cli("generate", "--model", "google/no-such-model", "hi")
        assert code == 1 and "google/no-such-model: no such local folder, and no such model on the Hugging Face Hub" in err


def gemma_scope_1_params(d_in: int, d_sae: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez(buffer, W_enc=rng.standard_normal((d_in, d_sae), dtype=np.float32),
             W_dec=rng.standard_normal((d_sae, d_in), dtype=np.float32), b_enc=np.zeros(d_sae, np.float32),
             b_dec=np.zeros(d_in, np.float32), threshold=np.full(d_sae, 0.1, np.float32))
    return buffer.getvalue()


def test_sae_releases_load_by_id_and_folder(hf_env, monkeypatch):
    release = "google/gemma-scope-2b-pt-res"
    files = {"layer_3/width_16k/average_l0_82/params.npz": gemma_scope_1_params(16, 32, 0),
             "layer_5/width_16k/average_l0_82/params.npz": gemma_scope_1_params(16, 32, 1),
             "README.md": b"Gemma Scope"}
    with HubStandIn({release: Repo(files)}) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        sae = load_sae(release, "layer_3/width_16k/average_l0_82")
        assert [p.split("/resolve/")[1].split("/", 1)[1] for p in standin.downloads()] == [
            "layer_3/width_16k/average_l0_82/params.npz"]  # one SAE, not the release
        assert sae.cfg.hook_name == "blocks.3.hook_resid_post"  # read off the path in the cache
        with np.load(io.BytesIO(files["layer_3/width_16k/average_l0_82/params.npz"])) as data:
            assert torch.equal(sae.W_enc, torch.from_numpy(data["W_enc"]))
        again = load_sae(release, sae_id="layer_3/width_16k/average_l0_82", hook_name="blocks.3.hook_resid_post")
        assert torch.equal(again.W_dec, sae.W_dec)
        in_one = load_sae(f"{release}/layer_3/width_16k/average_l0_82")  # as GEMMA_LAB_SAE may hold it
        assert torch.equal(in_one.W_enc, sae.W_enc)
        with pytest.raises(ValueError, match="is a release id: say which SAE in it"):
            load_sae(release)
        with pytest.raises(hub.HubError, match="has no folder 'layer_9/width_16k'"):
            load_sae(release, "layer_9/width_16k")


# ---- gemma-lab download -----------------------------------------------------------------------


def test_download_shows_the_size_and_memory_first(hf_env, monkeypatch):
    from gemma_lab.config import GemmaConfig

    from gemma_lab.placement import quantized_weight_bytes

    files = tiny_repo_files()
    config = GemmaConfig.from_hf(tiny_model_dir() / "config.json")
    n_params = config.n_params()
    weights_and_tokenizer = sum(len(files[name]) for name in TINY_FILES)
    with HubStandIn({"google/gemma-toy": Repo(files)}) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        code, out, _ = run_cli("download", "google/gemma-toy", "--dry-run")
        assert code == 0, out
        assert f"files     3, {cli._size(weights_and_tokenizer)} in all; {cli._size(weights_and_tokenizer)} to download" in out
        assert f"parameters {n_params:,}" in out
        int8, int4 = (quantized_weight_bytes(config, kind) for kind in ("int8", "int4"))
        assert (f"fp32 {cli._size(4 * n_params)}, bf16 {cli._size(2 * n_params)}, int8 {cli._size(int8)}, "
                f"int4 {cli._size(int4)}") in out
        assert [p.rsplit("/", 1)[1] for p in standin.downloads()] == ["config.json"]  # sizes came from the API

        code, out, _ = run_cli("download", "google/gemma-toy")
        assert code == 0 and "ready: " in out and "GEMMA_LAB_MODEL=google/gemma-toy" in out
        assert sorted(p.rsplit("/", 1)[1] for p in standin.downloads()) == sorted(TINY_FILES)  # config.json once
        code, out, _ = run_cli("download", "google/gemma-toy", "--dry-run")
        assert f"0 B to download ({cli._size(weights_and_tokenizer)} already in {hf_env})" in out

        code, out, _ = run_cli("info", "google/gemma-toy")
        assert code == 0 and f"{n_params:,}" in out
    code, _, err = run_cli("download", "gemma3-1b")
    assert code == 1 and "'gemma3-1b' is a preset" in err and "google/gemma-3-1b-pt" in err


def test_configured_hub_settings_are_read_at_call_time(hf_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-home"))
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    settings = hub.hub_settings()
    assert settings == hub.HubSettings(cache_dir=tmp_path / "other-home" / "hub", endpoint=UNREACHABLE,
                                       offline=True, token="hf_abc")
    from gemma_lab.config import PRESETS

    assert set(hub.PRESET_IDS) == {name for name in PRESETS if not name.startswith("test-")}  # each says where
