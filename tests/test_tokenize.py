"""Tokenization: masking by count, EOS learned, BOS once, truncation policy, report counts and the on-disk cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llmft.errors import LlmftError
from llmft.data.prompts import render
from llmft.training.tokenize import IGNORE_INDEX, encode, encode_ids, special_prefix, tokenize_records


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class BosTokenizer:
    """The real tokenizer, but adding a BOS in front when asked for special tokens (like Llama's)."""

    def __init__(self, inner, bos_id: int):
        self.inner, self.bos_id = inner, bos_id
        self.eos_token_id, self.name_or_path = inner.eos_token_id, "bos-wrapper"

    def __call__(self, text, add_special_tokens=True):
        out = self.inner(text, add_special_tokens=False)
        if add_special_tokens:
            out["input_ids"] = [self.bos_id] + out["input_ids"]
        return out


def records(raw_dir, n: int, start: int = 0) -> list[dict]:
    data = json.loads((raw_dir / "alpaca" / "alpaca_data.json").read_text(encoding="utf-8"))[start:start + n]
    return [dict(id=f"alpaca/{start + i}", source="alpaca", task="alpaca", instruction=r["instruction"],
                 input=r["input"], output=r["output"], references=[r["output"]], meta={}) for i, r in enumerate(data)]


def test_prompt_masked_by_count_and_eos_learned_when_pad_is_eos(smol_tokenizer):
    assert smol_tokenizer.pad_token_id == smol_tokenizer.eos_token_id == 2
    prompt, response = "### Instruction:\nSay hi\n\n### Response:", "Hi there"
    example = encode(prompt, response, smol_tokenizer, max_length=64)
    p, r = ids(smol_tokenizer, prompt), ids(smol_tokenizer, response)
    assert example.input_ids.tolist() == p + r + [2]
    assert example.labels.tolist() == [IGNORE_INDEX] * len(p) + r + [2]
    assert example.n_trainable == len(r) + 1 and not example.truncated
    assert special_prefix(smol_tokenizer) == []


def test_bos_added_once_even_when_the_prompt_text_holds_it(smol_tokenizer):
    bos = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    tokenizer = BosTokenizer(smol_tokenizer, bos)
    assert special_prefix(tokenizer) == [bos]
    example = encode("Question: two plus two?", " Four", tokenizer, max_length=64)
    p, r = ids(smol_tokenizer, "Question: two plus two?"), ids(smol_tokenizer, " Four")
    assert example.input_ids.tolist() == [bos] + p + r + [2]
    assert example.labels.tolist() == [IGNORE_INDEX] * (1 + len(p)) + r + [2]
    # a chat-template prompt that already starts with the BOS text does not get a second one
    example = encode("<|im_start|>user\nhi", "yo", tokenizer, max_length=64)
    assert example.input_ids.tolist().count(bos) == 1 and example.input_ids[0] == bos


def test_truncation_cuts_prompt_left_and_response_right():
    prompt, response, eos = list(range(100, 130)), list(range(200, 210)), 2
    # long prompt: cut from the left only as far as needed, response whole
    example, cuts = encode_ids(prompt, response, [], eos, max_length=25)
    assert cuts == (True, False)
    assert example.input_ids.tolist() == prompt[-14:] + response + [eos]
    assert example.n_trainable == 11 and example.truncated
    # long response: the prompt is kept whole, the response (and its EOS) cut from the right
    example, cuts = encode_ids(prompt[:5], list(range(300, 340)), [], eos, max_length=20)
    assert cuts == (False, True)
    assert example.input_ids.tolist() == prompt[:5] + list(range(300, 315))
    assert example.labels.tolist() == [IGNORE_INDEX] * 5 + list(range(300, 315))
    # both long: the prompt keeps half the room, from its end; a BOS prefix stays in front
    example, cuts = encode_ids(prompt, list(range(300, 340)), [1], eos, max_length=21)
    assert cuts == (True, True)
    assert example.input_ids.tolist() == [1] + prompt[-10:] + list(range(300, 310))


def test_first_token_never_a_label_and_none_without_trainable_tokens(smol_tokenizer):
    example, _ = encode_ids([], [5, 6], [], 2, max_length=8)
    assert example.input_ids.tolist() == [5, 6, 2] and example.labels.tolist() == [IGNORE_INDEX, 6, 2]
    assert example.n_trainable == 2
    assert encode("", "x", smol_tokenizer, max_length=1) is None
    assert encode("a long prompt here", "x", smol_tokenizer, max_length=1) is None


def test_tokenize_records_report_counts(raw_dir, smol_tokenizer):
    recs = records(raw_dir, 20)
    examples, report = tokenize_records(recs, smol_tokenizer, template="alpaca", max_length=96)
    full = [encode(*render(r, "alpaca"), smol_tokenizer, 10_000) for r in recs]
    long = [len(e) > 96 for e in full]
    assert report.examples_in == 20 and report.kept == 20 and report.dropped == 0
    assert report.truncated == sum(long) and sum(long) > 0
    assert [len(e) for e in examples] == [min(len(e), 96) for e in full]
    for got, want, cut in zip(examples, full, long):
        if not cut:
            assert got.input_ids.tolist() == want.input_ids.tolist()
            assert got.labels.tolist() == want.labels.tolist()
    assert report.total_tokens == sum(len(e) for e in examples)
    assert report.trainable_tokens == sum(int((e.labels != IGNORE_INDEX).sum()) for e in examples)
    assert report.length_percentiles["max"] == 96
    assert report.length_percentiles["p50"] == float(np.percentile([len(e) for e in examples], 50))


def test_tokenize_records_superni_fits_prompt_instead_of_cutting_tail(raw_dir, smol_tokenizer):
    from test_prompts import ni_record

    record = ni_record(raw_dir, "task1319_country_by_barcode_prefix", 0)
    k1_prompt, response = render(record, "superni", k_positive=1)
    k2_prompt, _ = render(record, "superni", k_positive=2)
    max_length = len(ids(smol_tokenizer, k1_prompt)) + len(ids(smol_tokenizer, response)) + 1
    assert len(ids(smol_tokenizer, k2_prompt)) + len(ids(smol_tokenizer, response)) + 1 > max_length
    (example,), report = tokenize_records([record], smol_tokenizer, template="superni", max_length=max_length,
                                          k_positive=2)
    assert example.input_ids.tolist() == encode(k1_prompt, response, smol_tokenizer, max_length).input_ids.tolist()
    assert report.truncated == 0 and len(example) == max_length


def test_dropped_examples_counted_and_zero_kept_is_an_error(smol_tokenizer):
    # an empty prompt and response leave a lone EOS, which nothing precedes: no trainable token
    recs = [{"prompt": "", "completion": ""}, {"prompt": "Q", "completion": "an answer"}]
    examples, report = tokenize_records(recs, smol_tokenizer, template="alpaca", max_length=2)
    assert report.dropped == 1 and report.dropped_ids == [0] and report.kept == 1
    assert examples[0].input_ids.tolist() == ids(smol_tokenizer, "Q") + ids(smol_tokenizer, "an answer")[:1]
    assert report.response_truncated == 1 and report.trainable_tokens == 1
    with pytest.raises(LlmftError, match="no example left after tokenization: 1 in, 1 with no trainable token"):
        tokenize_records(recs[:1], smol_tokenizer, template="alpaca", max_length=2)


def test_cache_hit_and_miss(tmp_path, raw_dir, smol_tokenizer):
    recs = records(raw_dir, 8)
    kwargs = dict(template="alpaca", max_length=64, cache_dir=tmp_path)
    first, report1 = tokenize_records(recs, smol_tokenizer, **kwargs)
    assert not report1.cache_hit and len(list(tmp_path.iterdir())) == 1
    cached = tmp_path / report1.cache_key
    assert sorted(p.name for p in cached.iterdir()) == ["examples.safetensors", "report.json"]
    second, report2 = tokenize_records(recs, smol_tokenizer, **kwargs)
    assert report2.cache_hit and report2.cache_key == report1.cache_key
    assert {**report2.to_dict(), "cache_hit": False} == report1.to_dict()
    assert [e.input_ids.tolist() for e in second] == [e.input_ids.tolist() for e in first]
    assert [e.labels.tolist() for e in second] == [e.labels.tolist() for e in first]
    assert [(e.n_trainable, e.truncated) for e in second] == [(e.n_trainable, e.truncated) for e in first]
    # every part of the key misses: max length, template, k_positive, data
    misses = [tokenize_records(recs, smol_tokenizer, **{**kwargs, "max_length": 65})[1],
              tokenize_records(recs, smol_tokenizer, **{**kwargs, "template": "superni"})[1],
              tokenize_records(recs, smol_tokenizer, **{**kwargs, "k_positive": 1})[1],
              tokenize_records(recs[:7], smol_tokenizer, **kwargs)[1]]
    assert not any(r.cache_hit for r in misses)
    assert len({r.cache_key for r in misses} | {report1.cache_key}) == 5
    assert len(list(tmp_path.iterdir())) == 5
