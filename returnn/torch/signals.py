"""SIGTERM and SIGUSR1: the signals a cluster sends before it ends a job (time limit, preemption).

While training runs, :class:`StopSignals` replaces the default action of these signals (end the process at once,
losing the epoch) by a note; the engine reads the note after each train step, writes a mid-epoch checkpoint and
stops (see :mod:`returnn.torch.run_control`). SIGINT (Ctrl-C) keeps Python's behaviour: ``KeyboardInterrupt``.

DataLoader worker processes ignore both (:func:`ignore_stop_signals`): SLURM signals every process of the job, and a
worker ended by it would fail the training ("DataLoader worker exited unexpectedly") before the main process could
save; the main process stops its workers when it is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "StopSignals", "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Notes SIGTERM / SIGUSR1 while installed (:meth:`installed`); :attr:`received` names the first one."""

    def __init__(self) -> None:
        self.received: str | None = None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Install the handlers for the duration of the block (only possible in the main thread; elsewhere the
        signals keep their handlers), and restore the previous ones afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._note) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def ignore_stop_signals() -> None:
    """In a DataLoader worker process: ignore SIGTERM / SIGUSR1 (the main process decides when to stop)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
