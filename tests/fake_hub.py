"""A loopback stand-in for the Hugging Face Hub's dataset endpoints, enough for `datasets.load_dataset("owner/name",
streaming=True)` to resolve and read a repository folder: repo info, tree listings, paths-info and file downloads
(with byte ranges). Start it, then run the code under test in a process whose HF_ENDPOINT is `server.url`
(huggingface_hub reads it at import)."""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from pathlib import Path
from urllib.parse import parse_qs

REVISION = "0" * 40


class FakeHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = repos
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.requests: list[str] = []

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args) -> None:
        pass

    def repo(self, name: str) -> Path | None:
        return self.hub.repos.get(name)

    def files(self, root: Path) -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def entry(self, root: Path, path: str) -> dict:
        full = root / path
        if full.is_dir():
            return {"type": "directory", "path": path, "oid": REVISION}
        return {"type": "file", "path": path, "size": full.stat().st_size,
                "oid": hashlib.sha1(full.read_bytes()).hexdigest()}

    def send_json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def not_found(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.serve_file(head=True)

    def do_GET(self) -> None:
        self.hub.requests.append(self.path)
        path = self.path.split("?")[0]
        info = re.match(r"^/api/datasets/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
        tree = re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/[^/]+/?(.*)$", path)
        if info and self.repo(info.group(1)):
            root = self.repo(info.group(1))
            return self.send_json({"id": info.group(1), "sha": REVISION, "private": False, "tags": [],
                                   "siblings": [{"rfilename": f} for f in self.files(root)]})
        if tree and self.repo(tree.group(1)):
            return self.send_json(self.listing(self.repo(tree.group(1)), tree.group(2).strip("/"),
                                               "recursive=true" in self.path.lower()))
        if info or tree:
            return self.not_found()
        self.serve_file(head=False)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        match = re.match(r"^/api/datasets/([^/]+/[^/]+)/paths-info/", self.path)
        if not match or not self.repo(match.group(1)):
            return self.not_found()
        root = self.repo(match.group(1))
        paths = json.loads(body).get("paths", []) if body.startswith("{") else parse_qs(body).get("paths", [])
        self.send_json([self.entry(root, p) for p in paths if (root / p).exists()])

    def listing(self, root: Path, folder: str, recursive: bool) -> list[dict]:
        inside = [f for f in self.files(root) if not folder or f.startswith(folder + "/")]
        entries, seen = [], set()
        for f in inside:
            rest = f[len(folder) + 1:] if folder else f
            parts = rest.split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 1)):
                directory = "/".join(filter(None, [folder, *parts[:depth]]))
                if directory not in seen:
                    seen.add(directory)
                    entries.append(self.entry(root, directory))
            if recursive or len(parts) == 1:
                entries.append(self.entry(root, f))
            elif parts[0] not in seen:
                seen.add(parts[0])
                entries.append(self.entry(root, "/".join(filter(None, [folder, parts[0]]))))
        return entries

    def serve_file(self, head: bool) -> None:
        match = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/[^/]+/([^?]+)", self.path)
        root = self.repo(match.group(1)) if match else None
        full = root / match.group(2) if root else None
        if full is None or not full.is_file():
            return self.not_found()
        data = full.read_bytes()
        status, wanted = 200, self.headers.get("Range")
        if wanted:
            start, end = wanted.split("=")[1].split("-")
            data = data[int(start):int(end) + 1 if end else None]
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"llmft-fake"')
        self.send_header("X-Repo-Commit", REVISION)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not head:
            self.wfile.write(data)
