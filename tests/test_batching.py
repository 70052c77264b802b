"""Packing and padding: exact plans and tensors, deterministic resumable epochs, and no attention across packed
examples on real tokenized data with tiny random models (sdpa and eager)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmft.training.attention import VARLEN, register
from llmft.training.batching import (Batcher, block_causal_mask, collate_packed, collate_padded, model_inputs, pack_plan,
                            packing_is_isolated, padded_plan)
from llmft.errors import LlmftError
from llmft.training.tokenize import IGNORE_INDEX, Example, tokenize_records
from tiny_models import CONFIGS


def example(ids: list[int], n_prompt: int) -> Example:
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    labels[0] = IGNORE_INDEX
    arr = np.asarray(labels, dtype=np.int32)
    return Example(np.asarray(ids, dtype=np.int32), arr, int((arr != IGNORE_INDEX).sum()), False)


@pytest.fixture(scope="module")
def alpaca_examples(raw_dir, smol_tokenizer) -> list[Example]:
    data = json.loads((raw_dir / "alpaca" / "alpaca_data.json").read_text(encoding="utf-8"))[:4]
    examples, _ = tokenize_records(data, smol_tokenizer, template="alpaca", max_length=96)
    return examples


# ---------------------------------------------------------------- plans

def test_pack_plan_best_fit_decreasing_exact():
    lengths = [5, 4, 3, 3, 2, 1]
    bins = pack_plan(lengths, batch_tokens=8, seed=0, epoch=0)
    assert sorted(sorted(lengths[i] for i in b) for b in bins) == [[1, 3, 4], [2], [3, 5]]
    assert sorted(i for b in bins for i in b) == list(range(6))
    with pytest.raises(LlmftError, match="an example of 9 tokens does not fit batch_tokens=8"):
        pack_plan([9, 1], batch_tokens=8)


def test_pack_plan_deterministic_per_seed_and_epoch():
    lengths = np.random.default_rng(1).integers(10, 200, size=300)
    plan = pack_plan(lengths, 512, seed=3, epoch=1)
    assert plan == pack_plan(lengths, 512, seed=3, epoch=1)
    assert plan != pack_plan(lengths, 512, seed=3, epoch=2)
    assert len(plan) == len(pack_plan(lengths, 512, seed=3, epoch=2)) == len(pack_plan(lengths, 512, seed=4, epoch=0))
    assert sorted(i for b in plan for i in b) == list(range(300))
    assert max(sum(lengths[i] for i in b) for b in plan) <= 512
    # best fit decreasing wastes little: fewer than 3% more bins than the token lower bound
    assert len(plan) <= int(np.ceil(lengths.sum() / 512) * 1.03) + 1


def test_padded_plan_groups_lengths_and_covers_everything():
    lengths = np.random.default_rng(2).integers(1, 500, size=1000)
    plan = padded_plan(lengths, batch_size=8, seed=0, epoch=0)
    assert [len(b) for b in plan].count(8) == 125 and len(plan) == 125
    assert sorted(i for b in plan for i in b) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in plan])
    assert spread < 30  # random batches of 8 from 1..500 would spread ~390
    assert plan == padded_plan(lengths, 8, seed=0, epoch=0) and plan != padded_plan(lengths, 8, seed=0, epoch=1)


# ---------------------------------------------------------------- tensors

def test_collate_packed_positions_labels_and_count():
    a, b = example([10, 11, 12, 13], n_prompt=2), example([20, 21, 22], n_prompt=1)
    batch = collate_packed([a, b])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 13, -100, 21, 22]]
    assert batch["n_trainable"] == 4 and batch["use_cache"] is False and "attention_mask" not in batch
    assert set(model_inputs(batch)) == {"input_ids", "position_ids", "use_cache", "cu_seq_lens_q", "cu_seq_lens_k",
                                        "max_length_q", "max_length_k"}
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 7] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 4
    assert "cu_seq_lens_q" not in collate_packed([a, b], "4d")


def test_block_causal_mask_exact():
    mask = block_causal_mask([2, 3])
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],
                       [0, 0, 1, 1, 0],
                       [0, 0, 1, 1, 1]]
    assert mask.shape == (1, 1, 5, 5) and mask.min().item() == torch.finfo(torch.float32).min


def test_collate_padded_right_pads_with_ignored_labels():
    a, b = example([5, 6, 7], n_prompt=1), example([8, 9], n_prompt=1)
    batch = collate_padded([a, b], pad_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["n_trainable"] == 3


# ---------------------------------------------------------------- the sampler

def test_batcher_resumes_at_any_micro_batch_and_across_epochs():
    rng = np.random.default_rng(0)
    examples = [example(list(range(1, n + 1)), 1) for n in rng.integers(2, 40, size=60)]
    batcher = Batcher(examples, packing=True, batch_tokens=64, seed=5)
    n = len(batcher)
    epoch1 = [b["input_ids"].tolist() for b in batcher.batches(1)]
    assert len(epoch1) == n and [b["input_ids"].tolist() for b in batcher.batches(1, start=3)] == epoch1[3:]
    stream = batcher.stream(start=n + 3)
    first = next(stream)
    assert first[:2] == (1, 3) and first[2]["input_ids"].tolist() == epoch1[3]
    rest = [next(stream) for _ in range(n - 4)]
    assert rest[-1][:2] == (1, n - 1) and next(stream)[:2] == (2, 0)
    # a fresh batcher (a resumed process) plans the same epoch identically
    again = Batcher(examples, packing=True, batch_tokens=64, seed=5)
    assert [b["input_ids"].tolist() for b in again.batches(1, start=5)] == epoch1[5:]
    assert sum(b["n_trainable"] for b in batcher.batches(0)) == sum(e.n_trainable for e in examples)
    padded = Batcher(examples, packing=False, batch_size=8, pad_id=0, seed=5)
    assert len(padded) == 8 and sum(b["input_ids"].shape[0] for b in padded.batches(0)) == 60


# ---------------------------------------------------------------- no attention across packed examples

def tiny(arch: str, attn: str):
    import transformers as tf

    torch.manual_seed(0)
    config = CONFIGS[arch]()
    config._attn_implementation = register() if attn == VARLEN else attn
    return tf.AutoModelForCausalLM.from_config(config).eval()


def example_loss_sums(logits: torch.Tensor, labels: torch.Tensor, lengths: list[int]) -> list[float]:
    """Per example, the summed next-token loss inside its own span of a [1, T] row."""
    token_loss = F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], reduction="none", ignore_index=IGNORE_INDEX)
    token_loss = torch.cat([token_loss, torch.zeros(1)])  # position t holds the loss of predicting t+1
    sums, start = [], 0
    for n in lengths:
        sums.append(token_loss[start:start + n - 1].sum().item())
        start += n
    return sums


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", VARLEN])
@pytest.mark.parametrize("attention", ["position_ids", "4d"])
def test_packed_loss_equals_separate_loss(alpaca_examples, arch, attn, attention):
    model = tiny(arch, attn)
    lengths = [len(e) for e in alpaca_examples]
    assert len(alpaca_examples) == 4 and sum(lengths) > 150
    batch = collate_packed(alpaca_examples, attention)
    with torch.no_grad():
        packed = example_loss_sums(model(**model_inputs(batch)).logits, batch["labels"], lengths)
        alone = [example_loss_sums(model(**model_inputs(collate_packed([e], attention))).logits,
                                   collate_packed([e])["labels"], [len(e)])[0] for e in alpaca_examples]
    assert packed == pytest.approx(alone, rel=1e-4)
    # the model's own loss over the row counts exactly the trainable tokens: none across a boundary
    with torch.no_grad():
        own = model(**model_inputs(batch), labels=batch["labels"]).loss.item()
    assert own * batch["n_trainable"] == pytest.approx(sum(alone), rel=1e-4)


def test_without_use_cache_false_packed_examples_leak(alpaca_examples):
    """Why every packed batch carries use_cache=False: with the model's default cache, transformers skips the
    packed-sequence mask and the examples attend to each other."""
    model = tiny("llama", "sdpa")
    batch = collate_packed(alpaca_examples)
    starts = np.cumsum([0] + [len(e) for e in alpaca_examples])
    with torch.no_grad():
        isolated = model(**model_inputs(batch)).logits[0]
        leaked = model(**{**model_inputs(batch), "use_cache": True}).logits[0]
        alone = [model(**model_inputs(collate_packed([e]))).logits[0] for e in alpaca_examples]
    for i, single in enumerate(alone):
        span = slice(starts[i], starts[i + 1])
        assert (isolated[span] - single).abs().max().item() < 1e-4
        leak = (leaked[span] - single).abs().max().item()
        assert leak < 1e-4 if i == 0 else leak > 1e-2  # the first example has nothing before it to see


def test_padded_loss_equals_separate_loss(alpaca_examples):
    model = tiny("llama", "sdpa")
    batch = collate_padded(alpaca_examples, pad_id=2)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
        alone = [model(**model_inputs(collate_packed([e]))).logits for e in alpaca_examples]
    for row, (e, single) in enumerate(zip(alpaca_examples, alone)):
        got = example_loss_sums(logits[row:row + 1, :len(e)], batch["labels"][row:row + 1, :len(e)], [len(e)])
        want = example_loss_sums(single, collate_packed([e])["labels"], [len(e)])
        assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packing_is_isolated_on_every_tiny_architecture(arch):
    model = tiny(arch, "sdpa").train()
    assert packing_is_isolated(model) and packing_is_isolated(model, attention="4d")
    assert model.training  # the check restores the mode it found


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packing_check_in_bf16_passes_isolation_and_catches_a_leak(arch, monkeypatch):
    import llmft.training.batching as batching

    model = tiny(arch, "sdpa").to(torch.bfloat16)
    assert packing_is_isolated(model)
    plain = batching.model_inputs
    monkeypatch.setattr(batching, "model_inputs", lambda batch, device=None: {**plain(batch, device),
                                                                              "use_cache": True})
    assert not packing_is_isolated(model)
