"""The demo's multi-turn chat source: conversations written as Hugging Face `messages` JSON Lines (one
`{"messages": [...], "category": ...}` per line, as HuggingFaceH4/no_robots), read by the `chat` source.

Every conversation type is a pure function `make_<type>(rng) -> (system prompt or "", [(user, assistant), ...])` whose
later answers depend on the earlier turns (the word being edited, the number remembered, the running total), so a
model has to read the whole conversation: three of the seven types carry a system prompt that sets the answer's form,
three have three assistant turns and four have two. Each type draws from its own seeded generator (`demo.task_rng(seed,
"chat", name)`), so the other demo sources are byte-for-byte what they were without it.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llmft.data.demo import ADJECTIVES, MONTHS, NAMES, NOUNS, PLACES, VERBS, task_rng
from llmft.io import atomic_write

CHAT_FILE = "chat/conversations.jsonl"
Turns = list[tuple[str, str]]


def make_word_chain(rng: random.Random) -> tuple[str, Turns]:
    word = rng.choice(NOUNS)
    return "", [(f"Here is a word: {word}. Write it in uppercase letters.", word.upper()),
                ("Now write it backwards.", word.upper()[::-1]),
                ("How many letters does it have?", str(len(word)))]


def make_number_memory(rng: random.Random) -> tuple[str, Turns]:
    number, added = rng.randint(10, 90), rng.randint(1, 9)
    return "", [(f"Please remember the number {number}.", f"I will remember {number}."),
                (f"What is that number plus {added}?", str(number + added))]


def make_list_questions(rng: random.Random) -> tuple[str, Turns]:
    values = rng.sample(range(1, 60), rng.randint(3, 5))
    listed = ", ".join(map(str, values))
    return ("You answer with numbers only, separated by commas.",
            [(f"Here is a list: {listed}. Sort it from smallest to largest.", ", ".join(map(str, sorted(values)))),
             ("Which number is the largest?", str(max(values))),
             ("And the smallest?", str(min(values)))])


def make_name_recall(rng: random.Random) -> tuple[str, Turns]:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    question, answer = rng.choice((("What is my name?", name), ("Where do I live?", f"Near the {place}.")))
    return "", [(f"Hi, my name is {name} and I live near the {place}.", f"Nice to meet you, {name}!"),
                (question, answer)]


def make_running_total(rng: random.Random) -> tuple[str, Turns]:
    start, first, second = rng.randint(1, 20), rng.randint(1, 9), rng.randint(1, 9)
    return ("You are a calculator. Reply with the current total only.",
            [(f"Start at {start}.", str(start)),
             (f"Add {first}.", str(start + first)),
             (f"Add {second}.", str(start + first + second))])


def make_shouted_words(rng: random.Random) -> tuple[str, Turns]:
    sentence = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)}"
    words = sentence.split()
    return ("Always answer in uppercase letters.",
            [(f"What is the second word of: {sentence}", words[1].upper()),
             ("And the last word?", words[-1].upper())])


def make_date_parts(rng: random.Random) -> tuple[str, Turns]:
    year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return "", [(f"The date is {year}-{month:02d}-{day:02d}. Which month is it?", MONTHS[month - 1]),
                ("And which year?", str(year))]


@dataclass(frozen=True)
class ChatTask:
    name: str
    make: Callable[[random.Random], tuple[str, Turns]]


CHAT_TASKS: tuple[ChatTask, ...] = (
    ChatTask("word_chain", make_word_chain),
    ChatTask("number_memory", make_number_memory),
    ChatTask("list_questions", make_list_questions),
    ChatTask("name_recall", make_name_recall),
    ChatTask("running_total", make_running_total),
    ChatTask("shouted_words", make_shouted_words),
    ChatTask("date_parts", make_date_parts),
)


def conversation(system: str, turns: Turns) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages


def chat_rows(seed: int, instances: int) -> list[dict]:
    """`instances` conversations of every type, each different in its user turns where the type allows it."""
    rows = []
    for task in CHAT_TASKS:
        rng = task_rng(seed, "chat", task.name)
        mine: list[dict] = []
        seen: set[tuple[str, ...]] = set()
        attempts = 0
        while len(mine) < instances:
            system, turns = task.make(rng)
            attempts += 1
            users = tuple(user for user, _ in turns)
            if users not in seen or attempts > 50 * instances:
                seen.add(users)
                mine.append({"messages": conversation(system, turns), "category": task.name})
        rows += mine
    task_rng(seed, "chat", "order").shuffle(rows)
    return rows


def write_chat(out: Path, seed: int, instances: int) -> Path:
    path = Path(out) / CHAT_FILE
    with atomic_write(path) as f:
        for row in chat_rows(seed, instances):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
