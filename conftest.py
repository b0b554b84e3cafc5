"""Root pytest configuration (root, so it also loads when only notebooks are collected).

- One torch thread per test worker, set once here (two xdist workers share a 2-core machine;
  more threads per worker only contend). ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are set before
  torch is imported, and notebook kernels inherit them.
- ``ATTENTION_COURSE_QUIET_PROGRESS=1``: the kernels nbval starts inherit it, so
  ``attention_course.utils.progress`` draws no bar (the book build sets it the same way).
- The per-notebook table printed at the end of every run: wall seconds (nbval: kernel start and
  every cell) and CPU seconds of the notebook's kernel process (user + system, with its children).

Budgets (CONTRIBUTING): a chapter notebook <= 45 s of kernel CPU, an exercise or solution notebook
<= 20 s, the whole test command <= 10 min. The table reports them; it does not fail the run
(timed tests are flaky on shared machines; budgets are read off this report in CI logs).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["ATTENTION_COURSE_QUIET_PROGRESS"] = "1"  # = attention_course.utils.QUIET_PROGRESS_ENV

import resource  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent
NOTEBOOK_BUDGET_CPU_S = {"notebooks": 45.0, "solutions": 20.0, "exercises": 20.0}
CPU_PROPERTY = "kernel_cpu_seconds"

_wall: dict[str, float] = defaultdict(float)
_cpu: dict[str, float] = defaultdict(float)
_failed: set[str] = set()
_session_start = time.perf_counter()
_cpu_mark = 0.0


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every process this one started (the notebook kernels).

    Live descendants are read with psutil (including their reaped children); descendants that
    already ended and were waited for are in ``RUSAGE_CHILDREN``. A kernel moves from the first
    sum to the second when nbval stops it, so the total only grows by what kernels used.
    """
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += times.user + times.system
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + usage.ru_utime + usage.ru_stime


def _is_notebook(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].endswith(".ipynb")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _cpu_mark
    if _is_notebook(item.nodeid):
        _cpu_mark = children_cpu_seconds()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Runs in the worker after each phase (setup starts the kernel, teardown of the last cell
    # stops it); the CPU used since the last phase travels to the controller with the report.
    global _cpu_mark
    outcome = yield
    if _is_notebook(item.nodeid):
        now = children_cpu_seconds()
        outcome.get_result().user_properties.append((CPU_PROPERTY, max(now - _cpu_mark, 0.0)))
        _cpu_mark = now


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs in the controller for xdist workers' reports too, so the table covers the whole run.
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    _wall[path] += report.duration
    _cpu[path] += sum(value for name, value in report.user_properties if name == CPU_PROPERTY)
    if report.failed:
        _failed.add(path)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _wall:
        return
    write = terminalreporter.write_line
    terminalreporter.section("per-notebook seconds (nbval: kernel start + every cell)")
    write(f"{'notebook':<52} {'wall s':>7} {'CPU s':>7} {'budget':>7}  status (CPU vs budget)")
    for path in sorted(_wall):
        budget = NOTEBOOK_BUDGET_CPU_S.get(path.split("/", 1)[0], 45.0)
        wall, cpu = _wall[path], _cpu[path]
        status = "FAILED" if path in _failed else ("OVER BUDGET" if cpu > budget else "ok")
        write(f"{path:<52} {wall:7.1f} {cpu:7.1f} {budget:7.0f}  {status}")
    write(f"{'all notebooks (sum)':<52} {sum(_wall.values()):7.1f} {sum(_cpu.values()):7.1f}")
    write(f"{'wall time of this pytest run':<52} {time.perf_counter() - _session_start:7.1f}")
