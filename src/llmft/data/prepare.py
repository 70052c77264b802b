"""`llmft data prepare`: raw dataset files -> a prepared data folder (all/train/dev/test/rejects + manifest).

Stages: convert + clean + keys (in a process pool, one job per unit file, streamed to shard files), then on
per-record arrays only: exact dedup, near-duplicate search, split, decontamination; then one streaming pass
that copies each cleaned record line to its split file or to rejects.jsonl. Record texts are never all in
memory. Everything is built inside a temporary folder beside the output that is renamed into place at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmft.data import dedup, mixture
from llmft.data import splits
from llmft.config import DataConfig
from llmft.folders import check_not_inside, new_folder
from llmft.io import dumps_record, progress, sha256_file
from llmft.data.records import SOURCES as SOURCE_ORDER
from llmft.data.convert_units import (PROGRESS_EVERY, Unit, UnitResult, convert_units, list_units, read_signatures,
                                      reject_row, shard)
from llmft.data.manifest import NEAR_DUP_EXAMPLES, build_manifest
from llmft.data.records import Reject

EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "near duplicate"
OUTPUT_FILES = ("all.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl")


# ---------------------------------------------------------------- per-record arrays


@dataclass
class Columns:
    """One entry per cleaned record, in output order."""
    source: np.ndarray
    task: np.ndarray
    hint: np.ndarray
    official: np.ndarray
    exact: np.ndarray
    contamination: np.ndarray
    bands: np.ndarray            # (n, LSH bands) of the near-duplicate signatures
    task_names: list[str]
    task_source: list[str]


def load_columns(units: list[Unit], results: list[UnitResult], work: Path, source_names: list[str]) -> Columns:
    task_index: dict[tuple[str, str], int] = {}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("exact", "contamination", "task", "hint", "official",
                                                          "bands")}
    for unit, result in zip(units, results):
        remap = np.array([task_index.setdefault((unit.source, t), len(task_index)) for t in result.tasks] or [0],
                         dtype=np.int32)
        with np.load(shard(work, unit.index, "keys.npz")) as keys:
            for name in parts:
                parts[name].append(remap[keys[name]] if name == "task" else keys[name])
    counts = [r.cleaned for r in results]
    ordered_tasks = sorted(task_index.items(), key=lambda kv: kv[1])
    return Columns(
        source=np.repeat(np.array([source_names.index(u.source) for u in units], dtype=np.int8), counts),
        task=_concat(parts["task"], np.int32), hint=_concat(parts["hint"], np.int8),
        official=_concat(parts["official"], bool), exact=_concat(parts["exact"], np.uint64),
        contamination=_concat(parts["contamination"], np.uint64), bands=_concat(parts["bands"], np.uint64),
        task_names=[t for (_, t), _ in ordered_tasks], task_source=[s for (s, _), _ in ordered_tasks])


def _concat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.empty(0, dtype)


def join_signatures(units: list[Unit], work: Path, n: int) -> np.ndarray:
    path = work / "signatures.u32"
    with open(path, "wb") as out:
        for unit in units:
            with open(shard(work, unit.index, "sig"), "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            os.unlink(shard(work, unit.index, "sig"))
    return read_signatures(path, n)


# ---------------------------------------------------------------- stages 3-5 on arrays


@dataclass
class Plan:
    decision: np.ndarray                 # per record: TRAIN/DEV/TEST, or an index into `reasons` + len(SPLITS)
    reasons: list[tuple[str, str]]       # (stage, reason)
    near: dedup.NearDuplicates
    mixture: dict = field(default_factory=dict)   # mixture.Mixture.report (empty without caps or weights)


def plan(cols: Columns, signatures: np.ndarray, source_names: list[str], cfg: DataConfig) -> Plan:
    reasons = [("dedup", EXACT_DUPLICATE), ("dedup", NEAR_DUPLICATE),
               *(("split", reason) for reason in splits.POLICY_REASONS.values()),
               ("decontaminate", splits.CONTAMINATES_TRAIN), ("mix", mixture.OVER_CAP), ("mix", mixture.OVER_WEIGHT)]
    code = {r: len(splits.SPLITS) + i for i, r in enumerate(reasons)}
    decision = np.full(len(cols.exact), -1, dtype=np.int16)

    exact_dup = dedup.exact_duplicates(cols.exact)
    decision[exact_dup] = code[("dedup", EXACT_DUPLICATE)]
    near = dedup.near_duplicates(signatures, cols.bands, ~exact_dup, cfg.near_dedup_threshold)
    if cfg.near_dedup:
        decision[near.mask] = code[("dedup", NEAR_DUPLICATE)]

    eligible = decision < 0
    if cfg.split == "tasks":
        assignment = splits.tasks_split(cols.source, cols.task, cols.hint, cols.official, eligible, source_names,
                                        cols.task_names, cfg.dev_ratio, cfg.test_ratio, cfg.seed)
    else:
        assignment = splits.random_split(cols.source, eligible, source_names, cfg.dev_ratio, cfg.test_ratio, cfg.seed)
    for policy, reason in splits.POLICY_REASONS.items():
        decision[eligible & (assignment == policy)] = code[("split", reason)]
    for split in (splits.TRAIN, splits.DEV, splits.TEST):
        decision[eligible & (assignment == split)] = split

    leaks = splits.contaminated(decision, cols.contamination)
    decision[leaks] = code[("decontaminate", splits.CONTAMINATES_TRAIN)]

    mix = mixture.plan_mixture(cols.source, decision == splits.TRAIN, source_names, cfg.source_caps,
                               cfg.source_weights, cfg.seed)
    decision[mix.over_cap] = code[("mix", mixture.OVER_CAP)]
    decision[mix.over_weight] = code[("mix", mixture.OVER_WEIGHT)]
    assert (decision >= 0).all(), "every cleaned record gets a split or a reason"
    return Plan(decision, reasons, near, mix.report)


# ---------------------------------------------------------------- stage 6: write


class _HashedFile:
    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.records = 0

    def write_line(self, line: bytes) -> None:
        self.f.write(line)
        self.sha.update(line)
        self.records += 1

    def close(self) -> dict:
        self.f.close()
        return {"records": self.records, "sha256": self.sha.hexdigest()}


def join_all(units: list[Unit], work: Path, out: Path) -> dict:
    target = _HashedFile(out / "all.jsonl")
    for unit in units:
        with open(shard(work, unit.index, "all"), "rb") as f:
            for line in f:
                target.write_line(line)
        os.unlink(shard(work, unit.index, "all"))
    return target.close()


def write_splits(units: list[Unit], work: Path, out: Path, the_plan: Plan, wanted: dict[int, dict]) -> dict:
    """One pass over the cleaned records: each line goes to its split file or, wrapped, to rejects.jsonl.
    The records whose index is a key of `wanted` are parsed into it (near-duplicate examples)."""
    files = {name: _HashedFile(out / f"{name}.jsonl") for name in splits.SPLITS}
    rejects = open(out / "rejects.jsonl", "ab")
    decisions = the_plan.decision.tolist()
    i = 0
    bar = progress(total=len(the_plan.decision), desc="write", unit="rec")
    try:
        for unit in units:
            with open(shard(work, unit.index, "clean"), "rb") as f:
                for line in f:
                    d = decisions[i]
                    if d < len(splits.SPLITS):
                        files[splits.SPLITS[d]].write_line(line)
                    else:
                        _write_reject(rejects, unit, line, the_plan.reasons[d - len(splits.SPLITS)])
                    if i in wanted:
                        wanted[i] = json.loads(line)
                    i += 1
                    if i % PROGRESS_EVERY == 0:
                        bar.update(PROGRESS_EVERY)
            os.unlink(shard(work, unit.index, "clean"))
        bar.update(i % PROGRESS_EVERY)
    finally:
        bar.close()
        rejects.close()
    return {f"{name}.jsonl": f.close() for name, f in files.items()}


def _write_reject(rejects, unit: Unit, line: bytes, stage_reason: tuple[str, str]) -> None:
    stage, reason = stage_reason
    record = json.loads(line)
    row = reject_row(stage, Reject(record["source"], unit.path, f"record {record['id']}", reason, record))
    rejects.write((dumps_record(row) + "\n").encode("utf-8"))


def join_unit_rejects(units: list[Unit], work: Path, out: Path) -> None:
    with open(out / "rejects.jsonl", "wb") as target:
        for unit in units:
            with open(shard(work, unit.index, "rejects"), "rb") as f:
                shutil.copyfileobj(f, target, 1 << 20)
            os.unlink(shard(work, unit.index, "rejects"))


# ---------------------------------------------------------------- the whole run


def input_paths(cfg: DataConfig) -> list[str]:
    local = [p for p in (*cfg.chat, *cfg.table) if Path(p).exists()]    # not hub ids
    return [*cfg.alpaca, *cfg.self_instruct, *cfg.natural_instructions, *cfg.unnatural_instructions, *local]


def prepare(cfg: DataConfig, out: str | Path) -> dict:
    """Build the prepared data folder `out`; returns its manifest."""
    out = Path(out)
    check_not_inside(out, input_paths(cfg))
    units = list_units(cfg)
    source_names = list(SOURCE_ORDER)
    with new_folder(out, "data prepare") as tmp:
        work = tmp / "_work"
        work.mkdir()
        results = convert_units(units, cfg, work)
        outputs = {"all.jsonl": join_all(units, work, tmp)}
        join_unit_rejects(units, work, tmp)
        cols = load_columns(units, results, work, source_names)
        signatures = join_signatures(units, work, len(cols.exact))
        the_plan = plan(cols, signatures, source_names, cfg)
        del signatures
        examples = {int(i): {} for pair in zip(the_plan.near.duplicate[:NEAR_DUP_EXAMPLES],
                                               the_plan.near.kept[:NEAR_DUP_EXAMPLES]) for i in pair}
        outputs.update(write_splits(units, work, tmp, the_plan, examples))
        outputs["rejects.jsonl"] = {"records": _count_lines(tmp / "rejects.jsonl"),
                                    "sha256": sha256_file(tmp / "rejects.jsonl")}
        manifest = build_manifest(cfg, units, results, cols, the_plan, source_names, outputs, examples)
        shutil.rmtree(work)
        with open(tmp / "manifest.json", "w", encoding="utf-8", newline="\n") as f:
            json.dump(manifest, f, ensure_ascii=False, indent=2)
            f.write("\n")
    return manifest


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)

