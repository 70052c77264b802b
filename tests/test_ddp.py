"""Two CPU processes under torchrun (gloo) train exactly like one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from llmft.config import TrainConfig, to_dict
from llmft.train import train
from test_train import metrics, repeat_records, write_jsonl
from tiny_models import save_tiny_model

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    base = save_tiny_model(tmp_path / "base", smol_tokenizer, "qwen2")
    data = tmp_path / "data"
    data.mkdir()
    records = repeat_records(24)
    write_jsonl(data / "train.jsonl", records[:20])
    write_jsonl(data / "dev.jsonl", records[20:])
    # 3 steps of 4 micro-batches run past the end of the first epoch (8 packed micro-batches).
    common = dict(data=str(data), model=str(base), max_steps=3, batch_tokens=128, max_length=64, lora_r=4,
                  lora_alpha=8, lora_dropout=0.0, bf16="false", lr=1e-2, warmup_ratio=0.0, eval_every=2,
                  save_every=0)
    two = TrainConfig(out=str(tmp_path / "two"), grad_accum=2, **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLMFT_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(WORKER), json.dumps(to_dict(two))], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = TrainConfig(out=str(tmp_path / "one"), grad_accum=4, **common)
    train(one)

    two_rows, one_rows = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert [r["step"] for r in two_rows] == [r["step"] for r in one_rows] == [0, 1, 2, 2, 3, 3]
    for a, b in zip(two_rows, one_rows):
        for key in ("loss", "dev_loss", "grad_norm"):
            if key in a:
                assert abs(a[key] - b[key]) < 2e-5, (key, a, b)
        for key in ("trainable_tokens", "real_tokens", "dev_tokens"):
            assert a.get(key) == b.get(key)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["plan"] == {"micro_per_step": 4, "micro_per_epoch": 8,
                                                                "total_steps": 3}
    a = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    for name in a:
        # Adam moves each weight by ~lr = 1e-2 per step whatever its gradient size, so float summation order
        # (two processes vs one, 1 vs 2 threads) can shift a weight with a near-zero gradient by ~1e-5
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)
