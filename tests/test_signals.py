"""Ctrl-C and SIGTERM end a run with one line telling how to resume, whenever they arrive."""

import pytest


@pytest.mark.slow  # trains in a subprocess
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_run_with_one_line_telling_how_to_resume(tmp_path, quick_toml, signal_name):
    import signal
    import subprocess
    import sys
    import time

    config = quick_toml("long", run={"num_epochs": 1000, "checkpoint_every": 1})
    process = subprocess.Popen([sys.executable, "-m", "pxpo.cli", "train", config], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "long" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    process.send_signal(getattr(signal, signal_name))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"Continue with: pxpo train --resume {tmp_path / 'runs' / 'long'}" in err


_FINALISER = """
import os, signal
from pxpo import launch

class SignalsWhileFinalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the finaliser

launch.stop_on_signals()
launch.raise_if_stopped()  # nothing requested yet: no effect
SignalsWhileFinalised()  # collected at once; its KeyboardInterrupt is swallowed by Python
try:
    launch.raise_if_stopped()
except KeyboardInterrupt:
    print("stopped")
"""


@pytest.mark.slow  # a subprocess: the stop request is process state that no later test may inherit
def test_a_signal_swallowed_by_a_finaliser_still_stops_the_run_quietly():
    """A signal whose KeyboardInterrupt is raised inside ``__del__`` (Python ignores it there) is not lost, and the
    swallowed interrupt prints no traceback."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FINALISER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
