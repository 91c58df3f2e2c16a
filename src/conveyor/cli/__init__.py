"""The `conveyor` command."""

from conveyor.cli.main import main

__all__ = ["main"]
