"""The one rule for every folder (and output file) an llmft command writes.

- A folder llmft creates carries a marker file, MARKER, naming the command that created it. A command refuses a
  non-empty folder without its marker: llmft never deletes or overwrites files it did not create.
- While a command writes a folder it holds an fcntl lock on `.NAME.llmft-lock` beside it; a second writer is
  refused at once with a message naming the folder and the other process.
- A folder is replaced atomically: built under a temporary name `.NAME.llmft-tmp-*`, then the old folder is renamed
  aside (`.NAME.llmft-old-*`), the new one renamed in, and the aside copy renamed to `.NAME.llmft-trash-*` and
  removed. A kill at any point leaves either the old or the new folder under NAME, never half of one.
- The next writer of a folder (holding its lock) cleans up after a killed one: an aside copy comes back when NAME
  is missing (the kill fell between the two renames), every other temporary of NAME goes.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from llmft.errors import LlmftError

MARKER = ".llmft.json"
TMP_TAG = ".llmft-tmp-"
OLD_TAG = ".llmft-old-"
TRASH_TAG = ".llmft-trash-"
LOCK_TAG = ".llmft-lock"
TEMP_TAGS = (TMP_TAG, OLD_TAG, TRASH_TAG)

_held: dict[str, int] = {}      # lock files this process holds -> nesting depth (a holder may lock again)


class FolderBusy(LlmftError):
    """Another process is writing the folder."""


# ---------------------------------------------------------------- names

def lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}{LOCK_TAG}"


def _temp_name(path: Path, tag: str) -> str:
    return f".{path.name}{tag}"


def _temporaries(path: Path, tag: str) -> list[Path]:
    pattern = glob.escape(str(path.parent / _temp_name(path, tag))) + "*"
    return sorted(Path(p) for p in glob.glob(pattern))


# ---------------------------------------------------------------- marker

def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder llmft created ({"command": ..., ...}), or None."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def write_marker(folder: Path, command: str) -> None:
    from llmft import __version__

    # no time or pid: a folder rebuilt from the same inputs stays byte-identical
    (folder / MARKER).write_text(json.dumps({"command": command, "llmft": __version__}) + "\n", encoding="utf-8")


def created_by(folder: str | os.PathLike) -> str | None:
    marker = read_marker(folder)
    return marker["command"] if marker else None


def is_empty(folder: Path) -> bool:
    """Nothing in it but, perhaps, our marker."""
    return all(entry.name == MARKER for entry in folder.iterdir())


# ---------------------------------------------------------------- the lock

@contextlib.contextmanager
def locked(path: str | os.PathLike, *, wait: bool = False) -> Iterator[None]:
    """Hold the writer's lock of `path` (a folder or file): `.NAME.llmft-lock` beside it, holding our pid.

    A second process is refused at once (wait=True: it waits, as builders of a cache entry do); the same process
    may nest. The lock file is removed on release; the
    inode check after locking guards against locking a file another process has just removed."""
    path = Path(os.path.realpath(path))        # one lock whatever the spelling (relative, absolute, via links)
    lock = lock_file(path)
    key = str(lock)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, path, wait)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _acquire(lock: Path, path: Path, wait: bool) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusy(f"{path}: another llmft process (pid {other}) is writing it; wait for that process "
                             f"to finish (or stop it) and run again") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)       # the previous holder removed this lock file between our open and flock: take a new one


# ---------------------------------------------------------------- stale temporaries

def recover(path: Path, *, ours: bool = False) -> None:
    """After a killed writer of `path` (call with its lock held): bring an aside copy back when `path` is missing
    (the kill fell between the rename aside and the rename in), remove every other temporary of `path`."""
    asides = [p for p in _temporaries(path, OLD_TAG) if p.is_dir()]
    if asides and not path.exists() and not path.is_symlink():
        os.rename(asides.pop(), path)
    for tag in TEMP_TAGS:
        for temp in _temporaries(path, tag):
            _remove_temporary(temp, tag, ours)


def _remove_temporary(temp: Path, tag: str, ours: bool) -> None:
    """Only what our own naming and (for folders beside a user's files, unless `ours`: llmft's own cache) our
    marker say llmft made."""
    if temp.is_symlink() or not temp.exists():
        return
    if temp.is_dir():
        if tag == TMP_TAG and not ours and read_marker(temp) is None and not is_empty(temp) and not _inside_owned(temp):
            return
        shutil.rmtree(temp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _inside_owned(temp: Path) -> bool:
    return any(read_marker(parent) is not None for parent in temp.parents)


def clean_tree(folder: Path) -> None:
    """Recover every temporary inside `folder` (an llmft folder whose lock we hold): checkpoints, adapter, files.
    A subfolder with its own marker belongs to another command (run/ holds data/ and train/) and is left to it, and
    so is a temporary whose target another process is writing now."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            tag = next((t for t in TEMP_TAGS if t in name), None)
            if name.startswith(".") and tag:
                _recover_unless_busy(Path(root) / name[1:name.index(tag)])
        dirs[:] = [d for d in dirs if not any(tag in d for tag in TEMP_TAGS) and (Path(root) / d).is_dir()
                   and not (Path(root) / d / MARKER).exists()]


def _recover_unless_busy(target: Path) -> None:
    try:
        with locked(target):
            recover(target)
    except FolderBusy:
        pass


# ---------------------------------------------------------------- replacing a folder atomically

@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name beside `path` and swap it in when the block succeeds (the old one is
    renamed aside first, removed only after the new one is in place). `command`: mark the new folder as made by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(path, TMP_TAG), dir=path.parent))
    try:
        if command is not None:
            write_marker(tmp, command)
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def cache_entry(path: str | os.PathLike) -> Iterator[Path]:
    """Build an entry of llmft's own cache (converted models, tokenized data): wait for another builder of the same
    entry, remove what killed builders left, then build it atomically as atomic_dir does."""
    path = Path(path)
    with locked(path, wait=True):
        recover(path, ours=True)
        with atomic_dir(path) as tmp:
            yield tmp


def swap_in(tmp: Path, path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        os.rename(tmp, path)
        return
    if path.is_symlink():
        raise LlmftError(f"{path}: is a symbolic link; llmft replaces this folder as a whole and will not replace "
                         f"a link: give the folder it points to, or another output path")
    if not path.is_dir():
        raise LlmftError(f"{path}: exists and is not a folder; choose another output path")
    aside = Path(tempfile.mktemp(prefix=_temp_name(path, OLD_TAG), dir=path.parent))
    os.rename(path, aside)
    os.rename(tmp, path)
    remove_folder(aside)     # renamed to trash first: a kill now leaves trash, never a copy `recover` restores


def remove_folder(path: Path) -> None:
    """Rename to a trash name first, so a kill during the removal never leaves half a folder under its name."""
    trash = Path(tempfile.mktemp(prefix=_temp_name(path, TRASH_TAG), dir=path.parent))
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- the commands' entry points

def _refuse_foreign(folder: Path, command: str, accept: tuple[str, ...]) -> None:
    if not folder.is_dir():
        raise LlmftError(f"{folder}: exists and is not a folder; choose another output path")
    if is_empty(folder):
        return
    owner = created_by(folder)
    if owner is None:
        raise LlmftError(f"{folder}: already exists and is not empty, and llmft did not create it (no {MARKER}); "
                         f"llmft never overwrites files it did not create: choose another output folder")
    if owner not in accept:
        raise LlmftError(f"{folder}: already exists and is not empty, and was made by `llmft {owner}`, not "
                         f"`llmft {command}`; choose another output folder")


@contextlib.contextmanager
def new_folder(path: str | os.PathLike, command: str, *, replace: bool = True) -> Iterator[Path]:
    """Write a folder that is replaced as a whole: yields a temporary folder to fill, swapped in at the end.

    Refused: a non-empty folder without our marker for `command`, or (replace=False) any non-empty folder."""
    path = Path(path)
    with locked(path):
        recover(path)
        if path.exists() or path.is_symlink():
            _refuse_foreign(path, command, (command,))
            if not replace and not is_empty(path):
                raise LlmftError(f"{path}: already exists and is not empty; choose another --out or remove it")
        with atomic_dir(path, command) as tmp:
            yield tmp


@contextlib.contextmanager
def own_folder(path: str | os.PathLike, command: str, *, accept: tuple[str, ...] | None = None,
               must_exist: bool = False, legacy: str | None = None) -> Iterator[Path]:
    """Write into a folder in place (a run folder, a download folder): lock it, create and mark it when missing or
    empty, refuse one made by someone else, clean up what a killed writer left inside.

    `accept`: the commands whose folders this one may write into (default: its own). `legacy`: a file that marks a
    folder of the accepted kind written before markers existed (eval: template.json; download: its manifest)."""
    path = Path(path)
    with locked(path):
        recover(path)
        if must_exist and not path.is_dir():
            raise LlmftError(f"{path}: no such folder")
        claim(path, command, accept=accept, legacy=legacy)
        clean_tree(path)
        yield path


def claim(path: Path, command: str, *, accept: tuple[str, ...] | None = None, legacy: str | None = None) -> None:
    """Create and mark `path` for `command` when it is missing or empty; refuse it when someone else filled it."""
    if path.exists() and not (legacy and (path / legacy).is_file() and read_marker(path) is None):
        _refuse_foreign(path, command, accept or (command,))
    path.mkdir(parents=True, exist_ok=True)
    if is_empty(path) and created_by(path) not in (accept or (command,)):
        write_marker(path, command)


@contextlib.contextmanager
def new_file(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Lock an output file's name for the block; refuse an existing file unless the user said to overwrite it
    (a file carries no marker, so llmft cannot tell that it made it)."""
    path = Path(path)
    with locked(path):
        recover(path)
        check_new_file(path, overwrite)
        yield path


def check_new_file(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Before the work that produces an output file: refuse a folder or (unless `overwrite`) an existing file."""
    path = Path(path)
    if path.is_dir():
        raise LlmftError(f"{path}: is a folder; give a file name")
    if path.exists() and path.stat().st_size and not overwrite:
        raise LlmftError(f"{path}: already exists; pass --overwrite to replace it, or choose another name")


def check_not_inside(out: str | os.PathLike, inputs: list[str | os.PathLike], flag: str = "--out") -> None:
    """An output folder must not be, or contain, an input (replacing it would delete the input)."""
    out_real = Path(os.path.realpath(out))
    for source in inputs:
        real = Path(os.path.realpath(source))
        if real == out_real or out_real in real.parents:
            raise LlmftError(f"{flag} {out} holds the input {source}; writing it would replace the input: "
                             f"choose an output folder outside the input")
