"""`llmft data ...`: one module per subcommand, each with register(subparsers)."""
from __future__ import annotations

import importlib

DATA_COMMANDS = ("convert", "prepare", "format", "inspect", "stats", "download", "demo")


def register(sub) -> None:
    parser = sub.add_parser("data", help="convert, prepare, format and inspect instruction datasets")
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    for name in DATA_COMMANDS:
        importlib.import_module(f"llmft.cli.data_{name}").register(data_sub)
