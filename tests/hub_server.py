"""A small in-memory stand-in for the Hugging Face Hub HTTP API, for push/load tests without network.

It implements what the real ``huggingface_hub`` client (2.4; checked against ``hf_api.py``,
``_commit_api.py``, ``file_download.py``, ``utils/_http.py``) sends when it creates a repo, commits
files and downloads them, with the headers the client requires:

* ``GET  /api/whoami-v2``
* ``POST /api/repos/create``                     -> ``{"url": ...}``; 409 (with ``url``) if it exists
* ``POST /api/validate-yaml``                    -> parses the README front matter; 400 on bad YAML
* ``POST /api/{type}s/{repo}/preupload/{rev}``   -> every file ``"regular"`` (content comes inline in the
  commit; no LFS, no Xet), ``shouldIgnore: false``, ``oid`` = git blob sha1 of the current remote file
  (so the client skips unchanged files, as on the Hub)
* ``POST /api/{type}s/{repo}/commit/{rev}``      -> NDJSON: ``header`` / ``file`` (base64) / ``deletedFile`` /
  ``deletedFolder``; ``parentCommit`` checked (412); answers ``commitUrl`` / ``commitOid``
* ``GET  /api/{type}s/{repo}[/revision/{rev}]``  -> repo info: ``id``, ``sha``, ``siblings`` (with size and
  blobId), ``cardData`` / ``tags`` / ``library_name`` from README.md, ``private``, dates
* ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]`` -> file listing (``recursive`` honoured; one page)
* ``HEAD|GET /{repo}/resolve/{rev}/{path}`` (``/datasets/...``, ``/spaces/...`` too) -> ``ETag`` (git sha1),
  ``X-Repo-Commit``, ``Content-Length``; ``Range: bytes=a-b`` on GET
* errors as the client parses them: ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound`` (the latter with ``X-Repo-Commit``), 401 for a wrong token on writes.

Not implemented: LFS / Xet uploads, pull requests (``create_pr``), branches other than ``main`` (commits by
full sha resolve), deletion of repos, pagination (one page is returned).

Use::

    with FakeHub() as hub:
        env = hub.client_env(tmp_path / "hf_home")   # for a FRESH subprocess: constants are read at import
        subprocess.run([sys.executable, "push.py"], env=env, check=True)
        assert hub.uploaded_paths("user/repo") == {...}

or ``python tests/hub_server.py`` to serve one by hand (prints the URL and the env to set).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
TOKEN = "hf_fake_token_for_tests"
USER = "user"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]  # full snapshot: path -> content
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class FakeHub:
    """An in-memory Hub on ``127.0.0.1`` (random port), served by a thread; a context manager.

    Attributes:
        requests: ``(method, path, status)`` of every request, in order.
        uploads: ``(repo_id, path_in_repo)`` of every file the client sent in a commit.
    """

    def __init__(self, token: str = TOKEN, user: str = USER, host: str = "127.0.0.1", port: int = 0):
        self.token, self.user = token, user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.uploads: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._counter = 0
        #: a regex: requests whose path matches it are accepted and never answered (a Hub that hangs mid-push)
        self.hang: str | None = None
        self._stopping = threading.Event()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases the hung requests
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self, hf_home: str | os.PathLike, base: dict | None = None) -> dict[str, str]:
        """Environment for a fresh process whose ``huggingface_hub`` should talk to this server.

        ``huggingface_hub`` reads these at import time, so they only take effect in a new process.
        """
        return client_env(self.url, hf_home, self.token, base)

    # -- inspection (tests) ------------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self.lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            return dict(commit.files) if commit else {}

    def uploaded_paths(self, repo_id: str) -> set[str]:
        with self.lock:
            return {p for r, p in self.uploads if r == repo_id}

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, repo_type, private)
            # like the Hub: a new repo has one commit holding .gitattributes
            self._commit(repo, "main", "initial commit", "", {".gitattributes": GITATTRIBUTES}, [])
            self.repos[(repo_type, repo_id)] = repo
            return repo

    # -- internals ---------------------------------------------------------------------------------

    def _commit(self, repo: Repo, branch: str, summary: str, description: str, added: dict[str, bytes],
                deleted: list[tuple[str, bool]]) -> Commit:
        head = repo.resolve(branch)
        files = dict(head.files) if head else {}
        for path, is_folder in deleted:
            if is_folder:
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
        files.update(added)
        self._counter += 1
        oid = hashlib.sha1(f"{repo.repo_id}\0{self._counter}\0{summary}\0{sorted(files)}".encode()).hexdigest()
        commit = Commit(oid, head.oid if head else None, summary, description, files)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


def client_env(url: str, hf_home: str | os.PathLike, token: str = TOKEN, base: dict | None = None) -> dict[str, str]:
    """Environment for a fresh process whose ``huggingface_hub`` talks to the server at ``url``."""
    env = dict(os.environ if base is None else base)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_ETAG_TIMEOUT"):
        env.pop(key, None)
    env.update(
        HF_ENDPOINT=url,
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="0",
        HF_TOKEN=token,
        HF_HOME=str(hf_home),
        TRANSFORMERS_OFFLINE="0",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def _card_data(readme: bytes | None) -> dict | None:
    if not readme:
        return None
    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", readme.decode("utf-8", "replace"), re.S)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a Content-Length
    server_version = "FakeHub/1.0"

    def log_message(self, format, *args):  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict | None = None, head: bool = False, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
        with self.hub.lock:
            self.hub.requests.append((self.command, self.path, status))

    def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, err: HubError, head: bool = False) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers=headers, head=head)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            return self.rfile.read(n)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _require_auth(self) -> None:
        auth = self.headers.get("Authorization")
        if not auth:
            raise HubError(401, "You must be authenticated to access this resource.")
        if auth != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404 if repo is None else 401, "Repository not found", "RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- dispatch ----------------------------------------------------------------------------------

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _dispatch(self, head: bool = False) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if self.hub.hang and re.search(self.hub.hang, path):
            with self.hub.lock:
                self.hub.requests.append((self.command, self.path, 0))
            self.hub._stopping.wait()  # never answer; the client must give up on its own
            self.close_connection = True
            return
        try:
            body = self._body() if self.command == "POST" else b""
            with self.hub.lock:
                self._route(self.command, path, query, body, head)
        except HubError as err:
            self._error(err, head=head)
        except Exception as err:  # a bug here must show up in the client's error, not hang it
            self._error(HubError(500, f"fake hub: {type(err).__name__}: {err}"), head=head)

    def _route(self, method: str, path: str, query: dict, body: bytes, head: bool) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "GET" and path == "/api/whoami-v2":
            self._require_auth()
            return self._json(200, {"type": "user", "name": self.hub.user, "fullname": "Test User", "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:]
            if method == "GET" and not rest:
                return self._repo_info(repo_type, repo_id, "main")
            if method == "GET" and len(rest) >= 2 and rest[0] == "revision":
                return self._repo_info(repo_type, repo_id, "/".join(rest[1:]))
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                sub = "/".join(rest[2:])
                return self._tree(repo_type, repo_id, rest[1], sub, query)
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_type, repo_id, rest[1], json.loads(body or b"{}"), query)
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._create_commit(repo_type, repo_id, rest[1], body, query)
        if method in ("GET", "HEAD"):
            repo_type = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
        raise HubError(404, f"fake hub: no route for {method} {path}")

    # -- endpoints ---------------------------------------------------------------------------------

    def _create_repo(self, payload: dict) -> None:
        self._require_auth()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.hub.user
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url},
                              headers={"X-Error-Message": "You already created this model repo"})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub.create_repo(repo_id, repo_type, private)
        return self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", content, re.S)
        if match:
            try:
                data = yaml.safe_load(match.group(1))
                if data is not None and not isinstance(data, dict):
                    raise yaml.YAMLError("metadata must be a mapping")
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []},
                                  headers={"X-Error-Message": "Invalid metadata"})
        return self._json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        card = _card_data(commit.files.get("README.md"))
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)}
                         for p, d in sorted(commit.files.items())],
            "usedStorage": sum(len(d) for d in commit.files.values()),
        }
        if card is not None:
            info["cardData"] = card
            if card.get("library_name"):
                info["library_name"] = card["library_name"]
            if card.get("pipeline_tag"):
                info["pipeline_tag"] = card["pipeline_tag"]
        return self._json(200, info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, sub: str, query: dict) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"Entry not found: {sub}", "EntryNotFound")
        entries, folders = [], set()
        for p, d in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            if "/" in rel:
                segs = rel.split("/")
                for i in range(1, len(segs) if recursive else 2):
                    folders.add(prefix + "/".join(segs[:i]))
                if not recursive:
                    continue
            entries.append({"type": "file", "oid": git_blob_sha1(d), "size": len(d), "path": p})
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders)]
        return self._json(200, entries)

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict, query: dict) -> None:
        self._require_auth()
        if query.get("create_pr"):
            raise HubError(400, "fake hub: pull requests are not supported")
        repo = self._repo(repo_type, repo_id)
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = []
        for f in payload.get("files", []):
            current = commit.files.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_sha1(current) if current is not None else None})
        return self._json(200, {"files": files, "commitOid": commit.oid})

    def _create_commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict) -> None:
        self._require_auth()
        if query.get("create_pr"):
            raise HubError(400, "fake hub: pull requests are not supported")
        repo = self._repo(repo_type, repo_id)
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (the fake hub commits to existing branches only)",
                           "RevisionNotFound")
        header, added, deleted = None, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"fake hub: unsupported encoding {value.get('encoding')}")
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append((value["path"], key == "deletedFolder"))
            else:  # lfsFile: we never answer "lfs" in preupload, so the client must not send it
                raise HubError(400, f"fake hub: unsupported commit operation {key!r}")
        if header is None or not header.get("summary"):
            raise HubError(400, "fake hub: commit without a header/summary")
        head = repo.branches[revision]
        if header.get("parentCommit") and header["parentCommit"] != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        commit = self.hub._commit(repo, revision, header["summary"], header.get("description", ""), added, deleted)
        self.hub.uploads += [(repo_id, p) for p in added]
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return self._json(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                                "commitUrl": f"{self.hub.url}/{prefix}{repo_id}/commit/{commit.oid}"})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str, head: bool) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        data = commit.files.get(filename)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        ctype = "text/plain; charset=utf-8" if filename.endswith((".md", ".txt")) else "application/octet-stream"
        if filename.endswith(".json"):
            ctype = "application/json"
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
        if m and not head and (m.group(1) or m.group(2)):
            start = int(m.group(1)) if m.group(1) else max(0, len(data) - int(m.group(2)))
            end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
            if start >= len(data):
                return self._send(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], ctype, headers)
        return self._send(200, data, ctype, headers, head=head)


class SilentServer:
    """A TCP server on ``127.0.0.1`` that accepts every connection and never answers (a hung Hub endpoint).

    It reads and discards what the client sends, so the client blocks waiting for a response, not on a full
    socket buffer. ``connections`` counts the accepted connections. A context manager, like ``FakeHub``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        import socket

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self._address = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._clients: list = []
        self.connections = 0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._address
        return f"http://{host}:{port}"

    def _serve(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock, *self._clients], [], [], 0.1)
            for s in ready:
                if s is self._sock:
                    try:
                        conn, _ = self._sock.accept()
                    except OSError:
                        return
                    self._clients.append(conn)
                    self.connections += 1
                else:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:  # the client gave up
                        self._clients.remove(s)
                        s.close()

    def start(self) -> "SilentServer":
        self._thread = threading.Thread(target=self._serve, name="silent-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in [*self._clients, self._sock]:
            s.close()

    def __enter__(self) -> "SilentServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self, hf_home: str | os.PathLike, base: dict | None = None) -> dict[str, str]:
        """Environment for a fresh process whose ``huggingface_hub`` talks to this (silent) endpoint."""
        return client_env(self.url, hf_home, TOKEN, base)


if __name__ == "__main__":  # serve by hand: python tests/hub_server.py [port]
    import sys

    with FakeHub(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0) as hub:
        print(f"fake hub at {hub.url}; in the client's environment set:")
        print(f"  HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 HF_HUB_OFFLINE=0 HF_TOKEN={hub.token}")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
