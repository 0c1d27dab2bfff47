"""The progress bar the command line shows for long work (imports, the demo)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console, label: str) -> Progress:
    """Return a transient bar: ``label`` (may use ``{task.description}``), bar, done/total, time."""
    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    )
