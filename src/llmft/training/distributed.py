"""The distributed engine is Accelerate's: one process, DDP (torchrun / `accelerate launch`) or FSDP2."""
from __future__ import annotations

import os

import torch

from llmft.config import TrainConfig
from llmft.errors import LlmftError

def make_accelerator(log_with: list | None = None):
    """The launcher picks the engine: one process, DDP (torchrun / `accelerate launch`; gloo on CPU) or FSDP (an
    accelerate FSDP config). Buffers (rotary tables) are the same on every rank, so DDP need not broadcast them at
    every forward. `log_with`: experiment trackers (training/trackers.py), started by `init_trackers`."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=not torch.cuda.is_available(), log_with=log_with or None,
                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


def is_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def check_fsdp(plugin, cfg: TrainConfig) -> None:
    """FSDP1 must keep the original parameters: the optimizer (built before wrapping, weight decay by shape), the
    checkpoints (by parameter name) and a LoRA model (frozen and trainable weights in one unit) depend on them."""
    if cfg.qlora:
        raise LlmftError("qlora cannot run under FSDP here (4-bit weights are not sharded); launch it with DDP")
    if plugin.fsdp_version == 1:
        # scripts/gpu_check.sh on an H100 (torch 2.11, accelerate 1.15, peft 0.21, use_orig_params=True): the first
        # FSDP1 forward of a LoRA model failed in FSDP's post-forward reshard ("as_params=True type(prim_param)=
        # <class 'torch.Tensor'>"). Refuse it up front rather than deep inside torch; FSDP2 is the supported path.
        raise LlmftError("FSDP1 is not supported by llmft's loop (it failed our GPU check); set `fsdp_version: 2` "
                         "in the accelerate config (or launch with `accelerate launch --use_fsdp --fsdp_version 2`)")



def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

