"""The manifest of a prepared data folder: inputs with their hashes, counts per stage, source and task, the rejects
by reason, the near-duplicate examples and the package versions."""
from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmft.data import dedup
from llmft.data import splits
from llmft.config import DataConfig, to_dict
from llmft.io import sha256_file
from llmft.data.convert_units import Unit, UnitResult, source_module
if TYPE_CHECKING:
    from llmft.data.prepare import Columns, Plan

FORMAT = "llmft.prepared-data/1"
STAGES = ("convert", "clean", "dedup", "split", "decontaminate", "mix")
NEAR_DUP_EXAMPLES = 20


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("llmft", "numpy", "datasketch"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def extra_inputs(units: list[Unit]) -> list[dict]:
    """Files a source reads besides its units (natural-instructions split lists)."""
    folders = set()
    for unit in units:
        finder = getattr(source_module(unit.source), "splits_folder", None)
        folder = finder(Path(unit.path)) if finder else None
        if folder is not None:
            folders.add(folder)
    files = sorted(p for folder in folders for p in Path(folder).glob("*.txt") if p.is_file())
    return [{"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files]


def _near_examples(near: dedup.NearDuplicates, records: dict[int, dict]) -> list[dict]:
    def brief(rec: dict) -> dict:
        return {"id": rec["id"], "instruction": rec["instruction"][:200], "input": rec["input"][:200],
                "output": rec["output"][:200]}

    return [{"kept": brief(records[int(k)]), "duplicate": brief(records[int(d)]),
             "io_similarity": round(float(io), 4), "instruction_similarity": round(float(ins), 4)}
            for d, k, io, ins in list(zip(near.duplicate, near.kept, near.io_similarity,
                                          near.instruction_similarity))[:NEAR_DUP_EXAMPLES]]


def build_manifest(cfg: DataConfig, units: list[Unit], results: list[UnitResult], cols: Columns, the_plan: Plan,
                   source_names: list[str], outputs: dict, example_records: dict[int, dict]) -> dict:
    by_stage: dict[str, Counter] = {stage: Counter() for stage in STAGES}
    for result in results:
        for (stage, reason), count in result.rejects.items():
            by_stage[stage][reason] += count
    decision = the_plan.decision
    for i, (stage, reason) in enumerate(the_plan.reasons):
        count = int((decision == len(splits.SPLITS) + i).sum())
        if count:
            by_stage[stage][reason] += count

    converted = sum(r.converted for r in results)
    kept = int((decision < len(splits.SPLITS)).sum())
    deduplicated = sum(by_stage["dedup"].values())
    rejected = sum(sum(by_stage[s].values()) for s in ("clean", "split", "decontaminate", "mix"))
    assert converted == kept + rejected + deduplicated, (converted, kept, rejected, deduplicated)
    by_reason = Counter()
    for stage in STAGES:
        by_reason.update(by_stage[stage])

    bands, rows = dedup.lsh_params(cfg.near_dedup_threshold)
    config = {k: v for k, v in to_dict(cfg).items() if k != "workers"}  # workers never change the output
    return {
        "format": FORMAT,
        "identity": f"converted {converted} = kept {kept} + rejected {rejected} + deduplicated {deduplicated}",
        "counts": {
            "converted": converted, "kept": kept, "rejected": rejected, "deduplicated": deduplicated,
            "raw_items_rejected": sum(by_stage["convert"].values()),
            "splits": {name: int((decision == s).sum()) for s, name in enumerate(splits.SPLITS)},
            "by_source": _counts_by_source(results, units, cols, decision, source_names),
            "by_task": _counts_by_task(cols, decision),
        },
        "rejects": {
            "total": sum(by_reason.values()),
            "by_stage": {stage: dict(sorted(by_stage[stage].items())) for stage in STAGES},
            "by_reason": dict(sorted(by_reason.items())),
        },
        "near_duplicates": {
            "found": int(the_plan.near.mask.sum()), "removed": bool(cfg.near_dedup),
            "threshold": cfg.near_dedup_threshold, "num_perm": dedup.NUM_PERM, "bands": bands, "rows": rows,
            "shingle_words": dedup.SHINGLE_WORDS, "examples": _near_examples(the_plan.near, example_records),
        },
        "mixture": the_plan.mixture,
        "inputs": [{"source": u.source, "path": u.path, "sha256": r.sha256, "bytes": r.bytes,
                    "converted": r.converted, "raw_items_rejected": sum(r.rejects[k] for k in r.rejects
                                                                        if k[0] == "convert")}
                   for u, r in zip(units, results)],
        "extra_inputs": extra_inputs(units),
        "outputs": outputs,
        "seed": cfg.seed,
        "config": config,
        "versions": package_versions(),
    }


def _counts_by_source(results, units, cols: Columns, decision, source_names) -> dict:
    out = {}
    for code, source in enumerate(source_names):
        mine = cols.source == code
        converted = sum(r.converted for r, u in zip(results, units) if u.source == source)
        if not converted and not mine.any():
            continue
        out[source] = {"converted": converted,
                       **{name: int((mine & (decision == s)).sum()) for s, name in enumerate(splits.SPLITS)}}
    return out


def _counts_by_task(cols: Columns, decision) -> dict:
    out: dict[str, dict] = {}
    for s, name in enumerate(splits.SPLITS):
        per_task = np.bincount(cols.task[decision == s], minlength=len(cols.task_names))
        for code in np.flatnonzero(per_task):
            entry = out.setdefault(cols.task_source[code], {}).setdefault(
                cols.task_names[code], {k: 0 for k in splits.SPLITS})
            entry[name] = int(per_task[code])
    return {source: dict(sorted(tasks.items())) for source, tasks in sorted(out.items())}


