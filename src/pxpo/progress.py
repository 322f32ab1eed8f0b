"""Progress bars that keep a terminal readable and a log file clean.

Bars are drawn only when standard error is a terminal: piped to a file, a run prints its plain log
lines and no bar frames (no carriage returns, no cursor movement). Log lines written while a bar is on
screen go above it (``log_above_bars``) instead of being glued to it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal() -> bool:
    """Whether standard error is a terminal (where bars can be redrawn in place)."""
    return sys.stderr.isatty()


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, enabled: bool = True, leave: bool = False) -> tqdm:
    """A tqdm bar, drawn only when ``enabled`` and standard error is a terminal."""
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=not (enabled and on_terminal()), dynamic_ncols=True)


@contextmanager
def log_above_bars() -> Iterator[None]:
    """Route the root logger's console output through tqdm, so that log lines never collide with a bar."""
    if not on_terminal():
        yield
        return
    with logging_redirect_tqdm():
        yield
