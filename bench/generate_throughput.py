"""Generated tokens per second of llmft.evaluation.generate on the embedded model (SmolLM2-135M-Instruct), greedy, at several
batch sizes. Prompts: real Alpaca records rendered with the alpaca template. Tokens counted are the ones kept
(up to and excluding the stop token), so rows that stop early do not inflate the figure.

    .venv/bin/python bench/generate_throughput.py [--batch-sizes 1,16] [--prompts 32] [--max-new-tokens 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from llmft.evaluation.generate import GenerationOptions, generate_tokens
from llmft.training.model import load_model, load_tokenizer
from llmft.data.prompts import render

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "raw" / "alpaca" / "alpaca_data.json"


def alpaca_prompts(n: int, path: Path = ALPACA) -> list[str]:
    items = json.loads(Path(path).read_text(encoding="utf-8"))[:n]
    return [render({"instruction": it["instruction"], "input": it["input"], "output": it["output"]}, "alpaca")[0]
            for it in items]


def random_model(folder: str, dtype: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=getattr(torch, dtype))


def measure(model, tokenizer, prompts, batch_size: int, max_new_tokens: int) -> dict:
    options = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size)
    generate_tokens(model, tokenizer, prompts[:batch_size], options)   # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = generate_tokens(model, tokenizer, prompts, options)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    generated = sum(len(t) for t in tokens)
    return {"batch_size": batch_size, "prompts": len(prompts), "generated_tokens": generated,
            "seconds": round(seconds, 3), "tokens_per_s": round(generated / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on CUDA, else fp32)")
    parser.add_argument("--alpaca", default=str(ALPACA), help="Alpaca JSON file the prompts come from")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights from the model folder's config.json (same architecture and speed, "
                             "but every row runs to --max-new-tokens); for machines the weights cannot reach")
    args = parser.parse_args()
    os.environ.setdefault("LLMFT_NO_PROGRESS", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    tokenizer = load_tokenizer(args.model)
    model = (random_model(args.model, dtype) if args.random_init else load_model(args.model, dtype=dtype))
    model = model.to(device).eval()
    prompts = alpaca_prompts(args.prompts, args.alpaca)
    machine = (torch.cuda.get_device_name() if device == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(json.dumps({"model": args.model, "random_init": args.random_init, "device": device, "machine": machine,
                      "dtype": dtype, "max_new_tokens": args.max_new_tokens, "torch": torch.__version__}))
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        print(json.dumps(measure(model, tokenizer, prompts, batch_size, args.max_new_tokens)), flush=True)


if __name__ == "__main__":
    main()
