"""`llmft` command line: parse arguments, build a config, make one call. No logic lives here."""
from __future__ import annotations

import argparse
import os

# Before torch loads its OpenMP runtime: how long an idle OpenMP thread spins before it sleeps. libgomp's default
# (300,000 spins) collapses a 2-thread run that shares a core with another busy process (SmolLM2 LoRA on 2 cores:
# 30 real tokens/s); never spinning (OMP_WAIT_POLICY=PASSIVE) costs 40% on a quiet machine (252 vs 409). 10,000
# spins keeps the quiet speed (409) and limits the damage (132); training also leaves busy cores out
# (training.cpu.set_cpu_threads). A user's own setting wins. Only the command line sets it: the Python API leaves
# the process as the user has it.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from llmft import __version__
from llmft.cli.boundary import guarded

# Each module adds its subcommands with register(subparsers); each subparser sets func=callable(args).
COMMAND_MODULES = ("llmft.cli.data", "llmft.cli.train", "llmft.cli.after", "llmft.cli.export", "llmft.cli.run")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="llmft", description="Instruction-tune causal LMs with SFT.")
    parser.add_argument("--version", action="version", version=f"llmft {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also LLMFT_DEBUG=1); errors are one line otherwise")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: args.func(args), debug=args.debug)
