"""ROUGE-L / exact match with SuperNI semantics: every expected value below was computed by hand."""
import pytest

from llmft.evaluation.metrics import (aggregate, aggregate_by, exact_match, needs_xlingual, normalize_answer, rouge_l,
                           score_prediction, xlingual_tokenize)


def test_rouge_l_prefix_prediction():
    # tokens: the cat sat | the cat sat on the mat -> LCS 3, P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l("the cat sat", ["the cat sat on the mat"]) == pytest.approx(2 / 3)
    assert aggregate([{"rougeL": rouge_l("the cat sat", ["the cat sat on the mat"]), "exact_match": 0.0}]) == {
        "rougeL": 66.6667, "exact_match": 0.0, "n": 1}


def test_rouge_l_uses_porter_stemming_and_lowercase():
    # default tokenizer: "The cats are running" -> the cat are run ; "the cat runs." -> the cat run
    # LCS 3, P = 3/4, R = 3/3, F = 2 * 0.75 / 1.75 = 6/7
    assert rouge_l("The cats are running", ["the cat runs."]) == pytest.approx(6 / 7)


def test_rouge_l_is_order_sensitive():
    # "mat the on" vs "on the mat": LCS 1 (any single word), P = R = 1/3
    assert rouge_l("mat the on", ["on the mat"]) == pytest.approx(1 / 3)


def test_rouge_l_max_over_references():
    # "blue sky" vs "red" -> 0; vs "blue sky today" -> LCS 2, P = 1, R = 2/3, F = 0.8
    assert rouge_l("blue sky", ["red", "blue sky today"]) == pytest.approx(0.8)
    assert rouge_l("blue sky", ["blue sky today", "red"]) == pytest.approx(0.8)


def test_empty_prediction_and_no_reference():
    assert rouge_l("", ["the cat"]) == 0.0
    assert exact_match("", ["the cat"]) == 0.0
    assert rouge_l("the cat", []) == 0.0
    assert exact_match("", [""]) == 1.0


def test_exact_match_ignores_case_punctuation_and_spacing_but_keeps_articles():
    assert normalize_answer("  The  Answer: Yes!! ") == "the answer yes"
    assert exact_match("Yes.", ["yes"]) == 1.0
    assert exact_match("don't  STOP", ["Dont stop"]) == 1.0
    assert exact_match("The answer", ["answer"]) == 0.0      # SuperNI keeps articles
    assert exact_match("no", ["yes", "No"]) == 1.0           # max over references
    assert exact_match("maybe", ["yes", "no"]) == 0.0


def test_xlingual_tokenizer_splits_cjk_and_punctuation():
    assert xlingual_tokenize("Hello, 世界! naïve") == ["Hello", ",", "世", "界", "!", "naïve"]
    assert xlingual_tokenize("猫が好き。") == ["猫", "が", "好", "き", "。"]
    assert xlingual_tokenize("cafe\u0301 ok") == ["cafe\u0301", "ok"]
    assert xlingual_tokenize("สวัสดี") == ["ส", "ว\u0e31", "ส", "ด\u0e35"]   # vowel marks stay with their letter
    assert xlingual_tokenize("") == []


def test_rouge_l_cjk():
    # per character: 我 喜 欢 猫 vs 我 喜 欢 狗 -> LCS 3, P = R = 3/4, F = 0.75
    assert rouge_l("我喜欢猫", ["我喜欢狗"], xlingual=True) == pytest.approx(0.75)
    # the English tokenizer drops every CJK character, so it cannot score them at all
    assert rouge_l("我喜欢猫", ["我喜欢狗"]) == 0.0
    # xlingual keeps case and does not stem: "Cats" != "cats"; Cats/sleep vs cats/sleep -> LCS 1, F = 0.5
    assert rouge_l("Cats sleep", ["cats sleep"], xlingual=True) == pytest.approx(0.5)


def test_needs_xlingual_from_declared_language_or_script():
    assert needs_xlingual({"meta": {"languages": {"input": ["Galician"], "output": ["Japanese"]}}, "references": ["x"]})
    assert not needs_xlingual({"meta": {"languages": {"output": ["English"]}}, "references": ["猫"]})
    assert needs_xlingual({"meta": {"output_language": "Romanian"}, "references": ["x"]})
    # the natural-instructions source stores the task's Output_language list
    assert needs_xlingual({"meta": {"output_language": ["Japanese"]}, "references": ["x"]})
    assert not needs_xlingual({"meta": {"output_language": ["English"]}, "references": ["x"]})
    assert needs_xlingual({"meta": {}, "references": ["猫です"]})
    assert not needs_xlingual({"meta": {}, "references": ["café au lait"]})


def test_score_prediction_picks_the_tokenizer_from_the_record():
    ja = {"references": ["我喜欢狗"], "meta": {"languages": {"output": ["Chinese"]}}}
    assert score_prediction("我喜欢猫", ja) == {"rougeL": pytest.approx(0.75), "exact_match": 0.0}
    en = {"references": ["Paris"], "output": "Paris", "meta": {}}
    assert score_prediction("paris.", en) == {"rougeL": 1.0, "exact_match": 1.0}


def test_aggregate_per_source_and_per_task():
    scores = [{"rougeL": 1.0, "exact_match": 1.0}, {"rougeL": 0.5, "exact_match": 0.0},
              {"rougeL": 0.25, "exact_match": 0.0}, {"rougeL": 2 / 3, "exact_match": 0.0}]
    sources = ["alpaca", "natural-instructions", "natural-instructions", "alpaca"]
    tasks = ["alpaca", "task1", "task2", "alpaca"]
    assert aggregate(scores) == {"rougeL": 60.4167, "exact_match": 25.0, "n": 4}
    assert aggregate_by(scores, sources) == {
        "alpaca": {"rougeL": 83.3333, "exact_match": 50.0, "n": 2},
        "natural-instructions": {"rougeL": 37.5, "exact_match": 0.0, "n": 2},
    }
    assert list(aggregate_by(scores, tasks)) == ["alpaca", "task1", "task2"]
    assert aggregate_by(scores, tasks)["task2"] == {"rougeL": 25.0, "exact_match": 0.0, "n": 1}
    assert aggregate([]) == {"rougeL": 0.0, "exact_match": 0.0, "n": 0}
    with pytest.raises(ValueError):
        aggregate_by(scores, ["a"])
