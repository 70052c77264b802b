"""Checkpoints: trainable weights, optimizer, scheduler and RNG state of a step, written atomically, loaded into a
(possibly sharded) model; and the check that a resumed run has the interrupted run's settings."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmft import folders, io
from llmft.config import TrainConfig, load_config
from llmft.errors import LlmftError
from llmft.training.optim import trainable_parameters
from llmft.training.plan import Plan

RESUME_MAY_DIFFER = ("resume", "allow_data_change", "eval_every", "save_every", "log_every", "tensorboard",
                     "report_to", "keep_checkpoints", "time_limit_minutes", "time_limit_min_steps")
PATH_KEYS = ("data", "out")     # compared as resolved paths: ./runs/x and /abs/runs/x are the same folder


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
        folders.remove_folder(old)
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
    """The interrupted run's settings (paths compared resolved) and training data (compared by sha256; a change is
    refused unless cfg.allow_data_change)."""
    saved = load_config(TrainConfig, run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None
    if saved is None:
        raise LlmftError(f"{run_dir}: no config.yaml, so this is not a run that can be resumed")
    manifest = _manifest(run_dir)
    saved_cwd = Path(manifest.get("cwd") or ".")
    differ = [f"{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}" for k in vars(cfg)
              if k not in RESUME_MAY_DIFFER and not _same_setting(k, getattr(saved, k), getattr(cfg, k), saved_cwd)]
    if differ:
        raise LlmftError(f"{run_dir}: --resume needs the same settings as the interrupted run; changed:\n  - "
                         + "\n  - ".join(differ))
    changed = changed_data_files(manifest.get("data") or {}, saved_cwd)
    if changed and not cfg.allow_data_change:
        raise LlmftError(f"{run_dir}: the training data changed since this run started ({'; '.join(changed)}); "
                         f"resuming would train on different data. Pass --allow-data-change to continue anyway, "
                         f"or start a new run")


def _manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    return io.load_json(path) if path.exists() else {}


def _same_setting(key: str, saved, now, saved_cwd: Path) -> bool:
    if key in PATH_KEYS and isinstance(saved, str) and isinstance(now, str) and saved and now:
        return _resolved(saved, saved_cwd) == _resolved(now, Path.cwd())
    return saved == now


def _resolved(path: str, cwd: Path) -> Path:
    p = Path(path).expanduser()
    return Path(os.path.realpath(p if p.is_absolute() else cwd / p))


def changed_data_files(hashes: dict[str, str], saved_cwd: Path) -> list[str]:
    """The data files of manifest.json (path -> sha256, paths as given in the run's working directory) whose
    content is no longer what the run started with."""
    changed = []
    for name, digest in hashes.items():
        path = _resolved(name, saved_cwd)
        if not path.is_file():
            changed.append(f"{name} is gone")
        elif io.sha256_file(path) != digest:
            changed.append(f"{name} has new content")
    return changed
