"""`llmft data demo`: write the project's own small synthetic datasets in the real raw formats."""
from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="generate small synthetic raw datasets (Alpaca, Super-NaturalInstructions, Unnatural Instructions)",
        description="Write deterministic synthetic datasets in the published raw formats: "
        "DIR/alpaca/alpaca_data.json, DIR/natural_instructions/{tasks,splits/default}, "
        "DIR/unnatural_instructions/core_data.jsonl. Nothing is downloaded.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files (default 0)")
    parser.add_argument("--instances", type=int, default=60, help="instances per task type (default 60)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from llmft.errors import LlmftError
    from llmft.data.demo import write_demo

    if args.instances < 1:
        raise LlmftError(f"--instances must be at least 1, got {args.instances}")
    summary = write_demo(args.out, seed=args.seed, instances=args.instances)
    print(json.dumps(summary, indent=2))
    return 0
