"""`llmft data download`: fetch the four datasets from their canonical public locations.

Downloads resume (an HTTP Range request continues `<file>.part`, renamed into place only when complete), files
are checked against the sizes and git blob hashes recorded for the upstream files, zip archives are extracted
only after every member has been checked not to escape the target folder, and `download_manifest.json` records
what was fetched (url, bytes, sha256, time). The scheme and host of every URL can be replaced by a mirror
(`base_url`, env `LLMFT_DOWNLOAD_BASE`), which is also how the tests point it at a loopback server.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from llmft import __version__
from llmft.errors import LlmftError
from llmft.io import atomic_write, load_json, progress, write_json

BASE_URL_ENV = "LLMFT_DOWNLOAD_BASE"
MANIFEST = "download_manifest.json"
CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    source: str
    url: str
    dest: str                      # path under the output folder
    size: int | None = None        # bytes, where the upstream file is known
    git_blob: str | None = None    # git blob SHA-1 of the upstream file (sha1 of "blob <size>\0" + content)
    extract_to: str | None = None  # zip archives: folder under the output folder
    strip_top: bool = False        # GitHub archives wrap everything in one "<repo>-<branch>/" folder


# Sizes and blob ids as recorded in shared/fixtures/PROVENANCE.md (the upstream git trees).
REMOTE_FILES: tuple[RemoteFile, ...] = (
    RemoteFile("alpaca", "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
               "alpaca/alpaca_data.json", size=22_773_992,
               git_blob="3779ddbc040543ab1834ef216c983d6fcc06cc9a"),
    RemoteFile("self-instruct",
               "https://raw.githubusercontent.com/yizhongw/self-instruct/main/data/gpt3_generations/batch_221203/"
               "all_instances_82K.jsonl",
               "self_instruct/all_instances_82K.jsonl", git_blob="ccceb2677cbafcac4c996be47520b5581dd10295"),
    RemoteFile("self-instruct", "https://raw.githubusercontent.com/yizhongw/self-instruct/main/data/seed_tasks.jsonl",
               "self_instruct/seed_tasks.jsonl", size=110_934, git_blob="c97d40d76abd45cd7456f2d0d58459bb4df3cad5"),
    RemoteFile("natural-instructions",
               "https://github.com/allenai/natural-instructions/archive/refs/heads/master.zip",
               "archives/natural-instructions-master.zip", extract_to="natural_instructions", strip_top=True),
    RemoteFile("unnatural-instructions",
               "https://github.com/orhonovich/unnatural-instructions/raw/main/data/core_data.zip",
               "archives/unnatural_core_data.zip", git_blob="037b95e773c5d050d025b1d012180c42fa63d13f",
               extract_to="unnatural_instructions"),
    RemoteFile("unnatural-instructions",
               "https://github.com/orhonovich/unnatural-instructions/raw/main/data/full_data.zip",
               "archives/unnatural_full_data.zip", git_blob="f10dc839ccee6a83f3c69378a56b122ffcdedbc3",
               extract_to="unnatural_instructions"),
)
SOURCE_NAMES = tuple(dict.fromkeys(f.source for f in REMOTE_FILES))


# ------------------------------------------------------------------ URLs and network errors

def resolve_url(url: str, base_url: str | None) -> str:
    """Replace scheme and host by `base_url` (a mirror laid out as <owner>/<repo>/...), keeping the path."""
    if not base_url:
        return url
    return base_url.rstrip("/") + urlsplit(url).path


def offline_error(url: str, reason: object) -> LlmftError:
    host = urlsplit(url).netloc
    return LlmftError(
        f"cannot reach {host}: offline? ({reason}). `llmft data download` needs access to {host}; "
        f"otherwise copy the files in by hand, or point --base-url / {BASE_URL_ENV} at a mirror."
    )


class _AlreadyComplete(Exception):
    """HTTP 416 to a Range request: the server's file is no longer than what we hold; carries its size."""

    def __init__(self, total: int | None):
        super().__init__(total)
        self.total = total


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": f"llmft/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            e.close()
            raise _AlreadyComplete(_content_range(e)[1]) from None
        raise LlmftError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise offline_error(url, e.reason) from None
    except (OSError, http.client.HTTPException) as e:   # timeouts, resets before any byte arrived
        raise offline_error(url, e) from None


def _content_range(response) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header: 'bytes 100-199/200' or 'bytes */200'."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (response.headers.get("Content-Range") or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


# ------------------------------------------------------------------ one download, resumable

def fetch(url: str, dest: Path, *, expected_size: int | None = None, timeout: float = 30.0) -> int:
    """Download `url` to `dest` through `dest.part`, continuing a partial `.part` with a Range request.
    Returns the size. An interrupted transfer keeps the `.part` so the next call resumes it."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    try:
        response = _open(url, offset, timeout)
    except _AlreadyComplete as done:
        if done.total == offset:                    # the .part already holds the whole file
            part.replace(dest)
            return offset
        part.unlink()
        return fetch(url, dest, expected_size=expected_size, timeout=timeout)
    with response:
        offset, total = _resume_point(response, offset)
        _stream(response, part, offset, total, url)
    size = part.stat().st_size
    if total is not None and size != total:
        raise LlmftError(f"{url}: the connection closed after {size:,} of {total:,} bytes; "
                         f"the partial file is kept at {part}: run again to resume")
    part.replace(dest)
    return size


def _resume_point(response, offset: int) -> tuple[int, int | None]:
    """Where writing starts and the full size: a 206 continues at `offset`, anything else starts over."""
    length = response.headers.get("Content-Length")
    if offset and response.status == 206:
        start, total = _content_range(response)
        if start == offset:
            return offset, total if total is not None else (offset + int(length) if length else None)
    return 0, int(length) if length else None


def _stream(response, part: Path, offset: int, total: int | None, url: str) -> None:
    mode = "ab" if offset else "wb"
    with open(part, mode) as f, progress(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=part.name.removesuffix(".part")) as bar:
        try:
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:
            f.flush()
            raise LlmftError(f"{url}: the transfer broke off after {f.tell():,} bytes ({e}); "
                             f"the partial file is kept at {part}: run again to resume") from None


# ------------------------------------------------------------------ checks

def file_digests(path: Path) -> dict:
    """Size, SHA-256 and git blob SHA-1 in one pass."""
    size = path.stat().st_size
    sha256, blob = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha256.update(block)
            blob.update(block)
    return {"bytes": size, "sha256": sha256.hexdigest(), "git_blob_sha1": blob.hexdigest()}


def verify(remote: RemoteFile, digests: dict) -> list[str]:
    """Every check the file fails (empty when it matches what upstream is known to hold)."""
    problems = []
    if remote.size is not None and digests["bytes"] != remote.size:
        problems.append(f"size {digests['bytes']:,} bytes, expected {remote.size:,}")
    if remote.git_blob is not None and digests["git_blob_sha1"] != remote.git_blob:
        problems.append(f"git blob SHA-1 {digests['git_blob_sha1']}, expected {remote.git_blob}")
    return problems


def reject_bad_file(path: Path, url: str, problems: list[str]) -> LlmftError:
    bad = path.with_name(path.name + ".bad")
    path.replace(bad)
    return LlmftError(f"{url}: the downloaded file does not match upstream ({'; '.join(problems)}); "
                      f"moved to {bad}. Run again to download it afresh, or pass --no-verify if upstream changed.")


# ------------------------------------------------------------------ safe zip extraction

def member_target(archive: Path, info: zipfile.ZipInfo, strip_top: bool) -> PurePosixPath | None:
    """The relative path a member extracts to; refuses anything that could land outside the target folder.
    None for the archive's top folder itself when it is stripped."""
    name = info.filename

    def refuse(why: str) -> LlmftError:
        return LlmftError(f"{archive}: refusing to extract member {name!r}: {why}; the archive is not extracted")

    if stat.S_ISLNK(info.external_attr >> 16):
        raise refuse("it is a symbolic link")
    if "\0" in name:
        raise refuse("its name contains a NUL byte")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise refuse("it is an absolute path")
    parts = [p for p in PurePosixPath(posix).parts if p not in ("", ".")]
    if ".." in parts:
        raise refuse("its path contains '..'")
    if strip_top:
        parts = parts[1:]
    return PurePosixPath(*parts) if parts else None


def extract_zip(archive: Path, target: Path, *, strip_top: bool = False) -> int:
    """Extract `archive` into `target` after checking every member; each file is written atomically.
    Returns the number of files written."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, member_target(archive, info, strip_top)) for info in zf.infolist()]
            if strip_top and len({PurePosixPath(i.filename.replace("\\", "/")).parts[0] for i, _ in members}) > 1:
                raise LlmftError(f"{archive}: expected one top-level folder to strip, found several")
            files = [(info, rel) for info, rel in members
                     if rel is not None and not info.is_dir() and rel.parts[0] != "__MACOSX"]   # Finder metadata
            for info, rel in progress(files, desc=f"extract {archive.name}", unit="file"):
                with zf.open(info) as src, atomic_write(target / rel, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
    except zipfile.BadZipFile as e:
        raise LlmftError(f"{archive}: not a valid zip archive ({e}); delete it and run again") from None
    return len(files)


# ------------------------------------------------------------------ the command

def selected_files(sources: list[str] | None) -> list[RemoteFile]:
    names = sources or list(SOURCE_NAMES)
    unknown = [n for n in names if n not in SOURCE_NAMES]
    if unknown:
        raise LlmftError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCE_NAMES)}")
    return [f for f in REMOTE_FILES if f.source in names]


def _load_manifest(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {entry["path"]: entry for entry in load_json(path).get("files", [])}


def download(out: str | Path, sources: list[str] | None = None, *, base_url: str | None = None,
             verify_files: bool = True, timeout: float = 30.0) -> dict:
    """Fetch (or resume, or keep when already complete) every file of the chosen sources into `out`."""
    from llmft.folders import own_folder

    out = Path(out)
    base_url = base_url or os.environ.get(BASE_URL_ENV) or None
    manifest_path = out / MANIFEST
    remotes = selected_files(sources)
    with own_folder(out, "data download", legacy=MANIFEST):   # locked; a folder of the user's own is refused
        entries = _load_manifest(manifest_path)
        for remote in remotes:
            entry = _download_one(out, remote, base_url, verify_files, timeout, entries.get(remote.dest))
            entries[remote.dest] = entry
            write_json(manifest_path, {"files": sorted(entries.values(), key=lambda e: e["path"])})
    return {"manifest": str(manifest_path), "files": [entries[f.dest] for f in remotes]}


def _download_one(out: Path, remote: RemoteFile, base_url: str | None, verify_files: bool, timeout: float,
                  previous: dict | None) -> dict:
    url = resolve_url(remote.url, base_url)
    path = out / remote.dest
    already = path.exists()
    if not already:
        fetch(url, path, expected_size=remote.size if verify_files else None, timeout=timeout)
    digests = file_digests(path)
    problems = verify(remote, digests) if verify_files else []
    if problems:
        raise reject_bad_file(path, url, problems)
    entry = {"path": remote.dest, "source": remote.source, "url": url, **digests,
             "verified": bool(verify_files and (remote.size or remote.git_blob)),
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if already and previous and previous.get("sha256") == digests["sha256"]:
        entry["time"] = previous.get("time", entry["time"])
    if remote.extract_to:
        entry.update(_extract_once(out, path, remote, digests, previous))
    return entry


def _extract_once(out: Path, archive: Path, remote: RemoteFile, digests: dict, previous: dict | None) -> dict:
    target = out / remote.extract_to
    done_before = previous and previous.get("sha256") == digests["sha256"] and previous.get("extracted_to")
    if done_before and target.exists():
        return {"extracted_to": remote.extract_to, "extracted_files": previous.get("extracted_files")}
    count = extract_zip(archive, target, strip_top=remote.strip_top)
    return {"extracted_to": remote.extract_to, "extracted_files": count}
