"""Root pytest configuration (root, so it also loads when only notebooks are collected):
the per-notebook timing table printed at the end of every run.

Budgets (DESIGN): a chapter notebook <= 60 s under nbval, an exercise notebook <= 20 s, the whole
test command <= 10 min. The table reports them; it does not fail the run (timed tests are flaky
on shared machines; budgets are read off this report in CI logs).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
NOTEBOOK_BUDGET_S = {"notebooks": 60.0, "solutions": 20.0, "exercises": 20.0}

_seconds: dict[str, float] = defaultdict(float)
_failed: set[str] = set()
_session_start = time.perf_counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs in the controller for xdist workers' reports too, so the table covers the whole run.
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    _seconds[path] += report.duration
    if report.failed:
        _failed.add(path)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.section("per-notebook wall seconds (nbval: kernel start + every cell)")
    write(f"{'notebook':<52} {'seconds':>8} {'budget':>7}  status")
    for path in sorted(_seconds):
        budget = NOTEBOOK_BUDGET_S.get(path.split("/", 1)[0], 60.0)
        seconds = _seconds[path]
        status = "FAILED" if path in _failed else ("OVER BUDGET" if seconds > budget else "ok")
        write(f"{path:<52} {seconds:8.1f} {budget:7.0f}  {status}")
    write(f"{'all notebooks (sum of per-notebook seconds)':<52} {sum(_seconds.values()):8.1f}")
    write(f"{'wall time of this pytest run':<52} {time.perf_counter() - _session_start:8.1f}")
