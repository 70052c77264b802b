"""The folder rule (llmft.folders) and the commands that follow it: a folder llmft did not create is refused, a
second writer is refused, a replacement is atomic across kills, stale temporaries are cleaned, workers die with
their parent. Kill tests run a child Python process and SIGKILL it at a chosen point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmft import folders
from llmft.cli import main
from llmft.errors import LlmftError
from llmft.folders import MARKER, FolderBusy, locked, new_folder, own_folder

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _child(code: str) -> subprocess.Popen:
    """A Python child running `code`; it prints READY (and maybe a value) when it reached the point to kill it at,
    kept in proc.ready."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, env=env,
                            text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        _kill(proc)
        pytest.fail(f"child did not get ready: {line!r}")
    proc.ready = line.split()[1:]
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fill(folder: Path, tag: str) -> None:
    for i in range(5):
        (folder / f"part-{i}.txt").write_text(f"{tag} {i}\n")


# ---------------------------------------------------------------- refuse what llmft did not create

def test_new_folder_refuses_a_users_folder_and_replaces_its_own(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(LlmftError, match="llmft did not create it"):
        with new_folder(mine, "data prepare"):
            pass
    assert _files(mine) == {"notes.txt": b"keep me"}

    out = tmp_path / "out"
    with new_folder(out, "data prepare") as tmp:
        _fill(tmp, "first")
    assert folders.created_by(out) == "data prepare"
    with new_folder(out, "data prepare") as tmp:
        _fill(tmp, "second")
    assert (out / "part-0.txt").read_text() == "second 0\n"
    with pytest.raises(LlmftError, match="made by `llmft data prepare`, not `llmft data format`"):
        with new_folder(out, "data format"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]     # no lock or temporary left


def test_data_format_never_deletes_an_existing_folder_or_its_input(tmp_path, raw_dir):
    """Issue 14, item 1: `data format DIR --out EXISTING` deleted EXISTING, the input too when --out was its parent."""
    data = tmp_path / "project" / "data"
    assert main(["data", "prepare", "--alpaca", str(raw_dir / "alpaca" / "alpaca_data.json"),
                 "--out", str(data)]) == 0
    (tmp_path / "project" / "notes.md").write_text("my notes")
    before = _files(tmp_path / "project")
    assert main(["data", "format", str(data), "--template", "alpaca", "--out", str(tmp_path / "project")]) == 2
    assert main(["data", "format", str(data), "--template", "alpaca", "--out", str(data)]) == 2
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.tex").write_text("x")
    assert main(["data", "format", str(data), "--template", "alpaca", "--out", str(users)]) == 2
    assert _files(tmp_path / "project") == before and _files(users) == {"thesis.tex": b"x"}
    # its own earlier output is replaced
    fmt = tmp_path / "fmt"
    assert main(["data", "format", str(data), "--template", "alpaca", "--out", str(fmt)]) == 0
    assert main(["data", "format", str(data), "--template", "alpaca", "--out", str(fmt)]) == 0
    assert folders.created_by(fmt) == "data format"


def test_llmft_run_refuses_a_folder_holding_the_users_raw_data(tmp_path):
    """Issue 14, item 4: `llmft run --out DIR` overwrote DIR/raw/alpaca/alpaca_data.json of the user."""
    from llmft.pipeline.recipe import load_recipe
    from llmft.pipeline.runner import Stages, run_pipeline

    users = tmp_path / "work"
    (users / "raw" / "alpaca").mkdir(parents=True)
    (users / "raw" / "alpaca" / "alpaca_data.json").write_text('[{"instruction": "mine"}]')
    calls = []
    stages = Stages(demo=lambda *a: calls.append("demo"), prepare=lambda *a: calls.append("prepare"),
                    train=lambda *a: calls.append("train"), evaluate=lambda *a: calls.append("evaluate"))
    with pytest.raises(LlmftError, match="llmft did not create it"):
        run_pipeline(load_recipe("demo", []), users, stages=stages, echo=lambda _: None)
    assert calls == [] and _files(users) == {"raw/alpaca/alpaca_data.json": b'[{"instruction": "mine"}]'}


def test_data_demo_refuses_a_users_folder(tmp_path):
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca" / "alpaca_data.json").write_text("mine")
    assert main(["data", "demo", "--out", str(tmp_path), "--instances", "2"]) == 2
    assert _files(tmp_path) == {"alpaca/alpaca_data.json": b"mine"}


def test_convert_refuses_to_overwrite_an_existing_file_unless_told(tmp_path, raw_dir):
    out = tmp_path / "records.jsonl"
    out.write_text("my own records\n")
    argv = ["data", "convert", "alpaca", str(raw_dir / "alpaca" / "alpaca_data.json"), "--out", str(out)]
    assert main(argv) == 2
    assert out.read_text() == "my own records\n" and not (tmp_path / "records.rejects.jsonl").exists()
    assert main(argv + ["--overwrite"]) == 0
    assert out.read_text() != "my own records\n"


def test_generate_refuses_to_overwrite_an_existing_file_before_loading_the_model(tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    out.write_text("my predictions\n")
    # the run folder does not exist: the refusal must come first, before anything is loaded
    assert main(["generate", str(tmp_path / "no-run"), "--instruction", "hi", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "my predictions\n"


# ---------------------------------------------------------------- one writer at a time

def test_a_second_writer_is_refused_naming_the_folder_and_the_other_pid(tmp_path):
    out = tmp_path / "run"
    holder = _child(f"""
        import time
        from llmft.folders import own_folder
        with own_folder({str(out)!r}, "train"):
            print("READY", flush=True)
            time.sleep(60)
    """)
    try:
        with pytest.raises(FolderBusy) as err:
            with own_folder(out, "train"):
                pass
        assert str(out) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        with pytest.raises(FolderBusy):
            with new_folder(out, "train"):
                pass
    finally:
        _kill(holder)
    with own_folder(out, "train"):        # the kernel released the dead holder's lock
        pass


def test_eval_and_merge_refuse_while_another_process_writes(tmp_path, smol_tokenizer, capsys):
    from run_factory import make_run

    run = make_run(tmp_path / "r", smol_tokenizer)
    merged = tmp_path / "merged"
    holder = _child(f"""
        import time
        from llmft.folders import locked
        with locked({str(run)!r}), locked({str(merged)!r}):
            print("READY", flush=True)
            time.sleep(60)
    """)
    try:
        assert main(["eval", str(run), "--limit", "1", "--no-base"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert main(["merge", str(run), "--out", str(merged)]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        _kill(holder)
    assert not (run / "eval.json").exists() and not merged.exists()


def test_one_lock_whatever_the_spelling(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    holder = _child(f"""
        import time
        from llmft.folders import locked
        with locked({str(tmp_path / "real" / "run")!r}):
            print("READY", flush=True)
            time.sleep(60)
    """)
    try:
        for spelling in ("real/run", "./real/run", "link/run", str(tmp_path / "link" / "run")):
            with pytest.raises(FolderBusy):
                with own_folder(spelling, "train"):
                    pass
    finally:
        _kill(holder)


def test_a_subfolder_another_command_owns_is_left_to_it(tmp_path):
    """`llmft run` cleans its folder at start but not data/ or train/, which their own commands write."""
    run = tmp_path / "run"
    with own_folder(run, "run"):
        pass
    with own_folder(run / "train", "train"):
        pass
    inner = run / "train" / f".adapter{folders.TMP_TAG}live"
    inner.mkdir()
    beside = run / f".data{folders.TMP_TAG}live"
    beside.mkdir()
    folders.write_marker(beside, "data prepare")
    holder = _child(f"""
        import time
        from llmft.folders import locked
        with locked({str(run / "data")!r}):
            print("READY", flush=True)
            time.sleep(60)
    """)
    try:
        with own_folder(run, "run"):
            pass
        assert inner.exists() and beside.exists()
    finally:
        _kill(holder)
    with own_folder(run, "run"):      # nobody writes data/ now: its temporary is stale
        pass
    assert not beside.exists() and inner.exists()


def test_a_symlinked_run_folder_is_written_through_the_link(tmp_path):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "scratch")
    with own_folder(tmp_path / "run", "train"):
        (tmp_path / "run" / "config.yaml").write_text("x")
    assert (tmp_path / "scratch" / "config.yaml").exists() and folders.created_by(tmp_path / "scratch") == "train"


def test_the_same_process_may_nest_a_lock(tmp_path):
    with locked(tmp_path / "x"), locked(tmp_path / "x"):
        pass
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- crash safety of a replacement

def _prepare_old(out: Path) -> dict[str, bytes]:
    with new_folder(out, "data prepare") as tmp:
        _fill(tmp, "old")
    return _files(out)


@pytest.mark.parametrize("pause_after", [1, 2])
def test_a_kill_inside_the_swap_leaves_the_old_or_the_new_folder(tmp_path, pause_after):
    """Issue 14, item 9: the old folder was deleted before the new one was renamed in. Kill after the rename
    aside (1) or after the rename in (2): the next writer finds a complete folder and cleans the rest."""
    out = tmp_path / "data"
    old = _prepare_old(out)
    child = _child(f"""
        import os, time
        from llmft import folders
        real_rename, calls = os.rename, []
        def rename(a, b):
            real_rename(a, b)
            calls.append(b)
            if len(calls) == {pause_after}:
                print("READY", flush=True)
                time.sleep(60)
        folders.os.rename = rename
        with folders.new_folder({str(out)!r}, "data prepare") as tmp:
            for i in range(5):
                (tmp / f"part-{{i}}.txt").write_text(f"new {{i}}\\n")
    """)
    _kill(child)
    with locked(out):                  # what every next writer of `out` does first
        folders.recover(out)
    expected = "old" if pause_after == 1 else "new"
    assert _files(out) == {MARKER: old[MARKER], **{f"part-{i}.txt": f"{expected} {i}\n".encode() for i in range(5)}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_stale_temporaries_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    out = tmp_path / "data"
    child = _child(f"""
        import time
        from llmft.folders import new_folder
        with new_folder({str(out)!r}, "data prepare") as tmp:
            (tmp / "big.bin").write_bytes(b"x" * 1_000_000)
            print("READY", flush=True)
            time.sleep(60)
    """)
    _kill(child)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert any(folders.TMP_TAG in name for name in leftovers), leftovers
    with new_folder(out, "data prepare") as tmp:
        _fill(tmp, "next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_temporary_without_our_marker_beside_the_folder_is_left_alone(tmp_path):
    foreign = tmp_path / f".data{folders.TMP_TAG}someone"
    foreign.mkdir()
    (foreign / "theirs.txt").write_text("x")
    with new_folder(tmp_path / "data", "data prepare") as tmp:
        _fill(tmp, "a")
    assert (foreign / "theirs.txt").exists()


def test_a_cache_entry_build_removes_what_killed_builders_left(tmp_path):
    """The tokenization cache and converted models are llmft's own folders: their temporaries need no marker."""
    entry = tmp_path / "cache" / "abc123"
    entry.parent.mkdir()
    stale = entry.parent / f".abc123{folders.TMP_TAG}killed"
    stale.mkdir()
    (stale / "examples.safetensors").write_bytes(b"x" * 100_000)
    with folders.cache_entry(entry) as tmp:
        (tmp / "report.json").write_text("{}")
    assert sorted(p.name for p in entry.parent.iterdir()) == ["abc123"]
    assert sorted(p.name for p in entry.iterdir()) == ["report.json"]


def test_own_folder_cleans_temporaries_inside_it(tmp_path):
    run = tmp_path / "run"
    with own_folder(run, "train"):
        (run / "checkpoints").mkdir()
    half = run / "checkpoints" / f".step-4{folders.TMP_TAG}abc"
    half.mkdir()
    (half / "optimizer.pt").write_bytes(b"half")
    (run / f".metrics.jsonl{folders.TMP_TAG}xyz").write_text("partial")
    aside = run / "checkpoints" / f".step-2{folders.OLD_TAG}def"     # killed between the two renames
    aside.mkdir()
    (aside / "state.json").write_text("{}")
    with own_folder(run, "train"):
        pass
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        MARKER, "checkpoints", "checkpoints/step-2", "checkpoints/step-2/state.json"]


# ---------------------------------------------------------------- prepare's workers

def test_prepare_workers_die_with_a_killed_parent(tmp_path):
    """Issue 14, item 9: prepare's worker processes outlived a killed parent. The pool is built as prepare builds
    it (spawn, convert_units.die_with_parent); the worker sleeps in its task when the parent is killed."""
    child = _child("""
        import multiprocessing, os, time
        from concurrent.futures import ProcessPoolExecutor
        from llmft.data.convert_units import die_with_parent

        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
        worker = pool.submit(os.getpid).result()
        pool.submit(time.sleep, 60)
        print("READY", worker, flush=True)
        time.sleep(60)
    """)
    worker = int(child.ready[0])
    assert _alive(worker)
    _kill(child)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------- real commands, real kills

def _complete(data: Path) -> bool:
    """Every output the manifest lists is there with its recorded hash."""
    import hashlib

    manifest = json.loads((data / "manifest.json").read_text())
    return all(hashlib.sha256((data / name).read_bytes()).hexdigest() == entry["sha256"]
               for name, entry in manifest["outputs"].items())


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 1.5, 2.5, 3.0, 3.5, 4.0])
def test_prepare_killed_while_replacing_leaves_a_complete_folder(tmp_path, raw_dir, delay):
    """`data prepare` replacing an earlier folder (another seed), SIGKILLed at a point in its run: what stays under
    --out is the old folder or the new one, complete; the next run cleans every temporary."""
    out = tmp_path / "data"
    argv = [sys.executable, "-m", "llmft", "data", "prepare", "--alpaca", str(raw_dir / "alpaca" / "alpaca_data.json"),
            "--out", str(out), "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": SRC, "LLMFT_NO_PROGRESS": "1"}
    subprocess.run(argv + ["--seed", "1"], env=env, check=True, capture_output=True)
    old = _files(out)
    proc = subprocess.Popen(argv + ["--seed", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with locked(out):
        folders.recover(out)
    assert _complete(out)
    assert _files(out) == old or json.loads((out / "manifest.json").read_text())["seed"] == 2
    subprocess.run(argv + ["--seed", "2"], env=env, check=True, capture_output=True)
    assert _complete(out) and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
