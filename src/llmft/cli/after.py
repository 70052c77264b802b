"""Placeholder: this command group is being written."""


def register(sub) -> None:
    pass
