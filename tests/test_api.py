"""The Python API (`llmft.prepare/train/evaluate/generate/merge/run`): config objects or keyword arguments in,
results out, and no process-wide setting changed behind the caller's back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmft
from llmft.config import DataConfig, TrainConfig
from llmft.errors import LlmftError
from tiny_models import save_tiny_model

API = ("prepare", "train", "evaluate", "generate", "merge", "run", "tune_cpu")


def test_import_is_light_and_leaves_the_environment_alone():
    code = ("import os, sys; before = dict(os.environ); import llmft; "
            "print('torch' in sys.modules, before == dict(os.environ))")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_help_lists_the_api():
    text = subprocess.run([sys.executable, "-c", "import llmft; help(llmft)"], capture_output=True, text=True,
                          env={**os.environ, "PAGER": "cat"}, check=True).stdout
    for name in API:
        assert f"{name}(" in text, name
    assert set(API) <= set(llmft.__all__)


def test_keyword_errors_name_the_key(tmp_path):
    with pytest.raises(LlmftError, match="no_such_key"):
        llmft.prepare(out=tmp_path / "d", no_such_key=1)
    with pytest.raises(LlmftError, match="lora_r"):
        llmft.train(data="x", out=str(tmp_path / "r"), lora_r="many")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, smol_tokenizer, raw_dir):
    """prepare -> train through the API, with a config object plus keyword overrides."""
    import torch

    root = tmp_path_factory.mktemp("api")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMFT_CACHE", str(root / "cache"))
    manifest = llmft.prepare(DataConfig(workers=1, seed=1), out=root / "data",
                             alpaca=[str(raw_dir / "alpaca" / "alpaca_data.json")], max_chars=600)
    base = save_tiny_model(root / "llama", smol_tokenizer, "llama")
    threads = torch.get_num_threads()
    cfg = TrainConfig(data=str(root / "data"), out=str(root / "run"), model=str(base), max_steps=2,
                      batch_tokens=512, max_length=128, lora_r=4, lora_alpha=8, eval_every=0, save_every=0,
                      dev_limit=4, bf16="false")
    summary = llmft.train(cfg, lr=1e-3)
    assert torch.get_num_threads() == threads       # the API does not retune the process
    yield root, manifest, summary
    mp.undo()


def test_prepare_and_train_return_their_results(tiny_run):
    root, manifest, summary = tiny_run
    assert manifest["counts"]["splits"]["train"] > 0
    assert json.loads((root / "data" / "manifest.json").read_text())["counts"] == manifest["counts"]
    assert summary["steps"] == 2
    saved = (root / "run" / "config.yaml").read_text()
    assert "lr: 0.001" in saved and "lora_r: 4" in saved


def test_generate_evaluate_and_merge_on_the_run(tiny_run):
    root, _, _ = tiny_run
    answers = llmft.generate(root / "run", ["Name a colour.", {"instruction": "Add", "input": "2 and 3"}],
                             max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    scores = llmft.evaluate(root / "run", limit=3, max_new_tokens=4, base=False)
    assert scores["tuned"]["n"] == 3
    merged = llmft.merge(root / "run", out=root / "merged")
    assert (Path(merged) / "config.json").exists()
