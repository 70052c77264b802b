"""The folder of `llmft run --out DIR`: `recipe.yaml` (the resolved recipe), `raw/` (demo data), `data/` (prepared),
`train/` (the training run folder, which also receives eval.json / predictions.jsonl / eval.png), `stages.json`
(wall time of each stage), `report.md`, `summary.json`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    out: Path

    @property
    def raw(self) -> Path:
        return self.out / "raw"

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def train(self) -> Path:
        return self.out / "train"

    @property
    def demo_marker(self) -> Path:
        return self.raw / "demo.json"

    @property
    def recipe(self) -> Path:
        return self.out / "recipe.yaml"

    @property
    def stages(self) -> Path:
        return self.out / "stages.json"

    @property
    def report(self) -> Path:
        return self.out / "report.md"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"


