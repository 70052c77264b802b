"""Generated tokens per second of llmft.evaluation.generate on the embedded model (SmolLM2-135M-Instruct), greedy, at several
batch sizes. Prompts: real Alpaca records rendered with the alpaca template. Tokens counted are the ones kept
(up to and excluding the stop token), so rows that stop early do not inflate the figure.

    .venv/bin/python bench/generate_throughput.py [--batch-sizes 1,16] [--prompts 32] [--max-new-tokens 64]

`--eval-data DIR` measures the generation of `llmft eval` instead: the test split of a prepared folder (the demo's
runs/demo/data) rendered with the superni template, a LoRA adapter (r=16 on every linear layer, seeded random B, so the
tuned path costs what a trained one does), greedy, `--max-new-tokens` 24 and batches of 16 as the demo recipe scores.
It times, alternately and `--repeats` times each, the plain baseline (`model.generate` of the PEFT model on the same
length-sorted left-padded batches, transformers' default dynamic cache) and llmft's evaluation path
(`evaluation.generate.generate_tokens` inside `inference_ready`) on the same fp32 model, and, unless `--eval-dtype
false`, llmft's path on a copy in the dtype `llmft eval` picks by default (bf16 where this CPU's bf16 matmuls measure
faster; base weights in that dtype and the adapter loaded in fp32 as `llmft eval` loads it, then run unmerged in the
base's dtype by `inference_ready`); each row says how
many of its completions equal the baseline's.

    .venv/bin/python bench/generate_throughput.py --eval-data runs/demo/data [--repeats 2]
    .venv/bin/python bench/generate_throughput.py --eval-data RUN/data --k-positive 2 --max-new-tokens 32   # superni
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


def eval_prompts(data: str, tokenizer, limit: int = 0, k_positive: int = 0) -> list[str]:
    from llmft import io

    rows = list(io.read_jsonl(Path(data) / "test.jsonl"))
    rows = rows[:limit] if limit else rows
    return [render(r, "superni", tokenizer=tokenizer, k_positive=k_positive)[0] for r in rows]


def lora_model(name: str):
    from peft import LoraConfig, get_peft_model

    model = load_model(name, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for param_name, param in model.named_parameters():
        if "lora_B" in param_name:
            torch.nn.init.normal_(param, std=0.02)
    return model.eval()


def plain_generate(model, tokenizer, prompts, options: GenerationOptions) -> list[list[int]]:
    """The baseline: model.generate on length-sorted left-padded batches, nothing else."""
    from transformers import GenerationConfig

    from llmft.evaluation.generate import encode_prompt, left_pad, length_sorted_batches, stop_token_ids

    stop = stop_token_ids(tokenizer)
    config = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=False, eos_token_id=stop,
                              pad_token_id=tokenizer.pad_token_id)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    results: list[list[int]] = [[] for _ in prompts]
    with torch.no_grad():
        for batch in length_sorted_batches([len(e) for e in encoded], options.batch_size):
            ids, mask = left_pad([encoded[i] for i in batch], tokenizer.pad_token_id, "cpu")
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row, index in enumerate(batch):
                tokens = out[row, ids.shape[1]:].tolist()
                results[index] = tokens[:next((i for i, t in enumerate(tokens) if t in stop), len(tokens))]
    return results


def llmft_generate(model, tokenizer, prompts, options: GenerationOptions) -> list[list[int]]:
    from llmft.evaluation.generate import inference_ready

    with inference_ready(model) as ready:
        return generate_tokens(ready, tokenizer, prompts, options)


def base_in(model, dtype):
    """The model as `llmft eval` loads it in `dtype`: base weights in `dtype`, the LoRA adapter left in fp32."""
    for name, param in model.named_parameters():
        if "lora_" not in name:
            param.data = param.data.to(dtype)
    return model


def measure_eval(args) -> None:
    """Baseline and llmft's path on the fp32 model, and (`--eval-dtype auto`) llmft's path on a copy of the model in
    the dtype `llmft eval` picks by default (`inference_dtype("auto")`: bf16 where this CPU's bf16 matmuls measure
    faster); a bf16 copy's outputs are compared row by row with the baseline's, not required to be equal."""
    import copy
    import statistics

    from llmft.evaluation.generate import inference_dtype

    tokenizer = load_tokenizer(args.model)
    prompts = eval_prompts(args.eval_data, tokenizer, args.prompts, args.k_positive)
    model = lora_model(args.model)
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size)
    models = {"model.generate (baseline)": model, "llmft eval (fp32)": model}
    contenders = {"model.generate (baseline)": plain_generate, "llmft eval (fp32)": llmft_generate}
    dtype = inference_dtype(args.eval_dtype)
    if dtype != torch.float32:
        name = f"llmft eval ({str(dtype).removeprefix('torch.')}, eval.bf16={args.eval_dtype})"
        models[name], contenders[name] = base_in(copy.deepcopy(model), dtype), llmft_generate
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    outputs = {}
    for name in contenders:                                                   # warm-up
        contenders[name](models[name], tokenizer, prompts[:2], options)
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            outputs[name] = fn(models[name], tokenizer, prompts, options)
            seconds = time.perf_counter() - start
            rates[name].append(sum(len(t) for t in outputs[name]) / seconds)
    baseline = outputs["model.generate (baseline)"]
    base = statistics.median(rates["model.generate (baseline)"])
    for name in contenders:
        print(json.dumps({"contender": name, "prompts": len(prompts), "batch_size": options.batch_size,
                          "max_new_tokens": options.max_new_tokens,
                          "generated_tokens": sum(len(t) for t in outputs[name]),
                          "tokens_per_s": [round(r, 1) for r in rates[name]],
                          "median_tokens_per_s": round(statistics.median(rates[name]), 1),
                          "vs_baseline": round(statistics.median(rates[name]) / base, 2),
                          "rows_equal_to_baseline": sum(a == b for a, b in zip(outputs[name], baseline))}),
              flush=True)
    print(json.dumps({"load": list(os.getloadavg())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--prompts", type=int, help="prompts (default 32; with --eval-data: all of the test split)")
    parser.add_argument("--max-new-tokens", type=int, help="default 64; with --eval-data 24, as the demo recipe")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on CUDA, else fp32)")
    parser.add_argument("--alpaca", default=str(ALPACA), help="Alpaca JSON file the prompts come from")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights from the model folder's config.json (same architecture and speed, "
                             "but every row runs to --max-new-tokens); for machines the weights cannot reach")
    parser.add_argument("--eval-data", help="prepared data folder: measure `llmft eval` generation on its test split")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--k-positive", type=int, default=0,
                        help="with --eval-data: positive examples in each prompt (the superni recipe uses 2)")
    parser.add_argument("--eval-dtype", default="auto", choices=("auto", "true", "false"),
                        help="with --eval-data: eval.bf16 of the third contender (false: fp32 contenders only)")
    args = parser.parse_args()
    os.environ.setdefault("LLMFT_NO_PROGRESS", "1")
    if args.eval_data:
        args.max_new_tokens, args.prompts = args.max_new_tokens or 24, args.prompts or 0
        print(json.dumps({"model": args.model, "device": "cpu", "threads": torch.get_num_threads(),
                          "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                          "load": list(os.getloadavg())}))
        measure_eval(args)
        return
    args.max_new_tokens, args.prompts = args.max_new_tokens or 64, args.prompts or 32
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
