"""`train(cfg)`: supervised fine-tuning in one plain loop on Accelerate.

One optimizer step consumes G = grad_accum x world_size micro-batches of a deterministic stream (batching.Batcher);
rank r takes micro-batches r, r + world, ... of the step. The model and its chunked loss form one module
(`losses.CausalLMLoss`) that goes through `accelerator.prepare`, so Accelerate's engine moves the gradients: DDP
under torchrun / `accelerate launch` (gloo on CPU, NCCL on GPUs), FSDP under an accelerate FSDP config. Every rank
knows the trainable-token count N of the whole step from the plan; DDP and FSDP average gradients over ranks, so each
forward pass backpropagates loss_sum x world / N, which makes that average exactly the gradient of the token-weighted
mean over the global batch, whatever the world size and however the tokens fall into micro-batches. Only the last
backward of a step synchronises (`accelerator.no_sync` around the others), and every rank runs the same number of
forward passes (a zero-weight two-token filler pass where a rank has fewer rows), because under FSDP each forward is
a collective and under DDP a rank without a micro-batch must still join the all-reduce.

Dropout randomness is reseeded from (seed, step, rank) at every step, so a resumed run draws exactly what the
uninterrupted run drew.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmft import io, run as runfolder
from llmft.batching import Batcher, collate_packed, collate_padded, model_inputs, packing_is_isolated
from llmft.config import check, load_config, TrainConfig
from llmft.errors import InputFormatError, LlmftError
from llmft.lean_blocks import lean_decoder_blocks
from llmft.losses import CausalLMLoss, chunked_loss_matches
from llmft.model import attach_adapter, load_model, load_tokenizer, resolve_model
from llmft.tokenize import IGNORE_INDEX, Example, tokenize_records

DEV_FRACTION = 0.05       # held out of a single JSONL file when no dev split is given
RESUME_MAY_DIFFER = ("resume", "eval_every", "save_every", "log_every", "tensorboard", "keep_checkpoints")


# ---------------------------------------------------------------- data

@dataclass
class TrainData:
    train: list[dict]
    dev: list[dict]
    files: list[Path]
    dev_origin: str          # "dev.jsonl" or "5% of <file>, seed N"


def read_training_data(cfg: TrainConfig) -> TrainData:
    """A prepared folder (train.jsonl + dev.jsonl) or one JSONL file of records or {prompt, completion} rows, of
    which a seeded 5% becomes the dev set."""
    path = Path(cfg.data)
    if path.is_dir():
        train_file = path / "train.jsonl"
        if not train_file.exists():
            raise LlmftError(f"{path}: a data folder needs train.jsonl (run `llmft data prepare --out {path}`)")
        train = _read_rows(train_file)
        dev_file = path / "dev.jsonl"
        if dev_file.exists():
            return TrainData(train, _read_rows(dev_file), [train_file, dev_file], str(dev_file))
        return _split_dev(train, [train_file], cfg.seed)
    if not path.is_file():
        raise LlmftError(f"{path}: no such data file or folder")
    return _split_dev(_read_rows(path), [path], cfg.seed)


def _split_dev(rows: list[dict], files: list[Path], seed: int) -> TrainData:
    n_dev = max(1, round(len(rows) * DEV_FRACTION)) if len(rows) >= 2 else 0
    dev_ids = set(random.Random(seed).sample(range(len(rows)), n_dev))
    train = [r for i, r in enumerate(rows) if i not in dev_ids]
    dev = [r for i, r in enumerate(rows) if i in dev_ids]
    return TrainData(train, dev, files, f"{n_dev} of {len(rows)} rows of {files[0]} (seed {seed})")


def _read_rows(path: Path) -> list[dict]:
    """Records (instruction/output) or {prompt, completion} rows; every malformed row is listed by line."""
    rows, problems = [], []
    for lineno, row in enumerate(io.read_jsonl(path), 1):
        problem = _row_problem(row)
        if problem:
            problems.append(f"line {lineno}: {problem}")
        rows.append(row)
    if problems:
        shown = "\n  - ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise InputFormatError(path, f"{len(problems)} row(s) are neither records nor prompt/completion:\n  - {shown}")
    if not rows:
        raise InputFormatError(path, "no rows")
    return rows


def _row_problem(row: dict) -> str | None:
    if "prompt" in row or "completion" in row:
        keys = ("prompt", "completion")
    else:
        keys = ("instruction", "output")
    bad = [k for k in keys if not isinstance(row.get(k), str)]
    return f"'{bad[0]}' is missing or not a string" if bad else None


# ---------------------------------------------------------------- hardware

def cpu_has_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_bf16(setting: str, device: torch.device) -> bool:
    if setting in ("true", "false"):
        return setting == "true"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def set_cpu_threads(local_world_size: int) -> int:
    """One thread per physical core (hyper-threads slow GEMMs down), shared among the processes of this machine, less
    the cores other processes keep busy right now; an explicit OMP_NUM_THREADS wins.

    Why the busy cores: an OpenMP thread that shares its core with another process stalls every parallel region
    (hundreds of thousands per step). SmolLM2 LoRA on 2 cores next to one busy process: 2 threads 132 real tokens/s
    (30 with libgomp's default spin count), 1 thread 296; on the quiet machine 2 threads give ~410."""
    import psutil

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    threads = max(1, cores // max(1, local_world_size))
    if local_world_size == 1:          # sibling ranks starting up would count as busy
        threads = max(1, threads - busy_cores())
    torch.set_num_threads(threads)
    return threads


def busy_cores(interval_s: float = 0.3) -> int:
    """Cores kept busy by other processes over `interval_s` (this process sleeps meanwhile)."""
    import psutil

    return int(psutil.cpu_percent(interval=interval_s) * (psutil.cpu_count() or 1) / 100 + 0.5)


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 << 20     # glibc's ceiling on 64-bit


def keep_freed_memory_in_heap() -> bool:
    """glibc serves every allocation above its mmap threshold with a fresh mmap and unmaps it on free, so each
    activation tensor of a training step is page-faulted in from zeroed pages again (~9% of a SmolLM2 CPU step was
    system time). Raising the mmap threshold to its maximum, trimming the heap only above 2 GiB and growing it 256 MiB
    at a time lets freed blocks be reused: +9% tokens/s in bench/train_throughput.py (of which ~3% the top pad) for no
    measurable peak RSS. Process-wide, so only the trainer on CPU calls it; False where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]     # values above 2^31 would be truncated silently
    return all(mallopt(option, value) == 1 for option, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20)))


def make_accelerator():
    """The launcher picks the engine: one process, DDP (torchrun / `accelerate launch`; gloo on CPU) or FSDP (an
    accelerate FSDP config). Buffers (rotary tables) are the same on every rank, so DDP need not broadcast them at
    every forward."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=not torch.cuda.is_available(),
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


# ---------------------------------------------------------------- model

def build_model(cfg: TrainConfig, device: torch.device, bf16: bool, sharded: bool = False):
    """Base weights in bf16 for LoRA when bf16 compute is on (autocast would cast them every step anyway, and the
    adapter stays fp32); fp32 master weights for full fine-tuning. Under FSDP (`sharded`) everything stays fp32:
    FSDP shards and gathers a unit's parameters as one dtype, and autocast still computes in bf16."""
    base_dtype = torch.bfloat16 if bf16 and cfg.method == "lora" and not sharded else torch.float32
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


def make_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)


# ---------------------------------------------------------------- the plan of a run

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


def row_cap(cfg: TrainConfig, device: torch.device) -> int:
    """Tokens per forward pass of a packed micro-batch. On a GPU many small forwards are launch-bound: one row of
    4,096 ran 10x faster than eight of 512 on an H200 (15.7k vs 1.6k tokens/s), so there a micro-batch stays one row.
    On CPU, attention costs the sum of the examples' squares either way (llmft_varlen), and longer rows amortise
    per-operation overhead, but activation memory grows with the row: SmolLM2-135M LoRA, 2 threads, rows of 512 /
    1,024 / 2,048 tokens: 429 / 473 / 558 real tokens/s at 2.2 / 2.8 / 3.8 GB peak RSS (bench/train_throughput.py
    --row-tokens). 1,024 (or max_length when longer) keeps well under half of TRL's memory."""
    if cfg.row_tokens:
        return cfg.row_tokens
    if device.type != "cpu":
        return cfg.batch_tokens
    return max(cfg.max_length, min(cfg.batch_tokens, CPU_ROW_TOKENS))


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


# ---------------------------------------------------------------- state and checkpoints

@dataclass
class Progress:
    step: int = 0
    trainable_tokens: int = 0
    real_tokens: int = 0
    train_seconds: float = 0.0
    resumed_from: int | None = None


WRAPPER_PREFIX = "model."      # CausalLMLoss holds the model as `.model`


def gathered_state(wrapped, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on CPU, keyed like the bare model's, on the main process ({} on the
    others under a process group). Every process must call it: under FSDP it gathers the shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(wrapped, options=options)
    return {k[len(WRAPPER_PREFIX):]: v for k, v in state.items()}


def gathered_optimizer_state(wrapped, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(wrapped, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))


def save_checkpoint(run_dir: Path, model, wrapped, optimizer, scheduler, progress: Progress, plan: Plan, keep: int,
                    main: bool) -> Path | None:
    """Every process calls this (gathering is collective under FSDP); the main process writes the folder.
    `model` is the bare model inside `wrapped` (the prepared CausalLMLoss); `optimizer` the torch optimizer."""
    from safetensors.torch import save_file

    weights = gathered_state(wrapped, trainable_only=True)
    optimizer_state = gathered_optimizer_state(wrapped, optimizer)
    if not main:
        return None
    names = set(trainable_parameters(model))
    folder = run_dir / "checkpoints" / f"step-{progress.step}"
    with io.atomic_dir(folder) as tmp:
        save_file({n: t.contiguous() for n, t in weights.items() if n in names}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        io.write_json(tmp / "state.json", {
            "step": progress.step, "micro_batches_done": progress.step * plan.micro_per_step,
            "micro_per_step": plan.micro_per_step, "trainable_tokens": progress.trainable_tokens,
            "real_tokens": progress.real_tokens, "train_seconds": progress.train_seconds})
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        import shutil

        shutil.rmtree(old)
    return folder


def list_checkpoints(run_dir: Path) -> list[Path]:
    folders = [p for p in (run_dir / "checkpoints").glob("step-*") if (p / "state.json").exists()]
    return sorted(folders, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(folder: Path, model, wrapped, optimizer, scheduler, plan: Plan) -> Progress:
    """Every process reads the folder and loads it into the prepared (possibly sharded) model and optimizer."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    state = io.load_json(folder / "state.json")
    if state["micro_per_step"] != plan.micro_per_step:
        raise LlmftError(f"{folder}: saved with {state['micro_per_step']} micro-batches per step (grad_accum x "
                         f"processes); this run has {plan.micro_per_step}, so the data order would differ")
    weights = load_file(str(folder / "trainable.safetensors"))
    if set(weights) != set(trainable_parameters(model)):
        raise LlmftError(f"{folder}: the checkpoint's trainable weights do not match this model's")
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(wrapped, {WRAPPER_PREFIX + n: t for n, t in weights.items()}, options=options)
    set_optimizer_state_dict(wrapped, optimizer, torch.load(folder / "optimizer.pt", weights_only=True),
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return Progress(step=state["step"], trainable_tokens=state["trainable_tokens"], real_tokens=state["real_tokens"],
                    train_seconds=state["train_seconds"], resumed_from=state["step"])


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


def check_resumable(run_dir: Path, cfg: TrainConfig) -> None:
    saved = load_config(TrainConfig, run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None
    if saved is None:
        raise LlmftError(f"{run_dir}: no config.yaml, so this is not a run that can be resumed")
    differ = [f"{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}" for k in vars(cfg)
              if k not in RESUME_MAY_DIFFER and getattr(saved, k) != getattr(cfg, k)]
    if differ:
        raise LlmftError(f"{run_dir}: --resume needs the same settings as the interrupted run; changed:\n  - "
                         + "\n  - ".join(differ))


# ---------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, cfg: TrainConfig):
        check(cfg)
        if cfg.qlora:
            from llmft.model import check_qlora_available

            check_qlora_available()
        self.cfg = cfg
        self.started = time.perf_counter()
        self.acc = make_accelerator()
        if is_fsdp(self.acc):
            check_fsdp(self.acc.state.fsdp_plugin, cfg)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device
        self.threads = set_cpu_threads(_local_world_size()) if self.device.type == "cpu" else torch.get_num_threads()
        if self.device.type == "cpu":
            keep_freed_memory_in_heap()
        self.bf16 = resolve_bf16(cfg.bf16, self.device)
        self.run_dir = Path(cfg.out)
        if self.acc.is_main_process:
            runfolder.prepare_run_dir(self.run_dir, cfg.resume)
            if cfg.resume:
                check_resumable(self.run_dir, cfg)
        self.acc.wait_for_everyone()

    # -------- setup

    def setup(self) -> None:
        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
        self.data = read_training_data(cfg)
        with self.acc.main_process_first():     # the first process fills the tokenization cache
            self.train_examples, self.train_report = self._tokenize(self.data.train)
            # dev_limit 0: no dev evaluation (tokenizing no rows would fail)
            self.dev_examples, self.dev_report = (self._tokenize(self.data.dev[: cfg.dev_limit])
                                                  if self.data.dev and cfg.dev_limit else ([], None))
        self.model = build_model(cfg, self.device, self.bf16, sharded=is_fsdp(self.acc))
        self.model.train()
        attention = "position_ids" if not cfg.packing or packing_is_isolated(self.model) else "4d"
        self.chunked = uses_chunked_loss(self.model)
        mask_dtype = self.model.get_input_embeddings().weight.dtype
        self.batcher = Batcher(self.train_examples, packing=cfg.packing, batch_tokens=cfg.batch_tokens,
                               batch_size=cfg.batch_size, seed=cfg.seed, pad_id=self.tokenizer.pad_token_id,
                               attention=attention, mask_dtype=mask_dtype)
        self.dev_batcher = (Batcher(self.dev_examples, packing=cfg.packing, batch_tokens=cfg.batch_tokens,
                                    batch_size=cfg.batch_size, seed=cfg.seed, pad_id=self.tokenizer.pad_token_id,
                                    attention=attention, mask_dtype=mask_dtype) if self.dev_examples else None)
        self.plan = make_plan(cfg, self.batcher, self.world)
        self.params = list(trainable_parameters(self.model).values())
        self.n_params = sum(p.numel() for p in self.model.parameters())   # before FSDP shards them
        self.filler = filler_batch(self.batcher, self.tokenizer.eos_token_id or 0)
        # DDP/FSDP wrap the model together with its loss. FSDP2: Accelerate re-points the optimizer at the sharded
        # parameters; FSDP1 (use_orig_params) shards the same parameter objects in place.
        # The scheduler stays unprepared: AcceleratedScheduler would step it once per process per optimizer step.
        self.wrapped, self.optimizer = self.acc.prepare(CausalLMLoss(self.model, chunked=self.chunked),
                                                        make_optimizer(self.params, cfg, self.device))
        self.scheduler = make_scheduler(self.optimizer.optimizer, self.plan.total_steps, cfg.warmup_ratio)
        self.progress = Progress()
        checkpoints = list_checkpoints(self.run_dir) if cfg.resume else []
        if checkpoints:
            self.progress = load_checkpoint(checkpoints[-1], self.model, self.wrapped, self.optimizer.optimizer,
                                            self.scheduler, self.plan)
        if self.acc.is_main_process:
            self._write_run_files(attention)
        self.acc.wait_for_everyone()

    def _tokenize(self, rows: list[dict]):
        cfg = self.cfg
        return tokenize_records(rows, self.tokenizer, template=cfg.template, max_length=cfg.max_length,
                                k_positive=cfg.k_positive, cache_dir=io.cache_dir() / "tokenized")

    def _write_run_files(self, attention: str) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        runfolder.write_config(run_dir, cfg)
        runfolder.write_template(run_dir, cfg, model_reference(cfg.model))
        runfolder.write_manifest(run_dir, cfg, self.data.files, {
            "model": {"name": cfg.model, "path": resolve_model(cfg.model)},
            "device": str(self.device), "world_size": self.world, "cpu_threads": self.threads, "bf16": self.bf16,
            "distributed": self.acc.distributed_type.value, "engine": type(self.wrapped).__name__,
            "packing_attention": attention if cfg.packing else None, "chunked_loss": self.chunked,
            "row_tokens": row_cap(cfg, self.device) if cfg.packing else None,
            "trainable_parameters": sum(p.numel() for p in self.params),
            "total_parameters": self.n_params,
            "plan": vars(self.plan), "dev_origin": self.data.dev_origin,
            "tokenize": {"train": self.train_report.to_dict(),
                         "dev": self.dev_report.to_dict() if self.dev_report else None},
            "resumed_from_step": self.progress.resumed_from,
        })

    # -------- one step

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def forward(self, batch: dict) -> torch.Tensor:
        """The loss sum of one row batch through the prepared model. Host-to-device copies are non-blocking (from
        pageable memory CUDA stages them before returning), so a micro-batch never waits for the GPU queue."""
        inputs = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                  for k, v in model_inputs(batch).items()}
        with self.autocast():
            loss_sum, _ = self.wrapped(inputs, batch["labels"].to(self.device, non_blocking=True))
        return loss_sum

    def rows(self, batcher: Batcher, indices: list[int]) -> list[list[int]]:
        if not self.cfg.packing:
            return [indices]
        return split_rows(indices, batcher.lengths, row_cap(self.cfg, self.device))

    def passes(self, batcher: Batcher, micro_batches: list[list[int]]) -> list[list[int] | None]:
        """This rank's rows of `micro_batches` (rank r takes r, r + world, ...), None for a filler pass."""
        rows_of_ranks = [[row for indices in micro_batches[r::self.world] for row in self.rows(batcher, indices)]
                         for r in range(self.world)]
        return rank_passes(rows_of_ranks, self.rank)

    def train_step(self) -> dict:
        """Forward/backward over this rank's rows of the step (gradients synchronised in the last backward only),
        clip, update."""
        step = self.progress.step
        torch.manual_seed(step_seed(self.cfg.seed, step, self.rank))
        micro = step_micro_batches(self.batcher, self.plan, step)
        examples = self.batcher.examples
        n_step = sum(examples[i].n_trainable for mb in micro for i in mb)
        real = sum(len(examples[i]) for mb in micro for i in mb)
        loss_total = torch.zeros((), device=self.device)
        passes = self.passes(self.batcher, micro)
        for k, row in enumerate(passes):
            sync = k == len(passes) - 1
            with nullcontext() if sync else self.acc.no_sync(self.wrapped):
                loss_sum = self.forward(self.filler if row is None else self.batcher.collate(row))
                # DDP/FSDP average the gradients over ranks: x world / n_step turns that average into the
                # gradient of (sum of token losses of the whole step) / (its trainable tokens on all ranks)
                weight = 0.0 if row is None else self.world / n_step
                self.acc.backward(loss_sum * weight)
            if row is not None:
                loss_total += loss_sum.detach().float()
        grad_norm = self.acc.clip_grad_norm_(self.wrapped.parameters(), self.cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):     # FSDP2: a replicated DTensor; a plain tensor for logging
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.trainable_tokens += n_step
        self.progress.real_tokens += real
        # loss_sum: this rank's part, on the device (summed over ranks only when logged, see `step_loss`)
        return {"loss_sum": loss_total, "n": n_step, "real": real, "lr": lr, "grad_norm": grad_norm}

    def step_loss(self, out: dict) -> float:
        """The step's mean token loss over all ranks (a collective: every rank calls it on the same steps)."""
        return float(self.acc.reduce(out["loss_sum"], reduction="sum")) / out["n"]

    @torch.no_grad()
    def dev_loss(self) -> tuple[float, int] | None:
        if self.dev_batcher is None:
            return None
        self.wrapped.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        for row in self.passes(self.dev_batcher, self.dev_batcher.plan(0)):
            loss_sum = self.forward(self.filler if row is None else self.dev_batcher.collate(row))
            if row is not None:
                total += loss_sum.double()
                count += sum(self.dev_batcher.examples[i].n_trainable for i in row)
        self.wrapped.train()
        reduced = self.acc.reduce(torch.stack([total, torch.tensor(float(count), dtype=torch.float64,
                                                                      device=self.device)]), reduction="sum")
        return float(reduced[0] / reduced[1]), int(reduced[1])

    # -------- the loop

    def fit(self, stop_after: int | None = None) -> dict | None:
        cfg, plan, main = self.cfg, self.plan, self.acc.is_main_process
        metrics = runfolder.MetricsWriter(self.run_dir / "metrics.jsonl", self.progress.resumed_from) if main else None
        writer = self._tensorboard() if main and cfg.tensorboard else None
        if self.progress.step == 0:
            self._evaluate(metrics, writer)
        bar = io.progress(total=plan.total_steps, initial=self.progress.step, desc="train", unit="step",
                          **({} if main else {"disable": True}))
        try:
            while self.progress.step < plan.total_steps:
                t0 = time.perf_counter()
                out = self.train_step()
                log_now = self.progress.step % cfg.log_every == 0 or self.progress.step == plan.total_steps
                loss = self.step_loss(out) if log_now else None
                self.progress.train_seconds += time.perf_counter() - t0
                if log_now and main:
                    self._log_step(metrics, writer, bar, loss, out)
                bar.update(1)
                step = self.progress.step
                if cfg.eval_every and step % cfg.eval_every == 0 and step < plan.total_steps:
                    self._evaluate(metrics, writer)
                if (cfg.save_every and step % cfg.save_every == 0 and step < plan.total_steps) or step == stop_after:
                    self._checkpoint()
                if step == stop_after:
                    return None
            self._evaluate(metrics, writer)
        finally:
            bar.close()
            if metrics:
                metrics.close()
            if writer:
                writer.close()
        return self._finish()

    def _log_step(self, metrics, writer, bar, loss: float, out: dict) -> None:
        p = self.progress
        tokens_per_s = p.real_tokens / p.train_seconds if p.train_seconds else 0.0
        metrics.write({"step": p.step, "loss": round(loss, 6), "lr": out["lr"],
                       "grad_norm": round(float(out["grad_norm"]), 6), "trainable_tokens": p.trainable_tokens,
                       "real_tokens": p.real_tokens, "elapsed_s": round(time.perf_counter() - self.started, 3)})
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
        if writer:
            writer.add_scalar("train/loss", loss, p.step)
            writer.add_scalar("train/lr", out["lr"], p.step)
            writer.add_scalar("train/tokens_per_s", tokens_per_s, p.step)

    def _evaluate(self, metrics, writer) -> None:
        result = self.dev_loss()
        if result is None or not self.acc.is_main_process:
            return
        loss, n = result
        self.last_dev = loss
        metrics.write({"step": self.progress.step, "dev_loss": round(loss, 6), "dev_tokens": n,
                       "elapsed_s": round(time.perf_counter() - self.started, 3)})
        if writer:
            writer.add_scalar("dev/loss", loss, self.progress.step)

    def _checkpoint(self) -> None:
        save_checkpoint(self.run_dir, self.model, self.wrapped, self.optimizer.optimizer, self.scheduler,
                        self.progress, self.plan, self.cfg.keep_checkpoints, self.acc.is_main_process)
        self.acc.wait_for_everyone()

    def _tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _finish(self) -> dict | None:
        summary = None
        # every process takes part in gathering the weights (collective under FSDP); the main one writes them
        state = gathered_state(self.wrapped, trainable_only=self.cfg.method == "lora")
        if self.acc.is_main_process:
            self._save_final_model(state)
            summary = self._summary()
            runfolder.plot_loss(runfolder.read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "loss.png")
            runfolder.write_summary(self.run_dir, summary)     # last: marks the run complete
        self.acc.wait_for_everyone()
        return summary

    def _save_final_model(self, state: dict[str, torch.Tensor]) -> None:
        name = "model" if self.cfg.method == "full" else "adapter"
        with io.atomic_dir(self.run_dir / name) as tmp:
            self.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            if name == "model":
                self.tokenizer.save_pretrained(tmp)
        with io.atomic_dir(self.run_dir / "tokenizer") as tmp:
            self.tokenizer.save_pretrained(tmp)

    def _summary(self) -> dict:
        p = self.progress
        metrics = runfolder.read_metrics(self.run_dir / "metrics.jsonl")
        train_losses = [m["loss"] for m in metrics if "loss" in m]
        dev_losses = [m["dev_loss"] for m in metrics if "dev_loss" in m]
        return {
            "steps": p.step, "epochs": round(p.step * self.plan.micro_per_step / self.plan.micro_per_epoch, 4),
            "trainable_tokens": p.trainable_tokens, "real_tokens": p.real_tokens,
            "train_seconds": round(p.train_seconds, 3),
            "seconds": round(time.perf_counter() - self.started, 3),
            "tokens_per_s": round(p.real_tokens / p.train_seconds, 2) if p.train_seconds else None,
            "trainable_tokens_per_s": round(p.trainable_tokens / p.train_seconds, 2) if p.train_seconds else None,
            "final_loss": train_losses[-1] if train_losses else None,
            "initial_dev_loss": dev_losses[0] if dev_losses else None,
            "final_dev_loss": dev_losses[-1] if dev_losses else None,
            "resumed_from_step": p.resumed_from, "world_size": self.world, "device": str(self.device),
            "bf16": self.bf16, **runfolder.peak_memory(),
        }


def _local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def model_reference(name: str) -> str:
    """How template.json names the base model: a local folder by absolute path, anything else as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def train(cfg: TrainConfig, *, stop_after: int | None = None) -> dict | None:
    """Train and return the summary (also in RUN_DIR/summary.json) on the main process, None on the others.

    `stop_after=N` stops right after step N with a checkpoint, as an interrupted run would (tests, benchmarks)."""
    trainer = Trainer(cfg)
    trainer.setup()
    return trainer.fit(stop_after=stop_after)
