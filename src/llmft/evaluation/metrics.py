"""ROUGE-L and exact match with Super-NaturalInstructions semantics, and their aggregation.

Follows Tk-Instruct `src/compute_metrics.py` (the SuperNI evaluation script):
- ROUGE-L F-measure from `rouge_score.rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)` and its default
  tokenizer (lower case, non-alphanumerics dropped, Porter stemming of words over 3 characters) for English;
- exact match on `normalize_answer` text: lower case, ASCII punctuation removed, whitespace collapsed. Like SuperNI
  (and unlike SQuAD) articles are NOT removed: SuperNI's code says "without removing the articles";
- each score is the maximum over the references, and aggregates are means x 100 rounded to 4 decimals.

One deliberate difference: SuperNI's cross-lingual ("xlingual") scorer tokenizes with the GPT-2 BPE tokenizer, which
cannot be downloaded here. `xlingual_tokenize` is a download-free, language-agnostic stand-in: it splits on
whitespace, makes every punctuation or symbol character a token, and makes every character of a script written
without spaces (Han, kana, Thai, Lao, Khmer, Myanmar) a token. Like the GPT-2 variant it keeps case and does not
stem; unlike it, Latin-script words stay whole instead of being cut into BPE pieces, so xlingual scores of long
words differ slightly from the published ones.
"""
from __future__ import annotations

import string
import unicodedata
from collections import defaultdict
from functools import lru_cache
from typing import Iterable

_PUNCTUATION = set(string.punctuation)

# Scripts written without spaces between words: each character is one token.
_CHARACTER_SCRIPTS = (
    (0x0E00, 0x0EFF),    # Thai, Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1780, 0x17FF),    # Khmer
    (0x2E80, 0x2FDF),    # CJK radicals
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x3100, 0x31FF),    # Bopomofo, Katakana extensions
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)


def normalize_answer(text: str) -> str:
    """SuperNI's normalisation for exact match: lower case, no ASCII punctuation, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


def exact_match(prediction: str, references: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    normalized = normalize_answer(prediction)
    return max((float(normalized == normalize_answer(ref)) for ref in references), default=0.0)


def _is_character_script(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CHARACTER_SCRIPTS)


def xlingual_tokenize(text: str) -> list[str]:
    """Language-agnostic tokens: words split at whitespace, punctuation/symbols and space-less script characters
    as single tokens; combining marks stay with the character before them."""
    tokens: list[str] = []
    word: list[str] = []

    def flush():
        if word:
            tokens.append("".join(word))
            word.clear()

    for ch in text:
        category = unicodedata.category(ch)
        if ch.isspace():
            flush()
        elif category.startswith("M") and (word or tokens):
            if word:
                word.append(ch)
            else:
                tokens[-1] += ch
        elif category[0] in "PS" or _is_character_script(ch):
            flush()
            tokens.append(ch)
        else:
            word.append(ch)
    flush()
    return tokens


class _XlingualTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return xlingual_tokenize(text)


@lru_cache(maxsize=2)
def _scorer(xlingual: bool):
    from rouge_score import rouge_scorer

    if xlingual:
        return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_XlingualTokenizer())
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Iterable[str], *, xlingual: bool = False) -> float:
    """ROUGE-L F-measure in [0, 1], the best over the references (0.0 with no reference)."""
    scorer = _scorer(xlingual)
    return max((scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure for ref in references),
               default=0.0)


def _output_languages(meta: dict) -> list[str] | None:
    """The output language(s) a record declares, whatever shape the source stored them in."""
    for key in ("output_language", "Output_language"):
        if meta.get(key):
            value = meta[key]
            return [value] if isinstance(value, str) else list(value)
    languages = meta.get("languages")
    if isinstance(languages, dict):
        value = languages.get("output") or languages.get("Output_language")
        if value:
            return [value] if isinstance(value, str) else list(value)
    elif isinstance(languages, str):
        return [languages]
    elif isinstance(languages, list) and languages:
        return [str(v) for v in languages]
    return None


def _has_non_latin_letter(text: str) -> bool:
    return any(ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN") for ch in text)


def needs_xlingual(record: dict) -> bool:
    """Score with the language-agnostic tokenizer when the record's output language is not English, or, when it
    declares none, when a reference holds letters of a non-Latin script (the English tokenizer would drop them all)."""
    languages = _output_languages(record.get("meta") or {})
    if languages is not None:
        return any(lang.strip().lower() != "english" for lang in languages)
    return any(_has_non_latin_letter(ref) for ref in record.get("references") or [record.get("output", "")])


def score_prediction(prediction: str, record: dict) -> dict:
    """The per-record scores (fractions in [0, 1]) for a prediction against the record's references."""
    references = record.get("references") or [record.get("output", "")]
    xlingual = needs_xlingual(record)
    return {"rougeL": rouge_l(prediction, references, xlingual=xlingual),
            "exact_match": exact_match(prediction, references)}


def aggregate(scores: list[dict]) -> dict:
    """Means x 100, rounded to 4 decimals like SuperNI, with the count."""
    n = len(scores)
    out = {name: round(100.0 * sum(s[name] for s in scores) / n, 4) if n else 0.0
           for name in ("rougeL", "exact_match")}
    out["n"] = n
    return out


def aggregate_by(scores: list[dict], groups: list[str]) -> dict[str, dict]:
    """`aggregate` per group (source or task), groups in sorted order."""
    if len(scores) != len(groups):
        raise ValueError(f"{len(scores)} scores but {len(groups)} group labels")
    by_group: dict[str, list[dict]] = defaultdict(list)
    for score, group in zip(scores, groups):
        by_group[group].append(score)
    return {group: aggregate(by_group[group]) for group in sorted(by_group)}
