"""`llmft data stats DIR`: record counts and length percentiles per split and per source of a prepared folder.

Lengths: prompt = instruction + input, output = the output (a conversation: prompt = its system and user turns,
output = its assistant turns); in characters and in whitespace tokens.
Percentiles use the nearest-rank definition (always an observed value). Only lengths are held in memory.
"""
from __future__ import annotations

import math
from array import array
from pathlib import Path

from llmft.errors import LlmftError
from llmft.io import read_jsonl
from llmft.data.splits import SPLITS

PERCENTILES = (50, 90, 99)
MEASURES = ("prompt_chars", "output_chars", "prompt_tokens", "output_tokens")
ALL = "(all)"


def nearest_rank(sorted_values, p: float) -> int:
    return int(sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)])


def summarize(values) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {f"p{p}": 0 for p in PERCENTILES} | {"max": 0}
    return {f"p{p}": nearest_rank(ordered, p) for p in PERCENTILES} | {"max": int(ordered[-1])}


def measures(record: dict) -> tuple[int, int, int, int]:
    if record.get("messages"):
        prompt = "\n".join(m["content"] for m in record["messages"] if m["role"] != "assistant")
        output = "\n".join(m["content"] for m in record["messages"] if m["role"] == "assistant")
    else:
        prompt = record["instruction"] + ("\n" + record["input"] if record["input"] else "")
        output = record["output"]
    return len(prompt), len(output), len(prompt.split()), len(output.split())


def collect(data_dir: str | Path) -> dict:
    """{"groups": [{"split", "source", "records", <measure>: {p50, p90, p99, max}}, ...]} with every
    (split, source) pair, each split over all sources, each source over all splits, and the total."""
    data_dir = Path(data_dir)
    present = [s for s in SPLITS if (data_dir / f"{s}.jsonl").exists()]
    if not present:
        raise LlmftError(f"{data_dir}: no train.jsonl, dev.jsonl or test.jsonl (is it a prepared data folder?)")
    lengths: dict[tuple[str, str], list[array]] = {(split, ALL): [array("l") for _ in MEASURES] for split in present}
    lengths[(ALL, ALL)] = [array("l") for _ in MEASURES]
    for split in present:
        for record in read_jsonl(data_dir / f"{split}.jsonl"):
            for key in ((split, record["source"]), (split, ALL), (ALL, record["source"]), (ALL, ALL)):
                columns = lengths.setdefault(key, [array("l") for _ in MEASURES])
                for column, value in zip(columns, measures(record)):
                    column.append(value)
    groups = []
    for split in [*present, ALL]:
        for source in sorted({s for (sp, s) in lengths if sp == split and s != ALL}) + [ALL]:
            columns = lengths.get((split, source))
            if columns is None:
                continue
            groups.append({"split": split, "source": source, "records": len(columns[0]),
                           **{m: summarize(c) for m, c in zip(MEASURES, columns)}})
    return {"dir": str(data_dir), "splits": present, "groups": groups}


def format_table(stats: dict) -> str:
    header = ["split", "source", "records"] + [f"{m} p50/p90/p99/max" for m in MEASURES]
    rows = [[g["split"], g["source"], str(g["records"])]
            + ["/".join(str(g[m][k]) for k in ("p50", "p90", "p99", "max")) for m in MEASURES]
            for g in stats["groups"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
