"""Progress bars that stay out of the way: shown on a terminal, silent in logs and pipes."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that is disabled when stderr is not a terminal and cleared when done.

    Use it as a context manager so that an error mid-way also clears the bar and the
    one-line error message stands alone.
    """
    kwargs.setdefault("disable", None)  # None: off unless attached to a terminal
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def quiet_datasets_unless_terminal() -> None:
    """Silence ``datasets``' own progress bars (save, export) when not on a terminal."""
    import sys

    import datasets

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
