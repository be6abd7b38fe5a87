"""A tiny fake Hugging Face hub on 127.0.0.1 for download tests (point HF_ENDPOINT at `server.url`).

It answers the endpoints huggingface_hub 2.x uses to list and fetch a model repository:
- GET  /api/models/{repo}/revision/{rev}[?blobs=True]  -> {"id", "sha", "siblings": [{rfilename, size, blobId, lfs}]}
- GET  /api/models/{repo}/tree/{rev}?recursive=...     -> [{"type": "file", path, size, oid, lfs: {oid, size, pointerSize}}]
- HEAD/GET /{repo}/resolve/{rev}/{path}                -> the bytes, with X-Repo-Commit, ETag (git blob id, or
  sha256 for LFS files), X-Linked-Etag / X-Linked-Size for LFS files, Content-Length, and Range support (206).
- GET any path of `urls`                               -> those bytes (a public URL off the hub), with Range support.
Faults, set per file path: `cut_once` (the next GET sends the body up to the given offset, then closes the connection),
`corrupt` (every GET serves one flipped byte), `chunk_delay_s` (slow bodies); `listing_metadata=False` leaves
sizes and hashes out of the revision listing, as a mirror might. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5")


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def etag(self, path: str) -> str:
        data = self.files[path]
        if self.is_lfs(path):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    cut_once: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    chunk_delay_s: float = 0.0
    listing_metadata: bool = True
    urls: dict[str, bytes] = field(default_factory=dict)  # plain files off the hub, by URL path
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, filename: str) -> list[str | None]:
        """The Range headers of every GET of a /resolve/ URL ending in `filename`."""
        with self.lock:
            return [r for m, p, r in self.log if m == "GET" and "/resolve/" in p and p.endswith("/" + filename)]


CHUNK = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    server_version = "fakehub/1"
    timeout = 20  # seconds a connection may stay silent

    @property
    def state(self) -> HubState:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        with self.state.lock:
            self.state.log.append((self.command, path, self.headers.get("Range")))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if api:
            repo = self._repo(api.group(1), api.group(3))
            if repo is not None:
                self._api(api.group(1), repo, api.group(2), parse_qs(url.query))
        elif path in self.state.urls:
            self._send_file(path.rsplit("/", 1)[-1], self.state.urls[path], {}, body)
        elif resolve:
            repo = self._repo(resolve.group(1), resolve.group(2))
            if repo is not None:
                self._resolve(repo, resolve.group(3), body)
        else:
            self._error(404, "RepoNotFound")

    def _repo(self, repo_id: str, revision: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
        elif revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound")
        else:
            return repo
        return None

    def _api(self, repo_id: str, repo: Repo, kind: str, query: dict) -> None:
        if kind == "revision":
            siblings = []
            for name, data in sorted(repo.files.items()):
                entry = {"rfilename": name}
                if self.state.listing_metadata and query.get("blobs", [""])[0].lower() in ("true", "1"):
                    entry.update(size=len(data), blobId=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
                    if repo.is_lfs(name):
                        entry["lfs"] = {"size": len(data), "sha256": repo.etag(name), "pointerSize": 134}
                siblings.append(entry)
            payload: object = {"id": repo_id, "sha": repo.commit, "siblings": siblings}
        else:
            payload = []
            for name, data in sorted(repo.files.items()):
                entry = {"type": "file", "path": name, "size": len(data),
                         "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                if repo.is_lfs(name):
                    entry["lfs"] = {"oid": repo.etag(name), "size": len(data), "pointerSize": 134}
                payload.append(entry)
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", repo.commit)
        self.end_headers()
        self.wfile.write(data)

    def _resolve(self, repo: Repo, name: str, body: bool) -> None:
        if name not in repo.files:
            self._error(404, "EntryNotFound")
            return
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.etag(name)}"'}
        if repo.is_lfs(name):
            headers.update({"X-Linked-Etag": f'"{repo.etag(name)}"', "X-Linked-Size": str(len(repo.files[name]))})
        self._send_file(name, repo.files[name], headers, body)

    def _send_file(self, name: str, data: bytes, headers: dict[str, str], body: bool) -> None:
        if name in self.state.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self._error(416, None)
                return
        self.send_response(206 if match else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        with self.state.lock:
            cut = None if match else self.state.cut_once.pop(name, None)
        end = len(data) if cut is None else cut
        for offset in range(start, end, CHUNK):
            self.wfile.write(data[offset:min(offset + CHUNK, end)])
            if self.state.chunk_delay_s:
                time.sleep(self.state.chunk_delay_s)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True

    def _error(self, status: int, code: str | None) -> None:
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FakeHub:
    """Context manager: a threaded fake hub on a free port of 127.0.0.1."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.state = state  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
