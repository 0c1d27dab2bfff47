"""The environment of Goldkey's own child processes (``python -m goldkey...``)."""

from __future__ import annotations

import os
from pathlib import Path


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child running Goldkey's code: unbuffered output, the
    package's root first on ``PYTHONPATH`` (so a source checkout runs its own code), plus ``extra``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    src = str(Path(__file__).resolve().parents[2])  # the package's root, for a source checkout
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
