"""The demo's multi-turn chat source: a real messages JSONL file, conversations whose answers follow from the turns
before them, read by the chat source with no reject, and the other demo sources untouched."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from llmft.data import demo, demo_chat
from llmft.data.records import Record
from llmft.data.sources import convert

INSTANCES = 12


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "raw"
    demo.write_demo(out, seed=5, instances=INSTANCES)
    return out


def conversations(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / demo_chat.CHAT_FILE).read_text("utf-8").splitlines()]


def test_written_as_messages_jsonl_with_both_shapes(demo_dir):
    rows = conversations(demo_dir)
    assert len(rows) == len(demo_chat.CHAT_TASKS) * INSTANCES
    assert all(set(row) == {"messages", "category"} for row in rows)
    shapes = {}
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        shapes[row["category"]] = (roles[0] == "system", roles.count("assistant"))
    assert set(shapes.values()) == {(False, 2), (False, 3), (True, 2), (True, 3)}
    assert sum(system for system, _ in shapes.values()) == 3
    assert Counter(turns for _, turns in shapes.values()) == {2: 4, 3: 3}


def test_converts_with_no_reject_and_distinct_conversations(demo_dir):
    items = list(convert("chat", demo_dir / demo_chat.CHAT_FILE))
    assert all(isinstance(r, Record) for r in items)
    assert Counter(r.task for r in items) == {t.name: INSTANCES for t in demo_chat.CHAT_TASKS}
    assert len({json.dumps(r.messages) for r in items}) == len(items)


def _check(category: str, messages: list[dict]) -> None:
    """Recompute every answer from the turns before it."""
    text = [m["content"] for m in messages if m["role"] != "system"]
    users, answers = text[0::2], text[1::2]
    if category == "word_chain":
        word = re.search(r"word: (\w+)\.", users[0]).group(1)
        assert answers == [word.upper(), word.upper()[::-1], str(len(word))]
    elif category == "number_memory":
        number, added = int(re.search(r"\d+", users[0]).group()), int(re.search(r"\d+", users[1]).group())
        assert answers == [f"I will remember {number}.", str(number + added)]
    elif category == "list_questions":
        values = [int(v) for v in re.search(r"list: ([\d, ]+)\.", users[0]).group(1).split(", ")]
        assert answers == [", ".join(map(str, sorted(values))), str(max(values)), str(min(values))]
    elif category == "name_recall":
        name, place = re.search(r"name is (\w+) and I live near the (\w+)\.", users[0]).groups()
        assert answers[1] == (name if users[1] == "What is my name?" else f"Near the {place}.")
    elif category == "running_total":
        start, first, second = (int(re.search(r"\d+", u).group()) for u in users)
        assert answers == [str(start), str(start + first), str(start + first + second)]
    elif category == "shouted_words":
        words = users[0].split(": ", 1)[1].split()
        assert answers == [words[1].upper(), words[-1].upper()]
    elif category == "date_parts":
        year, month = re.search(r"(\d{4})-(\d{2})", users[0]).groups()
        assert answers == [demo.MONTHS[int(month) - 1], year]
    else:
        raise AssertionError(f"unchecked category {category}")


def test_every_answer_follows_from_the_conversation(demo_dir):
    for row in conversations(demo_dir):
        _check(row["category"], row["messages"])


def test_same_seed_same_bytes_and_other_sources_independent_of_chat(demo_dir, tmp_path):
    assert demo_chat.chat_rows(5, INSTANCES) == conversations(demo_dir)
    assert demo_chat.chat_rows(6, INSTANCES) != conversations(demo_dir)
    # the instruction datasets are exactly what their own writers give without the chat source
    alone = tmp_path / "alone"
    demo.write_alpaca(alone, 5, INSTANCES)
    demo.write_unnatural(alone, 5, INSTANCES)
    for name in (demo.ALPACA_FILE, demo.UNNATURAL_FILE):
        assert (alone / name).read_bytes() == (demo_dir / name).read_bytes()


def test_demo_recipe_feeds_the_chat_source_to_prepare(tmp_path):
    from llmft.pipeline.recipe import demo_sources

    assert demo_sources(tmp_path)["chat"] == [str(tmp_path / demo_chat.CHAT_FILE)]
