"""One-GPU check of train.py's distributed paths (CPU cannot run Accelerate's FSDP): the same 4-step LoRA run on the
embedded SmolLM2-135M, fp32, as a plain process, under DDP (torchrun, 1 process) and under FSDP1 / FSDP2
(`accelerate launch --use_fsdp`, 1 process, stopped after step 2 and resumed). Every run must log the same losses
and save the same adapter as the plain one, and its manifest must name the engine that ran it.

    .venv/bin/python scripts/gpu_check_distributed.py [WORK_DIR] [RUN,...]   # exit 0 = all match; prints a table

RUN names: plain (always run first, the reference), ddp, fsdp1, fsdp2. $LLMFT_CHECK_MODEL replaces the model (a
local HF folder, e.g. a tiny one to try the script on CPU, where only plain and ddp run and ddp reads MULTI_CPU).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "piano", "lemon", "orbit", "candle", "maple", "zebra"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--use_fsdp", "--fsdp_auto_wrap_policy",
          "TRANSFORMER_BASED_WRAP", "--fsdp_cpu_ram_efficient_loading", "false", "--fsdp_use_orig_params", "true"]
RUNS = {   # name: (command prefix, expected manifest "distributed", expected "engine", stop and resume)
    "plain": ([sys.executable], "NO", "CausalLMLoss", False),
    "ddp": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"], "MULTI_GPU",
            "DistributedDataParallel", False),
    "fsdp1": (LAUNCH + ["--fsdp_version", "1"], "FSDP", "FullyShardedDataParallel", True),
    "fsdp2": (LAUNCH + ["--fsdp_version", "2"], "FSDP", "FSDPCausalLMLoss", True),
}


def write_data(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": f"Repeat {WORDS[i % 12]}.", "input": "",
             "output": " ".join([WORDS[i % 12]] * (i % 12 + 1))} for i in range(72)]
    for name, part in (("train.jsonl", rows[:64]), ("dev.jsonl", rows[64:])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))


def run(name: str, work: Path) -> float:
    prefix, _, _, stop_and_resume = RUNS[name]
    model = os.environ.get("LLMFT_CHECK_MODEL", "smollm2-135m")
    cfg = dict(data=str(work / "data"), out=str(work / name), model=model, max_steps=4, batch_tokens=1024,
               max_length=256, grad_accum=2, lora_r=8, lora_alpha=16, lora_dropout=0.0, bf16="false", lr=1e-3,
               warmup_ratio=0.0, eval_every=2, save_every=0, seed=0)
    env = {**os.environ, "LLMFT_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    for options in ([{"stop_after": 2}, {}] if stop_and_resume else [{}]):
        result = subprocess.run(prefix + [str(WORKER), json.dumps(cfg), json.dumps(options)], env=env,
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{name} failed:\n{result.stderr[-4000:]}")
        cfg["resume"] = True
    return time.perf_counter() - started


def compare(name: str, work: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file

    _, distributed, engine, _ = RUNS[name]
    problems = []
    manifest = json.loads((work / name / "manifest.json").read_text())
    if (manifest["distributed"], manifest["engine"]) != (distributed, engine):
        problems.append(f"ran as {manifest['distributed']}/{manifest['engine']}, expected {distributed}/{engine}")
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (work / "plain" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, reference, strict=True):
        for key in ("loss", "dev_loss", "grad_norm"):
            if key in b and abs(a[key] - b[key]) > 1e-4:
                problems.append(f"step {b['step']} {key}: {a[key]} vs {b[key]}")
    ours = load_file(work / name / "adapter" / "adapter_model.safetensors")
    theirs = load_file(work / "plain" / "adapter" / "adapter_model.safetensors")
    if ours.keys() != theirs.keys():
        problems.append("adapter keys differ")
    for key in ours.keys() & theirs.keys():
        if not torch.allclose(ours[key], theirs[key], rtol=1e-3, atol=1e-4):
            problems.append(f"adapter {key} differs by {(ours[key] - theirs[key]).abs().max():.2e}")
    return problems


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llmft-gpu-check")
    write_data(work / "data")
    chosen = sys.argv[2].split(",") if len(sys.argv) > 2 else list(RUNS)
    failed = False
    for name in ["plain"] + [n for n in chosen if n != "plain"]:
        seconds = run(name, work)
        problems = compare(name, work) if name != "plain" else []
        failed |= bool(problems)
        print(f"{name:6s} {seconds:6.1f}s  {'OK' if not problems else 'MISMATCH: ' + '; '.join(problems[:5])}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
