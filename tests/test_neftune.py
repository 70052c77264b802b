"""NEFTune: noise on the input embeddings while training, scaled by each example's own length."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmft.config import TrainConfig
from llmft.training.batching import collate_packed, collate_padded
from llmft.training.neftune import embedding_noise, token_example_lengths
from llmft.training.tokenize import Example
from tiny_models import tiny_model


def example(n: int) -> Example:
    ids = np.arange(10, 10 + n, dtype=np.int32)
    return Example(ids, ids.copy(), n - 1, False)


def test_each_token_gets_the_length_of_its_own_example():
    packed = collate_packed([example(3), example(5)])
    assert token_example_lengths(packed).tolist() == [[3, 3, 3, 5, 5, 5, 5, 5]]
    padded = collate_padded([example(3), example(5)], pad_id=0)
    assert token_example_lengths(padded).tolist() == [[3] * 5, [5] * 5]


def test_noise_is_uniform_within_alpha_over_the_root_of_length_times_width():
    model = tiny_model("llama")
    batch = collate_packed([example(40), example(160)])
    lengths = token_example_lengths(batch)
    alpha, width = 5.0, model.config.hidden_size
    clean = model.get_input_embeddings()(batch["input_ids"])
    with embedding_noise(model, alpha, batch):
        noisy = model.get_input_embeddings()(batch["input_ids"])
    unit = (noisy - clean) / (alpha / torch.sqrt(lengths * width)).unsqueeze(-1)
    for part in (unit[0, :40], unit[0, 40:]):       # each example on its own scale, U(-1, 1) there
        assert part.abs().max() <= 1.0 + 1e-4 and part.abs().max() > 0.99
        assert part.pow(2).mean().item() == pytest.approx(1 / 3, abs=0.02)
    after = model.get_input_embeddings()(batch["input_ids"])
    assert torch.equal(after, clean), "the hook must be gone after the block"


def test_alpha_zero_adds_nothing():
    model = tiny_model("llama")
    batch = collate_packed([example(7)])
    clean = model.get_input_embeddings()(batch["input_ids"])
    with embedding_noise(model, 0.0, batch):
        assert torch.equal(model.get_input_embeddings()(batch["input_ids"]), clean)


def test_a_negative_alpha_is_refused():
    problems = TrainConfig(data="d", out="o", neftune_noise_alpha=-1.0).validate()
    assert any("neftune_noise_alpha must be >= 0" in p for p in problems)
