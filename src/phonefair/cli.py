"""The ``phonefair`` command (placeholder until the CLI lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("phonefair: CLI under construction")
    return 0
