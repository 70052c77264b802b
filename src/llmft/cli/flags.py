"""Command-line flags built from a typed config: every key declared with `config.flag(...)` becomes `--key-name`
(type, choices and help from the declaration), so a new key is added in one place."""
from __future__ import annotations

import argparse
import dataclasses
import typing


def flag_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "cli" in f.metadata]


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """Add one flag per flagged key of `cls`; every default is None, meaning 'not given' (the config file or the
    dataclass default then decides)."""
    hints = typing.get_type_hints(cls)
    groups: dict = {None: parser}
    exclusive: dict = {}
    for f in flag_fields(cls):
        spec = f.metadata["cli"]
        if spec["group"] not in groups:
            groups[spec["group"]] = parser.add_argument_group(spec["group"])
        target = groups[spec["group"]]
        if spec["exclusive"]:
            key = (spec["group"], spec["exclusive"])
            if key not in exclusive:
                exclusive[key] = target.add_mutually_exclusive_group()
            target = exclusive[key]
        name = spec["name"] or "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": None, "help": spec["help"]}
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if tp is bool:
            kwargs["action"] = "store_false" if name.startswith("--no-") else "store_true"
        else:
            if tp in (int, float):
                kwargs["type"] = tp
            if spec["choices"]:
                kwargs["choices"] = spec["choices"]
            if spec["metavar"]:
                kwargs["metavar"] = spec["metavar"]
        target.add_argument(name, **kwargs)


def flag_values(args: argparse.Namespace, cls) -> dict:
    """The flagged keys the user gave (None = not given)."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls) if getattr(args, f.name, None) is not None}
