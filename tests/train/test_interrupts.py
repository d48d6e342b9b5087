"""Ctrl-C and SIGTERM during training: the first asks the loop to stop after the current
step, a second raises at once, and the previous handlers come back afterwards."""

import os
import signal
import threading

import pytest

from t5x_lite.train import trainer


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_requests_a_stop_the_second_raises(sig, capsys):
    before = signal.getsignal(sig)
    with trainer.stop_requests() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), sig)  # handled before os.kill returns to Python code
        assert stop.is_set()
        assert f"{signal.Signals(sig).name}: stopping after this step" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def body():
        with trainer.stop_requests() as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["set"] = stop.is_set()

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"handler": before, "set": False}
