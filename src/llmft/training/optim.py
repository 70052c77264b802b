"""The trainable model and its optimizer: base weights, adapter, leaner blocks, AdamW and the cosine schedule."""
from __future__ import annotations

import math

import torch

from llmft.config import TrainConfig
from llmft.training.lean_blocks import lean_decoder_blocks
from llmft.training.losses import chunked_loss_matches
from llmft.training.model import attach_adapter, load_model

def build_model(cfg: TrainConfig, device: torch.device, bf16: bool, sharded: bool = False):
    """Base weights in bf16 for LoRA and bottleneck adapters when bf16 compute is on (autocast would cast them every
    step anyway, and the adapter stays fp32); fp32 master weights for full fine-tuning. Under FSDP (`sharded`)
    everything stays fp32: FSDP shards and gathers a unit's parameters as one dtype, and autocast still computes
    in bf16."""
    base_dtype = torch.bfloat16 if bf16 and cfg.method != "full" and not sharded else torch.float32
    torch.manual_seed(cfg.seed)     # identical adapter init on every rank
    model = load_model(cfg.model, dtype=base_dtype, trust_remote_code=cfg.trust_remote_code,
                       load_in_4bit=cfg.qlora)
    if not cfg.qlora:
        model.to(device)
    model.config.use_cache = False
    model = attach_adapter(model, cfg)
    lean_decoder_blocks(model)      # keeps fewer activations for the backward (same values)
    if cfg.grad_checkpointing:
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def uses_chunked_loss(model) -> bool:
    """Chunked CE over hidden states needs a plain (un-adapted) linear head whose transforms losses.py knows."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    if head is None or isinstance(head, BaseTunerLayer) or not isinstance(head, torch.nn.Linear):
        return False
    return chunked_loss_matches(model)


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device):
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]      # norms and biases are not decayed
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=device.type != "cpu" or None)


class CosineWithWarmup:
    """The learning-rate factor of step `step`: linear warm-up over `warmup` steps, then a cosine decay to 0 at
    `total` (transformers' get_cosine_schedule_with_warmup). A callable object, not a closure: LambdaLR saves its
    `__dict__` with the scheduler state, so a `total` re-fitted under a time limit survives a resume."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             CosineWithWarmup(math.ceil(warmup_ratio * total_steps), total_steps))


def schedule_of(scheduler) -> CosineWithWarmup:
    return scheduler.lr_lambdas[0]
