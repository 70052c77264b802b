"""Placeholder: this subcommand is being written."""


def register(sub) -> None:
    pass
