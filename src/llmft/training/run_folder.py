"""The run folder of `llmft train`: config, manifest, metrics, template info, summary and the loss plot.

A run folder counts as complete only once summary.json exists; it is written last, atomically."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

from llmft import folders, io
from llmft.config import save_config
from llmft.errors import LlmftError

PACKAGES = ("llmft", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "datasets")


def prepare_run_dir(out: str | Path, resume: bool) -> Path:
    """The run folder; refuses to train over an existing run unless resuming it, and any folder `llmft train` did
    not create (folders.MARKER)."""
    out = Path(out)
    if resume:
        if not out.is_dir():
            raise LlmftError(f"{out}: nothing to resume (the run folder does not exist)")
        if (out / "summary.json").exists():
            raise LlmftError(f"{out}: this run already finished (summary.json exists); nothing to resume")
    elif out.exists() and folders.created_by(out) == "train" and not folders.is_empty(out):
        raise LlmftError(f"{out}: the run folder exists and is not empty; pass --resume to continue it "
                         f"or choose a new --out")
    folders.claim(out, "train")
    return out


@contextlib.contextmanager
def open_run_dir(out: str | Path, resume: bool):
    """Hold the run folder's writer lock for the whole training (a second `llmft train --out` of the same folder
    is refused), check it as prepare_run_dir does, and clean up what a killed run left (temporary folders)."""
    with folders.locked(out):
        folders.recover(Path(out))
        run_dir = prepare_run_dir(out, resume)
        folders.clean_tree(run_dir)
        yield run_dir


def write_config(run_dir: Path, cfg) -> None:
    save_config(cfg, run_dir / "config.yaml")


def write_template(run_dir: Path, cfg, model_ref: str) -> None:
    """What eval / generate need to prompt the model exactly as in training."""
    io.write_json(run_dir / "template.json", {
        "template": cfg.template, "k_positive": cfg.k_positive, "max_length": cfg.max_length,
        "train_on": cfg.train_on,
        "model": model_ref, "method": cfg.method, "trust_remote_code": cfg.trust_remote_code})


HELDOUT_FILE = "heldout.json"


def write_heldout(run_dir: Path, data) -> None:
    """Which rows of a single training file were held out as the dev set (0-based), with the file's hash, so
    `llmft eval` scores those rows by default instead of a file that is ~95% training rows."""
    if data.dev_rows is None:
        return
    source = Path(data.files[0])
    io.write_json(run_dir / HELDOUT_FILE, {"file": str(source.resolve()), "sha256": io.sha256_file(source),
                                           "origin": data.dev_origin, "rows": list(data.dev_rows)})


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The llmft source tree's commit, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def write_manifest(run_dir: Path, cfg, data_files: list[Path], extra: dict) -> None:
    """manifest.json; a resumed run whose data changed (--allow-data-change) keeps the earlier data hashes in
    `data_history` instead of overwriting them."""
    data = {str(p): io.sha256_file(p) for p in data_files}
    previous = io.load_json(run_dir / "manifest.json") if cfg.resume and (run_dir / "manifest.json").exists() else {}
    history = list(previous.get("data_history", []))
    if previous.get("data") and sorted(previous["data"].values()) != sorted(data.values()):
        history.append({"data": previous["data"], "until_step": extra.get("resumed_from_step")})
    io.write_json(run_dir / "manifest.json", {
        "command": sys.argv,
        "cwd": os.getcwd(),
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "data": data,
        **({"data_history": history} if history else {}),
        **extra,
    })


class MetricsWriter:
    """Appends one JSON line per logged step (or dev evaluation) to metrics.jsonl, flushed at once."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path = path
        if keep_until_step is not None and path.exists():
            # Resuming: lines past the checkpoint belong to steps that will be redone.
            kept = [row for row in io.read_jsonl(path) if row.get("step", 0) <= keep_until_step]
            io.write_jsonl(path, kept)
        elif keep_until_step is None and path.exists():
            path.unlink()
        self._file = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._file.write(io.dumps_record(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict]:
    return list(io.read_jsonl(path)) if path.exists() else []


def peak_memory() -> dict:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux: KiB
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def write_summary(run_dir: Path, summary: dict) -> None:
    io.write_json(run_dir / "summary.json", summary)


def plot_loss(metrics: list[dict], path: Path) -> None:
    """Train loss per step and dev loss at each evaluation, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    dev = [(m["step"], m["dev_loss"]) for m in metrics if "dev_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if dev:
        ax.plot(*zip(*dev), "o-", label="dev loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with io.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def load_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
