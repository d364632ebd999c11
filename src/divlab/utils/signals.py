"""Stop long no-grad loops (test-time generation, sampling) on SIGTERM.

Lightning's SIGTERM handler only sets `trainer.received_sigterm`, which its loops read between batches. Work
done inside one hook (generating every held-out answer in `on_test_epoch_end`, say) never reads it, so a run
sent SIGTERM by `timeout`, a scheduler or a table kept generating until SIGKILL. Wrap such work in

    with terminate_on_sigterm():
        ...generate...

and a SIGTERM inside it ends the process with exit status 143 (128 + SIGTERM, what a shell reports for a
process SIGTERM killed) after Lightning's own handlers ran. The previous handler is restored on exit. Outside
the main thread (where Python cannot set handlers) it does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Terminated", "terminate_on_sigterm"]

EXIT_STATUS = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """Raised by terminate_on_sigterm's handler; its exit status is 143."""


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if callable(previous):  # Lightning's notifier (logs, sets received_sigterm, tells other ranks)
            previous(signum, frame)
        raise Terminated(EXIT_STATUS)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
