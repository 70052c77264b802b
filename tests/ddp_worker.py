"""Started by tests/test_ddp.py under torchrun: one training run from a JSON TrainConfig given as argv[1], with
options as JSON in argv[2]: {"short_step": N} leaves step N (0-based) a single micro-batch, so ranks other than 0 have
none; {"fsdp2": true} runs train.py's FSDP path on CPU; {"stop_after": N} stops after step N with a checkpoint;
{"ticks": [a, b]}: rank r's steps measure ticks[r] seconds each."""
import json
import sys

import llmft.training.trainer
from llmft.config import TrainConfig


def shorten_step(short_step: int) -> None:
    """Keep only the first micro-batch of step `short_step`, as a short final step would."""
    full_plan = llmft.training.trainer.step_micro_batches

    def plan(batcher, run_plan, step):
        micro = full_plan(batcher, run_plan, step)
        return micro[:1] if step == short_step else micro

    llmft.training.trainer.step_micro_batches = plan


def cpu_fsdp2_accelerator(log_with=None):
    """Accelerate 1.15 turns FSDP on only for accelerator devices (its MULTI_CPU state ignores ACCELERATE_USE_FSDP
    and an FSDP plugin), yet torch's FSDP2 (`fully_shard`) runs on CPU with gloo. So this sets the state by hand: a
    test-only way to run train.py's FSDP path (sharded prepare, gathered checkpoints and final weights) on CPU."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc = Accelerator(cpu=True, log_with=log_with)
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False)
    for state in (acc.state, PartialState()):
        state.distributed_type = DistributedType.FSDP
    return acc


class TickingClock:
    """A stand-in for the trainer module's `time`: every perf_counter() call advances by `tick`, so an optimizer step
    (timed by two calls) measures exactly `tick` seconds (tests/test_train.py; here, per rank)."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


if __name__ == "__main__":
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if options.get("ticks"):
        import os

        llmft.training.trainer.time = TickingClock(options["ticks"][int(os.environ["RANK"])])
    if options.get("short_step") is not None:
        shorten_step(options["short_step"])
    if options.get("fsdp2"):
        llmft.training.trainer.make_accelerator = cpu_fsdp2_accelerator
    llmft.training.trainer.train(TrainConfig(**json.loads(sys.argv[1])), stop_after=options.get("stop_after"))
