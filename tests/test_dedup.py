"""Dedup keys, exact duplicates (first kept) and MinHash near duplicates."""
import numpy as np

from llmft.data import dedup
from llmft.data.records import Record


def rec(i, instruction, input, output) -> Record:
    return Record(f"alpaca/{i}", "alpaca", "alpaca", instruction, input, output)


def test_normalize_for_key():
    assert dedup.normalize_for_key("  Hello,   WORLD!!\n") == "hello, world"
    assert dedup.normalize_for_key("«Straße»") == "strasse"
    assert dedup.normalize_for_key("...") == ""
    assert dedup.normalize_for_key("3.5") == "3.5"


def test_exact_key_ignores_case_space_and_edge_punctuation_only():
    a = rec(0, "Name a color.", "", "Red")
    assert dedup.exact_key(a) == dedup.exact_key(rec(1, "  name A COLOR ", "", "red."))
    assert dedup.exact_key(a) != dedup.exact_key(rec(2, "Name a colour.", "", "Red"))
    assert dedup.exact_key(a) != dedup.exact_key(rec(3, "Name a color.", "Red", ""))  # fields stay apart
    assert dedup.contamination_key(a) == dedup.contamination_key(rec(4, "name a color", "", "Blue"))


def test_exact_duplicates_keep_first():
    keys = np.array([5, 7, 5, 9, 7, 5], dtype=np.uint64)
    assert dedup.exact_duplicates(keys).tolist() == [False, False, True, False, True, True]
    assert dedup.exact_duplicates(np.array([], dtype=np.uint64)).tolist() == []


def test_shingles():
    assert dedup.shingles("One two") == {b"one two"}
    assert dedup.shingles("a b c d") == {b"a b c", b"b c d"}


def _plan(records, threshold=0.9):
    keyer = dedup.Keyer()
    sigs = np.stack([keyer.keys(r)[2] for r in records])
    bands, rows = dedup.lsh_params(threshold)
    return dedup.near_duplicates(sigs, dedup.band_hashes(sigs, bands, rows), np.ones(len(records), bool), threshold)


def test_near_duplicates_need_similar_instruction_and_io():
    words = [f"word{i}" for i in range(300)]
    long_output = " ".join(words)
    changed = " ".join(words[:150] + ["CHANGED"] + words[151:])
    records = [
        rec(0, "Write a long list.", "", long_output),
        rec(1, "Something unrelated.", "", "Short answer here, nothing alike."),
        rec(2, "Write a long list.", "", changed),           # near duplicate of 0
        rec(3, "Translate this into French please.", "", long_output),  # same output, other instruction
        rec(4, "Write a long list.", "", changed + " and more"),  # near duplicate of 0 (and of 2)
    ]
    near = _plan(records)
    assert near.mask.tolist() == [False, False, True, False, True]
    assert near.duplicate.tolist() == [2, 4]
    assert near.kept.tolist() == [0, 0]
    assert (near.io_similarity >= 0.9).all() and (near.instruction_similarity == 1.0).all()


def test_near_duplicates_skip_ineligible_records():
    records = [rec(i, "Same instruction.", "", "The very same output text of several words.") for i in range(3)]
    keyer = dedup.Keyer()
    sigs = np.stack([keyer.keys(r)[2] for r in records])
    bands = dedup.band_hashes(sigs, *dedup.lsh_params(0.9))
    near = dedup.near_duplicates(sigs, bands, np.array([False, True, True]), 0.9)
    assert near.mask.tolist() == [False, False, True]
    assert near.kept.tolist() == [1]


def test_keyer_matches_key_functions_and_is_deterministic():
    records = [rec(0, "Give three tips.", "about sleep", "Sleep eight hours. Keep a schedule. Avoid screens."),
               rec(1, "Give three tips.", "About  Sleep!", "sleep eight hours. keep a schedule. avoid screens"),
               rec(2, "Name a color.", "", "Red")]
    keyer = dedup.Keyer()
    keys = [keyer.keys(r) for r in records]
    assert [k[0] for k in keys] == [dedup.exact_key(r) for r in records]
    assert [k[1] for k in keys] == [dedup.contamination_key(r) for r in records]
    assert keys[0][0] == keys[1][0] and np.array_equal(keys[0][2], keys[1][2])
    fresh = dedup.Keyer().keys(records[2])[2]
    assert np.array_equal(fresh, keys[2][2]) and fresh.dtype == np.uint32 and fresh.shape == (2 * dedup.NUM_PERM,)
