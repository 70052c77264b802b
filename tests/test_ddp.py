"""Two CPU processes under torchrun (gloo) train exactly like one process with the same global batch: through
Accelerate's DDP, and through train.py's FSDP path (FSDP2 on CPU, stopped and resumed), including a step in which
rank 1 has no micro-batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmft.config import TrainConfig, to_dict
from llmft.training.trainer import train
from test_train import metrics, repeat_records, write_jsonl
from tiny_models import save_tiny_model, tiny_model

WORKER = Path(__file__).with_name("ddp_worker.py")
SHORT_STEP = 2      # the last of 3 steps keeps 1 of its 4 micro-batches: rank 1 runs only a filler pass


@pytest.fixture(scope="module")
def setting(tmp_path_factory, smol_tokenizer):
    root = tmp_path_factory.mktemp("ddp")
    base = save_tiny_model(root / "base", smol_tokenizer, "qwen2")
    data = root / "data"
    data.mkdir()
    records = repeat_records(24)
    write_jsonl(data / "train.jsonl", records[:20])
    write_jsonl(data / "dev.jsonl", records[20:])
    # 3 steps of 4 micro-batches run past the end of the first epoch (8 packed micro-batches).
    common = dict(data=str(data), model=str(base), max_steps=3, batch_tokens=128, max_length=64, lora_r=4,
                  lora_alpha=8, lora_dropout=0.0, bf16="false", lr=1e-2, warmup_ratio=0.0, eval_every=2,
                  save_every=0)
    return root, common


@pytest.fixture(scope="module")
def one_process(setting) -> Path:
    """The reference: one process, grad_accum 4, the same shortened step."""
    import ddp_worker
    import llmft.training.trainer

    root, common = setting
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMFT_CACHE", str(root / "cache"))
    mp.setattr(llmft.training.trainer, "step_micro_batches", llmft.training.trainer.step_micro_batches)   # undone afterwards
    ddp_worker.shorten_step(SHORT_STEP)
    try:
        train(TrainConfig(out=str(root / "one"), grad_accum=4, **common))
    finally:
        mp.undo()
    return root / "one"


def run_two_processes(cfg: TrainConfig, cache: Path, **options) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLMFT_NO_PROGRESS": "1", "LLMFT_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(WORKER), json.dumps(to_dict(cfg)), json.dumps(options)], env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]


def assert_same_training(two: Path, one: Path) -> None:
    two_rows, one_rows = metrics(two), metrics(one)
    assert [r["step"] for r in two_rows] == [r["step"] for r in one_rows] == [0, 1, 2, 2, 3, 3]
    for a, b in zip(two_rows, one_rows):
        for key in ("loss", "dev_loss", "grad_norm"):
            if key in a:
                assert abs(a[key] - b[key]) < 2e-5, (key, a, b)
        for key in ("trainable_tokens", "real_tokens", "dev_tokens"):
            assert a.get(key) == b.get(key)
    a = load_file(two / "adapter" / "adapter_model.safetensors")
    b = load_file(one / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2    # lora_A and lora_B of 7 projections in 2 layers
    for name in a:
        # Adam moves each weight by ~lr = 1e-2 per step whatever its gradient size, so float summation order
        # (two processes vs one, 1 vs 2 threads) can shift a weight with a near-zero gradient by ~1e-5
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)


def test_two_processes_under_ddp_match_one_process_with_the_same_global_batch(setting, one_process):
    root, common = setting
    run_two_processes(TrainConfig(out=str(root / "ddp"), grad_accum=2, **common), root / "cache",
                      short_step=SHORT_STEP)
    assert_same_training(root / "ddp", one_process)
    manifest = json.loads((root / "ddp" / "manifest.json").read_text())
    assert manifest["distributed"] == "MULTI_CPU" and manifest["engine"] == "DistributedDataParallel"
    assert manifest["world_size"] == 2 and manifest["plan"] == {"micro_per_step": 4, "micro_per_epoch": 8,
                                                                "total_steps": 3}
    # the short step trained on one micro-batch: fewer tokens than a full step of four
    rows = [r for r in metrics(root / "ddp") if "loss" in r]
    assert rows[2]["trainable_tokens"] - rows[1]["trainable_tokens"] < rows[1]["trainable_tokens"] / 2


def test_ranks_with_different_step_times_refit_to_the_same_total(setting):
    """Rank 0 measures 1 s a step, rank 1 2 s: both re-fit to what the slower leaves (15 s: 7 steps, not 12). Ranks
    that disagreed would run different numbers of collectives and hang."""
    root, common = setting
    cfg = TrainConfig(out=str(root / "limited"), grad_accum=2, **{**common, "max_steps": 12, "eval_every": 0},
                      time_limit_minutes=0.25)
    run_two_processes(cfg, root / "cache", ticks=[1.0, 2.0])
    summary = json.loads((root / "limited" / "summary.json").read_text())
    assert summary["steps"] == 7 and summary["refits"][0] == {"step": 3, "mean_step_s": 2.0, "from": 12, "to": 7}


@pytest.mark.slow
def test_two_processes_under_fsdp2_match_one_process_across_a_resume(setting, one_process):
    """Sharded parameters and optimizer state: the step-2 checkpoint is gathered to full tensors, and the resumed
    run loads it back into the shards."""
    root, common = setting
    cfg = TrainConfig(out=str(root / "fsdp"), grad_accum=2, **common)
    run_two_processes(cfg, root / "cache", short_step=SHORT_STEP, fsdp2=True, stop_after=2)
    assert not (root / "fsdp" / "adapter").exists()
    saved = load_file(root / "fsdp" / "checkpoints" / "step-2" / "trainable.safetensors")
    adapter = load_file(one_process / "adapter" / "adapter_model.safetensors")
    assert len(saved) == 28 and sum(t.numel() for t in saved.values()) == sum(t.numel() for t in adapter.values())
    assert all(t.shape[0] == 4 for name, t in saved.items() if "lora_A" in name)     # gathered, not Shard(0)
    resumed = TrainConfig(**{**to_dict(cfg), "resume": True})
    run_two_processes(resumed, root / "cache", short_step=SHORT_STEP, fsdp2=True)
    assert json.loads((root / "fsdp" / "summary.json").read_text())["resumed_from_step"] == 2
    manifest = json.loads((root / "fsdp" / "manifest.json").read_text())
    assert manifest["distributed"] == "FSDP" and manifest["engine"] == "FSDPCausalLMLoss"
    assert_same_training(root / "fsdp", one_process)


# ---------------------------------------------------------------- pieces, in one process

def test_each_rank_runs_as_many_passes_as_the_busiest_one():
    from llmft.training.plan import rank_passes

    rows = [[[0, 1], [2]], [], [[3]]]
    assert rank_passes(rows, 0) == [[0, 1], [2]]
    assert rank_passes(rows, 1) == [None, None]
    assert rank_passes(rows, 2) == [[3], None]
    assert rank_passes([[]], 0) == [None]


@pytest.mark.parametrize("packing", [True, False])
def test_a_filler_pass_reaches_every_trainable_weight_and_adds_nothing(packing):
    from llmft.training.batching import Batcher, model_inputs
    from llmft.training.losses import CausalLMLoss
    from llmft.training.tokenize import Example
    from llmft.training.plan import filler_batch

    import numpy as np

    example = Example(np.arange(5, dtype=np.int32), np.array([-100, -100, 7, 8, 9], np.int32), 3, False)
    batcher = Batcher([example], packing=packing, batch_tokens=64, batch_size=1, seed=0, pad_id=0)
    batch = filler_batch(batcher, token_id=2)
    assert batch["input_ids"].tolist() == [[2, 2]] and batch["labels"].tolist() == [[-100, 2]]
    model = tiny_model("qwen2").train()
    loss_sum, n = CausalLMLoss(model)(model_inputs(batch), batch["labels"])
    assert n == 1 and torch.isfinite(loss_sum)
    (loss_sum * 0.0).backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_fsdp1_and_qlora_under_fsdp_are_refused_with_the_way_out():
    from types import SimpleNamespace

    from llmft.errors import LlmftError
    from llmft.training.distributed import check_fsdp

    cfg = TrainConfig(data="d", out="o")
    check_fsdp(SimpleNamespace(fsdp_version=2, use_orig_params=None), cfg)
    for use_orig_params in (True, False):
        with pytest.raises(LlmftError, match="fsdp_version: 2"):
            check_fsdp(SimpleNamespace(fsdp_version=1, use_orig_params=use_orig_params), cfg)
    with pytest.raises(LlmftError, match="qlora cannot run under FSDP"):
        check_fsdp(SimpleNamespace(fsdp_version=2, use_orig_params=None), TrainConfig(data="d", out="o", qlora=True))
