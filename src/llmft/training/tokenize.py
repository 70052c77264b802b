"""Prompt/response text -> token ids with the prompt masked out of the loss, and a cache of whole tokenized splits.

The prompt and the response are tokenised separately and joined, so the prompt is masked by token COUNT (no search
for a response marker, which breaks when a marker's tokens merge with its neighbours). The tokenizer's leading
special tokens (a BOS, for tokenizers that add one) are put in front once; EOS is appended to the response and is a
label, also when the pad token is the EOS token (SmolLM2), because labels never come from the pad id.

A conversation under the chat template is different: the whole conversation is rendered once by the chat template
and tokenised once with offsets; the tokens inside the assistant turns' spans (content + end-of-turn marker,
data/conversation.py) are the labels, every assistant turn or only the last (`train_on`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from llmft.errors import LlmftError
from llmft.folders import cache_entry
from llmft.io import dumps_record, progress, write_json
from llmft.data.conversation import is_conversation, render_conversation
from llmft.data.prompts import render

IGNORE_INDEX = -100
CACHE_FORMAT = 2  # bump when the encoding changes, so old caches are never read
_TOKENIZE_CHUNK = 512


@dataclass
class Example:
    input_ids: np.ndarray   # int32 [n]
    labels: np.ndarray      # int32 [n], IGNORE_INDEX on prompt tokens and on the first token
    n_trainable: int
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeReport:
    examples_in: int = 0
    kept: int = 0
    truncated: int = 0              # kept examples with the prompt and/or the response cut
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped: int = 0                # no trainable token left
    dropped_ids: list = field(default_factory=list)   # the first few, to look them up
    total_tokens: int = 0
    trainable_tokens: int = 0
    length_percentiles: dict = field(default_factory=dict)   # p50/p90/p99/max over kept examples
    cache_key: str = ""
    cache_hit: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- one example

def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text when it adds special tokens (a BOS, or nothing)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise LlmftError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; the model could not learn to stop")
    return int(tokenizer.eos_token_id)


def encode(prompt: str, response: str, tokenizer, max_length: int) -> Example | None:
    """One example: [prefix] prompt response EOS, prompt masked; None when no trainable token is left."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    example, _ = encode_ids(prompt_ids, response_ids, special_prefix(tokenizer), eos_id(tokenizer), max_length)
    return example


def encode_ids(prompt_ids: Sequence[int], response_ids: Sequence[int], prefix: Sequence[int], eos: int,
               max_length: int) -> tuple[Example | None, tuple[bool, bool]]:
    """Join, truncate and mask already tokenised parts; also says (prompt cut, response cut)."""
    prompt_ids, prefix = list(prompt_ids), list(prefix)
    if prefix and prompt_ids[: len(prefix)] == prefix:  # the text already held it (a chat template's BOS)
        prompt_ids = prompt_ids[len(prefix):]
    response_ids = list(response_ids) + [eos]
    prompt_ids, response_ids, cuts = _truncate(prompt_ids, response_ids, max_length - len(prefix))
    input_ids = np.asarray(prefix + prompt_ids + response_ids, dtype=np.int32)
    labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int32)
    labels[len(prefix) + len(prompt_ids):] = response_ids
    labels[:1] = IGNORE_INDEX  # nothing precedes the first token, so it is never predicted (also not in a pack)
    n_trainable = int((labels != IGNORE_INDEX).sum())
    if n_trainable == 0:
        return None, cuts
    return Example(input_ids, labels, n_trainable, truncated=any(cuts)), cuts


def encode_conversation(record: dict, tokenizer, max_length: int, train_on: str = "all_assistant"
                        ) -> tuple[Example | None, tuple[bool, bool]]:
    """One conversation: its whole chat-template rendering, tokenised once; labels on the tokens that overlap a
    trained assistant span. Over max_length, the part before the first trained token loses tokens from the left
    (as a prompt does) and the rest is cut from the right."""
    rendered = render_conversation(record["messages"], tokenizer, record_id=record.get("id"))
    ids, trained = trained_token_mask(rendered.text, rendered.trained_spans(train_on), tokenizer)
    prefix = special_prefix(tokenizer)
    if prefix and ids[: len(prefix)] != prefix:
        ids, trained = prefix + ids, [False] * len(prefix) + trained
    prefix_len = len(prefix)
    body, body_mask = ids[prefix_len:], trained[prefix_len:]
    first = next((i for i, t in enumerate(body_mask) if t), len(body))
    head, head_mask = body[:first], body_mask[:first]
    tail, tail_mask = body[first:], body_mask[first:]
    head_keep, tail_keep, cuts = _truncate_counts(len(head), len(tail), max_length - prefix_len)
    input_ids = ids[:prefix_len] + head[len(head) - head_keep:] + tail[:tail_keep]
    mask = trained[:prefix_len] + head_mask[len(head_mask) - head_keep:] + tail_mask[:tail_keep]
    input_ids = np.asarray(input_ids, dtype=np.int32)
    labels = np.where(np.asarray(mask, dtype=bool), input_ids, IGNORE_INDEX).astype(np.int32)
    labels[:1] = IGNORE_INDEX
    n_trainable = int((labels != IGNORE_INDEX).sum())
    if n_trainable == 0:
        return None, cuts
    return Example(input_ids, labels, n_trainable, truncated=any(cuts)), cuts


def trained_token_mask(text: str, spans: Sequence[tuple[int, int]], tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of `text` (no special tokens added) and, per token, whether it overlaps one of the character
    spans (offset mapping of a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise LlmftError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer: conversations need its "
                         "character offsets to find the assistant turns")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained, spans, k = [], sorted(spans), 0
    for start, end in encoded["offset_mapping"]:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        trained.append(k < len(spans) and end > spans[k][0] and start < spans[k][1] and end > start)
    return list(encoded["input_ids"]), trained


def _truncate_counts(n_prompt: int, n_response: int, room: int) -> tuple[int, int, tuple[bool, bool]]:
    """How many prompt tokens (kept from the right) and response tokens (kept from the left) fit into `room`."""
    prompt, response, cuts = _truncate(list(range(n_prompt)), list(range(n_response)), room)
    return len(prompt), len(response), cuts


def _truncate(prompt: list[int], response: list[int], room: int) -> tuple[list[int], list[int], tuple[bool, bool]]:
    """Fit into `room` tokens: the prompt loses tokens from the left only as far as the response needs, and
    keeps at least half the room; the response is cut from the right."""
    if room <= 0:
        raise LlmftError(f"max_length leaves no room for any token ({room})")
    if len(prompt) + len(response) <= room:
        return prompt, response, (False, False)
    prompt_keep = min(len(prompt), max(room - len(response), room // 2))
    response_keep = min(len(response), room - prompt_keep)
    cuts = (prompt_keep < len(prompt), response_keep < len(response))
    return prompt[len(prompt) - prompt_keep:], response[:response_keep], cuts


# ---------------------------------------------------------------- a whole split

def tokenize_records(records: Iterable[dict], tokenizer, *, template: str, max_length: int, k_positive: int = 0,
                     train_on: str = "all_assistant", cache_dir: str | Path | None = None, num_proc: int = 1
                     ) -> tuple[list[Example], TokenizeReport]:
    """Render and tokenise every record. With `cache_dir`, the result is stored there (safetensors + JSON) under a
    key of tokenizer identity, template, k_positive, max_length, train_on and the data, and read back on the next
    call."""
    records = [r.to_dict() if hasattr(r, "to_dict") else r for r in records]
    key = cache_key(records, tokenizer, template=template, max_length=max_length, k_positive=k_positive,
                    train_on=train_on)
    folder = Path(cache_dir) / key if cache_dir is not None else None
    if folder is not None and (folder / "report.json").exists():
        return _load_cache(folder)
    examples, report = _tokenize_all(records, tokenizer, template, max_length, k_positive, train_on, num_proc)
    report.cache_key = key
    if folder is not None:
        _save_cache(folder, examples, report)
    if report.kept == 0:
        raise LlmftError(f"no example left after tokenization: {report.examples_in} in, {report.dropped} with no "
                         f"trainable token (max_length {max_length}; first ids: {report.dropped_ids[:5]})")
    return examples, report


def _tokenize_all(records, tokenizer, template, max_length, k_positive, train_on, num_proc):
    chunks = [records[i:i + _TOKENIZE_CHUNK] for i in range(0, len(records), _TOKENIZE_CHUNK)]
    args = [(chunk, tokenizer, template, max_length, k_positive, train_on) for chunk in chunks]
    bar = dict(total=len(records), desc="tokenize", unit="rec")
    results = []
    if num_proc > 1 and len(chunks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn")) as pool, progress(**bar) as pb:
            for result in pool.map(_tokenize_chunk, args):
                results.append(result)
                pb.update(len(result[0]))
    else:
        with progress(**bar) as pb:
            for a in args:
                results.append(_tokenize_chunk(a))
                pb.update(len(a[0]))
    return _merge(results, len(records))


def _tokenize_chunk(args) -> tuple[list, list[tuple[bool, bool]]]:
    """(examples or None per record, (prompt cut, response cut) per record) for one chunk of records."""
    records, tokenizer, template, max_length, k_positive, train_on = args
    prefix, eos = special_prefix(tokenizer), eos_id(tokenizer)
    conversations = {i for i, r in enumerate(records) if template == "chat" and is_conversation(r)}
    singles = [r for i, r in enumerate(records) if i not in conversations]
    pairs = [render(r, template, tokenizer=tokenizer, k_positive=k_positive) for r in singles]
    encoded = iter(zip(singles, _ids(tokenizer, [p for p, _ in pairs]), _ids(tokenizer, [r for _, r in pairs])))
    out, cuts = [], []
    for i, record in enumerate(records):
        if i in conversations:
            example, cut = encode_conversation(record, tokenizer, max_length, train_on)
        else:
            example, cut = _encode_single(*next(encoded), tokenizer, template, k_positive, prefix, eos, max_length)
        out.append(example)
        cuts.append(cut)
    return out, cuts


def encode_record(record: dict, tokenizer, *, template: str, max_length: int, k_positive: int = 0,
                  train_on: str = "all_assistant") -> tuple[Example | None, tuple[bool, bool]]:
    """One record exactly as training encodes it (evaluation builds its prompts from this): a conversation under
    the chat template through encode_conversation, anything else as prompt + response + EOS."""
    if template == "chat" and is_conversation(record):
        return encode_conversation(record, tokenizer, max_length, train_on)
    prompt, response = render(record, template, tokenizer=tokenizer, k_positive=k_positive)
    prompt_ids, response_ids = _ids(tokenizer, [prompt, response])
    return _encode_single(record, prompt_ids, response_ids, tokenizer, template, k_positive, special_prefix(tokenizer),
                          eos_id(tokenizer), max_length)


def _encode_single(record, prompt_ids, response_ids, tokenizer, template, k_positive, prefix, eos, max_length):
    room = max_length - len(prefix)
    if template == "superni" and len(prompt_ids) + len(response_ids) + 1 > room and "prompt" not in record:
        # Rebuild the prompt to fit (fewer positive examples, shorter definition) instead of cutting it blindly.
        budget = max(room - len(response_ids) - 1, room // 2)
        prompt, _ = render(record, template, tokenizer=tokenizer, k_positive=k_positive, max_prompt_tokens=budget)
        prompt_ids = _ids(tokenizer, [prompt])[0]
    return encode_ids(prompt_ids, response_ids, prefix, eos, max_length)


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _merge(results, n_in: int) -> tuple[list[Example], TokenizeReport]:
    report = TokenizeReport(examples_in=n_in)
    examples: list[Example] = []
    index = 0
    for chunk_examples, chunk_cuts in results:
        for example, (prompt_cut, response_cut) in zip(chunk_examples, chunk_cuts):
            if example is None:
                report.dropped += 1
                if len(report.dropped_ids) < 20:
                    report.dropped_ids.append(index)
            else:
                examples.append(example)
                report.prompt_truncated += prompt_cut
                report.response_truncated += response_cut
                report.truncated += example.truncated
            index += 1
    _fill_totals(report, examples)
    return examples, report


def _fill_totals(report: TokenizeReport, examples: list[Example]) -> None:
    lengths = np.array([len(e) for e in examples], dtype=np.int64)
    report.kept = len(examples)
    report.total_tokens = int(lengths.sum())
    report.trainable_tokens = int(sum(e.n_trainable for e in examples))
    if len(lengths):
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        report.length_percentiles = {"p50": float(p50), "p90": float(p90), "p99": float(p99),
                                     "max": int(lengths.max()), "mean": round(float(lengths.mean()), 2)}


# ---------------------------------------------------------------- cache

def tokenizer_identity(tokenizer) -> dict:
    """What decides how the tokenizer turns text into ids: its name, vocabulary, special and added tokens and chat
    template (hashed, so a retrained vocabulary under the same name misses the cache)."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None) or "").encode())
    h.update(type(tokenizer).__name__.encode())
    return {"name_or_path": str(tokenizer.name_or_path), "vocab_sha256": h.hexdigest()}


def data_hash(records: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for record in records:
        h.update(dumps_record(record).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def cache_key(records: Sequence[dict], tokenizer, *, template: str, max_length: int, k_positive: int,
              train_on: str = "all_assistant") -> str:
    parts = {"format": CACHE_FORMAT, "tokenizer": tokenizer_identity(tokenizer), "template": template,
             "k_positive": k_positive, "max_length": max_length, "train_on": train_on, "data": data_hash(records)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _save_cache(folder: Path, examples: list[Example], report: TokenizeReport) -> None:
    from safetensors.numpy import save_file

    lengths = np.array([len(e) for e in examples], dtype=np.int64)
    arrays = {
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "input_ids": np.concatenate([e.input_ids for e in examples]) if examples else np.zeros(0, np.int32),
        "labels": np.concatenate([e.labels for e in examples]) if examples else np.zeros(0, np.int32),
        "truncated": np.array([e.truncated for e in examples], dtype=np.uint8),
    }
    with cache_entry(folder) as tmp:      # waits for another builder; removes what a killed one left
        save_file(arrays, str(tmp / "examples.safetensors"))
        write_json(tmp / "report.json", report.to_dict())


def _load_cache(folder: Path) -> tuple[list[Example], TokenizeReport]:
    from safetensors.numpy import load_file

    arrays = load_file(str(folder / "examples.safetensors"))
    report = TokenizeReport(**json.loads((folder / "report.json").read_text(encoding="utf-8")))
    report.cache_hit = True
    offsets, ids, labels = arrays["offsets"], arrays["input_ids"], arrays["labels"]
    examples = []
    for i, truncated in enumerate(arrays["truncated"]):
        lab = labels[offsets[i]:offsets[i + 1]]
        examples.append(Example(ids[offsets[i]:offsets[i + 1]], lab, int((lab != IGNORE_INDEX).sum()),
                                bool(truncated)))
    if report.kept == 0:
        raise LlmftError(f"no example left after tokenization (cached result in {folder})")
    return examples, report
