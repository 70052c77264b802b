"""`llmft train --data DIR_OR_FILE --out RUN_DIR`: LoRA (default) or full fine-tuning into a run folder."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser(
        "train", help="fine-tune a causal LM (LoRA or full) on prepared data or a JSONL file",
        description="Writes RUN_DIR/config.yaml, manifest.json, metrics.jsonl, adapter/ (or model/), tokenizer/, "
        "template.json, loss.png and, last, summary.json. Every TrainConfig key can come from --config FILE or "
        "--set key=value; explicit flags override both.")
    parser.add_argument("--data", help="prepared data folder (train.jsonl, dev.jsonl) or one JSONL file of records "
                        "or {prompt, completion} rows (then a seeded 5%% is the dev set)")
    parser.add_argument("--out", help="run folder")
    parser.add_argument("--config", help="YAML file with TrainConfig keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any TrainConfig key, e.g. --set weight_decay=0.01; repeatable")
    model = parser.add_argument_group("model and adapter")
    model.add_argument("--model", help="smollm2-135m (embedded, default), a local HF folder or a hub id")
    model.add_argument("--method", choices=("lora", "full"))
    model.add_argument("--lora-r", type=int)
    model.add_argument("--lora-alpha", type=int)
    model.add_argument("--lora-dropout", type=float)
    model.add_argument("--lora-targets", help="all-linear (every linear layer but the output head) or "
                       "comma-separated module names such as q_proj,v_proj")
    model.add_argument("--use-rslora", action="store_true", default=None, help="rank-stabilised LoRA scaling")
    model.add_argument("--use-dora", action="store_true", default=None, help="weight-decomposed LoRA (DoRA)")
    model.add_argument("--qlora", action="store_true", default=None, help="4-bit NF4 base (CUDA + bitsandbytes)")
    model.add_argument("--trust-remote-code", action="store_true", default=None)
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--template", choices=("alpaca", "superni", "chat"))
    prompts.add_argument("--k-positive", type=int, help="superni template: positive examples in the prompt (0-2)")
    prompts.add_argument("--max-length", type=int, help="tokens per example (longer ones are truncated, counted)")
    loop = parser.add_argument_group("optimisation")
    length = loop.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    length.add_argument("--epochs", type=float)
    loop.add_argument("--lr", type=float)
    size = loop.add_mutually_exclusive_group()
    size.add_argument("--batch-tokens", type=int, help="token budget of a packed micro-batch")
    size.add_argument("--batch-size", type=int, help="examples per padded micro-batch (with --no-packing)")
    loop.add_argument("--no-packing", dest="packing", action="store_false", default=None,
                      help="length-grouped padded batches instead of packing")
    loop.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (per process)")
    loop.add_argument("--seed", type=int)
    loop.add_argument("--bf16", choices=("auto", "true", "false"),
                      help="bf16 autocast (auto: on CUDA with bf16, or a CPU with AVX512-BF16/AMX)")
    loop.add_argument("--grad-checkpointing", action="store_true", default=None)
    run = parser.add_argument_group("evaluation, checkpoints, logging")
    run.add_argument("--eval-every", type=int, help="dev loss every N steps (0: only before and after)")
    run.add_argument("--save-every", type=int, help="checkpoint every N steps (0: none)")
    run.add_argument("--resume", action="store_true", default=None, help="continue RUN_DIR from its last checkpoint")
    run.add_argument("--tensorboard", action="store_true", default=None, help="also log to RUN_DIR/tensorboard")
    parser.set_defaults(func=main)


FLAG_KEYS = ("data", "out", "model", "method", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "use_rslora",
             "use_dora", "qlora", "trust_remote_code", "template", "k_positive", "max_length", "max_steps", "epochs",
             "lr", "batch_tokens", "batch_size", "packing", "grad_accum", "seed", "bf16", "grad_checkpointing",
             "eval_every", "save_every", "resume", "tensorboard")


def overrides_from(args: argparse.Namespace) -> dict:
    """--set values first, explicit flags over them (None means a flag was not given)."""
    from llmft.config import parse_dotlist

    values = parse_dotlist(args.overrides)
    values.update({k: getattr(args, k) for k in FLAG_KEYS if getattr(args, k) is not None})
    if args.epochs is not None and args.max_steps is None:
        values["max_steps"] = 0          # --epochs on the command line beats a max_steps in the config file
    if args.batch_size is not None and args.packing is None:
        values.setdefault("packing", False)  # a batch size only means something without packing
    return values


def main(args) -> int:
    from llmft.config import TrainConfig, load_config
    from llmft.training.trainer import train

    cfg = load_config(TrainConfig, args.config, overrides_from(args))
    summary = train(cfg)
    if summary is not None:       # the main process reports
        print(format_summary(summary, cfg.out))
    return 0


def format_summary(summary: dict, out: str) -> str:
    lines = [f"run: {out}",
             f"steps {summary['steps']} ({summary['epochs']} epochs), trainable tokens {summary['trainable_tokens']}, "
             f"tokens processed {summary['real_tokens']}",
             f"{summary['tokens_per_s']} tokens/s over {summary['train_seconds']} s of training "
             f"({summary['seconds']} s in all), peak RSS {summary['peak_rss_mb']} MB"]
    if summary.get("final_loss") is not None:
        lines.append(f"final train loss {summary['final_loss']:.4f}")
    if summary.get("final_dev_loss") is not None:
        lines.append(f"dev loss {summary['initial_dev_loss']:.4f} -> {summary['final_dev_loss']:.4f}")
    return "\n".join(lines)
