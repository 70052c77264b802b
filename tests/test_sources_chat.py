"""The chat source: both formats in every file kind, role aliases, and each bad-conversation reason in the rejects."""
from __future__ import annotations

import json

import pytest

from llmft.cli import main
from llmft.config import DataConfig
from llmft.data.records import Record, Reject, validate_record
from llmft.data.sources import chat, convert
from llmft.io import read_jsonl

SYSTEM = "You answer in one word."
# (system prompt or "", [(user, assistant), ...]): with and without a system prompt, 2 and 3 assistant turns
CONVERSATIONS = [
    ("", [("Name a fruit.", "Apple"), ("Another one?", "Pear")]),
    (SYSTEM, [("Name a color.", "Red"), ("Another one?", "Blue"), ("And a third?", "Green")]),
    (SYSTEM, [("Name a city.", "Paris"), ("Its country?", "France")]),
    ("", [("Count to two.", "1, 2"), ("Now to three.", "1, 2, 3"), ("Backwards?", "3, 2, 1")]),
]


def messages_row(system: str, turns: list[tuple[str, str]]) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def sharegpt_row(system: str, turns: list[tuple[str, str]]) -> dict:
    conversation = [{"from": "system", "value": system}] if system else []
    for user, assistant in turns:
        conversation += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
    return {"conversations": conversation}


def expected_messages(system: str, turns) -> list[dict]:
    return messages_row(system, turns)["messages"]


def write_rows(path, rows: list[dict], kind: str):
    """The same rows as one of the file kinds the source reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif kind in ("parquet", "arrow"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        if kind == "parquet":
            pq.write_table(table, path)
        else:
            with pa.ipc.new_file(str(path), table.schema) as writer:
                writer.write_table(table)
    elif kind == "csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    elif kind == "saved":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


KINDS = [("jsonl", "c.jsonl"), ("json", "c.json"), ("parquet", "c.parquet"), ("arrow", "c.arrow"), ("csv", "c.csv"),
         ("saved", "c_saved")]


@pytest.mark.parametrize("row", [messages_row, sharegpt_row], ids=["messages", "sharegpt"])
@pytest.mark.parametrize("kind,name", KINDS, ids=[k for k, _ in KINDS])
def test_both_formats_in_every_file_kind(tmp_path, row, kind, name):
    path = write_rows(tmp_path / name, [row(s, t) for s, t in CONVERSATIONS], kind)
    records = list(convert("chat", path))
    assert all(isinstance(r, Record) for r in records), records
    assert [r.messages for r in records] == [expected_messages(s, t) for s, t in CONVERSATIONS]
    assert [(r.instruction, r.input, r.output, r.references) for r in records] == [
        (t[0][0], "", t[-1][1], [t[-1][1]]) for _, t in CONVERSATIONS]
    assert [r.meta["assistant_turns"] for r in records] == [2, 3, 2, 3]
    assert {r.meta["format"] for r in records} == {"messages" if row is messages_row else "sharegpt"}
    stem = name.split(".")[0]
    assert [r.id for r in records] == [f"chat/{stem}/{i}" for i in range(4)]
    assert {(r.source, r.task) for r in records} == {("chat", "chat")}
    assert all(validate_record(r.to_dict()) == [] for r in records)


def test_role_aliases_task_field_system_field_and_text_parts():
    item = {"conversations": [{"from": "Prompter", "value": "Hi"}, {"from": "bot", "value": "Hello"},
                              {"from": "USER", "value": "Bye"}, {"from": "chatgpt", "value": "Bye!"}],
            "system": "Be kind.", "category": "greeting", "id": 17}
    [record] = chat.to_records(item, stem="f", index=3)
    assert record.messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                               {"role": "assistant", "content": "Bye!"}]
    assert (record.id, record.task, record.meta["original_id"]) == ("chat/f/3", "greeting", 17)
    parts = {"messages": [{"role": "developer", "content": "Short."},
                          {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]},
                          {"role": "model", "content": "  c \r\n"}]}
    [record] = chat.to_records(parts, stem="f", index=0)
    assert record.messages == [{"role": "system", "content": "Short."}, {"role": "user", "content": "a b"},
                               {"role": "assistant", "content": "c"}]


BAD = [  # (turns, reason, turn index named in the reject)
    ([("user", "Hi")], "no assistant turn", 0),
    ([("user", "Hi"), ("assistant", " \n ")], "empty content", 1),
    ([("user", "Hi"), ("tool", "42")], "unknown role 'tool'", 1),
    ([("user", "Hi"), ("user", "Hello?"), ("assistant", "Yes")], "turns do not alternate", 1),
    ([("assistant", "I start."), ("user", "Hi")], "turns do not alternate", 0),
    ([("user", "Hi"), ("system", "Be brief."), ("assistant", "Yes")], "system turn not first", 1),
    ([("user", "Hi"), ("assistant", "Yes"), ("user", "And?")], "last turn is not the assistant's", 2),
]


@pytest.mark.parametrize("row_format", ["messages", "sharegpt"])
def test_every_bad_conversation_is_a_reject_with_its_reason(tmp_path, capsys, row_format):
    def row(turns):
        if row_format == "messages":
            return {"messages": [{"role": r, "content": c} for r, c in turns]}
        names = {"user": "human", "assistant": "gpt"}
        return {"conversations": [{"from": names.get(r, r), "value": c} for r, c in turns]}

    good = row([("user", "Hi"), ("assistant", "Hello")])
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in [good] + [row(t) for t, _, _ in BAD] + [{"text": "x"}]))
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", "chat", str(source), "--out", str(out)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["chat/bad/0"]
    rejects = list(read_jsonl(tmp_path / "out.rejects.jsonl"))
    expected = [(f"line {i + 2}, turn {turn}", reason) for i, (_, reason, turn) in enumerate(BAD)]
    missing = "missing field 'messages'" if row_format == "messages" else "missing field 'conversations'"
    assert [(r["where"], r["reason"]) for r in rejects] == expected + [(f"line {len(BAD) + 2}", missing)]
    assert all(r["source"] == "chat" and r["path"] == str(source) for r in rejects)
    assert rejects[2]["item"] == row(BAD[2][0])
    printed = capsys.readouterr().out
    assert f"converted {len(BAD) + 2}: kept 1, rejected {len(BAD) + 1}" in printed
    assert "rejected 2: turns do not alternate" in printed


def test_malformed_items_are_rejects_and_unreadable_files_errors(tmp_path):
    bad_items = [[1, 2], {"messages": "not json"}, {"messages": {"role": "user"}}, {"messages": []},
                 {"messages": ["hi"]}, {"messages": [{"role": "user", "content": 3}]},
                 {"messages": [{"content": "Hi"}]}]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"messages": []}] + bad_items))
    reasons = [r.reason for r in convert("chat", path) if isinstance(r, Reject)]
    assert reasons == ["no turns", "item is not an object", "field 'messages' is text but not JSON",
                       "field 'messages' is not a list", "no turns", "turn is not an object", "content is not text",
                       "missing field 'role'"]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(Exception, match=r"broken.parquet: cannot read it with datasets"):
        list(convert("chat", broken))
    assert main(["data", "convert", "chat", str(broken), "--out", str(tmp_path / "o.jsonl")]) == 2


def test_dataset_dict_folder_reads_every_split_or_the_one_asked_for(tmp_path):
    import datasets

    rows = [messages_row(s, t) for s, t in CONVERSATIONS]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]),
                          "test": datasets.Dataset.from_list(rows[3:])}).save_to_disk(str(tmp_path / "dd"))
    every = list(convert("chat", tmp_path / "dd"))
    assert [r.instruction for r in every] == [t[0][0] for _, t in CONVERSATIONS]      # train, then test
    only_test = list(convert("chat", tmp_path / "dd", DataConfig(dataset_split="test")))
    assert [r.output for r in only_test] == ["3, 2, 1"]
    with pytest.raises(Exception, match="has no split 'dev'"):
        list(convert("chat", tmp_path / "dd", DataConfig(dataset_split="dev")))


def test_folder_of_files_and_missing_paths(tmp_path):
    write_rows(tmp_path / "d" / "a.jsonl", [messages_row(*CONVERSATIONS[0])], "jsonl")
    write_rows(tmp_path / "d" / "sub" / "b.parquet", [sharegpt_row(*CONVERSATIONS[1])], "parquet")
    (tmp_path / "d" / "notes.txt").write_text("ignored: not a data file")
    assert [r.id for r in convert("chat", tmp_path / "d")] == ["chat/a/0", "chat/b/0"]
    assert main(["data", "convert", "chat", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2


def test_turn_keys_of_either_convention_in_one_parquet_file(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"conversations": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey"}]}]
    path = write_rows(tmp_path / "mixed.parquet", rows, "parquet")     # one struct type: absent keys read as None
    assert [r.messages[1]["content"] for r in convert("chat", path)] == ["Hello", "Hey"]
