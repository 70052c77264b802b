"""`llmft data prepare` on conversations and tables: cleaning, exact/near duplicates and decontamination over the
whole conversation, --chat and --table on the command line, and per-source mixtures."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmft.cli import main
from llmft.config import DataConfig, load_config
from llmft.data import dedup, mixture
from llmft.data.clean import clean
from llmft.data.prepare import prepare
from llmft.data.records import Record
from llmft.errors import LlmftError
from llmft.io import read_jsonl


def conversation(*turns: str, system: str = "") -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_record(*turns: str, system: str = "", rid: str = "chat/x/0") -> Record:
    messages = conversation(*turns, system=system)["messages"]
    return Record(rid, "chat", "chat", turns[0], "", turns[-1], [turns[-1]], {}, messages)


def rows(path: Path) -> list[dict]:
    return list(read_jsonl(path))


def test_cleaning_normalises_every_turn_and_rejects_a_turn_left_empty():
    record = chat_record("Hi\u00a0there  \n\n\n\nfriend", "Hello\u200b!", "Bye\r\n", "Bye!", system=" Be kind. ")
    cleaned, reason = clean(record, DataConfig())
    assert reason is None
    assert [m["content"] for m in cleaned.messages] == ["Be kind.", "Hi there\n\nfriend", "Hello!", "Bye", "Bye!"]
    assert (cleaned.instruction, cleaned.output, cleaned.references) == ("Hi there\n\nfriend", "Bye!", ["Bye!"])
    assert clean(chat_record("Hi", "\u200b\u200b"), DataConfig()) == (None, "empty content")
    long = chat_record("a" * 60, "b" * 60, "c" * 60, "d")
    assert clean(long, DataConfig(max_chars=150)) == (None, "overlong record")   # every turn counts
    assert clean(long, DataConfig(max_chars=200))[1] is None


def test_keys_cover_the_whole_conversation():
    base = chat_record("Name a color.", "Red", "Another?", "Blue")
    same = chat_record("  name a COLOR ", "red.", "another", "BLUE!")
    other_middle = chat_record("Name a color.", "Green", "Another?", "Blue")
    other_system = chat_record("Name a color.", "Red", "Another?", "Blue", system="Answer in French.")
    assert dedup.exact_key(base) == dedup.exact_key(same)
    assert dedup.exact_key(base) != dedup.exact_key(other_middle) != dedup.exact_key(other_system)
    # decontamination compares everything shown before the last answer
    assert dedup.contamination_key(base) == dedup.contamination_key(chat_record("Name a color.", "Red", "Another?",
                                                                                "Purple"))
    assert dedup.contamination_key(base) != dedup.contamination_key(other_middle)
    keyer = dedup.Keyer()
    exact, contamination, signature = keyer.keys(base)
    assert (exact, contamination) == (dedup.exact_key(base), dedup.contamination_key(base))
    assert signature.shape == (2 * dedup.NUM_PERM,)
    # a single-turn record keeps the keys it always had
    single = Record("alpaca/0", "alpaca", "alpaca", "Add.", "1, 2", "3")
    assert keyer.keys(single)[:2] == (dedup.hash64("add", "1, 2", "3"), dedup.hash64("add", "1, 2"))


def test_prepare_dedups_and_decontaminates_conversations(tmp_path):
    story = " ".join(f"word{i}" for i in range(150))
    chats = [conversation("Name a color.", "Red", "Another?", "Blue"),
             conversation("name a color", "red", "another", "blue."),                   # exact duplicate of 0
             conversation("Name a color.", "Green", "Another?", "Blue"),                # differs in a middle turn
             conversation(f"Summarise: {story}", "A story.", "Shorter?", "Story."),
             conversation(f"Summarise: {story} end", "A story.", "Shorter?", "Story."),  # near duplicate of 3
             *[conversation(f"Question {i}?", f"Answer {i}.", "Sure?", f"Yes, {i}.") for i in range(30)]]
    path = write_jsonl(tmp_path / "chats.jsonl", chats)
    manifest = prepare(DataConfig(chat=[str(path)], near_dedup=True, dev_ratio=0.0, test_ratio=0.0, workers=1),
                       tmp_path / "out")
    assert manifest["rejects"]["by_stage"]["dedup"] == {"exact duplicate": 1, "near duplicate": 1}
    rejected = {r["item"]["id"]: r["reason"] for r in rows(tmp_path / "out" / "rejects.jsonl")}
    assert rejected == {"chat/chats/1": "exact duplicate", "chat/chats/4": "near duplicate"}
    train = rows(tmp_path / "out" / "train.jsonl")
    assert len(train) == len(chats) - 2 and train[1]["messages"][1]["content"] == "Green"
    example = manifest["near_duplicates"]["examples"][0]
    assert (example["kept"]["id"], example["duplicate"]["id"]) == ("chat/chats/3", "chat/chats/4")


def test_decontamination_drops_a_held_out_conversation_whose_context_is_in_train(tmp_path):
    chats = [conversation(f"Task {i}: repeat after me.", f"ok {i}", "Say it.", f"said {i}") for i in range(40)]
    chats += [conversation(f"Task {i}: repeat after me.", f"ok {i}", "Say it.", f"other {i}") for i in range(40)]
    path = write_jsonl(tmp_path / "c.jsonl", chats)
    manifest = prepare(DataConfig(chat=[str(path)], dev_ratio=0.2, test_ratio=0.2, workers=1), tmp_path / "out")
    leaks = [r for r in rows(tmp_path / "out" / "rejects.jsonl") if r["reason"] == "contaminates train"]
    assert leaks and manifest["rejects"]["by_stage"]["decontaminate"] == {"contaminates train": len(leaks)}
    train_contexts = {json.dumps(r["messages"][:-1]) for r in rows(tmp_path / "out" / "train.jsonl")}
    for name in ("dev", "test"):
        assert all(json.dumps(r["messages"][:-1]) not in train_contexts for r in rows(tmp_path / "out" / f"{name}.jsonl"))


def test_prepare_cli_with_chat_and_table_sources(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = write_jsonl(tmp_path / "messages.jsonl", [
        conversation(f"Hi {i}", f"Hello {i}", "How are you?", f"Fine {i}", system="Be brief.") for i in range(20)]
        + [{"messages": [{"role": "user", "content": "only me"}]}])
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": f"A{i}"}]}
                                    for i in range(20)]))
    pq.write_table(pa.Table.from_pylist([{"q": f"Table question {i}?", "a": f"table answer {i}"} for i in range(20)]),
                   tmp_path / "t.parquet")
    out = tmp_path / "out"
    argv = ["data", "prepare", "--out", str(out), "--workers", "1", "--chat", str(messages), "--chat", str(sharegpt),
            "--table", str(tmp_path / "t.parquet"), "--columns", "instruction=q,output=a", "--test-ratio", "0.1"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    by_source = manifest["counts"]["by_source"]
    assert (by_source["chat"]["converted"], by_source["table"]["converted"]) == (40, 20)
    assert manifest["rejects"]["by_stage"]["convert"] == {"no assistant turn": 1}
    assert {r["source"] for r in rows(out / "train.jsonl")} == {"chat", "table"}
    assert all(len(r["messages"]) == 5 for r in rows(out / "all.jsonl") if r["id"].startswith("chat/messages/"))
    printed = capsys.readouterr().out
    assert "chat: converted 40" in printed and "table: converted 20" in printed


def test_mixture_caps_and_weights_are_seeded_and_counted(tmp_path):
    big = write_jsonl(tmp_path / "big.jsonl", [conversation(f"Big {i}?", f"big {i}") for i in range(200)])
    small = tmp_path / "small.json"
    small.write_text(json.dumps([{"instruction": f"Small {i}.", "input": "", "output": f"small {i}"}
                                 for i in range(40)]))

    def run(name: str, **mix) -> tuple[dict, Path]:
        cfg = DataConfig(chat=[str(big)], alpaca=[str(small)], dev_ratio=0.05, test_ratio=0.1, workers=1, seed=3,
                         **mix)
        return prepare(cfg, tmp_path / name), tmp_path / name

    plain, plain_dir = run("plain")
    capped, capped_dir = run("capped", source_caps={"chat": 50})
    weighted, weighted_dir = run("weighted", source_weights={"chat": 2, "alpaca": 1})
    again, again_dir = run("again", source_weights={"chat": 2, "alpaca": 1})

    def train_counts(folder: Path) -> Counter:
        return Counter(r["source"] for r in rows(folder / "train.jsonl"))

    assert train_counts(plain_dir) == {"chat": 170, "alpaca": 34} and plain["mixture"] == {}
    assert train_counts(capped_dir) == {"chat": 50, "alpaca": 34}
    assert capped["mixture"]["by_source"]["chat"] == {"train_before": 170, "over source cap": 120,
                                                      "over source weight": 0, "train_after": 50}
    assert capped["rejects"]["by_stage"]["mix"] == {"over source cap": 120}
    assert train_counts(weighted_dir) == {"chat": 68, "alpaca": 34}                     # 2 : 1
    assert weighted["rejects"]["by_stage"]["mix"] == {"over source weight": 102}
    assert weighted["identity"] == "converted 240 = kept 138 + rejected 102 + deduplicated 0"
    # seeded: the same records every time; dev and test do not move with the mixture
    assert (weighted_dir / "train.jsonl").read_bytes() == (again_dir / "train.jsonl").read_bytes()
    for name in ("dev", "test"):
        assert (plain_dir / f"{name}.jsonl").read_bytes() == (capped_dir / f"{name}.jsonl").read_bytes()
    left_out = {r["item"]["id"] for r in rows(capped_dir / "rejects.jsonl") if r["stage"] == "mix"}
    kept = {r["id"] for r in rows(capped_dir / "train.jsonl")}
    assert len(left_out) == 120 and not left_out & kept
    assert kept | left_out == {r["id"] for r in rows(plain_dir / "train.jsonl")}


def test_weighted_targets_and_source_without_train_records():
    assert mixture.weighted_targets({"a": 100, "b": 10}, {"a": 1, "b": 1}) == {"a": 10, "b": 10}
    assert mixture.weighted_targets({"a": 100, "b": 10}, {"a": 3, "b": 1}) == {"a": 30, "b": 10}
    assert mixture.weighted_targets({"a": 100, "b": 0}, {"a": 1, "b": 1}) == {"a": 100}
    train = np.array([True] * 6 + [False] * 2)
    codes = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    mix = mixture.plan_mixture(codes, train, ["alpaca", "self-instruct"], {"self_instruct": 1}, {}, seed=0)
    assert mix.over_cap.sum() == 2 and not mix.over_cap[:3].any() and not mix.over_cap[6:].any()


def test_mixture_flags_and_config_validation(tmp_path):
    cfg = load_config(DataConfig, None, {"source_caps": ["alpaca=1000", "chat=5"], "source_weights": "chat=2,table=1"})
    assert (cfg.source_caps, cfg.source_weights) == ({"alpaca": 1000, "chat": 5}, {"chat": 2.0, "table": 1.0})
    for overrides, message in (({"source_caps": ["nope=3"]}, "unknown source 'nope'"),
                               ({"source_weights": ["chat=0"]}, "chat must be positive"),
                               ({"source_caps": ["chat"]}, "expected key=value"),
                               ({"source_caps": ["chat=many"]}, "expected an integer")):
        with pytest.raises(LlmftError, match=message):
            load_config(DataConfig, None, overrides)
    (tmp_path / "data.yaml").write_text("source_caps: {alpaca: 2}\nsource_weights: {chat: 1.5}\n")
    assert load_config(DataConfig, tmp_path / "data.yaml").source_weights == {"chat": 1.5}
    small = tmp_path / "a.json"
    small.write_text(json.dumps([{"instruction": f"Do {i}.", "input": "", "output": f"done {i}"} for i in range(10)]))
    out = tmp_path / "out"
    assert main(["data", "prepare", "--out", str(out), "--alpaca", str(small), "--cap", "alpaca=3", "--dev-ratio", "0",
                 "--test-ratio", "0", "--workers", "1"]) == 0
    assert len(rows(out / "train.jsonl")) == 3


def test_stats_measure_a_conversation_by_its_turns():
    from llmft.data.stats import measures

    record = chat_record("Hi there", "Hello", "Bye now", "Bye", system="Be kind.")
    assert measures(record.to_dict()) == (len("Be kind.\nHi there\nBye now"), len("Hello\nBye"), 6, 2)


def test_single_turn_records_are_written_without_messages(tmp_path):
    small = tmp_path / "a.json"
    small.write_text(json.dumps([{"instruction": "Do it.", "input": "", "output": "done"}]))
    chats = write_jsonl(tmp_path / "c.jsonl", [conversation("Hi", "Hello")])
    prepare(DataConfig(alpaca=[str(small)], chat=[str(chats)], dev_ratio=0, test_ratio=0, workers=1), tmp_path / "o")
    alpaca, chat = rows(tmp_path / "o" / "train.jsonl")
    assert "messages" not in alpaca and chat["messages"][1] == {"role": "assistant", "content": "Hello"}
    assert list(chat)[-1] == "messages"


def test_columns_must_pair_with_tables():
    with pytest.raises(LlmftError, match="give one for every table, or one for all"):
        load_config(DataConfig, None, {"table": ["a.parquet"], "table_columns": ["instruction=a,output=b",
                                                                                  "prompt=c,completion=d"]})
