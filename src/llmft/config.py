"""Typed configuration: dataclasses loaded from YAML, overridden from the command line, validated all at once,
and saved with every run so the run folder alone reproduces it."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from llmft.errors import LlmftError


# ---------------------------------------------------------------- the configs

def flag(default=dataclasses.MISSING, *, help: str | None = None, group: str | None = None, name: str | None = None,
         choices: tuple | None = None, exclusive: str | None = None, metavar: str | None = None,
         default_factory=dataclasses.MISSING):
    """A config key that is also a command-line flag of its command (`cli.flags.add_config_flags` builds the flags
    from these, so a new key is added in one place). `name` overrides `--key-name` (a `--no-...` name makes a bool
    flag that sets False); keys sharing an `exclusive` label form a mutually exclusive group."""
    meta = {"cli": {"help": help, "group": group, "name": name, "choices": choices, "exclusive": exclusive,
                    "metavar": metavar}}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """`llmft data prepare`: which raw files, how to clean, dedup and split them."""
    alpaca: list[str] = field(default_factory=list)
    self_instruct: list[str] = field(default_factory=list)
    natural_instructions: list[str] = field(default_factory=list)
    unnatural_instructions: list[str] = field(default_factory=list)
    chat: list[str] = field(default_factory=list)       # conversations: messages or ShareGPT files, folders, hub ids
    table: list[str] = field(default_factory=list)      # any table datasets reads, with table_columns
    table_columns: list[str] = field(default_factory=list)  # "instruction=q,input=c,output=a": one for all tables, or one each
    dataset_split: str = ""                 # chat/table: the split of a hub dataset or DatasetDict folder ("": every one)
    reformulations: bool = False            # unnatural-instructions full: one record per paraphrase too
    append_constraints: bool = False        # unnatural-instructions: append the constraints to the instruction
    languages: list[str] = field(default_factory=lambda: ["English"])  # natural-instructions: instruction, input, output
    max_instances_per_task: Optional[int] = None   # natural-instructions train tasks
    test_instances_per_task: int = 100      # official SuperNI evaluation set: the first 100 of each test task
    split: str = "random"                   # random | tasks
    dev_ratio: float = 0.05
    test_ratio: float = 0.05
    seed: int = 0
    strict: bool = False
    near_dedup: bool = False                # remove MinHash near-duplicates (they are always reported)
    near_dedup_threshold: float = 0.9
    max_chars: int = 20000                  # clean: reject records longer than this (instruction+input+output); 0 = no limit
    workers: int = 0                        # 0: one per CPU core
    # Mixture of the train split, per source (seeded; what is left out is a reject of stage "mix"):
    source_caps: dict[str, int] = field(default_factory=dict)       # at most N train records of a source
    source_weights: dict[str, float] = field(default_factory=dict)  # shares of train among the sources named
    # Bounds on what one input can cost (a zip bomb, a file of one huge line): refused with a message naming the key.
    max_line_bytes: int = 64 << 20          # longest JSON Lines line or JSON array element read
    max_member_bytes: int = 4 << 30         # archives: largest unpacked member
    max_compression_ratio: int = 100        # archives: refuse a member over 1 MiB unpacking to more than this x its size

    def validate(self) -> list[str]:
        problems = []
        if self.split not in ("random", "tasks"):
            problems.append(f"split must be 'random' or 'tasks', got {self.split!r}")
        for name in ("dev_ratio", "test_ratio"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                problems.append(f"{name} must be in [0, 1), got {v}")
        if self.dev_ratio + self.test_ratio >= 1.0:
            problems.append("dev_ratio + test_ratio must be below 1")
        if not 0.0 < self.near_dedup_threshold <= 1.0:
            problems.append("near_dedup_threshold must be in (0, 1]")
        if self.max_chars < 0:
            problems.append(f"max_chars must be >= 0 (0 = no limit), got {self.max_chars}")
        if self.workers < 0:
            problems.append(f"workers must be >= 0 (0 = one per CPU core), got {self.workers}")
        for name in ("max_line_bytes", "max_member_bytes", "max_compression_ratio"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        return problems + self._source_problems()

    def _source_problems(self) -> list[str]:
        from llmft.data.records import SOURCES

        problems = []
        if len(self.table_columns) > 1 and len(self.table_columns) != len(self.table):
            problems.append(f"table_columns: give one for every table, or one for all ({len(self.table)} tables, "
                            f"{len(self.table_columns)} table_columns)")
        for key, limits in (("source_caps", self.source_caps), ("source_weights", self.source_weights)):
            for source, value in limits.items():
                if source.replace("_", "-") not in SOURCES:
                    problems.append(f"{key}: unknown source {source!r}; known: {', '.join(SOURCES)}")
                if value < 0 or (key == "source_weights" and value == 0):
                    problems.append(f"{key}: {source} must be {'positive' if key == 'source_weights' else '>= 0'}, "
                                    f"got {value}")
        return problems


MODEL, PROMPTS, LOOP, RUN = "model and adapter", "prompts", "optimisation", "evaluation, checkpoints, logging"
ADAPTER_PLACEMENTS = ("houlsby", "pfeiffer")          # training/bottleneck.py PLACEMENTS
ADAPTER_ACTIVATIONS = ("relu", "gelu", "silu", "tanh")  # training/bottleneck.py ACTIVATIONS


@dataclass
class TrainConfig:
    """`llmft train`: model, adapter, data, batching and the optimisation loop."""
    data: str = flag("", help="prepared data folder (train.jsonl, dev.jsonl) or one JSONL file of records or "
                     "{prompt, completion} rows (then a seeded 5%% is the dev set)")
    out: str = flag("", help="run folder")
    model: str = flag("smollm2-135m", group=MODEL,
                      help="smollm2-135m (embedded, default), a local HF folder or a hub id")
    method: str = flag("lora", group=MODEL, choices=("lora", "full", "adapter"),
                       help="lora, full (every weight) or adapter (bottleneck adapters in every block)")
    lora_r: int = flag(16, group=MODEL)
    lora_alpha: int = flag(32, group=MODEL)
    lora_dropout: float = flag(0.0, group=MODEL)   # PEFT and torchtune default; on CPU 0.05 costs ~20% of a step
    lora_targets: str = flag("all-linear", group=MODEL, help="all-linear (every linear layer but the output head) "
                             "or comma-separated module names such as q_proj,v_proj")
    use_rslora: bool = flag(False, group=MODEL, help="rank-stabilised LoRA scaling")
    use_dora: bool = flag(False, group=MODEL, help="weight-decomposed LoRA (DoRA)")
    qlora: bool = flag(False, group=MODEL, help="4-bit NF4 base (CUDA + bitsandbytes)")
    adapter_size: int = flag(64, group=MODEL, exclusive="adapter_width",
                             help="method adapter: bottleneck width of each adapter")
    adapter_reduction: float = flag(0.0, group=MODEL, exclusive="adapter_width",
                                    help="method adapter: width = hidden size / this (> 0 overrides adapter_size)")
    adapter_placement: str = flag("houlsby", group=MODEL, choices=ADAPTER_PLACEMENTS,
                                  help="method adapter: houlsby (after attention and after the MLP of every block) "
                                  "or pfeiffer (after the MLP only)")
    adapter_activation: str = flag("relu", group=MODEL, choices=ADAPTER_ACTIVATIONS,
                                   help="method adapter: nonlinearity inside the bottleneck")
    adapter_train_norms: bool = flag(False, group=MODEL, help="method adapter: also train the layer norms")
    template: str = flag("alpaca", group=PROMPTS, choices=("alpaca", "superni", "chat"))
    k_positive: int = flag(0, group=PROMPTS, help="superni template: positive examples in the prompt (0-2)")
    max_length: int = flag(512, group=PROMPTS, help="tokens per example (longer ones are truncated, counted)")
    train_on: str = flag("all_assistant", group=PROMPTS, choices=("all_assistant", "last_assistant"),
                         help="conversations under --template chat: learn every assistant turn or only the last")
    packing: bool = flag(True, group=LOOP, name="--no-packing",
                         help="length-grouped padded batches instead of packing")
    batch_tokens: int = flag(4096, group=LOOP, exclusive="size", help="token budget of a packed micro-batch")
    row_tokens: int = 0                     # packing: rows of at most this per forward (0: on CPU 1024 in bf16, 512 in
                                            # fp32, at least max_length; one row on GPU)
    batch_size: int = flag(8, group=LOOP, exclusive="size",
                           help="examples per padded micro-batch (with --no-packing)")
    grad_accum: int = flag(1, group=LOOP, help="micro-batches per optimizer step (per process)")
    max_steps: int = flag(0, group=LOOP, exclusive="length", help="optimizer steps (overrides --epochs)")
    epochs: float = flag(1.0, group=LOOP, exclusive="length")
    time_limit_minutes: float = flag(0.0, group=LOOP, metavar="M",
                                     help="the optimizer steps may take M minutes in all: from the measured step "
                                     "time the run re-fits its total steps (at most --max-steps / --epochs) and its "
                                     "learning-rate decay to end in time (0: no limit)")
    time_limit_min_steps: int = 0           # with a time limit: train at least this many steps however slow the steps
    lr: float = flag(2e-4, group=LOOP)
    neftune_noise_alpha: float = flag(0.0, group=LOOP, metavar="ALPHA",
                                      help="NEFTune: uniform noise of alpha / sqrt(length x hidden size) on the input "
                                      "embeddings while training (the paper used 5 to 15; 0: off)")
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    bf16: str = flag("auto", group=LOOP, choices=("auto", "true", "false"),
                     help="bf16 autocast (auto: on CUDA with bf16; on a CPU when its bf16 matmuls measure "
                     "faster than fp32, a short probe cached per machine)")
    grad_checkpointing: bool = flag(False, group=LOOP)
    eval_every: int = flag(50, group=RUN, help="dev loss every N steps (0: only before and after)")
    save_every: int = flag(100, group=RUN, help="checkpoint every N steps (0: none)")
    keep_checkpoints: int = 2               # newest checkpoints kept in RUN_DIR/checkpoints (0: all)
    log_every: int = 1
    dev_limit: int = 200                    # dev examples scored at each evaluation
    seed: int = flag(0, group=LOOP)
    resume: bool = flag(False, group=RUN, help="continue RUN_DIR from its last checkpoint")
    allow_data_change: bool = flag(False, group=RUN, help="with --resume: continue although the training data "
                                   "changed since the run started (manifest.json keeps the earlier hashes)")
    tensorboard: bool = flag(False, group=RUN, help="also log to RUN_DIR/tensorboard")
    report_to: str = flag("", group=RUN, metavar="TRACKERS",
                          help="experiment trackers, comma-separated: tensorboard, mlflow (a file store in "
                          "RUN_DIR/mlruns unless MLFLOW_TRACKING_URI is set), wandb, trackio")
    trust_remote_code: bool = flag(False, group=MODEL)

    def _adapter_problems(self) -> list[str]:
        problems = []
        if self.adapter_size <= 0:
            problems.append(f"adapter_size must be positive, got {self.adapter_size}")
        if self.adapter_reduction < 0:
            problems.append(f"adapter_reduction must be >= 0 (0: use adapter_size), got {self.adapter_reduction}")
        if self.adapter_placement not in ADAPTER_PLACEMENTS:
            problems.append(f"adapter_placement must be one of {', '.join(ADAPTER_PLACEMENTS)}, "
                            f"got {self.adapter_placement!r}")
        if self.adapter_activation not in ADAPTER_ACTIVATIONS:
            problems.append(f"adapter_activation must be one of {', '.join(ADAPTER_ACTIVATIONS)}, "
                            f"got {self.adapter_activation!r}")
        if self.qlora:
            problems.append("qlora puts a LoRA adapter on a 4-bit base; use it with method lora, not adapter")
        return problems

    def validate(self) -> list[str]:
        problems = []
        if self.method not in ("lora", "full", "adapter"):
            problems.append(f"method must be 'lora', 'full' or 'adapter', got {self.method!r}")
        if self.method == "adapter":
            problems += self._adapter_problems()
        if self.template not in ("alpaca", "superni", "chat"):
            problems.append(f"template must be alpaca, superni or chat, got {self.template!r}")
        if self.bf16 not in ("auto", "true", "false"):
            problems.append(f"bf16 must be auto, true or false, got {self.bf16!r}")
        for name in ("lora_r", "lora_alpha", "max_length", "batch_tokens", "batch_size", "grad_accum"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "keep_checkpoints", "dev_limit"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every <= 0:
            problems.append(f"log_every must be positive, got {self.log_every}")
        if self.neftune_noise_alpha < 0:
            problems.append(f"neftune_noise_alpha must be >= 0 (0: off), got {self.neftune_noise_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.max_steps < 0 or self.epochs <= 0:
            problems.append("max_steps must be >= 0 and epochs > 0")
        if self.time_limit_minutes < 0 or self.time_limit_min_steps < 0:
            problems.append(f"time_limit_minutes and time_limit_min_steps must be >= 0, got "
                            f"{self.time_limit_minutes} and {self.time_limit_min_steps}")
        if self.row_tokens and self.row_tokens < self.max_length:
            problems.append(f"row_tokens ({self.row_tokens}) must be 0 or at least max_length ({self.max_length})")
        if self.packing and self.batch_tokens < self.max_length:
            problems.append(f"batch_tokens ({self.batch_tokens}) must be at least max_length ({self.max_length})")
        if not 0 <= self.k_positive <= 2:
            problems.append(f"k_positive must be 0, 1 or 2, got {self.k_positive}")
        if self.train_on not in ("all_assistant", "last_assistant"):
            problems.append(f"train_on must be all_assistant or last_assistant, got {self.train_on!r}")
        problems += _report_to_problems(self.report_to)
        if not self.data:
            problems.append("data is required (a prepared data folder or a JSONL file)")
        if not self.out:
            problems.append("out is required (the run folder)")
        return problems


def _report_to_problems(report_to: str) -> list[str]:
    from llmft.training.trackers import parse_report_to

    try:
        parse_report_to(report_to)
    except LlmftError as e:
        return [str(e)]
    return []


@dataclass
class EvalConfig:
    """`llmft eval`: which split, how many records, how to generate."""
    split: str = "test"
    data: str = ""                          # default: the data the run was trained on
    max_new_tokens: int = 64
    limit: int = 0                          # 0: every record
    batch_size: int = 16
    base: bool = True                       # also score the base model without the adapter
    loss: bool = True                       # also the response loss / perplexity (one more forward pass)
    bf16: str = "auto"                      # auto: bf16 on a GPU, or on a CPU whose bf16 matmuls measure faster

    def validate(self) -> list[str]:
        problems = []
        if self.bf16 not in ("auto", "true", "false"):
            problems.append(f"bf16 must be auto, true or false, got {self.bf16!r}")
        if self.max_new_tokens <= 0:
            problems.append("max_new_tokens must be positive")
        if self.limit < 0 or self.batch_size <= 0:
            problems.append("limit must be >= 0 and batch_size > 0")
        return problems


@dataclass
class RunConfig:
    """`llmft run`: the run-level keys of a recipe (its data/train/eval sections are the configs above)."""
    demo_instances: int = 60                # instances per demo task type (used when no real dataset is given)
    demo_seed: int = 0
    budget_minutes: float = 0.0             # > 0: fit training to this wall time (train.time_limit_minutes)
    budget_min_steps: int = 0               # with a budget: train at least this many steps, over budget if need be
                                            # (0: refuse a budget that leaves no step)
    budget_min_eval_per_task: int = 1       # with a budget: score at least this many records of each task, however
                                            # long (training gets less time instead)
    budget_step_margin: float = 1.3         # with a budget: the probe's step time times this decides whether
                                            # budget_min_steps fit (training itself re-fits to its measured steps)

    def validate(self) -> list[str]:
        problems = []
        if self.demo_instances < 1:
            problems.append(f"demo_instances must be at least 1, got {self.demo_instances}")
        if self.budget_min_steps < 0:
            problems.append(f"budget_min_steps must be >= 0, got {self.budget_min_steps}")
        if self.budget_min_eval_per_task < 1:
            problems.append(f"budget_min_eval_per_task must be at least 1, got {self.budget_min_eval_per_task}")
        if self.budget_minutes < 0:
            problems.append(f"budget_minutes must be >= 0 (0: no budget), got {self.budget_minutes}")
        if self.budget_step_margin < 1:
            problems.append(f"budget_step_margin must be >= 1 (the probe underestimates a run), "
                            f"got {self.budget_step_margin}")
        return problems


# ---------------------------------------------------------------- machinery

def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML / command-line value to the annotated type, or raise naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is dict:
        return _coerce_mapping(value, args, where)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise LlmftError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, where) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise LlmftError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise LlmftError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise LlmftError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise LlmftError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise LlmftError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise LlmftError(f"{where}: expected a string, got {value!r}")
        if isinstance(value, bool):          # YAML's `bf16: false` means the string choice "false"
            return str(value).lower()
        return str(value)
    return value


def _coerce_mapping(value: Any, args: tuple, where: str) -> dict:
    """A mapping from YAML, or `key=value` text from the command line ("a=1,b=2" or a list of "a=1")."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        pairs = {}
        for item in value:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip():
                raise LlmftError(f"{where}: expected key=value, got {item!r}")
            pairs[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        value = pairs
    if not isinstance(value, dict):
        raise LlmftError(f"{where}: expected a mapping, got {value!r}")
    key_type, value_type = args if len(args) == 2 else (Any, Any)
    return {_coerce(k, key_type, where): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}


def from_dict(cls, data: dict, source: str = "config"):
    """Build a config dataclass; unknown keys and bad types are errors that name the key and source."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LlmftError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k.replace("-", "_"): _coerce(v, hints[k], f"{source}: {k}") for k, v in data.items()}
    return cls(**kwargs)


def load_config(cls, path: str | Path | None = None, overrides: dict | None = None):
    """YAML file (optional) < command-line overrides (values that are None mean 'not given')."""
    data: dict = {}
    if path:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise LlmftError(f"{path}: not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise LlmftError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not isinstance(loaded, dict):
            raise LlmftError(f"{path}: expected a mapping of keys to values")
        data.update({k.replace("-", "_"): v for k, v in loaded.items()})
    cfg_from_file = from_dict(cls, data, str(path) if path else "config")
    merged = dataclasses.asdict(cfg_from_file)
    for k, v in (overrides or {}).items():
        if v is not None:
            merged[k.replace("-", "_")] = v
    cfg = from_dict(cls, merged, "command line")
    check(cfg)
    return cfg


def parse_dotlist(items: list[str]) -> dict:
    """`key=value` strings to a dict; values parsed as YAML scalars (so 3, 1e-4, true work)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise LlmftError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v) if v else ""
    return out


def check(cfg) -> None:
    problems = cfg.validate() if hasattr(cfg, "validate") else []
    if problems:
        raise LlmftError(f"invalid {type(cfg).__name__}:\n  - " + "\n  - ".join(problems))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    from llmft.io import atomic_write

    with atomic_write(path) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False, allow_unicode=True)


def config_reference(cls) -> str:
    """A Markdown table of a config's keys, types and defaults (for the README)."""
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default |", "| --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = getattr(hints[f.name], "__name__", None) if not typing.get_args(hints[f.name]) else None
        tp = tp or str(hints[f.name]).replace("typing.", "")
        rows.append(f"| `{f.name}` | `{tp}` | `{default!r}` |")
    return "\n".join(rows)
