"""bench.reuseport: two attnserve processes share one gRPC port and both answer.

A short run (one round, 1 and 2 processes, 300 requests) must give figures for both with
every request answered; the CPU sum covers both process trees. Nothing is asserted about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_one_and_two_processes_on_one_port_answer(tmp_path: Path) -> None:
    out = tmp_path / "reuseport"
    done = subprocess.run(
        [sys.executable, "-m", "bench.reuseport", "--processes", "1,2", "--concurrency", "8", "--requests", "300",
         "--rounds", "1", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [r["processes"] for r in runs] == [1, 2]
    assert all(r["req_per_s"] > 0 and r["server_cpu_us_per_request"] > 0 for r in runs)
