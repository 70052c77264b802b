"""bench/gpu_train_throughput.py is the one prepared GPU run of issue 15; no GPU is lent here, so its plumbing runs
on CPU with a tiny random Llama: every contender trains, on the same text, and the results carry what the table
needs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_train_throughput.py"


@pytest.mark.slow
def test_gpu_throughput_script_runs_every_cpu_contender_on_the_same_tokens(tmp_path, raw_dir):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--shape", "tiny", "--device", "cpu", "--records", "24",
         "--epochs", "1", "--max-length", "128", "--alpaca", str(raw_dir / "alpaca" / "alpaca_data.json"),
         "--contenders", "llmft-lora,llmft-full,trl-lora,trl-full"],
        capture_output=True, text=True, timeout=800)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["contender"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(rows) == {"llmft-lora", "llmft-full", "trl-lora", "trl-full"}
    assert not [r for r in rows.values() if "failed" in r]
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["steps"] >= 1
        assert row["setup"]["records"] == 24 and row["setup"]["shape"] == "tiny"
    # the same examples reach every contender: real tokens agree within TRL's packing truncation
    tokens = [row["real_tokens"] for row in rows.values()]
    assert max(tokens) <= 1.02 * min(tokens)
    assert rows["llmft-full"]["trainable_params"] == rows["llmft-full"]["params"]
    assert rows["llmft-lora"]["trainable_params"] < rows["llmft-lora"]["params"] / 10
    assert "| llmft-lora | lora |" in (out / "table.md").read_text()
