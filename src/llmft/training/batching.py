"""Micro-batches for training: packed rows (default) or length-grouped padded batches, planned deterministically
per (seed, epoch) so a resumed run can start at micro-batch N of an epoch and see exactly the batches it would have.

Packing puts several examples in one row of at most `batch_tokens` tokens ([1, T], no padding) with `position_ids`
restarting at 0 for each example. No token attends to another example:

- `attention="position_ids"` (default): no attention_mask; transformers (masking_utils.find_packed_sequence_indices)
  derives the per-example causal mask from the position_ids for sdpa, eager and flex, and flash-attention uses them
  as varlen boundaries. That detection only runs when no KV cache exists, and models default to creating one
  (config.use_cache), so every batch carries `use_cache=False`: without it the examples DO attend to each other.
  Packed batches also carry the example boundaries (`cu_seq_lens_q/k`, `max_length_q/k`): flash-attention's varlen
  path and llmft's `attention.VARLEN` (the default for verified architectures, see model.load_model) split the row
  there, so attention costs sum(len_i^2) with no [T, T] mask; sdpa and eager ignore them.
- `attention="4d"`: an explicit block-diagonal causal additive mask [1, 1, T, T], for models whose own code does not
  derive the mask (remote code); not usable with flash-attention.
`packing_is_isolated(model)` checks a model on two short sequences.

A batch is a dict: every key except `labels` and `n_trainable` goes to `model(**inputs)` as is.
"""
from __future__ import annotations

import bisect
from typing import Iterator, Sequence

import numpy as np
import torch

from llmft.errors import LlmftError
from llmft.training.tokenize import IGNORE_INDEX, Example

NON_MODEL_KEYS = ("labels", "n_trainable")
_MEGA_BATCH = 50  # length grouping sorts within windows of this many batches, so batches stay shuffled


# ---------------------------------------------------------------- plans (lists of example indices)

def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def pack_plan(lengths: Sequence[int], batch_tokens: int, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Best-fit-decreasing bins of at most `batch_tokens` tokens, in a shuffled order. Equal lengths are ordered by
    a (seed, epoch) permutation, so the bin count is the same every epoch and only who shares a bin varies."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > batch_tokens:
        raise LlmftError(f"an example of {int(lengths.max())} tokens does not fit batch_tokens={batch_tokens}; "
                         "raise batch_tokens to at least max_length")
    rng = _rng(seed, epoch)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted
    for idx in order.tolist():
        need = int(lengths[idx])
        pos = bisect.bisect_left(free, (need, -1))
        if pos == len(free):
            bins.append([idx])
            bisect.insort(free, (batch_tokens - need, len(bins) - 1))
        else:
            room, b = free.pop(pos)
            bins[b].append(idx)
            bisect.insort(free, (room - need, b))
    return [bins[i] for i in rng.permutation(len(bins)).tolist()]


def padded_plan(lengths: Sequence[int], batch_size: int, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Batches of `batch_size` examples of similar length: shuffle, sort by length inside windows of 50 batches,
    cut, shuffle the batches."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = _rng(seed, epoch)
    order = rng.permutation(len(lengths))
    window = batch_size * _MEGA_BATCH
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches)).tolist()]


# ---------------------------------------------------------------- collation

def collate_packed(examples: Sequence[Example], attention: str = "position_ids",
                   dtype: torch.dtype = torch.float32) -> dict:
    """One row [1, T] holding every example, position_ids restarting at 0 per example."""
    input_ids = torch.from_numpy(np.concatenate([e.input_ids for e in examples]).astype(np.int64))[None]
    labels = torch.from_numpy(np.concatenate([e.labels for e in examples]).astype(np.int64))[None]
    position_ids = torch.cat([torch.arange(len(e)) for e in examples])[None]
    batch = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
    if attention == "4d":
        batch["attention_mask"] = block_causal_mask([len(e) for e in examples], dtype)
    elif attention == "position_ids":
        batch.update(varlen_boundaries([len(e) for e in examples]))
    else:
        raise LlmftError(f"attention must be 'position_ids' or '4d', got {attention!r}")
    batch["labels"] = labels
    batch["n_trainable"] = sum(e.n_trainable for e in examples)
    return batch


def varlen_boundaries(lengths: Sequence[int]) -> dict:
    """The example boundaries of a packed row as the varlen keywords transformers passes down to the attention
    function: flash-attention's varlen path and attention.VARLEN split the row there; sdpa and eager ignore them."""
    cu_seq_lens = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    longest = int(max(lengths))
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
            "max_length_k": longest}


def block_causal_mask(lengths: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive [1, 1, T, T] mask: 0 where a token may attend (same example, not later), dtype-min elsewhere."""
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
    total = int(segment.numel())
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    allowed = causal & (segment[:, None] == segment[None, :])
    mask = torch.zeros(total, total, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def collate_padded(examples: Sequence[Example], pad_id: int) -> dict:
    """Right-padded [B, T] batch; pads are masked out of attention and carry IGNORE_INDEX labels (so pad == EOS
    never hides a real EOS label)."""
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        input_ids[row, :n] = torch.from_numpy(e.input_ids.astype(np.int64))
        labels[row, :n] = torch.from_numpy(e.labels.astype(np.int64))
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False,
            "labels": labels, "n_trainable": sum(e.n_trainable for e in examples)}


def model_inputs(batch: dict, device: torch.device | str | None = None) -> dict:
    """The keyword arguments for `model(**...)`: everything but labels and n_trainable, tensors moved to `device`."""
    return {k: (v.to(device) if device is not None and torch.is_tensor(v) else v)
            for k, v in batch.items() if k not in NON_MODEL_KEYS}


# ---------------------------------------------------------------- the epoch sampler

class Batcher:
    """Deterministic micro-batches over a list of examples.

    `batches(epoch, start=n)` yields the epoch's micro-batches from index n, the same for the same
    (seed, epoch); `len(batcher)` is the number of micro-batches per epoch (the same every epoch).
    `stream(start=global_index)` goes on across epochs, yielding (epoch, index_in_epoch, batch).
    """

    def __init__(self, examples: Sequence[Example], *, packing: bool = True, batch_tokens: int = 4096,
                 batch_size: int = 8, seed: int = 0, pad_id: int | None = None, attention: str = "position_ids",
                 mask_dtype: torch.dtype = torch.float32):
        if not examples:
            raise LlmftError("no training examples to batch")
        if not packing and pad_id is None:
            raise LlmftError("padded batches need a pad token id")
        self.examples = examples
        self.lengths = np.array([len(e) for e in examples], dtype=np.int64)
        self.packing, self.batch_tokens, self.batch_size = packing, batch_tokens, batch_size
        self.seed, self.pad_id, self.attention, self.mask_dtype = seed, pad_id, attention, mask_dtype
        self._plans: dict[int, list[list[int]]] = {}
        self._len = len(self.plan(0))

    def plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            if len(self._plans) >= 2:  # a step may straddle two epochs; older plans are never asked for again
                self._plans.pop(min(self._plans))
            self._plans[epoch] = (pack_plan(self.lengths, self.batch_tokens, self.seed, epoch) if self.packing
                                  else padded_plan(self.lengths, self.batch_size, self.seed, epoch))
        return self._plans[epoch]

    def __len__(self) -> int:
        return self._len

    def collate(self, indices: Sequence[int]) -> dict:
        chosen = [self.examples[i] for i in indices]
        if self.packing:
            return collate_packed(chosen, self.attention, self.mask_dtype)
        return collate_padded(chosen, self.pad_id)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        for indices in self.plan(epoch)[start:]:
            yield self.collate(indices)

    def stream(self, start: int = 0) -> Iterator[tuple[int, int, dict]]:
        epoch, index = divmod(start, len(self))
        while True:
            for offset, batch in enumerate(self.batches(epoch, index)):
                yield epoch, index + offset, batch
            epoch, index = epoch + 1, 0


# ---------------------------------------------------------------- a check on a real model

@torch.no_grad()
def packing_is_isolated(model, attention: str = "position_ids", atol: float | None = None) -> bool:
    """True when two sequences packed in one row give the same logits as each alone (one tiny forward).
    The default tolerance follows the weights' dtype: half-precision kernels differ by rounding, a leak by far more."""
    vocab = model.get_input_embeddings().weight.shape[0]
    device = model.get_input_embeddings().weight.device
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randint(0, vocab, (n,), generator=gen).numpy() for n in (5, 3)]
    examples = [Example(p.astype(np.int32), p.astype(np.int32), len(p) - 1, False) for p in parts]
    dtype = model.get_input_embeddings().weight.dtype
    if atol is None:
        atol = 1e-3 if dtype == torch.float32 else 5e-2
    rtol = 1e-3 if dtype == torch.float32 else 1e-2
    was_training = model.training
    model.eval()  # no dropout, so the two forwards are comparable
    try:
        packed = model(**model_inputs(collate_packed(examples, attention, dtype), device)).logits[0].float()
        alone = torch.cat([model(input_ids=torch.from_numpy(p.astype(np.int64))[None].to(device), use_cache=False)
                           .logits[0].float() for p in parts])
    finally:
        model.train(was_training)
    return bool(torch.allclose(packed, alone, atol=atol, rtol=rtol))
