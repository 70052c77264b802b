"""File helpers every stage shares: atomic writes, JSONL with located errors, hashes, progress bars."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from llmft.errors import InputFormatError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Write to a temporary file beside `path` and rename it into place only when the block succeeds,
    so an interrupted run never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.llmft-tmp-", dir=path.parent)   # folders.TMP_TAG
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_dir(path: str | os.PathLike, command: str | None = None):
    """Build a directory under a temporary name and swap it into place when the block succeeds (folders.atomic_dir:
    the old one is renamed aside, never deleted before the new one is in)."""
    from llmft.folders import atomic_dir as swap

    return swap(path, command)


def dumps_record(obj: Any) -> str:
    """The one JSON line format of the project: UTF-8, stable key order as given, no spaces to vary."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(dumps_record(row))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Stream a JSONL file; malformed JSON, invalid UTF-8 or nesting too deep raises an error naming the file and
    line (each line is decoded on its own, so the line is exact)."""
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except UnicodeDecodeError as e:
                raise InputFormatError(path, f"not UTF-8 text (byte 0x{raw[e.start]:02x}: {e.reason})",
                                       line=lineno) from None
            except json.JSONDecodeError as e:
                raise InputFormatError(path, f"malformed JSON ({e.msg} at column {e.colno})", line=lineno) from None
            except RecursionError:
                raise InputFormatError(path, "JSON nested too deeply to read", line=lineno) from None
            if not isinstance(obj, dict):
                raise InputFormatError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
            yield obj


def load_json(path: str | os.PathLike) -> Any:
    """Load a whole JSON document; a syntax error names the file, line and byte offset."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFormatError(path, f"malformed JSON ({e.msg})", line=e.lineno, offset=e.pos) from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=False)
        f.write("\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def progress(iterable=None, **kwargs):
    """A tqdm bar with rate and ETA on stderr; quiet when LLMFT_NO_PROGRESS is set (tests)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", bool(os.environ.get("LLMFT_NO_PROGRESS")))
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def cache_dir() -> Path:
    """The user's cache directory for llmft (converted models, tokenized data)."""
    root = os.environ.get("LLMFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "llmft"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
