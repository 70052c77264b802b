"""`llmft eval`, `llmft generate`, `llmft chat`, `llmft merge`: what to do with a finished run folder."""
from __future__ import annotations

import sys
from pathlib import Path

from llmft.errors import LlmftError


def register(sub) -> None:
    _register_eval(sub)
    _register_generate(sub)
    _register_chat(sub)
    _register_merge(sub)


# ---------------------------------------------------------------- eval

def _register_eval(sub) -> None:
    p = sub.add_parser("eval", help="loss, perplexity, ROUGE-L and exact match of a run (and of its base model)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--config", help="YAML file with EvalConfig keys (command-line options win)")
    p.add_argument("--split", help="split of the prepared data folder (default: test)")
    p.add_argument("--data", help="prepared data folder or JSONL file of the rows train takes (default: the run's "
                   "data folder's split, or the rows held out of the run's training file)")
    p.add_argument("--max-new-tokens", type=int, help="tokens generated per record (default: 64)")
    p.add_argument("--limit", type=int, help="score only the first N records (default: all)")
    p.add_argument("--batch-size", type=int, help="prompts generated at once (default: 16)")
    p.add_argument("--no-base", dest="base", action="store_const", const=False,
                   help="skip the base model (without the adapter)")
    p.add_argument("--no-loss", dest="loss", action="store_const", const=False,
                   help="skip the response loss and perplexity (one forward pass over every record less)")
    p.add_argument("--bf16", choices=("auto", "true", "false"),
                   help="score in bf16 (default auto: on a GPU, or on a CPU where bf16 matmuls measure faster)")
    _add_trust(p)
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from llmft.api import tune_cpu
    from llmft.config import EvalConfig, load_config
    from llmft.evaluation.evaluate import evaluate_run

    overrides = {"split": args.split, "data": args.data, "max_new_tokens": args.max_new_tokens,
                 "limit": args.limit, "batch_size": args.batch_size, "base": args.base,
                 "loss": args.loss, "bf16": args.bf16}
    cfg = load_config(EvalConfig, args.config, overrides)
    tune_cpu()
    evaluate_run(_run_dir(args.run_dir), cfg, trust_remote_code=args.trust_remote_code)
    print(f"wrote {Path(args.run_dir) / 'eval.json'}, predictions.jsonl and eval.png", file=sys.stderr)
    return 0


def _add_trust(p) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the model run its own Python code (auto_map); never taken from the run folder")


# ---------------------------------------------------------------- generate / chat

def _add_sampling(p) -> None:
    g = p.add_argument_group("decoding (greedy unless --sample or a sampling option is given)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, help="sampling temperature (implies --sample)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass (implies --sample)")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (implies --sample)")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--batch-size", type=int, default=16)


def _options(args):
    from llmft.evaluation.generate import GenerationOptions

    sample = args.sample or any(v is not None for v in (args.temperature, args.top_p, args.top_k))
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, do_sample=sample,
                                temperature=1.0 if args.temperature is None else args.temperature,
                                top_p=1.0 if args.top_p is None else args.top_p,
                                top_k=0 if args.top_k is None else args.top_k, seed=args.seed,
                                batch_size=args.batch_size)
    problems = options.validate()
    if problems:
        raise LlmftError("; ".join(problems))
    return options


def _run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise LlmftError(f"{run_dir}: no such run folder")
    return run_dir


def _register_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate with a run's model, using the prompt template it was trained with")
    p.add_argument("run_dir", metavar="RUN_DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--instruction", help="one instruction")
    src.add_argument("--file", help="JSONL of records (instruction[, input] or prompt); writes JSONL predictions")
    p.add_argument("--input", default="", help="the input that goes with --instruction")
    p.add_argument("--out", help="write predictions here instead of stdout")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-adapter", action="store_true", help="generate with the base model the run started from")
    _add_sampling(p)
    _add_trust(p)
    p.set_defaults(func=_generate)


def _generate(args) -> int:
    from llmft import io
    from llmft.api import tune_cpu
    from llmft.evaluation.generate import generate_for_rows, load_for_generation

    if args.input and not args.instruction:
        raise LlmftError("--input goes with --instruction")
    if args.out:
        from llmft.folders import check_new_file

        check_new_file(args.out, args.overwrite)     # before the model loads, not after generating
    options = _options(args)
    tune_cpu()
    model, tokenizer, info = load_for_generation(_run_dir(args.run_dir), adapter=not args.no_adapter,
                                                 trust_remote_code=args.trust_remote_code)
    if args.instruction is not None:
        rows = [{"instruction": args.instruction, "input": args.input}]
    else:
        rows = list(io.read_jsonl(args.file))
    records, predictions = generate_for_rows(model, tokenizer, info, rows, options)
    if args.instruction is not None:
        lines = [predictions[0]]
    else:
        lines = [io.dumps_record({"id": r["id"], "prediction": p}) for r, p in zip(records, predictions)]
    _emit(lines, args.out)
    return 0


def _emit(lines: list[str], out: str | None) -> None:
    if out is None:
        for line in lines:
            print(line)
        return
    from llmft.folders import new_file
    from llmft.io import atomic_write

    with new_file(out, overwrite=True), atomic_write(out) as f:     # locked; refused earlier unless --overwrite
        f.writelines(line + "\n" for line in lines)


def _register_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a run's model in the terminal (/reset, /exit)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_sampling(p)
    _add_trust(p)
    p.set_defaults(func=_chat)


def _chat(args) -> int:
    from llmft.api import tune_cpu
    from llmft.evaluation.generate import chat_loop, load_for_generation

    options = _options(args)
    tune_cpu()
    model, tokenizer, info = load_for_generation(_run_dir(args.run_dir), trust_remote_code=args.trust_remote_code)
    read = input if sys.stdin.isatty() else (lambda _prompt: _read_line())
    chat_loop(model, tokenizer, info, options, read=read)
    return 0


def _read_line() -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


# ---------------------------------------------------------------- merge

def _register_merge(sub) -> None:
    p = sub.add_parser("merge", help="fold a run's LoRA adapter into the base model: a plain Hugging Face folder")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="the merged model folder (must not exist or be empty)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    _add_trust(p)
    p.set_defaults(func=_merge)


def _merge(args) -> int:
    from llmft.evaluation.merge import merge_run

    out = merge_run(_run_dir(args.run_dir), args.out, args.dtype, trust_remote_code=args.trust_remote_code)
    print(f"merged model written to {out}", file=sys.stderr)
    return 0
