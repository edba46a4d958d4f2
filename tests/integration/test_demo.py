"""The README's third command: ``python -m examples.demo`` runs with no setup, enqueues
atomically on the one Redis it starts, and its replicas hand over without sending an
occurrence twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SENT = re.compile(r"sent by (beat-[ab])\s+fence (\d+)\s+id (\S+)")


def test_the_demo_fails_over_and_sends_each_occurrence_once() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "examples.demo", "--seconds", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its Redis and replicas go with it if the test times out
    )
    try:
        output, _ = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    assert demo.returncode == 0, output
    assert "enqueue mode atomic" in output, output
    sent = SENT.findall(output)
    assert {replica for replica, _fence, _id in sent} == {"beat-a", "beat-b"}, output
    ids = Counter(task_id for _replica, _fence, task_id in sent)
    assert len(sent) >= 5 and max(ids.values()) == 1, output
    assert "Traceback" not in output, output
