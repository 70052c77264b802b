"""Experiment trackers (`--report-to tensorboard,mlflow,wandb,trackio`) as Accelerate trackers: the Trainer hands
them to its Accelerator (`make_accelerator(log_with=...)`) and logs through `accelerator.init_trackers` / `log`.

Where each one writes: tensorboard -> RUN_DIR/tensorboard (as the `tensorboard: true` key always did); mlflow -> a
file store in RUN_DIR/mlruns unless MLFLOW_TRACKING_URI says otherwise (experiment `llmft`, run named after the run
folder; MLFLOW_ALLOW_FILE_STORE=true is set for it, MLflow 3 wants that for a file store); wandb -> project `llmft` (or WANDB_PROJECT), local files under RUN_DIR/wandb, online unless WANDB_MODE=offline;
trackio -> project `llmft`, its own local store (TRACKIO_DIR)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from llmft.errors import LlmftError

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}
PROJECT = "llmft"


def parse_report_to(value: str) -> list[str]:
    """`"mlflow, wandb"` -> ["mlflow", "wandb"] (order kept, duplicates dropped); unknown names are an error."""
    names = list(dict.fromkeys(name.strip().lower() for name in (value or "").split(",") if name.strip()))
    unknown = [name for name in names if name not in TRACKERS and name != "none"]
    if unknown:
        raise LlmftError(f"report_to: unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)}")
    return [name for name in names if name != "none"]


def tracker_names(cfg) -> list[str]:
    """The trackers a TrainConfig asks for: `report_to`, plus tensorboard when the older `tensorboard` key is on."""
    names = parse_report_to(cfg.report_to)
    if cfg.tensorboard and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    return names


def check_installed(names: list[str]) -> None:
    missing = [name for name in names if importlib.util.find_spec(MODULES[name]) is None]
    if missing:
        raise LlmftError(f"--report-to {missing[0]} needs the {missing[0]} package: pip install "
                         f"'llmft[trackers]' (or pip install {missing[0]})")


def _mlflow_tracker(run_dir: Path):
    from accelerate.tracking import MLflowTracker, on_main_process

    class RunFolderMLflowTracker(MLflowTracker):
        """MLflow with its file store in the run folder, not in whatever folder the command ran from."""

        @on_main_process
        def start(self):
            import mlflow

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:
                # MLflow 3 keeps the file store but refuses it unless asked (it would rather have a database
                # server); a plain folder inside the run is what a training run should carry, and
                # `mlflow ui --backend-store-uri RUN_DIR/mlruns` reads it.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                uri = (run_dir.resolve() / "mlruns").as_uri()
            mlflow.set_tracking_uri(uri)    # every run: a URI set by an earlier run in this process would win
            super().start()

    return RunFolderMLflowTracker(experiment_name=PROJECT, run_name=run_dir.name)


def make_trackers(names: list[str], run_dir: str | Path) -> list:
    """Accelerate tracker instances for `names` (nothing starts before `accelerator.init_trackers`)."""
    from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

    check_installed(names)
    run_dir = Path(run_dir)
    build = {
        "tensorboard": lambda: TensorBoardTracker("tensorboard", run_dir),
        "mlflow": lambda: _mlflow_tracker(run_dir),
        "wandb": lambda: WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=run_dir.name, dir=str(run_dir)),
        "trackio": lambda: TrackioTracker(PROJECT, name=run_dir.name),
    }
    return [build[name]() for name in names]


def loggable_config(cfg) -> dict:
    """The TrainConfig as flat scalars (trackers store parameters as strings or numbers)."""
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def finish_trackers(accelerator) -> None:
    """What `accelerator.end_training()` does for the trackers, without also destroying the process group, which
    the Trainer's caller (a torchrun worker, the `llmft run` pipeline) may still use after training."""
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            tracker.finish()
