"""`llmft train --data DIR_OR_FILE --out RUN_DIR`: LoRA (default) or full fine-tuning into a run folder."""
from __future__ import annotations

import argparse

from llmft.cli.flags import add_config_flags, flag_values
from llmft.config import TrainConfig, parse_dotlist


def register(sub) -> None:
    parser = sub.add_parser(
        "train", help="fine-tune a causal LM (LoRA or full) on prepared data or a JSONL file",
        description="Writes RUN_DIR/config.yaml, manifest.json, metrics.jsonl, adapter/ (or model/), tokenizer/, "
        "template.json, loss.png and, last, summary.json. Every TrainConfig key can come from --config FILE or "
        "--set key=value; explicit flags override both.")
    parser.add_argument("--config", help="YAML file with TrainConfig keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any TrainConfig key, e.g. --set weight_decay=0.01; repeatable")
    add_config_flags(parser, TrainConfig)
    parser.set_defaults(func=main)


def overrides_from(args: argparse.Namespace) -> dict:
    """--set values first, explicit flags over them (None means a flag was not given)."""
    values = parse_dotlist(args.overrides)
    values.update(flag_values(args, TrainConfig))
    if args.epochs is not None and args.max_steps is None:
        values["max_steps"] = 0          # --epochs on the command line beats a max_steps in the config file
    if args.batch_size is not None and args.packing is None:
        values.setdefault("packing", False)  # a batch size only means something without packing
    return values


def main(args) -> int:
    from llmft.api import tune_cpu
    from llmft.config import load_config
    from llmft.training.trainer import train

    cfg = load_config(TrainConfig, args.config, overrides_from(args))
    tune_cpu()
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
