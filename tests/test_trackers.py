"""`--report-to`: experiment trackers through Accelerate, with file or offline stores inside the run folder."""
from __future__ import annotations

import importlib.util
import re

import pytest

from llmft.cli import build_parser
from llmft.config import TrainConfig
from llmft.errors import LlmftError
from llmft.training.trackers import parse_report_to, tracker_names
from llmft.training.trainer import train
from test_train import make_cfg, metrics, repeat_records, write_jsonl
from tiny_models import save_tiny_model


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")         # the tracker sets it too (for the test's client)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)                  # anything written to the working folder would show up here


@pytest.fixture
def setup(tmp_path, smol_tokenizer):
    data = tmp_path / "data"
    data.mkdir()
    records = repeat_records(12)
    write_jsonl(data / "train.jsonl", records[:10])
    write_jsonl(data / "dev.jsonl", records[10:])
    return data, save_tiny_model(tmp_path / "base", smol_tokenizer, "llama")


def test_names_parse_and_the_tensorboard_key_still_works():
    assert parse_report_to(" MLflow, wandb,mlflow ") == ["mlflow", "wandb"]
    assert parse_report_to("") == [] and parse_report_to("none") == []
    assert tracker_names(TrainConfig(tensorboard=True, report_to="mlflow")) == ["tensorboard", "mlflow"]
    with pytest.raises(LlmftError, match="unknown tracker 'comet'"):
        parse_report_to("mlflow,comet")
    problems = TrainConfig(data="d", out="o", report_to="neptune").validate()
    assert any("unknown tracker 'neptune'" in p for p in problems)
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--report-to", "tensorboard,mlflow"])
    assert args.report_to == "tensorboard,mlflow"


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (llmft[trackers])")
def test_mlflow_records_the_loss_in_the_run_folder(tmp_path, setup):
    from mlflow.tracking import MlflowClient

    data, base = setup
    run = tmp_path / "run"
    train(make_cfg(data, run, base, max_steps=3, eval_every=2, report_to="mlflow"))
    store = run / "mlruns"
    assert store.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cache", "data", "run"]   # nothing in the cwd
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("llmft")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.data.tags["mlflow.runName"] == "run"
    losses = [(m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, "train/loss")]
    expected = [(m["step"], m["loss"]) for m in metrics(run) if "loss" in m]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], abs=1e-6)
    dev = client.get_metric_history(mlflow_run.info.run_id, "dev/loss")
    assert [m.step for m in dev] == [0, 2, 3]
    assert mlflow_run.data.params["lora_r"] == "4" and mlflow_run.data.params["report_to"] == "mlflow"
    assert mlflow_run.info.status == "FINISHED"


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (llmft[trackers])")
def test_mlflow_tracking_uri_from_the_environment_wins(tmp_path, setup, monkeypatch):
    data, base = setup
    elsewhere = tmp_path / "team-store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere.as_uri())
    train(make_cfg(data, tmp_path / "run", base, max_steps=1, report_to="mlflow"))
    assert elsewhere.is_dir() and not (tmp_path / "run" / "mlruns").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (llmft[trackers])")
def test_wandb_offline_and_tensorboard_write_into_the_run_folder(tmp_path, setup):
    data, base = setup
    run = tmp_path / "run"
    train(make_cfg(data, run, base, max_steps=2, tensorboard=True, report_to="wandb"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    (log,) = (run / "wandb").glob("offline-run-*/*.wandb")
    # history rows (and the running summary, which repeats them) are protobuf records: key "train/loss", then
    # field 16 (value_json) with the number as text, after a one-byte length (the byte after it may be any tag,
    # "+" included, so the length and not the digits says where the number ends)
    raw = log.read_bytes()
    found = []
    for key in re.finditer(rb"train/loss\x82\x01", raw):
        length = raw[key.end()]
        assert length < 128, "value_json longer than a one-byte varint"
        found.append(raw[key.end() + 1 : key.end() + 1 + length])
    logged = [float(v) for v in dict.fromkeys(found)]
    assert logged == pytest.approx([m["loss"] for m in metrics(run) if "loss" in m], abs=1e-6)


def test_a_missing_tracker_package_is_a_clear_error(tmp_path, setup, monkeypatch):
    import llmft.training.trackers as trackers

    data, base = setup
    monkeypatch.setitem(trackers.MODULES, "trackio", "no_such_module_for_llmft")
    with pytest.raises(LlmftError, match=r"--report-to trackio needs the trackio package: pip install 'llmft\[trackers\]'"):
        train(make_cfg(data, tmp_path / "run", base, report_to="trackio"))
