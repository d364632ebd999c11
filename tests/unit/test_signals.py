"""terminate_on_sigterm: a SIGTERM inside the block runs the previous handler, then ends with status 143."""

import os
import signal
import time

import pytest

from divlab.utils.signals import Terminated, terminate_on_sigterm


@pytest.fixture
def recorded_handler():
    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    yield seen
    signal.signal(signal.SIGTERM, before)


def test_sigterm_inside_the_block_exits_143_after_the_previous_handler(recorded_handler):
    installed = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as caught, terminate_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # interrupted by the handler's exception long before this ends
    assert caught.value.code == 143
    assert recorded_handler == [signal.SIGTERM]  # Lightning's notifier still runs first
    assert signal.getsignal(signal.SIGTERM) is installed


def test_outside_the_block_the_previous_handler_alone_runs(recorded_handler):
    with terminate_on_sigterm():
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert recorded_handler == [signal.SIGTERM]
