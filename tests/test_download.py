"""`llmft data download` against a loopback HTTP server only (never the internet): full download with checks,
resume of a truncated .part, mismatches, safe zip extraction, and the offline message."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import stat
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmft.data import download as dl
from llmft.cli import main
from llmft.errors import LlmftError
from llmft.folders import write_marker

ALPACA_PATH = "/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
SEED_PATH = "/yizhongw/self-instruct/main/data/seed_tasks.jsonl"
INSTANCES_PATH = "/yizhongw/self-instruct/main/data/gpt3_generations/batch_221203/all_instances_82K.jsonl"
NI_PATH = "/allenai/natural-instructions/archive/refs/heads/master.zip"
SERVER_LIFETIME_S = 60      # the server shuts itself down after this, whatever happens to the test


class Mirror:
    """A tiny file server on 127.0.0.1 that honours Range requests and can misbehave on purpose."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []   # (path, Range header)
        self.drop_after: dict[str, int] = {}                 # path -> bytes sent before dropping, once
        self.ignore_range = False
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.handle(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.deadline = threading.Timer(SERVER_LIFETIME_S, self.server.shutdown)
        self.deadline.daemon = True

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        rng = req.headers.get("Range")
        self.requests.append((req.path, rng))
        data = self.files.get(req.path)
        if data is None:
            req.send_error(404, "Not Found")
            return
        start = int(rng.removeprefix("bytes=").removesuffix("-")) if rng and not self.ignore_range else 0
        if start >= len(data) and start:
            req.send_response(416)
            req.send_header("Content-Range", f"bytes */{len(data)}")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        req.send_response(206 if start else 200)
        if start:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.send_header("Content-Length", str(len(data) - start))
        req.end_headers()
        body = data[start:]
        if req.path in self.drop_after:
            body = body[: self.drop_after.pop(req.path)]
            req.close_connection = True
        req.wfile.write(body)

    def __enter__(self):
        self.thread.start()
        self.deadline.start()
        return self

    def __exit__(self, *exc):
        self.deadline.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)


@pytest.fixture
def alpaca_bytes(raw_dir) -> bytes:
    return (raw_dir / "alpaca" / "alpaca_data.json").read_bytes()


def _blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _expect(monkeypatch, **files: bytes) -> None:
    """Point the known size / blob of the named upstream files at the test's own bytes."""
    remotes = []
    for remote in dl.REMOTE_FILES:
        data = files.get(Path(remote.dest).name)
        if data is not None:
            remote = dataclasses.replace(remote, size=len(data), git_blob=_blob_sha1(data))
        remotes.append(remote)
    monkeypatch.setattr(dl, "REMOTE_FILES", tuple(remotes))


def _zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_digests_match_git(tmp_path, alpaca_bytes):
    path = tmp_path / "alpaca_data.json"
    path.write_bytes(alpaca_bytes)
    digests = dl.file_digests(path)
    git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert digests == {"bytes": 870_457, "sha256": hashlib.sha256(alpaca_bytes).hexdigest(),
                       "git_blob_sha1": git.stdout.strip()}
    assert digests["sha256"].startswith("19c1b85efe481925")          # PROVENANCE.md


def test_full_download_checked_and_recorded(tmp_path, monkeypatch, alpaca_bytes, raw_dir):
    seed = (raw_dir / "self_instruct" / "seed_tasks.jsonl").read_bytes()
    generated = seed[:5000]
    _expect(monkeypatch, **{"alpaca_data.json": alpaca_bytes, "seed_tasks.jsonl": seed,
                            "all_instances_82K.jsonl": generated})
    with Mirror({ALPACA_PATH: alpaca_bytes, SEED_PATH: seed, INSTANCES_PATH: generated}) as mirror:
        result = dl.download(tmp_path, ["alpaca"], base_url=mirror.url, timeout=5)
        assert (tmp_path / "alpaca" / "alpaca_data.json").read_bytes() == alpaca_bytes
        assert not (tmp_path / "alpaca" / "alpaca_data.json.part").exists()
        manifest = json.loads((tmp_path / dl.MANIFEST).read_text())
        assert manifest == {"files": result["files"]}
        [entry] = manifest["files"]
        assert {k: v for k, v in entry.items() if k != "time"} == {
            "path": "alpaca/alpaca_data.json", "source": "alpaca", "url": mirror.url + ALPACA_PATH,
            "bytes": 870_457, "sha256": hashlib.sha256(alpaca_bytes).hexdigest(),
            "git_blob_sha1": _blob_sha1(alpaca_bytes), "verified": True}
        assert mirror.requests == [(ALPACA_PATH, None)]

        # a second run keeps the complete file (no request) and adds the next source to the same manifest
        dl.download(tmp_path, ["alpaca", "self-instruct"], base_url=mirror.url, timeout=5)
        assert [p for p, _ in mirror.requests] == [ALPACA_PATH, INSTANCES_PATH, SEED_PATH]
        assert (tmp_path / "self_instruct" / "seed_tasks.jsonl").read_bytes() == seed
        assert [e["path"] for e in json.loads((tmp_path / dl.MANIFEST).read_text())["files"]] == [
            "alpaca/alpaca_data.json", "self_instruct/all_instances_82K.jsonl", "self_instruct/seed_tasks.jsonl"]


def test_missing_upstream_file_is_a_clear_http_error(tmp_path):
    with Mirror({}) as mirror, pytest.raises(LlmftError, match=r"all_instances_82K.jsonl: HTTP 404 Not Found"):
        dl.download(tmp_path, ["self-instruct"], base_url=mirror.url, timeout=5)


def test_resume_from_a_truncated_part(tmp_path, monkeypatch, alpaca_bytes):
    _expect(monkeypatch, **{"alpaca_data.json": alpaca_bytes})
    write_marker(tmp_path, "data download")      # the folder an earlier, killed download created
    part = tmp_path / "alpaca" / "alpaca_data.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(alpaca_bytes[:300_000])
    with Mirror({ALPACA_PATH: alpaca_bytes}) as mirror:
        dl.download(tmp_path, ["alpaca"], base_url=mirror.url, timeout=5)
    assert mirror.requests == [(ALPACA_PATH, "bytes=300000-")]
    assert (tmp_path / "alpaca" / "alpaca_data.json").read_bytes() == alpaca_bytes
    assert not part.exists()


def test_broken_transfer_keeps_the_part_and_the_next_run_resumes(tmp_path, alpaca_bytes):
    dest = tmp_path / "a.json"
    with Mirror({ALPACA_PATH: alpaca_bytes}) as mirror:
        mirror.drop_after[ALPACA_PATH] = 500_000
        with pytest.raises(LlmftError, match=r"after 500,000 .*run again to resume"):
            dl.fetch(mirror.url + ALPACA_PATH, dest, timeout=5)
        assert (tmp_path / "a.json.part").stat().st_size == 500_000 and not dest.exists()
        assert dl.fetch(mirror.url + ALPACA_PATH, dest, timeout=5) == 870_457
    assert mirror.requests == [(ALPACA_PATH, None), (ALPACA_PATH, "bytes=500000-")]
    assert dest.read_bytes() == alpaca_bytes


def test_server_without_range_support_restarts_cleanly(tmp_path, alpaca_bytes):
    dest = tmp_path / "a.json"
    (tmp_path / "a.json.part").write_bytes(b"stale bytes that must not survive")
    with Mirror({ALPACA_PATH: alpaca_bytes}) as mirror:
        mirror.ignore_range = True
        assert dl.fetch(mirror.url + ALPACA_PATH, dest, timeout=5) == 870_457
    assert dest.read_bytes() == alpaca_bytes


def test_part_already_complete_is_finished_without_a_body(tmp_path, alpaca_bytes):
    dest = tmp_path / "a.json"
    (tmp_path / "a.json.part").write_bytes(alpaca_bytes)
    with Mirror({ALPACA_PATH: alpaca_bytes}) as mirror:
        assert dl.fetch(mirror.url + ALPACA_PATH, dest, timeout=5) == 870_457
    assert mirror.requests == [(ALPACA_PATH, "bytes=870457-")]
    assert dest.read_bytes() == alpaca_bytes


def test_size_mismatch_against_upstream_is_refused(tmp_path, alpaca_bytes):
    # the real expectation (22,773,992 bytes) against the 870,457-byte sample
    with Mirror({ALPACA_PATH: alpaca_bytes}) as mirror, pytest.raises(LlmftError) as err:
        dl.download(tmp_path, ["alpaca"], base_url=mirror.url, timeout=5)
    message = str(err.value)
    assert "size 870,457 bytes, expected 22,773,992" in message
    assert "git blob SHA-1 " + _blob_sha1(alpaca_bytes) in message and "--no-verify" in message
    assert not (tmp_path / "alpaca" / "alpaca_data.json").exists()
    assert (tmp_path / "alpaca" / "alpaca_data.json.bad").read_bytes() == alpaca_bytes


def test_hash_mismatch_with_the_right_size_is_refused(tmp_path, monkeypatch, alpaca_bytes):
    _expect(monkeypatch, **{"alpaca_data.json": alpaca_bytes})
    tampered = alpaca_bytes.replace(b"healthy", b"HEALTHY", 1)
    with Mirror({ALPACA_PATH: tampered}) as mirror, pytest.raises(LlmftError, match="git blob SHA-1") as err:
        dl.download(tmp_path, ["alpaca"], base_url=mirror.url, timeout=5)
    assert "size" not in str(err.value).split("(")[1]
    assert (tmp_path / "alpaca" / "alpaca_data.json.bad").read_bytes() == tampered


def test_no_verify_accepts_and_records_the_file(tmp_path, alpaca_bytes):
    with Mirror({ALPACA_PATH: alpaca_bytes}) as mirror:
        assert main(["data", "download", "--out", str(tmp_path), "--sources", "alpaca", "--no-verify",
                     "--base-url", mirror.url, "--timeout", "5"]) == 0
    [entry] = json.loads((tmp_path / dl.MANIFEST).read_text())["files"]
    assert entry["verified"] is False and entry["bytes"] == 870_457


def test_archive_extracted_with_its_top_folder_stripped(tmp_path, raw_dir):
    ni = raw_dir / "natural_instructions"
    members = {f"natural-instructions-master/{p.relative_to(ni).as_posix()}": p.read_bytes()
               for p in sorted(ni.rglob("*")) if p.name.startswith("task13") or p.suffix == ".txt"}
    assert len(members) == 7
    with Mirror({NI_PATH: _zip(members)}) as mirror:
        result = dl.download(tmp_path, ["natural-instructions"], base_url=mirror.url, timeout=5)
        assert result["files"][0]["extracted_files"] == 7
        for name, data in members.items():
            assert (tmp_path / "natural_instructions" / name.split("/", 1)[1]).read_bytes() == data
        dl.download(tmp_path, ["natural-instructions"], base_url=mirror.url, timeout=5)   # nothing to redo
        assert len(mirror.requests) == 1


@pytest.mark.parametrize("members, symlinks, why", [
    ({"top/ok.txt": b"fine", "top/../../evil.txt": b"x"}, None, "its path contains '..'"),
    ({"top/ok.txt": b"fine", "/etc/evil.txt": b"x"}, None, "it is an absolute path"),
    ({"top/ok.txt": b"fine", "C:/evil.txt": b"x"}, None, "it is an absolute path"),
    ({"top/ok.txt": b"fine"}, {"top/link": "/etc/passwd"}, "it is a symbolic link"),
])
def test_escaping_zip_members_are_refused(tmp_path, members, symlinks, why):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip(members, symlinks))
    target = tmp_path / "sandbox" / "out"
    with pytest.raises(LlmftError, match="refusing to extract member") as err:
        dl.extract_zip(archive, target, strip_top=True)
    assert why in str(err.value) and "the archive is not extracted" in str(err.value)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def test_escaping_archive_refused_through_download(tmp_path):
    with Mirror({NI_PATH: _zip({"natural-instructions-master/../../evil.txt": b"x"})}) as mirror:
        with pytest.raises(LlmftError, match=r"refusing to extract member .*\.\./\.\./evil\.txt"):
            dl.download(tmp_path / "out", ["natural-instructions"], base_url=mirror.url, timeout=5)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "natural_instructions").exists()


def test_offline_gives_a_clear_error(tmp_path, monkeypatch, capsys):
    port = _unused_port()
    monkeypatch.setenv(dl.BASE_URL_ENV, f"http://127.0.0.1:{port}")
    assert main(["data", "download", "--out", str(tmp_path), "--sources", "alpaca", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmft: error: cannot reach 127.0.0.1:{port}: offline? (")
    assert "Traceback" not in err and "Connection refused" in err
    assert not (tmp_path / "alpaca").exists() or not any((tmp_path / "alpaca").iterdir())


def test_unknown_source_and_canonical_urls():
    with pytest.raises(LlmftError, match="unknown source.*self_instruct"):
        dl.selected_files(["self_instruct"])
    assert [f.url for f in dl.selected_files(None)] == [
        "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
        "https://raw.githubusercontent.com/yizhongw/self-instruct/main/data/gpt3_generations/batch_221203/"
        "all_instances_82K.jsonl",
        "https://raw.githubusercontent.com/yizhongw/self-instruct/main/data/seed_tasks.jsonl",
        "https://github.com/allenai/natural-instructions/archive/refs/heads/master.zip",
        "https://github.com/orhonovich/unnatural-instructions/raw/main/data/core_data.zip",
        "https://github.com/orhonovich/unnatural-instructions/raw/main/data/full_data.zip",
    ]
    assert dl.resolve_url(dl.REMOTE_FILES[0].url, "http://127.0.0.1:8/m/") == \
        "http://127.0.0.1:8/m/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
