"""NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): while training, add
uniform noise in [-1, 1] x alpha / sqrt(L * d) to the input embeddings, L the example's length and d the hidden size.

L is each example's own length, not the row's: a packed row holds several examples, and an example's noise should
not depend on what it was packed with (TRL scales by the padded or packed row length)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def token_example_lengths(batch: dict) -> torch.Tensor:
    """[B, T]: for every token, the length of the example it belongs to. Packed rows: position_ids restart at 0
    per example; padded rows: the attention mask's real tokens (pads get their row's length; their outputs are
    masked out of attention and loss)."""
    if "position_ids" in batch:
        positions = batch["position_ids"]
        segment = (positions.flatten() == 0).cumsum(0) - 1     # every row starts an example at position 0
        return torch.bincount(segment)[segment].float().view_as(positions)
    mask = batch["attention_mask"]
    return mask.sum(-1, keepdim=True).expand_as(mask).float()


@contextmanager
def embedding_noise(model, alpha: float, batch: dict) -> Iterator[None]:
    """Within the block, the model's input embeddings of `batch` come out with NEFTune noise (no-op, and no work on
    the batch, for alpha 0)."""
    if alpha <= 0:
        yield
        return
    lengths = token_example_lengths(batch)
    embeddings = model.get_input_embeddings()

    def add_noise(module, args, output: torch.Tensor) -> torch.Tensor:
        scale = alpha / torch.sqrt(lengths.to(output.device) * output.size(-1))
        noise = torch.empty_like(output).uniform_(-1.0, 1.0)
        return output + noise * scale.unsqueeze(-1).to(output.dtype)

    handle = embeddings.register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()
