"""Cleaning stage: text normalisation and the (keep, reason) filters."""
from llmft.data.clean import (FILTERS, REASON_EMPTY_INSTRUCTION, REASON_EMPTY_OUTPUT, REASON_NOOUTPUT, REASON_OVERLONG,
                         clean, normalize_text, normalize_whitespace)
from llmft.config import DataConfig
from llmft.data.records import Record


def rec(instruction="Say hi.", input="", output="Hi!", references=None) -> Record:
    return Record("alpaca/0", "alpaca", "alpaca", instruction, input, output, references or [])


def test_normalize_text_rules():
    assert normalize_text("  a\r\nb\rc  ") == "a\nb\nc"
    assert normalize_text("x\x00y\x07z\x9f") == "xyz"
    assert normalize_text("tab\tkept\nnewline") == "tab\tkept\nnewline"
    assert normalize_text("non\u00a0breaking\u3000space") == "non breaking space"
    assert normalize_text("zero\u200bwidth\ufeff") == "zerowidth"
    assert normalize_text("trailing   \nspaces") == "trailing\nspaces"
    assert normalize_text("a\n\n\n\n\nb") == "a\n\nb"
    assert normalize_text("    indented code\n        deeper") == "indented code\n        deeper"
    assert normalize_text("日本語のテキスト ✓") == "日本語のテキスト ✓"


def test_normalize_whitespace_fields_and_references():
    r = normalize_whitespace(rec(" Do it \r\n", "  in ", " out ", references=[" out ", "   ", "alt\r\n"]))
    assert (r.instruction, r.input, r.output, r.references) == ("Do it", "in", "out", ["out", "alt"])


def test_filters_in_order_with_reasons():
    cfg = DataConfig(max_chars=20)
    assert [f.__name__ for f in FILTERS] == ["conversation_shape", "empty_instruction", "empty_output",
                                           "nooutput_marker", "overlong"]
    assert clean(rec(instruction=" \n\x00 "), cfg) == (None, REASON_EMPTY_INSTRUCTION)
    assert clean(rec(output="\u200b  "), cfg) == (None, REASON_EMPTY_OUTPUT)
    assert clean(rec(instruction="", output=""), cfg) == (None, REASON_EMPTY_INSTRUCTION)
    assert clean(rec(output="<NoOutput> (image)"), cfg) == (None, REASON_NOOUTPUT)
    # 7 + 0 + 13 = 20 chars is kept, 21 is overlong
    assert clean(rec(output="x" * 13), cfg)[1] is None
    assert clean(rec(output="x" * 14), cfg) == (None, REASON_OVERLONG)
    assert clean(rec(output="x" * 10_000), DataConfig(max_chars=0))[1] is None


def test_clean_returns_normalised_record():
    kept, reason = clean(rec(instruction="Say\u00a0hi. ", output=" Hi!\r\n"), DataConfig())
    assert reason is None
    assert (kept.instruction, kept.output, kept.references) == ("Say hi.", "Hi!", ["Hi!"])


def test_unchanged_record_is_returned_as_is():
    r = rec(instruction="Say hi.", output="Hi!")
    assert normalize_whitespace(r) is r
    changed = rec(output="Hi! ")
    assert normalize_whitespace(changed) is not changed and changed.output == "Hi! "
