"""The fault campaign (tests/faults.py) in its quick form: every corruption caught, nothing lost, no orphan."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("faults.py")


def test_fault_campaign_finds_no_fault():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    figures = dict(re.findall(r"^  (\S.*?\S)\s{2,}(\S.*)$", proc.stdout, flags=re.MULTILINE))
    assert proc.returncode == 0 and "ALL GOOD" in out, out
    detected, faults = figures["corruptions detected, rows named"].split(" / ")
    assert detected == faults and int(faults) >= 9, out
    for name in ("silent wrong estimates", "check wrote to a store", "rows lost", "rows trained twice in races"):
        assert figures[name] == "0", (name, out)
    # fault: a trial in which no worker was ever spawned (nothing to orphan) passed as a clean one
    survivors, killed, spawned = re.fullmatch(
        r"(\d+) \(parent killed (\d+) times, (\d+) after its workers started\)", figures["orphaned workers"]
    ).groups()
    assert survivors == "0" and int(killed) >= 1 and spawned == killed, out
    refused, inputs = figures["bad inputs refused, exit 2, nothing written"].split(" / ")
    assert refused == inputs and int(inputs) >= 80, out
