"""`llmft data convert SOURCE PATH --out FILE.jsonl`: one raw dataset to standard records, rejects beside them."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from llmft.config import DataConfig, load_config
from llmft.errors import LlmftError
from llmft.folders import new_file
from llmft.io import atomic_write, dumps_record, progress
from llmft.data.records import Record, Reject, dumps_reject
from llmft.data.sources import SOURCES, convert


@dataclass
class ConvertCounts:
    kept: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)

    @property
    def converted(self) -> int:
        return self.kept + sum(self.rejected.values())

    def summary(self) -> str:
        lines = [f"converted {self.converted}: kept {self.kept}, rejected {sum(self.rejected.values())}"]
        lines += [f"  rejected {n}: {reason}" for reason, n in self.rejected.most_common()]
        return "\n".join(lines)


def write_converted(items: Iterable[Record | Reject], out: Path, rejects: Path) -> ConvertCounts:
    """Records to `out`, rejects to `rejects`, both atomically (neither appears unless the whole run succeeds)."""
    counts = ConvertCounts()
    with atomic_write(out) as records_file, atomic_write(rejects) as rejects_file:
        for item in progress(items, desc="convert", unit=" items"):
            if isinstance(item, Record):
                counts.kept += 1
                records_file.write(dumps_record(item.to_dict()) + "\n")
            else:
                counts.rejected[item.reason] += 1
                rejects_file.write(dumps_reject(item.to_dict()) + "\n")
    return counts


def run(args) -> int:
    overrides = {
        "reformulations": args.reformulations or None,
        "append_constraints": args.append_constraints or None,
        "languages": args.languages,
        "max_instances_per_task": args.max_instances_per_task,
        "test_instances_per_task": args.test_instances_per_task,
        "dataset_split": args.dataset_split,
    }
    if args.columns is not None:
        if args.source != "table":
            raise LlmftError("--columns is for the table source")
        overrides.update(table=[args.path], table_columns=[args.columns])
    cfg = load_config(DataConfig, args.config, overrides)
    out = Path(args.out)
    rejects = Path(args.rejects) if args.rejects else out.with_name(out.name.removesuffix(".jsonl") + ".rejects.jsonl")
    if rejects.resolve() == out.resolve():
        raise LlmftError(f"--rejects must differ from --out ({out})")
    with new_file(out, overwrite=args.overwrite), new_file(rejects, overwrite=args.overwrite):
        counts = write_converted(convert(args.source, args.path, cfg), out, rejects)
    print(f"{args.source}: {args.path}")
    print(counts.summary())
    print(f"records: {out}\nrejects: {rejects}")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("convert", help="convert one raw dataset to standard records (JSONL)",
                            description=__doc__)
    parser.add_argument("source", choices=sorted(SOURCES), help="which dataset the files come from")
    parser.add_argument("path", help="a file, a folder of files, or (unnatural-instructions) a .zip; chat and "
                        "table: also Parquet, Arrow, CSV, a save_to_disk folder or a hub dataset id")
    parser.add_argument("--out", required=True, help="records JSONL to write")
    parser.add_argument("--rejects", help="rejects JSONL (default: <out>.rejects.jsonl)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --out / --rejects files (refused otherwise: llmft cannot tell that "
                        "it wrote them)")
    parser.add_argument("--config", help="a DataConfig YAML; the flags below override it")
    parser.add_argument("--columns", metavar="KEY=COLUMN,...",
                        help="table: which columns hold what, instruction=question,input=context,output=answer or "
                        "prompt=...,completion=... (also task=, id=); default: columns with those names")
    parser.add_argument("--dataset-split", metavar="NAME",
                        help="chat, table: the split of a hub dataset or DatasetDict folder (default: every split)")
    parser.add_argument("--reformulations", action="store_true",
                        help="unnatural-instructions full data: one record per instruction paraphrase too")
    parser.add_argument("--append-constraints", action="store_true",
                        help="unnatural-instructions: append each instance's output constraints to the instruction")
    parser.add_argument("--languages", nargs="+", metavar="LANG",
                        help="natural-instructions: languages to keep (default English; 'all' keeps every task)")
    parser.add_argument("--max-instances-per-task", type=int, metavar="N",
                        help="natural-instructions: keep a seeded sample of N instances of each non-test task")
    parser.add_argument("--test-instances-per-task", type=int, metavar="N",
                        help="natural-instructions: how many leading instances of a test task are the official "
                             "evaluation set (default 100)")
    parser.set_defaults(func=run)
