"""Output that stays out of the way: progress bars on a terminal only, library chatter off."""

from __future__ import annotations

import logging
import os
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

def quiet_library_logs() -> None:
    """Keep transformers / datasets chatter out of a CLI run unless the user asks for it."""
    if os.environ.get("FLAN_VERBOSE"):
        return
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    # peft looks for a config.json beside a GGUF base to see whether the vocabulary changed
    warnings.filterwarnings("ignore", message="Could not find a config file")
    # SFTConfig's own default still uses the old name; nothing for the user to change
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
    logging.getLogger("trl").setLevel(logging.ERROR)
