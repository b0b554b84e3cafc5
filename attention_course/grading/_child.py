"""The child process of batch grading: runs ONE student's notebook and calls their answers.

    python -m attention_course.grading._child JOB SCRATCH

(started by ``batch`` inside the sandbox, through a bootstrap that first sets the resource
limits and puts the parent's own copy of the package first on ``sys.path``). Reads ``JOB`` (wire
format, see ``_codec.pack``: the notebook's code cells and, per question, the answer's name, the
import paths of the tests' ``run`` functions and the encoded input cases), executes the code
cells in an IPython shell (each under a friendly SIGALRM limit; the hard limits are enforced
from outside by the parent), then calls every answer on every case and writes
``SCRATCH/answers_<i>.bin`` after each question and ``SCRATCH/report.bin`` (cell errors).

Nothing here judges anything: the parent treats every byte this process writes as hostile.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import torch

from . import _codec
from .core import (
    IN_BATCH_CHILD,
    TimeLimitExceeded,
    _alarm,
    _can_alarm,
    _describe_error,
    run_question,
)


def _resolve(path: str):
    module_name, _, qualname = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _run_cells(cells: list[str], cell_timeout: float, deadline: float) -> tuple[dict, list]:
    """Execute the code cells in order in a fresh IPython shell; return (namespace, errors)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    errors = []
    for index, source in enumerate(cells):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            errors.append({"cell": index, "error": "no time left to run this cell"})
            break
        limit = max(0.1, min(cell_timeout, remaining))
        print(f"--- cell {index} ---", flush=True)
        try:
            if _can_alarm():
                with _alarm(limit):
                    result = shell.run_cell(source, store_history=False)
            else:
                result = shell.run_cell(source, store_history=False)
            error = result.error_before_exec or result.error_in_exec
            if isinstance(error, TimeLimitExceeded):
                errors.append({"cell": index, "error": f"timed out after {limit:g} s"})
            elif error is not None:
                errors.append({"cell": index, "error": _describe_error(error)})
        except TimeLimitExceeded:
            errors.append({"cell": index, "error": f"timed out after {limit:g} s"})
        except BaseException as exc:  # noqa: BLE001 - e.g. a SystemExit escaping IPython
            errors.append({"cell": index, "error": _describe_error(exc)})
    return shell.user_ns, errors


def _write(path: Path, value) -> None:
    path.write_bytes(_codec.pack(value))


def main(job_path: str, scratch: str) -> int:
    os.environ[IN_BATCH_CHILD] = "1"
    torch.set_num_threads(1)
    work = Path(scratch)
    job = _codec.unpack(Path(job_path).read_bytes())
    # before any student code runs: the tests' run functions, from the parent's own package
    runs = [[_resolve(path) for path in q["runs"]] for q in job["questions"]]
    # warm autograd up (its first backward starts threads): a timed gradient test of a correct
    # answer must not pay for it on a loaded machine
    torch.ones(2, requires_grad=True).sum().backward()
    deadline = time.monotonic() + float(job["time_limit"])
    namespace, errors = _run_cells(job["cells"], float(job["cell_timeout"]), deadline)
    report = {"cell_errors": errors, "cells": len(job["cells"]), "answers": {}}
    _write(work / "report.bin", report)
    for index, (question, run) in enumerate(zip(job["questions"], runs)):
        answer = namespace.get(question["answer"])
        if question["answer"] not in namespace:
            outcomes = [
                [
                    {
                        "status": "missing",
                        "error": f"`{question['answer']}` is not defined in the notebook",
                    }
                ]
                * len(cases)
                for cases in question["cases"]
            ]
        else:
            report["answers"][question["id"]] = str(getattr(answer, "__module__", ""))[:100]
            outcomes = [
                [outcome.to_plain() for outcome in row]
                for row in run_question(run, answer, question["cases"], float(question["timeout"]))
            ]
        _write(work / f"answers_{index}.bin", outcomes)
        _write(work / "report.bin", report)
    import resource

    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    report["cpu"] = sum(u.ru_utime + u.ru_stime for u in usage)  # for the instructor's timing
    _write(work / "report.bin", report)
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main(sys.argv[1], sys.argv[2]))
