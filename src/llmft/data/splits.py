"""Split assignment and decontamination of `llmft data prepare`, on per-record arrays (no record texts).

- `random`: within each source, a seeded permutation puts round(n * test_ratio) records in test,
  round(n * dev_ratio) in dev, the rest in train (stratified by source: every source has the same ratios).
- `tasks`: natural-instructions official test tasks go to test with only their official evaluation instances
  (the rest are rejected), excluded tasks are rejected, and dev takes round(n * dev_ratio) whole train tasks
  (at least one when dev_ratio > 0 and there are two or more); a task never spans two splits. Other sources
  are split by ratio as in `random`.
- decontamination: a dev/test record whose normalised instruction + input occurs in train is rejected.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from llmft.errors import LlmftError

TRAIN, DEV, TEST = 0, 1, 2
SPLITS = ("train", "dev", "test")
UNASSIGNED = -1
EXCLUDED_TASK = 3
BEYOND_OFFICIAL_EVAL = 4
POLICY_REASONS = {EXCLUDED_TASK: "excluded task", BEYOND_OFFICIAL_EVAL: "test task beyond official eval set"}
CONTAMINATES_TRAIN = "contaminates train"

# natural-instructions meta["split_hint"], as small integers
HINTS = ("train", "test", "excluded")
HINT_NONE = len(HINTS)
NATURAL_INSTRUCTIONS = "natural-instructions"


def hint_code(hint: str | None) -> int:
    return HINTS.index(hint) if hint in HINTS else HINT_NONE


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def seeded_rng(seed: int, name: str) -> np.random.Generator:
    """One generator per (seed, name), so adding a source never reshuffles another."""
    return np.random.default_rng([seed % 2**32, zlib.crc32(name.encode("utf-8"))])


def ratio_split(n: int, dev_ratio: float, test_ratio: float, rng: np.random.Generator) -> np.ndarray:
    n_test = min(n, round_half_up(n * test_ratio))
    n_dev = min(n - n_test, round_half_up(n * dev_ratio))
    order = rng.permutation(n)
    out = np.full(n, TRAIN, dtype=np.int8)
    out[order[:n_test]] = TEST
    out[order[n_test:n_test + n_dev]] = DEV
    return out


def random_split(source_codes: np.ndarray, eligible: np.ndarray, source_names: list[str],
                 dev_ratio: float, test_ratio: float, seed: int, skip_sources: tuple[str, ...] = ()) -> np.ndarray:
    """Split codes per record (UNASSIGNED where not eligible or in `skip_sources`)."""
    out = np.full(len(source_codes), UNASSIGNED, dtype=np.int8)
    for code, name in enumerate(source_names):
        if name in skip_sources:
            continue
        idx = np.flatnonzero(eligible & (source_codes == code))
        out[idx] = ratio_split(len(idx), dev_ratio, test_ratio, seeded_rng(seed, name))
    return out


def dev_task_count(n_tasks: int, dev_ratio: float) -> int:
    n = round_half_up(n_tasks * dev_ratio)
    if dev_ratio > 0 and n_tasks >= 2:
        n = max(n, 1)
    return min(n, n_tasks - 1) if n_tasks >= 2 else 0


def tasks_split(source_codes: np.ndarray, task_codes: np.ndarray, hints: np.ndarray, official: np.ndarray,
                eligible: np.ndarray, source_names: list[str], task_names: list[str],
                dev_ratio: float, test_ratio: float, seed: int) -> np.ndarray:
    out = random_split(source_codes, eligible, source_names, dev_ratio, test_ratio, seed,
                       skip_sources=(NATURAL_INSTRUCTIONS,))
    if NATURAL_INSTRUCTIONS not in source_names:
        return out
    ni = eligible & (source_codes == source_names.index(NATURAL_INSTRUCTIONS))
    missing = ni & (hints == HINT_NONE)
    if missing.any():
        task = task_names[task_codes[np.flatnonzero(missing)[0]]]
        raise LlmftError(f"--split tasks needs the official split lists, but task {task} has none "
                         "(put splits/default/{train,test}_tasks.txt beside the tasks folder)")
    train_hint = ni & (hints == HINTS.index("train"))
    out[train_hint] = TRAIN
    dev_tasks = choose_dev_tasks(np.unique(task_codes[train_hint]), task_names, dev_ratio, seed)
    out[train_hint & np.isin(task_codes, dev_tasks)] = DEV
    test_hint = ni & (hints == HINTS.index("test"))
    out[test_hint & official] = TEST
    out[test_hint & ~official] = BEYOND_OFFICIAL_EVAL
    out[ni & (hints == HINTS.index("excluded"))] = EXCLUDED_TASK
    return out


def choose_dev_tasks(train_task_codes: np.ndarray, task_names: list[str], dev_ratio: float, seed: int) -> np.ndarray:
    """Whole train tasks for dev: a seeded draw over the task names in sorted order."""
    by_name = np.array(sorted(train_task_codes.tolist(), key=lambda c: task_names[c]), dtype=np.int64)
    order = seeded_rng(seed, "natural-instructions/dev-tasks").permutation(len(by_name))
    return by_name[order[:dev_task_count(len(by_name), dev_ratio)]]


def contaminated(assignment: np.ndarray, contamination_keys: np.ndarray) -> np.ndarray:
    """True for each dev/test record whose instruction + input key also occurs in train."""
    train_keys = np.unique(contamination_keys[assignment == TRAIN])
    held_out = (assignment == DEV) | (assignment == TEST)
    return held_out & np.isin(contamination_keys, train_keys)
