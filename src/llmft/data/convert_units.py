"""Stage 1 of `llmft data prepare`: each unit (one raw file) converted, cleaned and keyed in a worker process,
streamed to shard files in the work folder (records, rejects, per-record keys and MinHash signatures)."""
from __future__ import annotations

import os
from array import array
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmft.data import dedup
from llmft.data import splits
from llmft.data.clean import clean
from llmft.config import DataConfig
from llmft.errors import LlmftError, is_disk_full, os_error_message
from llmft.io import dumps_record, progress, sha256_file
from llmft.data.records import SOURCES as SOURCE_ORDER
from llmft.data.records import FIELDS, NOT_UNICODE, Record, Reject, dumps_reject, has_surrogate

STRICT_STAGES = ("convert", "clean")   # problems with the input; the later stages are deliberate policy
PROGRESS_EVERY = 10_000


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


def read_signatures(path: Path, n: int) -> np.ndarray:
    if n == 0:
        return np.empty((0, 2 * dedup.NUM_PERM), dtype=np.uint32)
    return np.memmap(path, dtype=np.uint32, mode="r", shape=(n, 2 * dedup.NUM_PERM))
