"""Training run folders under the folder rule (issue 14, items 3 and 5): one writer at a time, a folder llmft did
not create is refused, --resume compares resolved paths and data hashes, stale temporaries of a killed run go."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llmft import folders
from llmft.errors import LlmftError
from llmft.folders import FolderBusy
from llmft.training.trainer import train
from test_folders import _child, _kill
from test_train import data_dir, llama_base, make_cfg, repeat_records, tiny_cache, write_jsonl  # noqa: F401

STOP = dict(max_steps=3, save_every=1)


def test_a_second_train_of_the_same_folder_is_refused(tmp_path, data_dir, llama_base):
    """Item 3: two `llmft train --out X` at once both 'succeeded', mixing their files."""
    run = tmp_path / "run"
    holder = _child(f"""
        import time
        from llmft.training.run_folder import open_run_dir
        with open_run_dir({str(run)!r}, resume=False):
            print("READY", flush=True)
            time.sleep(60)
    """)
    try:
        with pytest.raises(FolderBusy, match=f"{run}: another llmft process \\(pid {holder.pid}\\)"):
            train(make_cfg(data_dir, run, llama_base))
    finally:
        _kill(holder)
    assert sorted(p.name for p in run.iterdir()) == [folders.MARKER]     # the refused run wrote nothing
    train(make_cfg(data_dir, run, llama_base, max_steps=1))
    assert (run / "summary.json").exists()
    with pytest.raises(LlmftError, match="not empty; pass --resume"):
        train(make_cfg(data_dir, run, llama_base, max_steps=1))


def test_train_refuses_a_folder_it_did_not_create(tmp_path, data_dir, llama_base):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own\n")
    with pytest.raises(LlmftError, match="llmft did not create it"):
        train(make_cfg(data_dir, mine, llama_base))
    with pytest.raises(LlmftError, match="llmft did not create it"):
        train(make_cfg(data_dir, tmp_path.parent / tmp_path.name / "mine", llama_base, resume=True))
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]


@pytest.fixture
def own_data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    records = repeat_records(24)
    write_jsonl(folder / "train.jsonl", records[:20])
    write_jsonl(folder / "dev.jsonl", records[20:])
    return folder


def test_resume_refuses_changed_data_unless_allowed_and_keeps_the_old_hash(tmp_path, own_data, llama_base):
    """Item 5: --resume after the data changed trained on the new data and overwrote the manifest's hash."""
    run = tmp_path / "run"
    assert train(make_cfg(own_data, run, llama_base, **STOP), stop_after=1) is None
    first = json.loads((run / "manifest.json").read_text())["data"]
    write_jsonl(own_data / "train.jsonl", repeat_records(24)[4:])
    with pytest.raises(LlmftError, match=r"training data changed .*train.jsonl has new content.*--allow-data-change"):
        train(make_cfg(own_data, run, llama_base, resume=True, **STOP))
    assert json.loads((run / "manifest.json").read_text())["data"] == first
    summary = train(make_cfg(own_data, run, llama_base, resume=True, allow_data_change=True, **STOP))
    assert summary["resumed_from_step"] == 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"] != first
    assert manifest["data_history"] == [{"data": first, "until_step": 1}]


def test_resume_accepts_the_same_folder_spelled_differently(tmp_path, own_data, llama_base, monkeypatch):
    """Item 5: ./runs/x and an absolute path to it were refused as 'changed settings'."""
    monkeypatch.chdir(tmp_path)
    assert train(make_cfg("data", "./runs/x", llama_base, **STOP), stop_after=1) is None
    half = tmp_path / "runs" / "x" / "checkpoints" / f".step-2{folders.TMP_TAG}killed"
    half.mkdir()                                  # what a kill during a checkpoint write leaves
    (half / "optimizer.pt").write_bytes(b"partial")
    summary = train(make_cfg(str(own_data), str(tmp_path / "runs" / "x"), llama_base, resume=True, **STOP))
    assert summary["resumed_from_step"] == 1 and summary["steps"] == 3
    assert not half.exists()


def test_resume_still_refuses_another_data_folder(tmp_path, own_data, llama_base):
    run = tmp_path / "run"
    train(make_cfg(own_data, run, llama_base, **STOP), stop_after=1)
    other = tmp_path / "other"
    shutil.copytree(own_data, other)
    with pytest.raises(LlmftError, match="(?s)needs the same settings.*- data:"):
        train(make_cfg(other, run, llama_base, resume=True, **STOP))


KILL_POINTS = {
    "setup": lambda run: (run / folders.MARKER).exists(),
    "steps": lambda run: (run / "checkpoints" / "step-4").exists(),
    "checkpoint write": lambda run: any(folders.TMP_TAG in p.name for p in (run / "checkpoints").glob(".*")),
    "final writes": lambda run: (run / "adapter").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_train_killed_anywhere_resumes_to_a_complete_run_and_leaves_no_temporaries(tmp_path, own_data, llama_base,
                                                                                     point):
    """`llmft train` SIGKILLed when the run folder shows a point of its run (setup, steps, a checkpoint being
    written, the final writes), then `--resume`: a complete run folder and none of llmft's temporaries or locks."""
    import subprocess
    import sys
    import time

    from test_folders import SRC

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "llmft", "train", "--data", str(own_data), "--out", str(run), "--model",
            str(llama_base), "--max-steps", "12", "--save-every", "1", "--batch-tokens", "256", "--max-length", "64",
            "--lora-r", "4", "--eval-every", "0", "--bf16", "false"]
    env = {**os.environ, "PYTHONPATH": SRC, "LLMFT_NO_PROGRESS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = KILL_POINTS[point]
    while proc.poll() is None and not (run.exists() and reached(run)):
        time.sleep(0.01)
    if proc.poll() is None:     # a run that finished between two looks has nothing left to kill (nor its pid)
        proc.kill()
    proc.wait()
    if not (run / "summary.json").exists():
        resumed = subprocess.run(argv + (["--resume"] if (run / "config.yaml").exists() else []), env=env,
                                 capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    leftovers = [str(p) for p in tmp_path.rglob("*")
                 if any(tag in p.name for tag in folders.TEMP_TAGS + (folders.LOCK_TAG,))]
    assert leftovers == []
