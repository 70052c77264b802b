"""run.py (the run folder's writers) and the `llmft train` command line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from llmft.training import run_folder as runfolder
from llmft.cli import main as cli_main
from llmft.errors import LlmftError
from test_train import repeat_records, write_jsonl
from tiny_models import save_tiny_model


# ---------------------------------------------------------------- run.py

def test_metrics_writer_starts_fresh_or_keeps_the_steps_a_resume_keeps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = runfolder.MetricsWriter(path)
    for step in (1, 2, 3):
        writer.write({"step": step, "loss": 1.0 / step})
    writer.write({"step": 2, "dev_loss": 0.7})   # out of order on purpose: kept by step, not by position
    writer.close()
    resumed = runfolder.MetricsWriter(path, keep_until_step=2)
    resumed.write({"step": 3, "loss": 0.25})
    resumed.close()
    assert runfolder.read_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
                                            {"step": 2, "dev_loss": 0.7}, {"step": 3, "loss": 0.25}]
    runfolder.MetricsWriter(path).close()
    assert path.read_text() == ""


def test_loss_plot_is_a_png(tmp_path):
    rows = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 11)] + [{"step": 10, "dev_loss": 2.5}]
    runfolder.plot_loss(rows, tmp_path / "loss.png")
    data = (tmp_path / "loss.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob(".loss.png.*"))


def test_prepare_run_dir_refuses_what_it_should(tmp_path):
    assert runfolder.prepare_run_dir(tmp_path / "new", resume=False).is_dir()
    assert runfolder.prepare_run_dir(tmp_path / "new", resume=False).is_dir()     # empty: fine
    with pytest.raises(LlmftError, match="nothing to resume"):
        runfolder.prepare_run_dir(tmp_path / "missing", resume=True)
    (tmp_path / "new" / "summary.json").write_text("{}")
    with pytest.raises(LlmftError, match="already finished"):
        runfolder.prepare_run_dir(tmp_path / "new", resume=True)
    with pytest.raises(LlmftError, match="not empty"):
        runfolder.prepare_run_dir(tmp_path / "new", resume=False)


def test_manifest_records_versions_commit_and_data_hashes(tmp_path):
    from llmft.config import TrainConfig

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    runfolder.write_manifest(tmp_path, TrainConfig(seed=7), [data], {"world_size": 1})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["world_size"] == 1
    assert manifest["data"] == {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}
    assert set(manifest["packages"]) >= {"python", "torch", "transformers", "peft", "accelerate"}
    assert manifest["git_commit"] is None or len(manifest["git_commit"]) == 40


# ---------------------------------------------------------------- llmft train

@pytest.fixture(scope="module")
def setup(tmp_path_factory, smol_tokenizer):
    root = tmp_path_factory.mktemp("cli")
    base = save_tiny_model(root / "base", smol_tokenizer, "llama")
    data = write_jsonl(root / "data.jsonl", repeat_records(24))
    return root, base, data


def test_cli_precedence_file_then_set_then_flags(setup, tmp_path, monkeypatch, capsys):
    root, base, data = setup
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": str(base), "data": str(data), "lora_r": 2, "lora_alpha": 4,
                                      "max_steps": 5, "max_length": 64, "batch_tokens": 128, "lr": 0.1,
                                      "bf16": "false", "eval_every": 0, "save_every": 0}))
    out = tmp_path / "run"
    code = cli_main(["train", "--config", str(config), "--out", str(out), "--set", "lr=0.01", "--set",
                     "weight_decay=0.1", "--max-steps", "1", "--lora-alpha", "8"])
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["lora_r"], saved["lora_alpha"], saved["max_steps"], saved["lr"], saved["weight_decay"]) == (
        2, 8, 1, 0.01, 0.1)
    printed = capsys.readouterr().out
    assert printed.startswith(f"run: {out}\nsteps 1 (")
    assert json.loads((out / "summary.json").read_text())["steps"] == 1


def test_cli_bad_config_lists_every_problem(setup, tmp_path, capsys):
    _, base, data = setup
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"lora_r": 0, "template": "vicuna"}))
    code = cli_main(["train", "--config", str(config), "--data", str(data), "--set", "lr=-1", "--set",
                     "max_length=8192"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("llmft: error: invalid TrainConfig:")
    for problem in ("template must be alpaca, superni or chat, got 'vicuna'", "lora_r must be positive, got 0",
                    "lr must be positive, got -1.0", "batch_tokens (4096) must be at least max_length (8192)",
                    "out is required"):
        assert problem in err


def test_cli_unknown_set_key_is_named(setup, capsys):
    _, _, data = setup
    code = cli_main(["train", "--data", str(data), "--out", "x", "--set", "lora_rank=8"])
    assert code == 2 and "unknown key(s) lora_rank" in capsys.readouterr().err


def test_cli_batch_size_means_padded_batches(setup, tmp_path, monkeypatch):
    root, base, data = setup
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert cli_main(["train", "--data", str(data), "--out", str(out), "--model", str(base), "--batch-size", "4",
                     "--max-steps", "1", "--max-length", "64", "--bf16", "false", "--eval-every", "0"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["packing"] is False and saved["batch_size"] == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["packing_attention"] is None and manifest["plan"]["micro_per_epoch"] == 6   # 23 examples / 4
