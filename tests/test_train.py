"""train.py on tiny random-weight models with the real SmolLM2 tokenizer: every architecture end to end, exact
gradient accumulation, exact resume, data reading and configuration errors."""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmft.config import TrainConfig
from llmft.errors import InputFormatError, LlmftError
from llmft.training.model import load_run_model
from llmft.training.data import read_training_data
from llmft.training.trainer import train
from ddp_worker import TickingClock
from tiny_models import CONFIGS, save_tiny_model

WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "piano", "lemon", "orbit", "candle", "maple", "zebra"]


def repeat_records(n: int = 24) -> list[dict]:
    """Records whose responses have different lengths (1..12 words), so micro-batches differ in trainable tokens."""
    return [{"id": f"t/{i}", "source": "alpaca", "task": "alpaca", "instruction": f"Repeat {WORDS[i % 12]}.",
             "input": "" if i % 3 else f"{i % 12 + 1} times", "output": " ".join([WORDS[i % 12]] * (i % 12 + 1)),
             "references": [], "meta": {}} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="module")
def tiny_cache(tmp_path_factory):
    """Tokenization caches of these tests go to a temporary folder, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMFT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    records = repeat_records(24)
    write_jsonl(folder / "train.jsonl", records[:20])
    write_jsonl(folder / "dev.jsonl", records[20:])
    return folder


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory, smol_tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("base") / "llama", smol_tokenizer, "llama")


def make_cfg(data, out, model, **kw) -> TrainConfig:
    defaults = dict(max_steps=2, batch_tokens=256, max_length=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                    eval_every=0, save_every=0, bf16="false", lr=1e-3, warmup_ratio=0.0)
    return TrainConfig(data=str(data), out=str(out), model=str(model), **{**defaults, **kw})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_losses(run: Path) -> list[float]:
    return [m["loss"] for m in metrics(run) if "loss" in m]


# ---------------------------------------------------------------- every architecture

@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_lora_on_every_architecture_trains_saves_and_reloads(arch, tmp_path, data_dir, smol_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = save_tiny_model(tmp_path / "base", smol_tokenizer, arch)
    run = tmp_path / "run"
    summary = train(make_cfg(data_dir, run, base, bf16="auto"))
    assert summary["steps"] == 2 and len([m for m in metrics(run) if "loss" in m]) == 2
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)       # two updates moved B away from its zero init
    assert not any("lm_head" in name for name in adapter)

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "adapter").eval()
    model, tokenizer = load_run_model(run)
    assert model.llmft_template == {"template": "alpaca", "k_positive": 0, "max_length": 64,
                                    "train_on": "all_assistant", "model": str(base),
                                    "method": "lora", "trust_remote_code": False}
    ids = tokenizer("Repeat apple.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, peft_model(ids).logits)
        out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 3)


def test_full_fine_tuning_saves_a_complete_model(tmp_path, data_dir, llama_base):
    run = tmp_path / "run"
    train(make_cfg(data_dir, run, llama_base, method="full", lr=1e-2))
    assert not (run / "adapter").exists()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (run / "model").iterdir()}
    model, _ = load_run_model(run)
    base, _ = load_run_model(run, adapter=False)
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.norm.weight" in changed


# ---------------------------------------------------------------- exactness

def test_gradient_accumulation_normalises_by_the_tokens_of_the_whole_batch(tmp_path, llama_base):
    """4 micro-batches of 2 examples accumulated == one batch of 8: the same loss and the same updated weights.
    The reference loss is HF's own mean over every trainable token of the 8 examples."""
    from transformers import AutoModelForCausalLM

    from llmft.training.batching import collate_padded
    from llmft.training.model import load_tokenizer
    from llmft.training.tokenize import tokenize_records

    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "train.jsonl", repeat_records(12)[:8])
    write_jsonl(tmp_path / "d" / "dev.jsonl", repeat_records(12)[8:])
    common = dict(max_steps=1, packing=False, lora_dropout=0.0)
    accumulated = tmp_path / "acc"
    one_batch = tmp_path / "one"
    train(make_cfg(tmp_path / "d", accumulated, llama_base, batch_size=2, grad_accum=4, **common))
    train(make_cfg(tmp_path / "d", one_batch, llama_base, batch_size=8, grad_accum=1, **common))
    loss_acc, loss_one = train_losses(accumulated)[0], train_losses(one_batch)[0]

    tokenizer = load_tokenizer(str(llama_base))
    examples, _ = tokenize_records(repeat_records(12)[:8], tokenizer, template="alpaca", max_length=64)
    batch = collate_padded(examples, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(llama_base).eval()
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss.item()
        per_micro_mean = sum(model(input_ids=batch["input_ids"][i:i + 2],
                                   attention_mask=batch["attention_mask"][i:i + 2],
                                   labels=batch["labels"][i:i + 2]).loss.item() for i in range(0, 8, 2)) / 4
    # 2e-5: float32 sums in another order and metrics.jsonl's 6 decimals on a loss near 10 (test_ddp's tolerance)
    assert loss_acc == pytest.approx(reference, abs=2e-5) and loss_one == pytest.approx(reference, abs=2e-5)
    assert abs(per_micro_mean - reference) > 1e-3      # the data would catch a per-micro-batch mean
    a = load_file(accumulated / "adapter" / "adapter_model.safetensors")
    b = load_file(one_batch / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_stop_and_resume_equals_one_uninterrupted_run(tmp_path, data_dir, llama_base):
    """With dropout and NEFTune noise on, so the random state must be restored exactly too."""
    kw = dict(max_steps=5, save_every=2, eval_every=2, lora_dropout=0.1, batch_tokens=128, grad_accum=2,
              neftune_noise_alpha=5.0)
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    train(make_cfg(data_dir, whole, llama_base, **kw))
    assert train(make_cfg(data_dir, parted, llama_base, **kw), stop_after=3) is None
    assert not (parted / "summary.json").exists() and not (parted / "adapter").exists()
    assert sorted(p.name for p in (parted / "checkpoints").iterdir()) == ["step-2", "step-3"]
    # A stop after step 3 that had saved only step 2 would redo step 3: drop the newest checkpoint to test that.
    import shutil

    shutil.rmtree(parted / "checkpoints" / "step-3")
    summary = train(make_cfg(data_dir, parted, llama_base, resume=True, **kw))
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 5
    rows_whole, rows_parted = metrics(whole), metrics(parted)
    assert [r["step"] for r in rows_parted] == [r["step"] for r in rows_whole] == [0, 1, 2, 2, 3, 4, 4, 5, 5]
    for a, b in zip(rows_whole, rows_parted):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {k: v for k, v in b.items() if k != "elapsed_s"}
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(parted / "adapter" / "adapter_model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    whole_summary = json.loads((whole / "summary.json").read_text())
    assert summary["trainable_tokens"] == whole_summary["trainable_tokens"]


def test_neftune_noise_changes_the_training_loss_but_not_the_dev_loss(tmp_path, data_dir, llama_base):
    plain, noisy = tmp_path / "plain", tmp_path / "noisy"
    train(make_cfg(data_dir, plain, llama_base, max_steps=1))
    train(make_cfg(data_dir, noisy, llama_base, max_steps=1, neftune_noise_alpha=50.0))
    dev = [[m["dev_loss"] for m in metrics(run) if "dev_loss" in m] for run in (plain, noisy)]
    assert dev[0][0] == dev[1][0], "the dev loss before training sees no noise"
    assert train_losses(plain)[0] != pytest.approx(train_losses(noisy)[0], rel=1e-4)


def test_resume_with_changed_settings_lists_them(tmp_path, data_dir, llama_base):
    run = tmp_path / "run"
    train(make_cfg(data_dir, run, llama_base, max_steps=3, save_every=1), stop_after=1)
    with pytest.raises(LlmftError) as e:
        train(make_cfg(data_dir, run, llama_base, max_steps=3, save_every=1, resume=True, lr=5e-4, lora_r=8))
    assert "lr: 0.001 -> 0.0005" in str(e.value) and "lora_r: 4 -> 8" in str(e.value)


def test_a_non_empty_run_folder_is_not_overwritten(tmp_path, data_dir, llama_base):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(LlmftError, match="not empty, and llmft did not create it"):   # --resume would not help
        train(make_cfg(data_dir, tmp_path / "run", llama_base))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- run folder

def test_run_folder_contents(tmp_path, data_dir, llama_base):
    from llmft.config import load_config

    run = tmp_path / "run"
    cfg = make_cfg(data_dir, run, llama_base, max_steps=4, eval_every=2, save_every=1, keep_checkpoints=2)
    summary = train(cfg)
    assert sorted(p.name for p in run.iterdir()) == [
        ".llmft.json", "adapter", "checkpoints", "config.yaml", "loss.png", "manifest.json", "metrics.jsonl", "summary.json",
        "template.json", "tokenizer"]
    assert load_config(TrainConfig, run / "config.yaml") == cfg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert sorted(p.name for p in (run / "checkpoints" / "step-3").iterdir()) == [
        "optimizer.pt", "rng.pt", "scheduler.pt", "state.json", "trainable.safetensors"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run / "adapter").iterdir()}
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["world_size"] == 1 and manifest["bf16"] is False
    assert set(manifest["data"]) == {str(data_dir / "train.jsonl"), str(data_dir / "dev.jsonl")}
    assert manifest["tokenize"]["train"]["kept"] == 20 and manifest["tokenize"]["dev"]["kept"] == 4
    assert manifest["packages"]["torch"] == importlib.metadata.version("torch")
    assert len(manifest["git_commit"]) == 40

    rows = metrics(run)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert set(train_rows[0]) == {"step", "loss", "lr", "grad_norm", "trainable_tokens", "real_tokens", "elapsed_s"}
    assert [r["step"] for r in rows if "dev_loss" in r] == [0, 2, 4]
    assert train_rows[-1]["trainable_tokens"] == summary["trainable_tokens"]
    assert summary["steps"] == 4 and summary["final_loss"] == train_rows[-1]["loss"]
    assert summary["final_dev_loss"] == rows[-1]["dev_loss"]
    assert summary["real_tokens"] > summary["trainable_tokens"] > 0 and summary["peak_rss_mb"] > 0
    template = json.loads((run / "template.json").read_text())
    assert template["template"] == "alpaca" and template["max_length"] == 64 and template["model"] == str(llama_base)


def test_invalid_config_lists_every_problem(tmp_path):
    with pytest.raises(LlmftError) as e:
        train(TrainConfig(data="", out="", method="prefix", lr=-1.0, bf16="maybe", grad_accum=0))
    message = str(e.value)
    for problem in ("method must be 'lora', 'full' or 'adapter'", "lr must be positive", "bf16 must be auto, true or false",
                    "grad_accum must be positive", "data is required", "out is required"):
        assert problem in message


# ---------------------------------------------------------------- data

def test_single_jsonl_of_prompt_completion_rows_gets_a_seeded_dev_slice(tmp_path):
    rows = [{"prompt": f"Q{i}:", "completion": f" A{i}"} for i in range(40)]
    data = read_training_data(TrainConfig(data=str(write_jsonl(tmp_path / "pc.jsonl", rows)), out="o", seed=3))
    assert len(data.train) == 38 and len(data.dev) == 2
    again = read_training_data(TrainConfig(data=str(tmp_path / "pc.jsonl"), out="o", seed=3))
    assert again.dev == data.dev and {r["prompt"] for r in data.dev} | {r["prompt"] for r in data.train} == {
        f"Q{i}:" for i in range(40)}


def test_bad_rows_are_reported_by_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a"},
                                                {"instruction": "x", "output": 3}, {"text": "y"}])
    with pytest.raises(InputFormatError) as e:
        read_training_data(TrainConfig(data=str(path), out="o"))
    assert str(e.value) == (f"{path}: 3 row(s) are neither records, prompt/completion rows nor conversations:\n"
                            "  - line 2: 'completion' is missing or not a string\n"
                            "  - line 3: 'output' is missing or not a string\n"
                            "  - line 4: 'instruction' is missing or not a string")


def test_prompt_completion_file_trains(tmp_path, llama_base):
    rows = [{"prompt": f"Say {w}:", "completion": f" {w} {w}"} for w in WORDS * 2]
    run = tmp_path / "run"
    summary = train(make_cfg(write_jsonl(tmp_path / "pc.jsonl", rows), run, llama_base, max_steps=1))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["tokenize"]["train"]["kept"] == 23 and manifest["tokenize"]["dev"]["kept"] == 1
    assert summary["steps"] == 1


# ---------------------------------------------------------------- the embedded model

@pytest.mark.slow
def test_lora_on_the_embedded_model_lowers_dev_loss(tmp_path, raw_dir):
    rows = json.loads((raw_dir / "alpaca" / "alpaca_data.json").read_text())[:400]
    data = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), max_steps=30, batch_tokens=512,
                                max_length=256, lr=1e-3, eval_every=15, save_every=0, dev_limit=20, seed=0))
    assert summary["steps"] == 30
    assert summary["final_dev_loss"] < summary["initial_dev_loss"] - 0.05


def test_split_rows_fills_consecutive_rows_up_to_the_cap():
    from llmft.training.plan import split_rows

    lengths = {0: 300, 1: 200, 2: 100, 3: 400, 4: 512, 5: 12}
    assert split_rows([0, 1, 2, 3, 4, 5], lengths, 512) == [[0, 1], [2, 3], [4], [5]]
    assert split_rows([4, 5], lengths, 4096) == [[4, 5]]


def test_rows_of_a_packed_micro_batch_give_the_loss_of_one_long_row(tmp_path, data_dir, llama_base):
    kw = dict(max_steps=3, batch_tokens=256, max_length=64, eval_every=3)
    split, whole = tmp_path / "split", tmp_path / "whole"
    train(make_cfg(data_dir, split, llama_base, **kw))                      # rows of <= 64 tokens
    train(make_cfg(data_dir, whole, llama_base, row_tokens=256, **kw))      # one row per micro-batch
    for a, b in zip(metrics(split), metrics(whole)):
        assert a.get("trainable_tokens") == b.get("trainable_tokens")
        key = "loss" if "loss" in a else "dev_loss"
        assert a[key] == pytest.approx(b[key], abs=1e-5)


def test_dev_limit_zero_skips_dev_evaluation_even_with_a_dev_file(tmp_path, data_dir, llama_base):
    run = tmp_path / "run"
    summary = train(make_cfg(data_dir, run, llama_base, max_steps=2, eval_every=1, dev_limit=0))
    rows = metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert not [r for r in rows if "dev_loss" in r]
    assert summary["steps"] == 2 and summary["final_dev_loss"] is None


@pytest.mark.skipif(not Path("/proc/self/maps").exists() or "glibc" not in " ".join(__import__("platform").libc_ver()),
                    reason="glibc only")
def test_cpu_allocator_settings_are_accepted_by_glibc():
    from llmft.training import cpu as train_module

    assert train_module.keep_freed_memory_in_heap() is True
    # mallopt takes a C int: a value past 2^31 would be truncated (4 GiB -> 0) and still "succeed"
    assert train_module.MMAP_THRESHOLD_MAX < 2**31


def test_cpu_rows_hold_the_same_activation_bytes_in_fp32_as_in_bf16():
    """Packed micro-batches run on CPU as rows of 1,024 tokens in bf16 and 512 in fp32 (twice the bytes per
    activation), never shorter than max_length; an explicit row_tokens wins, and a GPU keeps one row."""
    from llmft.config import TrainConfig
    from llmft.training.plan import row_cap

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    cfg = TrainConfig(max_length=512, batch_tokens=4096)
    assert (row_cap(cfg, cpu, bf16=True), row_cap(cfg, cpu, bf16=False), row_cap(cfg, gpu)) == (1024, 512, 4096)
    assert row_cap(TrainConfig(max_length=2048, batch_tokens=4096), cpu, bf16=False) == 2048
    assert row_cap(TrainConfig(max_length=256, batch_tokens=384), cpu, bf16=True) == 384
    assert row_cap(TrainConfig(max_length=512, batch_tokens=4096, row_tokens=2048), cpu, bf16=False) == 2048


# ---------------------------------------------------------------- a time limit re-fits the steps

@pytest.mark.parametrize("warmup,total", [(0, 1), (3, 40), (12, 222), (6, 120)])
def test_the_schedule_is_transformers_cosine_with_warmup(warmup, total):
    from transformers import get_cosine_schedule_with_warmup

    from llmft.training.optim import CosineWithWarmup

    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                                warmup, total).lr_lambdas[0]
    ours = CosineWithWarmup(warmup, total)
    assert all(abs(ours(step) - reference(step)) < 1e-12 for step in range(total + 2))


def test_a_time_limit_refits_the_steps_and_the_decay_and_survives_a_resume(tmp_path, data_dir, llama_base,
                                                                          monkeypatch):
    from llmft.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", TickingClock(0.5))
    kw = dict(max_steps=40, time_limit_minutes=10 / 60, save_every=4, warmup_ratio=0.1)   # 10 s at 0.5 s a step
    whole = train(make_cfg(data_dir, tmp_path / "whole", llama_base, **kw))
    assert whole["steps"] == 20 and whole["most_steps"] == 40 and whole["train_seconds"] == 10.0
    assert whole["refits"][0] == {"step": 3, "mean_step_s": 0.5, "from": 40, "to": 20}
    lrs = [r["lr"] for r in metrics(tmp_path / "whole") if "lr" in r]
    assert lrs[-1] < 0.01 * max(lrs)            # the cosine decayed over the 20 steps, not the planned 40

    assert train(make_cfg(data_dir, tmp_path / "parted", llama_base, **kw), stop_after=9) is None
    monkeypatch.setattr(trainer_module, "time", TickingClock(0.5))
    resumed = train(make_cfg(data_dir, tmp_path / "parted", llama_base, resume=True, **kw))
    assert resumed["resumed_from_step"] == 9 and resumed["steps"] == 20
    assert resumed["refits"][0] == whole["refits"][0], "the re-fits before the interruption stay in the summary"
    assert [r["lr"] for r in metrics(tmp_path / "parted") if "lr" in r] == lrs


def test_a_slower_machine_than_planned_ends_early_a_faster_one_never_passes_the_most(tmp_path, data_dir, llama_base,
                                                                                   monkeypatch):
    from llmft.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", TickingClock(2.0))
    slow = train(make_cfg(data_dir, tmp_path / "slow", llama_base, max_steps=12, time_limit_minutes=0.25,
                          log_every=5))
    assert slow["steps"] == 7 and slow["train_seconds"] <= 15.0
    assert [r["step"] for r in metrics(tmp_path / "slow") if "loss" in r] == [5, 7]   # the step the re-fit ended on
    monkeypatch.setattr(trainer_module, "time", TickingClock(0.01))
    fast = train(make_cfg(data_dir, tmp_path / "fast", llama_base, max_steps=12, time_limit_minutes=0.25))
    assert fast["steps"] == 12 and fast["refits"] == []


def test_a_large_planned_total_is_refitted_after_three_steps_warmup_included(tmp_path, data_dir, llama_base,
                                                                            monkeypatch):
    """The plan starts at the most steps allowed (here 400, warm-up 40): a 10-step limit must not wait for step 20
    (400 / REFITS_PER_RUN) nor leave the learning rate in a 40-step warm-up."""
    from llmft.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", TickingClock(1.0))
    summary = train(make_cfg(data_dir, tmp_path / "run", llama_base, max_steps=400, warmup_ratio=0.1,
                             time_limit_minutes=10 / 60))
    assert summary["steps"] == 10 and summary["refits"][0] == {"step": 3, "mean_step_s": 1.0, "from": 400, "to": 10}
    lrs = [r["lr"] for r in metrics(tmp_path / "run") if "lr" in r]
    assert lrs[:4] == [0.0, 2.5e-5, 5e-5, pytest.approx(0.883e-3, abs=1e-6)]   # step 4: warm-up over, cosine of 10
    assert lrs[-1] < 0.1e-3                                                       # decayed within the 10 steps


def test_the_time_limit_keeps_the_minimum_steps(tmp_path, data_dir, llama_base, monkeypatch):
    from llmft.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", TickingClock(2.0))
    floor = train(make_cfg(data_dir, tmp_path / "floor", llama_base, max_steps=12, time_limit_minutes=0.25,
                           time_limit_min_steps=9))
    assert floor["steps"] == 9 and floor["train_seconds"] == 18.0      # over the 15-second limit, as asked
