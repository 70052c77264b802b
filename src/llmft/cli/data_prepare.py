"""`llmft data prepare --out DIR`: raw datasets -> cleaned, deduplicated, split, decontaminated JSONL + manifest."""
from __future__ import annotations

import argparse

SOURCE_FLAGS = (
    ("--alpaca", "alpaca", "Stanford Alpaca alpaca_data.json (JSON array or JSONL)"),
    ("--self-instruct", "self_instruct", "Self-Instruct JSONL (generated instances or seed_tasks.jsonl)"),
    ("--natural-instructions", "natural_instructions",
     "Super-NaturalInstructions root (with tasks/ and splits/default/), tasks folder, or task file"),
    ("--unnatural-instructions", "unnatural_instructions", "Unnatural Instructions core/full JSONL"),
    ("--chat", "chat", "conversations, messages or ShareGPT (JSON, JSONL, Parquet, Arrow, CSV, a save_to_disk "
     "folder, a folder of such files, or a hub dataset id)"),
    ("--table", "table", "any table datasets reads (as --chat), its columns named by --columns"),
)


def register(sub) -> None:
    parser = sub.add_parser(
        "prepare", help="convert, clean, deduplicate, split and decontaminate raw datasets",
        description="Writes DIR/all.jsonl, train.jsonl, dev.jsonl, test.jsonl, rejects.jsonl and manifest.json. "
        "Source flags are repeatable; command-line values override the --config file.")
    parser.add_argument("--out", required=True, help="output folder (created or replaced atomically)")
    parser.add_argument("--config", help="YAML file with DataConfig keys (alpaca, natural_instructions, split, ...)")
    for flag, dest, text in SOURCE_FLAGS:
        parser.add_argument(flag, dest=dest, action="append", metavar="PATH", help=f"{text}; repeatable")
    parser.add_argument("--split", choices=("random", "tasks"),
                        help="random: seeded, per source; tasks: official natural-instructions task split")
    parser.add_argument("--dev-ratio", type=float, help="share of dev records (tasks split: of train tasks)")
    parser.add_argument("--test-ratio", type=float, help="share of test records (not natural-instructions tasks)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--strict", action="store_true", default=None,
                        help="fail on the first conversion or cleaning reject, naming file, place and reason "
                        "(not on dedup, split or decontamination, nor on a source's declared policy reasons)")
    parser.add_argument("--near-dedup", action="store_true", default=None,
                        help="remove MinHash near-duplicates (they are always counted in the manifest)")
    parser.add_argument("--near-dedup-threshold", type=float, help="Jaccard threshold (default 0.9)")
    parser.add_argument("--reformulations", action="store_true", default=None,
                        help="unnatural-instructions full: one record per reformulation too")
    parser.add_argument("--languages", help="natural-instructions languages, comma-separated ('all' for every one)")
    parser.add_argument("--max-instances-per-task", type=int, help="natural-instructions: cap per non-test task")
    parser.add_argument("--max-chars", type=int, help="reject longer records (instruction+input+output); 0: no limit")
    parser.add_argument("--workers", type=int, help="processes converting files in parallel (0: one per CPU core)")
    parser.add_argument("--columns", dest="table_columns", action="append", metavar="KEY=COLUMN,...",
                        help="--table columns: instruction=question,input=context,output=answer or "
                        "prompt=...,completion=... (also task=, id=); one for every --table, or one for all")
    parser.add_argument("--dataset-split", help="--chat/--table hub datasets and DatasetDict folders: the split to "
                        "read (default: every split)")
    parser.add_argument("--cap", dest="source_caps", action="append", metavar="SOURCE=N",
                        help="at most N train records of SOURCE (seeded draw; the rest are rejects of stage mix); "
                        "repeatable")
    parser.add_argument("--weight", dest="source_weights", action="append", metavar="SOURCE=W",
                        help="train shares among the sources given (alpaca=1 --weight chat=3): sources are cut, never "
                        "repeated, to meet them; repeatable")
    parser.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> dict:
    names = ("alpaca", "self_instruct", "natural_instructions", "unnatural_instructions", "split", "dev_ratio",
             "test_ratio", "seed", "strict", "near_dedup", "near_dedup_threshold", "reformulations", "languages",
             "max_instances_per_task", "max_chars", "workers", "chat", "table", "table_columns", "dataset_split",
             "source_caps", "source_weights")
    return {name: getattr(args, name) for name in names}


def summary(manifest: dict, out: str) -> str:
    counts = manifest["counts"]
    lines = [f"prepared data: {out}", manifest["identity"],
             "splits: " + ", ".join(f"{k} {v}" for k, v in counts["splits"].items())]
    for source, c in counts["by_source"].items():
        lines.append(f"  {source}: converted {c['converted']}, train {c['train']}, dev {c['dev']}, test {c['test']}")
    if counts["raw_items_rejected"]:
        lines.append(f"raw items rejected at conversion: {counts['raw_items_rejected']}")
    near = manifest["near_duplicates"]
    lines.append(f"near duplicates: {near['found']} found, {'removed' if near['removed'] else 'kept (--near-dedup removes them)'}")
    for stage, reasons in manifest["rejects"]["by_stage"].items():
        for reason, n in reasons.items():
            lines.append(f"  rejected {n} at {stage}: {reason}")
    lines.append(f"details: {out}/rejects.jsonl, {out}/manifest.json")
    return "\n".join(lines)


def run(args) -> int:
    from llmft.config import DataConfig, load_config
    from llmft.data.prepare import prepare

    cfg = load_config(DataConfig, args.config, overrides_from(args))
    manifest = prepare(cfg, args.out)
    print(summary(manifest, args.out))
    return 0
