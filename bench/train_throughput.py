"""Training throughput: llmft vs TRL's SFTTrainer + PEFT on the same work, each in its own process.

    .venv/bin/python bench/train_throughput.py                          # first 400 Alpaca records, all contenders
    .venv/bin/python bench/train_throughput.py --records all            # the whole 2,000-record sample (~40 min TRL)
    .venv/bin/python bench/train_throughput.py --records 40 --contenders llmft --no-write
    .venv/bin/python bench/train_throughput.py --isa avx2 --records 40    # one invocation per ISA setting

The work: the embedded SmolLM2-135M (`llmft.training.model.resolve_model("smollm2-135m")`), the first N records that
`llmft.data.sources` keeps from the Alpaca sample, rendered with the alpaca template by `llmft.data.prompts.render` (TRL gets
them as a prompt-completion dataset, completion-only loss), LoRA r=16 alpha=32 dropout 0.0 (`--lora-dropout`) on all linear layers,
max length 512, one epoch, AdamW lr 2e-4 cosine, 3% warm-up.

ISA (`--isa native|avx512-bf16|avx2`): the children run under that setting's kernel caps (bench/_common.ISA_SETTINGS),
so one machine stands in for a CPU without AMX or without AVX-512. Dtype (`--dtype auto`, the default): each
contender trains in its own faster dtype on this ISA: llmft makes its own choice (`--bf16 auto`: its matmul probe),
TRL gets bf16 (bf16 weights, `bf16=True`) when the child's bf16 matmul peak beats its fp32 one, else fp32;
`--dtype bf16|fp32` forces one for all.

Batches: llmft packs examples into micro-batches of at most 4,096 tokens (batch_tokens=4096 = 8 x max_length; on
CPU train.py runs each as rows of at most max_length, since masked attention costs the square of a row); TRL padding
mode takes 8 sequences per step (padded to the longest of the 8, TRL's default random order), TRL packing mode 8 rows
of 512 packed tokens (best-fit decreasing, padding-free) = the same 4,096-token budget as llmft.

Each contender runs in a child process (same torch thread count, one per core), so its peak RSS (VmHWM) is its own.
Real tokens = the prompt + response tokens of the examples a contender actually fed to the model (no padding), the
same count for every contender. Time = the training loop (llmft `Trainer.fit`, TRL `trainer.train()`), excluding
model loading and tokenization, which are reported separately as the process's total wall time.

MFU: 4 N FLOPs per real token (forward 2N + backward through the activations 2N; the frozen weights get no weight
gradient, the LoRA weight gradients are ~0.5% and attention scores are not counted), N = every parameter (frozen +
LoRA, the tied embedding once), against the best 2048^3 matmul of the dtype the contender trains in, measured in
the same child just before training.

Results: one `## Training throughput, ISA <setting> (<CPU>)` section per setting in BENCHMARKS.md, and a row per
invocation in bench/results/train_throughput.jsonl, from which the summary table (one row per machine and setting,
the latest) at the top of `## Training throughput` is drawn.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# The environment as the user started this script: every contender starts from it, so TRL runs as a TRL user's
# process would; the llmft child gets what llmft's command line adds (GOMP_SPINCOUNT).
USER_ENV = dict(os.environ)
SECTION = "## Training throughput"
RESULTS = _common.REPO / "bench" / "results" / "train_throughput.jsonl"
SUMMARY_BEGIN, SUMMARY_END = "<!-- train throughput summary: begin -->", "<!-- train throughput summary: end -->"
ALPACA = _common.REPO.parent / "shared" / "fixtures" / "raw" / "alpaca" / "alpaca_data.json"
CONTENDERS = ("llmft", "trl-padding", "trl-packing")
DEFAULT_RECORDS = 400
MODEL = "smollm2-135m"
MAX_LENGTH = 512
SEQUENCES_PER_STEP = 8
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}   # dropout: --lora-dropout (default: PEFT's and llmft's 0.0)
LR, WARMUP, SEED = 2e-4, 0.03, 0


# ---------------------------------------------------------------- the shared data (parent)

def write_data(work: Path, alpaca: Path, n_records: int | None) -> dict:
    """The first n kept records, as llmft records (train.jsonl) and as TRL prompt/completion rows."""
    from llmft import io
    from llmft.data.prompts import render
    from llmft.data.records import Record
    from llmft.data.sources import convert

    records, rejects = [], 0
    for item in convert("alpaca", alpaca):
        if isinstance(item, Record):
            records.append(item.to_dict())
            if n_records is not None and len(records) == n_records:
                break
        else:
            rejects += 1
    (work / "llmft-data").mkdir(parents=True, exist_ok=True)
    io.write_jsonl(work / "llmft-data" / "train.jsonl", records)
    # A dev file stops llmft from holding 5% of train.jsonl out; dev_limit=0 then skips dev evaluation entirely.
    io.write_jsonl(work / "llmft-data" / "dev.jsonl", records[:1])
    pairs = [dict(zip(("prompt", "completion"), render(r, "alpaca"))) for r in records]
    io.write_jsonl(work / "trl-prompt-completion.jsonl", pairs)
    return {"records": len(records), "rejects_before_last": rejects}


# ---------------------------------------------------------------- contenders (each in a child process)

def child_start(threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return {"threads": threads, "load_start": _common.loadavg(), "isa": torch.backends.cpu.get_cpu_capability(),
            "isa_env": {k: os.environ[k] for k in _common.ISA_VARIABLES if k in os.environ},
            "bf16_gflops": _common.matmul_gflops(dtype="bfloat16"),
            "fp32_gflops": _common.matmul_gflops(dtype="float32")}


def with_dtype(info: dict, bf16: bool) -> dict:
    """The dtype a contender trains in and the matmul peak of that dtype (MFU's denominator)."""
    return {**info, "dtype": "bf16" if bf16 else "fp32", "peak_gflops": info["bf16_gflops" if bf16 else "fp32_gflops"]}


def run_llmft(work: Path, threads: int, row_tokens: int = 0, dtype: str = "auto") -> dict:
    from llmft.config import TrainConfig
    from llmft.training.plan import row_cap
    from llmft.training.trainer import Trainer

    info = child_start(threads)
    shutil.rmtree(work / "llmft-run", ignore_errors=True)   # a fresh run each invocation, never a resume
    cfg = TrainConfig(data=str(work / "llmft-data"), out=str(work / "llmft-run"), model=MODEL, method="lora",
                      lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      lora_targets="all-linear", template="alpaca", max_length=MAX_LENGTH, packing=True,
                      batch_tokens=SEQUENCES_PER_STEP * MAX_LENGTH, grad_accum=1, epochs=1.0, lr=LR,
                      warmup_ratio=WARMUP, bf16={"auto": "auto", "bf16": "true", "fp32": "false"}[dtype], eval_every=0, save_every=0, dev_limit=0, seed=SEED,
                      row_tokens=row_tokens)
    from llmft.training.cpu import keep_freed_memory_in_heap

    keep_freed_memory_in_heap()      # what the llmft CLI does before training (threads are set by child_start)
    trainer = Trainer(cfg)
    trainer.setup()
    info = with_dtype(info, trainer.bf16)
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = trainer.fit()
    loop_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.params)
    return {**info, "loop_s": loop_s, "cpu_s": cpu_s, "real_tokens": summary["real_tokens"],
            "trainable_tokens": summary["trainable_tokens"], "steps": summary["steps"],
            "examples": len(trainer.train_examples), "final_loss": summary["final_loss"],
            "step_seconds": summary["train_seconds"], "params": params, "trainable_params": trainable,
            "batching": f"packed micro-batches of <= {cfg.batch_tokens} tokens, run as rows of <= "
                        f"{row_cap(cfg, trainer.device, trainer.bf16)}",
            "load_end": _common.loadavg(), "peak_rss_mb": _common.peak_rss_mb()}


def run_trl(work: Path, threads: int, packing: bool, grad_checkpointing: bool, dtype: str = "auto") -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from llmft import io
    from llmft.training.model import resolve_model

    info = child_start(threads)
    bf16 = info["bf16_gflops"] > info["fp32_gflops"] if dtype == "auto" else dtype == "bf16"
    info = with_dtype(info, bf16)
    folder = resolve_model(MODEL)
    rows = list(io.read_jsonl(work / "trl-prompt-completion.jsonl"))
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = SFTConfig(
        output_dir=str(work / ("trl-packing" if packing else "trl-padding")), max_length=MAX_LENGTH,
        packing=packing, completion_only_loss=True, bf16=bf16, use_cpu=True,
        per_device_train_batch_size=SEQUENCES_PER_STEP, gradient_accumulation_steps=1, num_train_epochs=1,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP, weight_decay=0.0, max_grad_norm=1.0,
        gradient_checkpointing=grad_checkpointing, model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
        logging_steps=10, save_strategy="no", report_to="none", seed=SEED, dataloader_num_workers=0,
        disable_tqdm=False)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    counts = {"real": 0, "trainable": 0, "padded": 0}
    trainer = _common.counting_sft_trainer(counts)(model=folder, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 peft_config=peft_config)
    torch.set_num_threads(threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = trainer.train()
    loop_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    batching = (f"{SEQUENCES_PER_STEP} packed rows of {MAX_LENGTH} (bfd, padding-free)" if packing
                else f"{SEQUENCES_PER_STEP} padded sequences")
    return {**info, "loop_s": loop_s, "cpu_s": cpu_s, "real_tokens": counts["real"],
            "trainable_tokens": counts["trainable"],
            "padding_tokens": counts["padded"], "steps": out.global_step, "examples": len(dataset),
            "final_loss": out.training_loss, "params": params, "trainable_params": trainable,
            "batching": batching + (", gradient checkpointing" if grad_checkpointing else ""),
            "load_end": _common.loadavg(), "peak_rss_mb": _common.peak_rss_mb()}


def child_main(args) -> None:
    os.environ.setdefault("LLMFT_NO_PROGRESS", "1")
    work, start = Path(args.work), time.perf_counter()
    if args.child == "llmft":
        result = run_llmft(work, args.threads, args.row_tokens, args.dtype)
    else:
        result = run_trl(work, args.threads, packing=args.child == "trl-packing",
                         grad_checkpointing=args.trl_grad_checkpointing, dtype=args.dtype)
    result.update(contender=args.child, process_s=time.perf_counter() - start)
    Path(args.result).write_text(json.dumps(result, indent=1), encoding="utf-8")


# ---------------------------------------------------------------- the parent

def run_contender(name: str, work: Path, threads: int, args) -> dict:
    result_file = work / f"{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", name, "--work", str(work), "--result", str(result_file),
           "--threads", str(threads), f"--trl-grad-checkpointing={str(args.trl_grad_checkpointing).lower()}",
           f"--lora-dropout={args.lora_dropout}", f"--row-tokens={args.row_tokens}", f"--dtype={args.dtype}"]
    env = {**_common.isa_env(USER_ENV, args.isa), "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if name == "llmft" and "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", "10000")      # what the llmft command line sets before torch loads
    print(f"--- {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, timeout=args.timeout or None)
    if proc.returncode != 0 or not result_file.exists():
        raise SystemExit(f"{name} failed (exit {proc.returncode}); its output is above")
    return json.loads(result_file.read_text(encoding="utf-8"))


def derive(results: dict[str, dict]) -> str | None:
    """tokens/s and MFU per contender; ratios against TRL's better mode. Returns that mode's name."""
    for r in results.values():
        r["tokens_per_s"] = r["real_tokens"] / r["loop_s"]
        r["tokens_per_cpu_s"] = r["real_tokens"] / r["cpu_s"]
        r["mfu"] = 4 * r["params"] * r["tokens_per_s"] / (r["peak_gflops"] * 1e9)
    trl = [n for n in results if n.startswith("trl")]
    best = max(trl, key=lambda n: results[n]["tokens_per_s"]) if trl else None
    for r in results.values():
        if best:
            r["speed_vs_trl"] = r["tokens_per_s"] / results[best]["tokens_per_s"]
            r["rss_vs_trl"] = r["peak_rss_mb"] / results[best]["peak_rss_mb"]
            r["cpu_vs_trl"] = r["tokens_per_cpu_s"] / results[best]["tokens_per_cpu_s"]
    return best


def table(results: dict[str, dict]) -> str:
    lines = ["| contender | batching | examples | steps | real tokens | loop s | real tok/s | vs TRL best | CPU s | "
             "real tok/CPU-s | vs TRL best | peak RSS MiB | vs TRL best | dtype | MFU | peak GFLOP/s (fp32 / bf16) | "
             "load start / end | process s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: "
             "| ---: | --- | ---: |"]
    for name, r in results.items():
        ratio = (lambda key: f"{r[key]:.2f}x" if key in r else "-")
        lines.append(
            f"| {name} | {r['batching']} | {r['examples']:,} | {r['steps']} | {r['real_tokens']:,} | "
            f"{r['loop_s']:.1f} | {r['tokens_per_s']:.1f} | {ratio('speed_vs_trl')} | {r['cpu_s']:.1f} | "
            f"{r['tokens_per_cpu_s']:.1f} | {ratio('cpu_vs_trl')} | {r['peak_rss_mb']:,.0f} | "
            f"{ratio('rss_vs_trl')} | {r['dtype']} | {100 * r['mfu']:.1f}% | "
            f"{r['fp32_gflops']:.0f} / {r['bf16_gflops']:.0f} | "
            f"{r['load_start'][0]:.1f} / {r['load_end'][0]:.1f} | {r['process_s']:.0f} |")
    return "\n".join(lines)


def section_heading(info: dict, isa: str) -> str:
    return f"{SECTION}, ISA {isa} ({info['cpu']})"


def section(results: dict, best: str | None, data: dict, info: dict, command: str, note: str, isa: str) -> str:
    any_result = next(iter(results.values()))
    vers = _common.versions("torch", "transformers", "peft", "trl", "accelerate")
    caps = ", ".join(f"{k}={v}" for k, v in _common.ISA_SETTINGS[isa].items()) or "none (the CPU's own ISA)"
    out = [
        section_heading(info, isa), "",
        f"Command: `{command}`  ",
        f"Date: {info['date']}  ",
        f"Machine: {info['cpu']}, {info['cores']} cores ({', '.join(info['bf16_isa']) or 'no bf16 ISA'}), "
        f"{info['ram_gib']:.0f} GiB RAM; {any_result['threads']} torch thread(s) in every contender  ",
        f"ISA setting: {isa}: {caps}; torch CPU capability in the children: {any_result['isa']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + "  ",
        f"Data: the first {data['records']:,} records llmft.data.sources keeps from the 2,000-record Alpaca sample "
        f"({'the whole sample' if data['all'] else 'a subset; `--records all` for the full epoch'}), alpaca "
        f"template, max length {MAX_LENGTH}, one epoch; LoRA r={LORA['r']} alpha={LORA['alpha']} dropout "
        f"{LORA['dropout']} on all linear layers, {any_result['params'] / 1e6:.1f}M parameters "
        f"({any_result['trainable_params'] / 1e6:.2f}M trainable); each contender in its own faster dtype "
        "(llmft: its matmul probe; TRL: the faster matmul in its child).", "",
        table(results), "",
        "Real tokens: prompt + response tokens fed to the model, no padding (TRL: attention-mask sum, or the packed "
        "row length when padding-free). Loop s: the training loop only (llmft `Trainer.fit`, TRL `trainer.train()`); "
        "process s adds model load and tokenization. Peak RSS: the child process's VmHWM. MFU: 4 x N x real tok/s "
        "over the 2048^3 matmul peak of the contender's dtype, measured in the same child (N = all parameters; "
        "forward 2N + backward through activations 2N, frozen weights get no weight gradient). CPU s: the loop's "
        "process CPU time (all threads); on a shared machine real tokens per CPU-second is the steadier comparison. "
        "Load: 1-minute load average at the start / end of the contender.",
    ]
    if best:
        out += ["", f"TRL's better mode here: **{best}**."]
    if note:
        out += ["", f"Note: {note}"]
    return "\n".join(out) + "\n"


def summary_row(results: dict, best: str | None, data: dict, info: dict, isa: str, command: str) -> dict:
    llmft, trl = results.get("llmft"), results.get(best) if best else None
    row = {"date": info["date"], "cpu": info["cpu"], "isa": isa, "records": data["records"], "command": command}
    if llmft:
        row.update(capability=llmft["isa"], llmft_dtype=llmft["dtype"], peak_gflops=round(llmft["peak_gflops"]),
                   llmft_tokens_per_s=round(llmft["tokens_per_s"], 1), mfu=round(llmft["mfu"], 4),
                   llmft_rss_mb=round(llmft["peak_rss_mb"]))
    if trl:
        row.update(trl_mode=best, trl_dtype=trl["dtype"], trl_tokens_per_s=round(trl["tokens_per_s"], 1),
                   trl_mfu=round(trl["mfu"], 4), trl_rss_mb=round(trl["peak_rss_mb"]))
        if llmft:
            row.update(speed_vs_trl=round(llmft["speed_vs_trl"], 2), rss_vs_trl=round(llmft["rss_vs_trl"], 2))
    return row


def summary_table() -> str:
    """The latest row per (CPU, ISA setting) of the results file."""
    latest: dict[tuple, dict] = {}
    for line in RESULTS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            latest[(row["cpu"], row["isa"])] = row
    lines = ["| CPU | ISA setting (torch capability) | llmft dtype | matmul peak GFLOP/s | llmft real tok/s | MFU | "
             "TRL better mode (dtype) | TRL real tok/s | TRL MFU | llmft vs TRL speed | llmft vs TRL peak RSS | "
             "records | date |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in latest.values():
        trl = r.get("trl_mode")
        lines.append(
            f"| {r['cpu']} | {r['isa']} ({r.get('capability', '?')}) | {r.get('llmft_dtype', '-')} | "
            f"{r.get('peak_gflops', '-')} | {r.get('llmft_tokens_per_s', '-')} | "
            f"{100 * r['mfu']:.1f}% | " + (f"{trl} ({r['trl_dtype']}) | {r['trl_tokens_per_s']} | "
                                           f"{100 * r['trl_mfu']:.1f}% | **{r['speed_vs_trl']:.2f}x** | "
                                           f"{r['rss_vs_trl']:.2f}x | " if trl else "- | - | - | - | - | ")
            + f"{r['records']} | {r['date']} |")
    return "\n".join(lines)


def write_results(results: dict, best: str | None, data: dict, info: dict, args) -> None:
    command = (".venv/bin/python bench/train_throughput.py " + " ".join(sys.argv[1:])).strip()
    _common.update_section(section_heading(info, args.isa),
                           section(results, best, data, info, command, args.note, args.isa))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(summary_row(results, best, data, info, args.isa, command)) + "\n")
    if _common.has_markers(_common.BENCHMARKS, SUMMARY_BEGIN):
        _common.replace_between(_common.BENCHMARKS, SUMMARY_BEGIN, SUMMARY_END, summary_table() + "\n")
    print(f"updated {_common.BENCHMARKS} and {RESULTS}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default=str(DEFAULT_RECORDS), help=f"first N records, or 'all' "
                        f"(default {DEFAULT_RECORDS}: TRL takes ~40 min for all 2,000 on 2 cores)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--out", default=str(_common.REPO / "bench" / "out"))
    parser.add_argument("--alpaca", default=str(ALPACA))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--trl-grad-checkpointing", default="true", choices=("true", "false"),
                        help="TRL's SFTConfig default is true")
    parser.add_argument("--lora-dropout", type=float, default=LORA["dropout"],
                        help="LoRA dropout for every contender (0.0 = the PEFT and llmft default)")
    parser.add_argument("--row-tokens", type=int, default=0,
                        help="llmft: tokens per forward pass of a packed micro-batch (0: llmft's default)")
    parser.add_argument("--isa", default="native", choices=tuple(_common.ISA_SETTINGS),
                        help="run the contenders under this ISA setting's kernel caps (see bench/_common.py)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto: each contender in its own faster dtype")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per contender (0: none)")
    parser.add_argument("--note", default="", help="a remark for BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.trl_grad_checkpointing = args.trl_grad_checkpointing == "true"
    LORA["dropout"] = args.lora_dropout
    if args.child:
        child_main(args)
        return
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    n_records = None if args.records == "all" else int(args.records)
    work = Path(args.out) / "train_throughput"
    work.mkdir(parents=True, exist_ok=True)
    info = _common.machine_info()
    data = {**write_data(work, Path(args.alpaca), n_records), "all": n_records is None}
    results = {name: run_contender(name, work, args.threads, args) for name in contenders}
    best = derive(results)
    (work / "results.json").write_text(json.dumps({"machine": info, "data": data, "results": results}, indent=1))
    print(table(results))
    if not args.no_write:
        write_results(results, best, data, info, args)


if __name__ == "__main__":
    main()
