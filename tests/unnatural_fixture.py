"""Writes a small Unnatural Instructions sample (core and full, as .jsonl and as the .zip they ship in) into a test's
tmp_path. No real sample is available offline, so these items are hand-written to the schema in the dataset's
README: {instruction, instances: [{instruction_with_input, input, constraints, output}], reformulations}.

Counts the tests rely on:
- core: 4 lines, 5 instances; 4 kept, 1 rejected ("empty output", line 3 instance 0).
- full: 4 lines, 5 instances (all kept); reformulations: line 1 has 2 (the second places the input inside the
  instruction with {INPUT}), line 2 has 2 (the second lacks 'output'), line 3 null, line 4 empty list.
  Without reformulations: 5 kept. With: 8 kept, 1 rejected ("missing field 'output'").
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

SCIENCE = ("You are given a science question (easy-level) and four answer options (associated with \"A\", \"B\", "
           "\"C\", \"D\"). Your task is to find the correct answer based on scientific facts, knowledge, and "
           "reasoning. Do not generate anything else apart from one of the following characters: 'A', 'B', 'C', 'D'.")
SCIENCE_INPUT = "Which part of a bicycle BEST moves in a circle? (A) Seat (B) Frame (C) Foot pedal (D) Kickstand"
SCIENCE_CONSTRAINTS = "The output should be one of the following characters: 'A', 'B', 'C', 'D'."
GRAMMAR = "You are given a sentence. Your task is to classify whether the sentence is grammatically correct or not."
GRAMMAR_CONSTRAINTS = "The output should be 'Correct' or 'Incorrect'."
RECIPE = "Given the name of a dish, list the ingredients needed to cook it."
SYNONYM = "Find the word in the text that is a synonym for 'happy'."
TRANSLATE = "Translate the given English sentence into French."


def _instance(instruction: str, input_text: str, constraints: str, output: str) -> dict:
    return {"instruction_with_input": f"{instruction}\n{input_text}", "input": input_text,
            "constraints": constraints, "output": output}


def _reformulation(instruction: str, input_text: str, output: str | None) -> dict:
    filled = instruction.replace("{INPUT}", input_text) if "{INPUT}" in instruction else f"{instruction}\n{input_text}"
    item = {"instruction": instruction, "instruction_with_input": filled, "input": input_text}
    if output is not None:
        item["output"] = output
    return item


def core_items() -> list[dict]:
    return [
        {"instruction": SCIENCE, "instances": [_instance(SCIENCE, SCIENCE_INPUT, SCIENCE_CONSTRAINTS, "C")]},
        {"instruction": GRAMMAR, "instances": [
            _instance(GRAMMAR, "The boys is playing football.", GRAMMAR_CONSTRAINTS, "Incorrect"),
            _instance(GRAMMAR, "She has finished her homework.", GRAMMAR_CONSTRAINTS, "Correct"),
        ]},
        {"instruction": RECIPE, "instances": [
            _instance(RECIPE, "Pancakes", "The output should be a list of ingredients.", ""),
        ]},
        {"instruction": SYNONYM, "instances": [
            _instance(SYNONYM, "After hearing the news, Maria felt joyful all day.",
                      "The output should be a word from the given text.", "joyful"),
        ]},
    ]


def full_items() -> list[dict]:
    science, grammar, _, synonym = core_items()
    science["reformulations"] = [
        _reformulation("Given a science question with four options labelled 'A', 'B', 'C' and 'D', answer with the "
                       "letter of the correct option.", SCIENCE_INPUT, "C"),
        _reformulation("Question: {INPUT}\nReply with A, B, C or D only.", SCIENCE_INPUT, "C"),
    ]
    grammar["reformulations"] = [
        _reformulation("Is the following sentence grammatical? Answer 'Correct' or 'Incorrect'.",
                       "The boys is playing football.", "Incorrect"),
        _reformulation("Decide whether this sentence has a grammar mistake.", "She has finished her homework.", None),
    ]
    synonym["reformulations"] = None
    translate = {"instruction": TRANSLATE, "instances": [_instance(TRANSLATE, "Good morning.", "", "Bonjour.")],
                 "reformulations": []}
    return [science, grammar, synonym, translate]


def _write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def _write_zip(path: Path, member: str, jsonl: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(jsonl, member)
    return path


def write_unnatural_fixture(tmp_path: Path) -> dict[str, Path]:
    """Paths: core_jsonl, full_jsonl, core_zip, full_zip (zips hold `core_data.jsonl` / `full_data.jsonl`)."""
    folder = tmp_path / "unnatural"
    (folder / "zips").mkdir(parents=True)
    core = _write_jsonl(folder / "core_data.jsonl", core_items())
    full = _write_jsonl(folder / "full_data.jsonl", full_items())
    return {
        "core_jsonl": core,
        "full_jsonl": full,
        "core_zip": _write_zip(folder / "zips" / "core_data.zip", "core_data.jsonl", core),
        "full_zip": _write_zip(folder / "zips" / "full_data.zip", "full_data.jsonl", full),
    }


def write_zip_slip(tmp_path: Path, member: str = "../evil.jsonl") -> Path:
    """A zip whose member name escapes the folder it would be extracted to."""
    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("core_data.jsonl", json.dumps(core_items()[0]) + "\n")
        archive.writestr(member, json.dumps(core_items()[1]) + "\n")
    return path
