"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM (a scheduler, ``torchrun``) ends the
current step, saves a checkpoint and exits, so ``--resume`` continues exactly; a second
signal stops at once (``KeyboardInterrupt``, no checkpoint).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

#: The signals that ask a run to stop after its current step.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Records the first stop signal while installed; the training loop polls it."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> Callable[[], None]:
        """Take over :data:`STOP_SIGNALS`; returns the function that restores the previous
        handlers. A no-op outside the main thread (Python delivers signals only there)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.signum is not None:
                raise KeyboardInterrupt  # a second signal: stop now
            self.signum = signum

        for s in STOP_SIGNALS:
            signal.signal(s, handler)

        def restore() -> None:
            for s, old in previous.items():
                signal.signal(s, old)

        return restore


def ignore_interrupts_in_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group, and so does
    SIGTERM from a scheduler (Slurm signals every process of a job); a worker it killed would
    fail the main process's next batch. Workers ignore both; the main process stops the run
    (and ends its workers as it exits)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


__all__ = ["STOP_SIGNALS", "StopRequest", "ignore_interrupts_in_worker"]
