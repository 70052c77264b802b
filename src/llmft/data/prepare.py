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
import platform
import shutil
from array import array
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmft.data import dedup, mixture
from llmft.data import splits
from llmft.data.clean import clean
from llmft.config import DataConfig, to_dict
from llmft.errors import LlmftError, is_disk_full, os_error_message
from llmft.folders import check_not_inside, new_folder
from llmft.io import dumps_record, progress, sha256_file
from llmft.data.records import SOURCES as SOURCE_ORDER
from llmft.data.records import FIELDS, NOT_UNICODE, Record, Reject, dumps_reject, has_surrogate

FORMAT = "llmft.prepared-data/1"
STAGES = ("convert", "clean", "dedup", "split", "decontaminate", "mix")
STRICT_STAGES = ("convert", "clean")   # problems with the input; the later stages are deliberate policy
EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "near duplicate"
NEAR_DUP_EXAMPLES = 20
OUTPUT_FILES = ("all.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl")
_PROGRESS_EVERY = 10_000


def config_field(source: str) -> str:
    return source.replace("-", "_")


def source_module(source: str):
    from llmft.data.sources import SOURCES

    return SOURCES[source]


# ---------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    index: int
    source: str
    path: str


def list_units(cfg: DataConfig) -> list[Unit]:
    """Every file of every source: source order, then sorted path."""
    units: list[Unit] = []
    for source in SOURCE_ORDER:
        paths: set[str] = set()
        module = source_module(source)
        for given in getattr(cfg, config_field(source)):
            # chat and table also read hub dataset ids
            if not Path(given).exists() and not getattr(module, "accepts_remote", lambda _: False)(given):
                raise LlmftError(f"{given}: no such file or folder (given for {source})")
            paths.update(str(p) for p in module.units(given, cfg))
        units += [Unit(len(units) + i, source, p) for i, p in enumerate(sorted(paths))]
    if not units:
        raise LlmftError("no input files: give at least one of --alpaca, --self-instruct, "
                         "--natural-instructions, --unnatural-instructions, --chat, --table "
                         "(or the same keys in --config)")
    return units


# ---------------------------------------------------------------- stage 1: one unit in a worker


@dataclass
class UnitResult:
    index: int
    sha256: str | None          # None: a hub dataset
    bytes: int | None
    converted: int = 0
    cleaned: int = 0
    rejects: Counter = field(default_factory=Counter)      # (stage, reason) -> count
    tasks: list[str] = field(default_factory=list)


def shard(work: Path, index: int, kind: str) -> Path:
    return work / f"{index:06d}.{kind}"


def record_dict(record: Record) -> dict:
    """The record's fields in FIELDS order, without the deep copy of dataclasses.asdict (only dumped); `messages`
    only for a conversation, as Record.to_dict writes it (single-turn files stay as they were)."""
    d = {name: getattr(record, name) for name in FIELDS}
    if not record.messages:
        del d["messages"]
    return d


def reject_row(stage: str, reject: Reject) -> dict:
    return {"stage": stage, "source": reject.source, "path": reject.path, "where": reject.where,
            "reason": reject.reason, "item": record_dict(reject.item) if isinstance(reject.item, Record) else reject.item}


def check_strict(cfg: DataConfig, stage: str, reject: Reject, policy_reasons=frozenset()) -> None:
    """--strict: a reject at a STRICT_STAGE is an error, except the reasons a source module declares as its
    selection policy (`POLICY_REASONS`, e.g. a language that was not selected), which are choices, not problems."""
    if cfg.strict and stage in STRICT_STAGES and reject.reason not in policy_reasons:
        raise LlmftError(f"{reject.path}: {reject.where}: {reject.reason} (--strict turns every reject into an error)")


class _UnitWriter:
    """The shard files of one unit: converted records, cleaned records, rejects, keys and signatures."""

    def __init__(self, work: Path, unit: Unit, cfg: DataConfig, result: UnitResult):
        self.work, self.unit, self.cfg, self.result = work, unit, cfg, result
        self.files = {kind: open(shard(work, unit.index, kind), "w", encoding="utf-8", newline="\n")
                      for kind in ("all", "clean", "rejects")}
        self.files["sig"] = open(shard(work, unit.index, "sig"), "wb")
        self.exact, self.contamination = array("Q"), array("Q")
        self.task, self.hint, self.official = array("i"), array("b"), array("b")
        self.task_codes: dict[str, int] = {}
        self.keyer = dedup.Keyer()
        self.policy_reasons = frozenset(getattr(source_module(unit.source), "POLICY_REASONS", ()))

    def reject(self, stage: str, reject: Reject) -> None:
        check_strict(self.cfg, stage, reject, self.policy_reasons if stage == "convert" else frozenset())
        self.result.rejects[(stage, reject.reason)] += 1
        self.files["rejects"].write(dumps_reject(reject_row(stage, reject)) + "\n")

    def record(self, record: Record) -> None:
        line = dumps_record(record_dict(record)) + "\n"
        if has_surrogate(line):     # no UTF-8 file can hold it: this item is rejected, not the whole file
            self.reject("convert", Reject(record.source, self.unit.path, f"record {record.id}", NOT_UNICODE, record))
            return
        self.result.converted += 1
        self.files["all"].write(line)
        cleaned, reason = clean(record, self.cfg)
        if cleaned is None:
            self.reject("clean", Reject(record.source, self.unit.path, f"record {record.id}", reason, record))
            return
        self.result.cleaned += 1
        self.files["clean"].write(line if cleaned is record else dumps_record(record_dict(cleaned)) + "\n")
        exact, contamination, signature = self.keyer.keys(cleaned)
        self.exact.append(exact)
        self.contamination.append(contamination)
        self.task.append(self.task_codes.setdefault(cleaned.task, len(self.task_codes)))
        self.hint.append(splits.hint_code(cleaned.meta.get("split_hint")))
        self.official.append(bool(cleaned.meta.get("official_eval", False)))
        self.files["sig"].write(signature.tobytes())

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def save_keys(self) -> None:
        signatures = read_signatures(shard(self.work, self.unit.index, "sig"), self.result.cleaned)
        np.savez(shard(self.work, self.unit.index, "keys.npz"),
                 bands=dedup.band_hashes(signatures, *dedup.lsh_params(self.cfg.near_dedup_threshold)),
                 exact=np.frombuffer(self.exact, dtype=np.uint64),
                 contamination=np.frombuffer(self.contamination, dtype=np.uint64),
                 task=np.frombuffer(self.task, dtype=np.int32), hint=np.frombuffer(self.hint, dtype=np.int8),
                 official=np.frombuffer(self.official, dtype=np.int8).astype(bool))
        self.result.tasks = list(self.task_codes)


def process_unit(unit: Unit, cfg: DataConfig, work: Path) -> UnitResult:
    """Convert, clean and key one unit file. Errors come back as LlmftError naming the file (picklable)."""
    path = Path(unit.path)
    try:
        result = UnitResult(unit.index, *input_fingerprint(unit))
        writer = _UnitWriter(work, unit, cfg, result)
        try:
            for item in source_module(unit.source).read(unit.path, cfg):
                if isinstance(item, Reject):
                    writer.reject("convert", item)
                else:
                    writer.record(item)
        finally:
            writer.close()
        writer.save_keys()
        return result
    except LlmftError as e:
        raise LlmftError(str(e)) from None
    except OSError as e:         # a full disk is said to be one, not blamed on the input
        raise LlmftError(os_error_message(e, where=work if is_disk_full(e) else path)) from None
    except RecursionError:
        raise LlmftError(f"{path}: {unit.source} data nested too deeply to read") from None
    except MemoryError:
        raise LlmftError(f"{path}: out of memory reading {unit.source} data; lower max_line_bytes or "
                         "split the file") from None
    except ValueError as e:
        raise LlmftError(f"{path}: cannot read {unit.source} data ({type(e).__name__}: {e})") from None


def input_fingerprint(unit: Unit) -> tuple[str | None, int | None]:
    """(sha256, bytes) of a unit file; a source that reads folders or hub ids says what it can."""
    fingerprint = getattr(source_module(unit.source), "fingerprint", None)
    if fingerprint is not None:
        return fingerprint(unit.path)
    return sha256_file(unit.path), Path(unit.path).stat().st_size


def resolve_workers(cfg: DataConfig, n_units: int) -> int:
    workers = cfg.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    return max(1, min(workers or 1, n_units))


def convert_units(units: list[Unit], cfg: DataConfig, work: Path) -> list[UnitResult]:
    workers = resolve_workers(cfg, len(units))
    bar = progress(total=len(units), desc="convert", unit="file")
    try:
        if workers == 1:
            results = []
            for unit in units:
                results.append(process_unit(unit, cfg, work))
                bar.update(1)
            return results
        return _convert_in_pool(units, cfg, work, workers, bar)
    finally:
        bar.close()


def _convert_in_pool(units, cfg, work, workers, bar) -> list[UnitResult]:
    import multiprocessing

    # spawn: workers start clean whatever the parent has loaded (threads, torch)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(process_unit, unit, cfg, work) for unit in units}
        results: dict[int, UnitResult] = {}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                result = future.result()
                results[result.index] = result
                bar.update(1)
    return [results[u.index] for u in units]


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: the kernel kills this worker when the parent dies (Linux PR_SET_PDEATHSIG), so a killed
    `prepare` leaves no workers converting on."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:     # the parent died before the line above took effect
        os._exit(1)


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


def read_signatures(path: Path, n: int) -> np.ndarray:
    if n == 0:
        return np.empty((0, 2 * dedup.NUM_PERM), dtype=np.uint32)
    return np.memmap(path, dtype=np.uint32, mode="r", shape=(n, 2 * dedup.NUM_PERM))


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
                    if i % _PROGRESS_EVERY == 0:
                        bar.update(_PROGRESS_EVERY)
            os.unlink(shard(work, unit.index, "clean"))
        bar.update(i % _PROGRESS_EVERY)
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


# ---------------------------------------------------------------- manifest


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
