"""A small Hugging Face Hub for tests: the HTTP API huggingface_hub uses, on localhost, in a folder.

Covers create-repo, branches, repo info, validate-yaml, preupload, the LFS batch API with basic
PUT uploads, NDJSON commits (regular and LFS files, pull requests) and resolve (HEAD/GET with
X-Repo-Commit, ETag, X-Linked-Etag/Size). Private repositories need the server's token.
Run with HF_HUB_DISABLE_XET=1: the Xet storage protocol is not implemented.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit
    trees: dict[str, dict[str, dict]] = field(default_factory=dict)  # commit -> path -> file entry
    commits: int = 0


class Hub:
    def __init__(self, root: Path, token: str):
        self.root, self.token = root, token
        (root / "objects").mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[str] = []

    def store(self, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        (self.root / "objects" / oid).write_bytes(data)
        return oid

    def load(self, sha256: str) -> bytes:
        return (self.root / "objects" / sha256).read_bytes()


class Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    # -- plumbing --------------------------------------------------------------------------
    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data, headers: dict | None = None):
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str):
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or ((repo.private or write) and not self._authorized()):
            self._error(401 if not self._authorized() else 404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        return repo

    def _commit(self, repo: Repo, revision: str) -> str | None:
        revision = unquote(revision)
        commit = repo.branches.get(revision) or (revision if revision in repo.trees else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Revision {revision} not found")
        return commit

    @property
    def base(self) -> str:
        return f"http://{self.headers['Host']}"

    # -- routes ----------------------------------------------------------------------------
    def do_HEAD(self):
        self._route("HEAD")

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def _route(self, method: str):
        url = urlparse(self.path)
        self.hub.requests.append(f"{method} {url.path}")
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", lambda: self._json(200, {"errors": [], "warnings": []})),
            ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", self.create_branch),
            ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", self.repo_info),
            ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
            ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", self.commit),
            ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
        ]
        self.body = self._body() if method in ("POST", "PUT") else b""  # always drained: keep-alive
        with self.hub.lock:
            for m, pattern, fn in routes:
                match = re.fullmatch(pattern, url.path)
                if m == method and match:
                    self.query = parse_qs(url.query)
                    return fn(**{k: v for k, v in match.groupdict().items() if v is not None})
            self._error(404, "NotFound", f"no route for {method} {url.path}")

    def create_repo(self):
        data = json.loads(self.body)
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials")
        repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
        url = f"{self.base}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        private = data.get("visibility") == "private" or bool(data.get("private"))
        repo = self.hub.repos[repo_id] = Repo(private)
        first = hashlib.sha1(repo_id.encode()).hexdigest()
        repo.trees[first], repo.branches["main"] = {}, first
        self._json(200, {"url": url, "name": repo_id})

    def create_branch(self, repo, branch):
        r = self._repo(repo, write=True)
        if r is None:
            return
        if branch in r.branches:
            return self._error(409, "Conflict", "Reference already exists")
        r.branches[branch] = r.branches["main"]
        self._json(200, {})

    def repo_info(self, repo, rev="main"):
        r = self._repo(repo)
        if r is None or (commit := self._commit(r, rev)) is None:
            return
        siblings = [{"rfilename": p} for p in sorted(r.trees[commit])]
        self._json(200, {"id": repo, "sha": commit, "private": r.private, "siblings": siblings})

    def preupload(self, repo, rev):
        r = self._repo(repo, write=True)
        if r is None or (commit := self._commit(r, rev)) is None:
            return
        files = []
        for f in json.loads(self.body)["files"]:
            existing = r.trees[commit].get(f["path"])
            lfs = f["path"].endswith(".safetensors")
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": existing["oid"] if existing else None})
        self._json(200, {"files": files})

    def lfs_batch(self, repo):
        if self._repo(repo, write=True) is None:
            return
        objects = []
        for obj in json.loads(self.body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if not (self.hub.root / "objects" / obj["oid"]).exists():
                entry["actions"] = {"upload": {"href": f"{self.base}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects})

    def lfs_upload(self, oid):
        data = self.body
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "BadRequest", "sha256 mismatch")
        self.hub.store(data)
        self._send(200)

    def commit(self, repo, rev):
        r = self._repo(repo, write=True)
        if r is None or (parent := self._commit(r, rev)) is None:
            return
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        tree = dict(r.trees[parent])
        for item in lines[1:]:
            v = item["value"]
            if item["key"] == "file":
                data = base64.b64decode(v["content"])
                tree[v["path"]] = {"oid": git_oid(data), "sha256": self.hub.store(data), "size": len(data),
                                   "lfs": False}
            elif item["key"] == "lfsFile":
                if not (self.hub.root / "objects" / v["oid"]).exists():
                    return self._error(400, "BadRequest", f"LFS object {v['oid']} was not uploaded")
                tree[v["path"]] = {"oid": v["oid"], "sha256": v["oid"], "size": v["size"], "lfs": True}
            elif item["key"] in ("deletedFile", "deletedFolder"):
                tree.pop(v["path"], None)
        commit = hashlib.sha1(json.dumps([parent, lines], sort_keys=True).encode()).hexdigest()
        r.trees[commit] = tree
        r.commits += 1
        if self.query.get("create_pr"):
            branch = f"refs/pr/{sum(b.startswith('refs/pr/') for b in r.branches) + 1}"
            r.branches[branch] = commit
            return self._json(200, {"commitUrl": f"{self.base}/{repo}/commit/{commit}", "commitOid": commit,
                                    "pullRequestUrl": f"{self.base}/{repo}/discussions/{branch.rsplit('/', 1)[1]}"})
        r.branches[unquote(rev)] = commit
        self._json(200, {"commitUrl": f"{self.base}/{repo}/commit/{commit}", "commitOid": commit})

    def resolve(self, repo, rev, path):
        r = self._repo(repo)
        if r is None or (commit := self._commit(r, rev)) is None:
            return
        entry = r.trees[commit].get(unquote(path))
        if entry is None:
            return self._error(404, "EntryNotFound", f"{path} not found")
        headers = {"X-Repo-Commit": commit, "ETag": f'"{entry["oid"]}"', "Content-Type": "application/octet-stream"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        head = self.command == "HEAD"
        body = b"" if head else self.hub.load(entry["sha256"])
        if head:
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(entry["size"]))
            self.end_headers()
            return
        self._send(200, body, headers)


def serve(root: Path, token: str) -> tuple[ThreadingHTTPServer, Hub]:
    """Starts the hub on a free localhost port in a daemon thread."""
    hub = Hub(root, token)
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hub
