"""The plan of a run: how many micro-batches make a step and an epoch, which examples each step takes, how a packed
micro-batch splits into rows, and which rows each rank runs."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from llmft.config import TrainConfig
from llmft.training.batching import Batcher, collate_packed, collate_padded
from llmft.training.tokenize import IGNORE_INDEX, Example

@dataclass
class Plan:
    micro_per_step: int        # G = grad_accum x world_size
    micro_per_epoch: int
    total_steps: int


def make_plan(cfg: TrainConfig, batcher: Batcher, world_size: int) -> Plan:
    per_step = cfg.grad_accum * world_size
    per_epoch = len(batcher)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch / per_step))
    return Plan(per_step, per_epoch, total)


CPU_ROW_TOKENS = 1024
CPU_ROW_TOKENS_FP32 = 512      # fp32 activations take twice the bytes of bf16 ones: half the row, the same memory


def row_cap(cfg: TrainConfig, device: torch.device, bf16: bool = True) -> int:
    """Tokens per forward pass of a packed micro-batch. On a GPU many small forwards are launch-bound: one row of
    4,096 ran 10x faster than eight of 512 on an H200 (15.7k vs 1.6k tokens/s), so there a micro-batch stays one row.
    On CPU, attention costs the sum of the examples' squares either way (llmft_varlen), and longer rows amortise
    per-operation overhead, but activation memory grows with the row: SmolLM2-135M LoRA, 2 threads, rows of 512 /
    1,024 / 2,048 tokens: 429 / 473 / 558 real tokens/s at 2.2 / 2.8 / 3.8 GB peak RSS (bench/train_throughput.py
    --row-tokens). 1,024 in bf16, 512 in fp32 (or max_length when longer) keeps well under half of TRL's memory."""
    if cfg.row_tokens:
        return cfg.row_tokens
    if device.type != "cpu":
        return cfg.batch_tokens
    return max(cfg.max_length, min(cfg.batch_tokens, CPU_ROW_TOKENS if bf16 else CPU_ROW_TOKENS_FP32))


def split_rows(indices: list[int], lengths, row_tokens: int) -> list[list[int]]:
    """A packed micro-batch as consecutive rows of at most `row_tokens` tokens; the loss and gradients are the same
    sums as over one row."""
    rows, row, used = [], [], 0
    for i in indices:
        if row and used + int(lengths[i]) > row_tokens:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += int(lengths[i])
    return rows + [row] if row else rows


def step_micro_batches(batcher: Batcher, plan: Plan, step: int) -> list[list[int]]:
    """The example indices of every micro-batch of optimizer step `step` (0-based), across all ranks."""
    out = []
    for g in range(step * plan.micro_per_step, (step + 1) * plan.micro_per_step):
        epoch, index = divmod(g, plan.micro_per_epoch)
        out.append(batcher.plan(epoch)[index])
    return out


def rank_passes(rows_of_ranks: list[list[list[int]]], rank: int) -> list[list[int] | None]:
    """This rank's forward passes (rows of example indices), padded with None (a filler pass) to the most rows any
    rank has, and to at least one: under FSDP every forward is a collective, and under DDP a rank without a
    micro-batch must still run the backward that joins the gradient all-reduce."""
    most = max(1, max(len(rows) for rows in rows_of_ranks))
    mine = rows_of_ranks[rank]
    return mine + [None] * (most - len(mine))


def filler_batch(batcher: Batcher, token_id: int) -> dict:
    """Two tokens, one of them trainable, so the pass reaches every weight (lm_head included); its loss is
    multiplied by 0, so it adds nothing to the gradients or the loss."""
    example = Example(np.array([token_id, token_id], np.int32), np.array([IGNORE_INDEX, token_id], np.int32), 1, False)
    if batcher.packing:
        return collate_packed([example], batcher.attention, batcher.mask_dtype)
    return collate_padded([example], batcher.pad_id)

