"""A real Hub for the tests, on 127.0.0.1 only.

Downloads: olah (a Hub mirror) in offline mode serves plain git repositories from a
mirrors folder, so huggingface_hub's real download and cache code runs against it.
Uploads: olah has no write routes, so a small stdlib HTTP server in front of it
implements the Hub's public upload API (create repo, preupload, commit) by committing
into those same git repositories; every other request is passed on to olah. A push is
therefore read back through olah. The front also answers the model search
(``GET /api/models``, which olah does not serve) from the same repositories' model cards.
See docs/testing.md.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TOKEN = "hf_zoo_test_token_not_secret"
_GIT = ["git", "-c", "user.name=zoo-tests", "-c", "user.email=tests@zoo.invalid", "-c", "init.defaultBranch=main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(_GIT + list(args), cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


class Hub:
    """olah + the upload front; ``endpoint`` is what HF_ENDPOINT should be."""

    def __init__(self, root: Path):
        self.root = root
        self.mirrors = root / "mirrors"
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        self.olah_port = free_port()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.fail_with: int | None = None  # make every request answer this status (e.g. 500)
        #: what the Hub counts and a git repo cannot say, per repo id: {"downloads": N, "likes": N}
        self.stats: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()
        self._olah = None
        self._server = None

    # ---- repos -----------------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def create_repo(self, repo_id: str) -> Path:
        repo = self.repo_dir(repo_id)
        if not (repo / ".git").exists():
            repo.mkdir(parents=True, exist_ok=True)
            git(repo, "init", "-q")
            (repo / ".gitattributes").write_text("*.safetensors binary\n")
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", "initial commit")
        return repo

    def publish(self, folder: Path, repo_id: str, message: str = "add model") -> str:
        """Commit a folder's files into a repo (as a model author would); returns the commit sha."""
        repo = self.create_repo(repo_id)
        for f in Path(folder).iterdir():
            if f.is_file():
                shutil.copy(f, repo / f.name)
        with self.lock:
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", message)
            return git(repo, "rev-parse", "HEAD")

    # ---- servers ---------------------------------------------------------------------
    def start(self) -> "Hub":
        cfg = self.root / "olah.toml"
        cfg.write_text(f"""[basic]
host = "127.0.0.1"
port = {self.olah_port}
repos-path = "{self.root / 'olah-cache'}"
mirrors-path = ["{self.mirrors}"]
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{self.port}"
mirror-lfs-netloc = "127.0.0.1:{self.port}"
[accessibility]
offline = true
""")
        olah_cwd = self.root / "olah-run"
        olah_cwd.mkdir(exist_ok=True)
        exe = shutil.which("olah-cli") or str(Path(os.sys.executable).parent / "olah-cli")
        self._olah = subprocess.Popen([exe, "-c", str(cfg)], cwd=olah_cwd, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        hub = self

        class Handler(_Front):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.olah_port), timeout=1):
                    return self
            except OSError:
                if self._olah.poll() is not None:
                    raise RuntimeError("olah-cli exited at start")
                time.sleep(0.2)
        raise RuntimeError("olah did not start within 60 s")

    def stop_front(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def stop(self) -> None:
        self.stop_front()
        if self._olah:
            self._olah.terminate()
            self._olah.wait(10)


class _Front(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # ---- helpers ---------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
        body = b"" if payload is None else (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if payload is not None and not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._body()
        self._send(401, {"error": "Invalid credentials in Authorization header"},
                   {"X-Error-Code": "Unauthorized"})
        return False

    def _proxy(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.hub.olah_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}}
        conn.request(self.command, self.path, body=self._body() or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            # a HEAD answer's Content-Length is the file's size: pass it on; otherwise we re-frame the body
            if k.lower() not in {"transfer-encoding", "connection"} and (
                    k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    # ---- routes ----------------------------------------------------------------------
    def _route(self) -> None:
        if self.hub.fail_with:
            self._body()
            return self._send(self.hub.fail_with, {"error": "the test hub was told to fail"})
        path = self.path.split("?")[0]
        if self.command == "POST" and path == "/api/repos/create":
            if not self._authorized():
                return
            req = json.loads(self._body() or b"{}")
            repo_id = f"{req.get('organization') or 'user'}/{req['name']}"
            existed = (self.hub.repo_dir(repo_id) / ".git").exists()
            with self.hub.lock:
                self.hub.create_repo(repo_id)
            return self._send(409 if existed else 200, {"url": f"{self.hub.endpoint}/{repo_id}",
                                                        "error": "already exists" if existed else None})
        if self.command == "POST" and path == "/api/validate-yaml":
            self._body()
            return self._send(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if self.command == "POST" and m:
            if not self._authorized():
                return
            files = json.loads(self._body())["files"]
            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                               "oid": None} for f in files]})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if self.command == "POST" and m:
            if not self._authorized():
                return
            return self._commit(m.group(1), self._body())
        if self.command == "GET" and path == "/api/models":
            return self._send(200, self._models(parse_qs(urlsplit(self.path).query)))
        if path == "/api/agent-harnesses":
            return self._send(404, {"error": "not here"})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m and self.command == "GET" and (self.hub.repo_dir(m.group(1)) / ".git").exists():
            try:  # olah answers from its cache a commit the repo no longer has (history rewritten); the Hub:
                git(self.hub.repo_dir(m.group(1)), "cat-file", "-e", f"{m.group(2)}^{{commit}}")
            except subprocess.CalledProcessError:
                return self._send(404, {"error": f"Invalid rev id: {m.group(2)}"},
                                  {"X-Error-Code": "RevisionNotFound"})
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and self.command == "HEAD":
            repo = self.hub.repo_dir(m.group(1))
            if (repo / ".git").exists():
                try:
                    git(repo, "cat-file", "-e", f"{m.group(2)}:{m.group(3)}")
                except subprocess.CalledProcessError:
                    # olah answers 401 for a missing file; the Hub answers this
                    return self._send(404, None, {"X-Error-Code": "EntryNotFound"})
        return self._proxy()

    # ---- the model search: GET /api/models -------------------------------------------
    #: what the Hub answers for each model when neither ``expand`` nor ``full`` says otherwise
    _DEFAULT_FIELDS = ("_id", "id", "modelId", "likes", "trendingScore", "private", "downloads", "tags",
                       "pipeline_tag", "library_name", "createdAt")
    _SORT_KEYS = frozenset({"downloads", "likes", "createdAt", "lastModified", "trendingScore"})

    def _models(self, query: dict[str, list[str]]) -> list[dict]:
        """``list_models`` as the Hub answers it, over the repos this hub holds: ``filter`` (every one must be
        a tag), ``search`` (part of the id), ``author``, ``sort`` + ``direction`` (descending unless 1),
        ``limit``, and the fields of ``expand`` / ``full``. One page: no ``Link`` header to a next one."""

        def one(key: str) -> str | None:
            return (query.get(key) or [None])[0]

        found = [info for info in map(self._model_info, sorted((self.hub.mirrors / "models").glob("*/*")))
                 if info is not None]
        found = [m for m in found if all(f in m["tags"] for f in query.get("filter", []))]
        if one("search"):
            found = [m for m in found if one("search").lower() in m["id"].lower()]
        if one("author"):
            found = [m for m in found if m["id"].split("/")[0] == one("author")]
        key = one("sort")
        if key in self._SORT_KEYS:
            found.sort(key=lambda m: m["id"])  # ties in a fixed order
            found.sort(key=lambda m: m[key], reverse=one("direction") in (None, "-1"))
        if one("limit"):
            found = found[:int(one("limit"))]
        expand = query.get("expand") or query.get("expand[]")
        if expand:
            fields = {"_id", "id", *expand}
        else:
            fields = set(self._DEFAULT_FIELDS) | ({"sha", "lastModified", "siblings"} if one("full") else set())
        return [{k: v for k, v in m.items() if k in fields} for m in found]

    def _model_info(self, repo: Path) -> dict | None:
        """One repo as the Hub describes it in a search; None for a repo with nothing beyond its first commit."""
        if not (repo / ".git").exists():
            return None
        with self.hub.lock:
            if int(git(repo, "rev-list", "--count", "HEAD")) < 2:
                return None
            sha = git(repo, "rev-parse", "HEAD")
            times = git(repo, "log", "--format=%ct", "HEAD").split()  # newest first
            files = git(repo, "ls-tree", "-r", "--name-only", "HEAD").split("\n")
            card = git(repo, "show", "HEAD:README.md") if "README.md" in files else ""
        repo_id = f"{repo.parent.name}/{repo.name}"
        meta = _front_matter(card)
        stats = self.hub.stats.get(repo_id, {})

        def when(t: str) -> str:  # as the Hub writes dates
            return datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")

        return {"_id": sha[:24], "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                "tags": _tags(meta, files), "downloads": stats.get("downloads", 0), "likes": stats.get("likes", 0),
                "trendingScore": 0, "createdAt": when(times[-1]), "lastModified": when(times[0]),
                "library_name": meta.get("library_name"), "pipeline_tag": meta.get("pipeline_tag"),
                "siblings": [{"rfilename": f} for f in files]}

    def _commit(self, repo_id: str, body: bytes) -> None:
        repo = self.hub.repo_dir(repo_id)
        if not (repo / ".git").exists():
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        summary = "upload"
        with self.hub.lock:
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    summary = value.get("summary") or summary
                elif key == "file":
                    target = repo / value["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    (repo / value["path"]).unlink(missing_ok=True)
                else:
                    return self._send(400, {"error": f"the test hub does not take {key!r} lines"})
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "--allow-empty", "-m", summary)
            sha = git(repo, "rev-parse", "HEAD")
        self._send(200, {"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None})

    do_GET = do_HEAD = do_POST = do_PUT = _route


def _front_matter(card: str) -> dict:
    """The YAML metadata at the top of a model card (README.md), {} when it has none."""
    import yaml

    m = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", card, re.S)
    meta = yaml.safe_load(m.group(1)) if m else None
    return meta if isinstance(meta, dict) else {}


def _tags(meta: dict, files: list[str]) -> list[str]:
    """A model's tags, computed as the Hub does from its card's metadata: ``tags``, ``library_name``, and the
    model tree's ``base_model:ORG/NAME`` and ``base_model:RELATION:ORG/NAME`` for each base model.

    The relation is the card's ``base_model_relation`` when it gives one. Otherwise the Hub infers it
    (docs/hub/model-cards.md, "Specifying a base model": "The Hub will infer the type of relationship ...",
    the rule itself unpublished); the stand-in keeps to the simple cases: two or more base models make a
    merge, an ``adapter_config.json`` an adapter, a ``.gguf`` file a quantization, anything else a fine-tune.
    The Hub also tags by file formats, libraries it detects, licenses, papers; the stand-in adds only
    ``safetensors``.
    """
    tags = [str(t) for t in meta.get("tags") or []]
    if meta.get("library_name"):
        tags.append(str(meta["library_name"]))
    if any(f.endswith(".safetensors") for f in files):
        tags.append("safetensors")
    bases = meta.get("base_model") or []
    bases = [bases] if isinstance(bases, str) else [str(b) for b in bases]
    relation = meta.get("base_model_relation")
    if not relation and bases:
        relation = ("merge" if len(bases) > 1 else "adapter" if "adapter_config.json" in files
                    else "quantized" if any(f.endswith(".gguf") for f in files) else "finetune")
    for base in bases:
        tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
    return list(dict.fromkeys(tags))


def start_hub() -> Hub:
    return Hub(Path(tempfile.mkdtemp(prefix="zoo-hub-"))).start()
