"""Worker processes that do not outlive the process that started them.

A ``ProcessPoolExecutor`` worker blocks on its call queue; when its parent is killed
(SIGKILL, OOM killer) nothing tells it, and it stays alive forever as an orphan. The pool's
initializer starts a watcher that exits the worker once its parent is gone.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5


def exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker soon after ``parent_pid`` stops being its parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os._exit(1)  # the parent is gone; nobody will read our results

    threading.Thread(target=watch, name="flan-exit-with-parent", daemon=True).start()
