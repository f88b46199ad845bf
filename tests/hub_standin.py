"""A stand-in for the Hugging Face Hub on localhost, for testing downloads without the internet.

``huggingface_hub`` is pointed at it with ``HF_ENDPOINT`` (read by ``gemma_lab.hub`` at call time).
It serves the routes ``snapshot_download`` and ``hf_hub_download`` use, from files held in memory:

* ``GET /api/models/{repo}[/revision/{rev}]``: the repository's info (commit sha, file list);
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing with sizes;
* ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: a file's metadata headers / its bytes.

A gated repository answers file requests as the Hub does (status 401 without a token, 403 with a
token whose account has not accepted the licence, an ``X-Error-Code: GatedRepo`` header either way).
``requests`` records every (method, path) served, so tests can tell a download from a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    accepted_tokens: tuple[str, ...] = ()  # tokens whose accounts accepted the licence
    sha: str = field(default="")

    def __post_init__(self) -> None:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha1(self.files[name]).digest())
        self.sha = digest.hexdigest()


class HubStandIn:
    """``with HubStandIn({"google/x": Repo({...})}) as hub: hub.url`` serves those repositories."""

    def __init__(self, repos: dict[str, Repo]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                standin._serve(self, body=True)

            def do_HEAD(self):  # noqa: N802
                standin._serve(self, body=False)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def downloads(self) -> list[str]:
        """The paths of the file bodies sent (GET on a resolve route)."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    # -- routes ---------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append((handler.command, path))
        if path.startswith("/api/models/"):
            return self._api(handler, path.removeprefix("/api/models/"), body)
        for repo_id, repo in self.repos.items():
            prefix = f"/{repo_id}/resolve/"
            if path.startswith(prefix):
                _revision, _, file = path.removeprefix(prefix).partition("/")
                return self._file(handler, repo_id, repo, file, body)
        self._error(handler, 404, "RepoNotFound", "Repository not found", body)

    def _api(self, handler, rest: str, body: bool) -> None:
        for repo_id, repo in self.repos.items():
            if rest == repo_id or rest.startswith(repo_id + "/"):
                tail = rest.removeprefix(repo_id).strip("/")
                if tail == "" or tail.startswith("revision/"):
                    info = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                            "gated": "manual" if repo.gated else False,
                            "siblings": [self._sibling(name, data) for name, data in sorted(repo.files.items())]}
                    return self._json(handler, info, body)
                if tail.startswith("tree/"):
                    under = tail.removeprefix("tree/").partition("/")[2]
                    listing = [self._entry(name, data) for name, data in sorted(repo.files.items())
                               if not under or name.startswith(under.rstrip("/") + "/")]
                    return self._json(handler, listing, body)
        self._error(handler, 404, "RepoNotFound", "Repository not found", body)

    @staticmethod
    def _sibling(name: str, data: bytes) -> dict:  # as with ?blobs=true (model_info(files_metadata=True))
        sibling = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
        if name.endswith((".safetensors", ".npz", ".model")):
            sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return sibling

    @staticmethod
    def _entry(name: str, data: bytes) -> dict:
        entry = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if name.endswith((".safetensors", ".npz", ".model")):  # stored in LFS on the Hub
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _file(self, handler, repo_id: str, repo: Repo, file: str, body: bool) -> None:
        if repo.gated:
            token = handler.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not token:
                return self._error(handler, 401, "GatedRepo", f"Access to model {repo_id} is restricted. You must "
                                   "have access to it and be authenticated to access it. Please log in.", body)
            if token not in repo.accepted_tokens:
                return self._error(handler, 403, "GatedRepo", f"Access to model {repo_id} is restricted and you are "
                                   "not in the authorized list.", body)
        if file not in repo.files:
            return self._error(handler, 404, "EntryNotFound", f"{file} does not exist", body)
        data = repo.files[file]
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", repo.sha)
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    @staticmethod
    def _json(handler, value, body: bool) -> None:
        data = json.dumps(value).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    @staticmethod
    def _error(handler, status: int, code: str, message: str, body: bool) -> None:
        data = json.dumps({"error": message}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.end_headers()
        if body:
            handler.wfile.write(data)
