"""Split assignment on per-record arrays: ratios, stratification, whole tasks, official test sets, leaks."""
import numpy as np
import pytest

from llmft.data import splits
from llmft.errors import LlmftError
from llmft.data.splits import DEV, TEST, TRAIN

SOURCES = ["alpaca", "self-instruct", "natural-instructions", "unnatural-instructions"]


def test_ratio_split_exact_counts_and_seeded():
    out = splits.ratio_split(101, 0.1, 0.2, splits.seeded_rng(0, "alpaca"))
    assert [(out == s).sum() for s in (TRAIN, DEV, TEST)] == [71, 10, 20]
    again = splits.ratio_split(101, 0.1, 0.2, splits.seeded_rng(0, "alpaca"))
    other = splits.ratio_split(101, 0.1, 0.2, splits.seeded_rng(1, "alpaca"))
    assert np.array_equal(out, again) and not np.array_equal(out, other)
    assert splits.ratio_split(3, 0.5, 0.5, splits.seeded_rng(0, "x")).tolist().count(TRAIN) == 0
    assert splits.ratio_split(0, 0.1, 0.1, splits.seeded_rng(0, "x")).tolist() == []


def test_random_split_is_stratified_by_source():
    source = np.array([0] * 100 + [1] * 40 + [0] * 20, dtype=np.int8)
    eligible = np.ones(160, bool)
    eligible[-20:] = False
    out = splits.random_split(source, eligible, SOURCES, 0.1, 0.2, seed=3)
    alpaca, self_instruct = out[:100], out[100:140]
    assert [(alpaca == s).sum() for s in (TRAIN, DEV, TEST)] == [70, 10, 20]
    assert [(self_instruct == s).sum() for s in (TRAIN, DEV, TEST)] == [28, 4, 8]
    assert (out[-20:] == splits.UNASSIGNED).all()


def test_random_split_of_a_source_ignores_other_sources():
    a = splits.random_split(np.zeros(50, np.int8), np.ones(50, bool), SOURCES, 0.1, 0.1, seed=0)
    mixed = splits.random_split(np.array([0] * 50 + [1] * 30, np.int8), np.ones(80, bool), SOURCES, 0.1, 0.1, seed=0)
    assert np.array_equal(a, mixed[:50])


def test_round_half_up_and_dev_task_count():
    assert [splits.round_half_up(x) for x in (0.5, 1.5, 2.5, 0.49)] == [1, 2, 3, 0]
    assert splits.dev_task_count(18, 0.05) == 1     # 0.9 -> 1
    assert splits.dev_task_count(100, 0.05) == 5
    assert splits.dev_task_count(1, 0.5) == 0        # the only train task stays in train
    assert splits.dev_task_count(2, 0.9) == 1
    assert splits.dev_task_count(10, 0.0) == 0


def _tasks_case():
    # tasks: 0-3 train tasks, 4 test task, 5 excluded; records of alpaca (source 0) too
    task_names = ["t_a", "t_b", "t_c", "t_d", "t_test", "t_excl", "alpaca"]
    task = np.array([0, 0, 1, 1, 2, 3, 3, 4, 4, 4, 5, 5] + [6] * 10, np.int32)
    hint = np.array([0] * 7 + [1, 1, 1, 2, 2] + [3] * 10, np.int8)
    official = np.array([False] * 7 + [True, True, False, False, False] + [False] * 10)
    source = np.array([2] * 12 + [0] * 10, np.int8)
    return source, task, hint, official, task_names


def test_tasks_split_whole_tasks_official_test_and_excluded():
    source, task, hint, official, names = _tasks_case()
    out = splits.tasks_split(source, task, hint, official, np.ones(22, bool), SOURCES, names, 0.5, 0.2, seed=0)
    ni = out[:12]
    assert ni[7:10].tolist() == [TEST, TEST, splits.BEYOND_OFFICIAL_EVAL]
    assert ni[10:12].tolist() == [splits.EXCLUDED_TASK] * 2
    per_task = {names[t]: set(ni[task[:12] == t].tolist()) for t in range(4)}
    assert all(len(s) == 1 for s in per_task.values())          # a task never spans two splits
    assert sorted(s.pop() for s in per_task.values()) == [TRAIN, TRAIN, DEV, DEV]   # round(4 * 0.5) dev tasks
    assert [(out[12:] == s).sum() for s in (TRAIN, DEV, TEST)] == [3, 5, 2]          # alpaca by ratio


def test_tasks_split_needs_split_hints():
    source, task, hint, official, names = _tasks_case()
    hint[0] = splits.HINT_NONE
    with pytest.raises(LlmftError, match="task t_a has none"):
        splits.tasks_split(source, task, hint, official, np.ones(22, bool), SOURCES, names, 0.5, 0.2, seed=0)


def test_contaminated_marks_exactly_the_leaking_held_out_records():
    assignment = np.array([TRAIN, TRAIN, DEV, TEST, TEST, DEV, 7, TRAIN], np.int16)
    keys = np.array([1, 2, 1, 2, 3, 4, 3, 3], np.uint64)
    assert splits.contaminated(assignment, keys).tolist() == [False, False, True, True, True, False, False, False]
