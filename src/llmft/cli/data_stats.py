"""`llmft data stats DIR`: counts and length percentiles per split and source of a prepared data folder."""
from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser(
        "stats", help="counts and length percentiles of a prepared data folder",
        description="Per split and per source: records, and p50/p90/p99/max of prompt (instruction + input) and "
        "output lengths in characters and whitespace tokens.")
    parser.add_argument("dir", help="a folder written by `llmft data prepare`")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    from llmft.data.stats import collect, format_table

    stats = collect(args.dir)
    print(json.dumps(stats, indent=2) if args.json else format_table(stats))
    return 0
