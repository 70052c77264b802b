"""Recipes of `llmft run`: one YAML file of run-level keys (`RunConfig`) plus `data:`, `train:` and `eval:` sections
(DataConfig / TrainConfig / EvalConfig keys); built-in ones live in `pipeline/recipes/`. Loading applies `--set`
overrides; resolving fills in the dataset and run-folder paths; a rerun must match the saved recipe."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from llmft import io
from llmft.config import DataConfig, EvalConfig, RunConfig, TrainConfig, check, from_dict, parse_dotlist, to_dict
from llmft.errors import LlmftError
from llmft.pipeline.layout import Layout

SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
SOURCE_KEYS = ("alpaca", "self_instruct", "natural_instructions", "unnatural_instructions", "chat")
STAGE_NAMES = ("demo", "prepare", "budget", "train", "eval")
# What `llmft data download --out DIR` leaves, per DataConfig source key (first existing path wins).
DOWNLOADED_LAYOUT = {
    "alpaca": ("alpaca/alpaca_data.json",),
    "self_instruct": ("self_instruct/all_instances_82K.jsonl",),
    "natural_instructions": ("natural_instructions",),
    "unnatural_instructions": ("unnatural_instructions/core_data.jsonl",),
}


@dataclass
class Recipe:
    name: str
    run: RunConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict:
        return {"recipe": self.name, **to_dict(self.run),
                **{section: to_dict(getattr(self, section)) for section in SECTIONS}}


def builtin_recipes() -> list[str]:
    folder = resources.files("llmft.pipeline").joinpath("recipes")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_text(name_or_path: str) -> tuple[str, str]:
    """(label, YAML text) of a built-in recipe name or a YAML file path."""
    path = Path(name_or_path)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise LlmftError(f"{path}: no such recipe file")
    if name_or_path not in builtin_recipes():
        raise LlmftError(f"unknown recipe {name_or_path!r}: give a YAML file or one of {', '.join(builtin_recipes())}")
    text = resources.files("llmft.pipeline").joinpath("recipes", f"{name_or_path}.yaml").read_text(encoding="utf-8")
    return name_or_path, text


def split_overrides(items: list[str]) -> dict[str, dict]:
    """`--set train.lr=3e-4 demo_instances=20` -> {"train": {"lr": 3e-4}, "run": {"demo_instances": 20}}."""
    out: dict[str, dict] = {"run": {}, **{section: {} for section in SECTIONS}}
    for key, value in parse_dotlist(items).items():
        section, _, name = key.rpartition(".")
        section = section or "run"
        if section not in out:
            raise LlmftError(f"--set {key}: unknown section {section!r}; use data., train., eval. or a run-level key")
        out[section][name] = value
    return out


def load_recipe(name_or_path: str = "demo", overrides: list[str] | None = None) -> Recipe:
    """The recipe's sections as configs, `--set` overrides applied; unknown keys and bad values name their place.
    Paths (data sources, train.data/out) are filled in by `resolve_recipe`, so the configs are not validated here."""
    label, text = recipe_text(name_or_path)
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise LlmftError(f"{label}: not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise LlmftError(f"{label}: expected a mapping with data:, train:, eval: and run-level keys")
    extra = split_overrides(overrides or [])
    name = loaded.pop("recipe", None) or label     # a run folder's saved recipe.yaml names the recipe it came from
    parts = {}
    for section, cls in SECTIONS.items():
        body = loaded.pop(section, None) or {}
        if not isinstance(body, dict):
            raise LlmftError(f"{label}: '{section}:' must be a mapping of {cls.__name__} keys")
        parts[section] = from_dict(cls, {**_underscored(body), **extra[section]}, f"{label} [{section}]")
    run = from_dict(RunConfig, {**_underscored(loaded), **extra["run"]}, f"{label} (run-level keys)")
    check(run)
    return Recipe(str(name), run, **parts)


def _underscored(mapping: dict) -> dict:
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def downloaded_sources(folder: str | Path) -> dict[str, list[str]]:
    """The dataset paths inside a `llmft data download` folder (whatever part of it was downloaded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LlmftError(f"{folder}: no such folder (expected the --out of `llmft data download`)")
    found = {}
    for key, candidates in DOWNLOADED_LAYOUT.items():
        path = next((folder / c for c in candidates if (folder / c).exists()), None)
        if path is not None:
            found[key] = [str(path)]
    if not found:
        wanted = ", ".join(c for cs in DOWNLOADED_LAYOUT.values() for c in cs)
        raise LlmftError(f"{folder}: none of the downloaded datasets found (looked for {wanted})")
    return found


def demo_sources(raw: Path) -> dict[str, list[str]]:
    """Where `data.demo.write_demo(raw)` puts each dataset."""
    from llmft.data.demo_chat import CHAT_FILE

    return {"alpaca": [str(raw / "alpaca" / "alpaca_data.json")],
            "natural_instructions": [str(raw / "natural_instructions")],
            "unnatural_instructions": [str(raw / "unnatural_instructions" / "core_data.jsonl")],
            "chat": [str(raw / CHAT_FILE)]}


def named_sources(recipe: Recipe) -> dict[str, list[str]]:
    """The dataset paths the recipe itself names (a run folder's recipe.yaml names those it was run on); none when
    they are the demo data of the run that saved it (a rerun generates its own, as that run did)."""
    named = {key: list(paths) for key in SOURCE_KEYS if (paths := getattr(recipe.data, key))}
    alpaca = named.get("alpaca", [])
    if len(alpaca) == 1 and len(Path(alpaca[0]).parents) > 1 and named == demo_sources(Path(alpaca[0]).parents[1]):
        return {}
    return named


def resolve_recipe(recipe: Recipe, out: str | Path, sources: dict[str, list[str]] | None = None) -> Recipe:
    """Fill in the paths: the given datasets (else the demo data under out/raw), out/data and out/train."""
    layout = Layout(Path(out))
    if sources:
        unknown = sorted(set(sources) - set(SOURCE_KEYS))
        if unknown:
            raise LlmftError(f"unknown dataset key(s) {', '.join(unknown)}; known: {', '.join(SOURCE_KEYS)}")
    paths = {key: [] for key in SOURCE_KEYS} | (sources or demo_sources(layout.raw))
    data = dataclasses.replace(recipe.data, **paths)
    train = dataclasses.replace(recipe.train, data=str(layout.data), out=str(layout.train), resume=False)
    for cfg in (data, train, recipe.eval):
        check(cfg)
    return dataclasses.replace(recipe, data=data, train=train)


def save_or_check_recipe(recipe: Recipe, layout: Layout) -> None:
    """A rerun must use the recipe its completed stages were made with; a changed key is an error naming it."""
    wanted = recipe.to_dict()
    if layout.recipe.exists():
        saved = yaml.safe_load(layout.recipe.read_text(encoding="utf-8")) or {}
        changed = _changed_keys(saved, wanted)
        if changed:
            raise LlmftError(f"{layout.out}: this run folder was started with another recipe; changed: "
                             f"{'; '.join(changed)}. Use a new --out (or remove {layout.out}).")
        return
    with io.atomic_write(layout.recipe) as f:
        yaml.safe_dump(wanted, f, sort_keys=False, allow_unicode=True)


def _changed_keys(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(saved) | set(wanted), key=str):
        old, new = saved.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += _changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changed


