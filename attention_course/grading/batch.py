"""Batch grading: many submitted notebooks -> per-submission ``results.json`` + ``gradebook.csv``.

For each submission the parent (this module) makes every test's inputs from a seeded generator
and keeps them; a fresh child process (``_child``) executes the student's notebook and calls
the answers on copies of the inputs, under time limits; the parent reads back plain data only
(``torch.load(weights_only=True)``) and judges it against the reference. So a submission that
patches numpy, torch or the grader changes only its own process, never the judgement.

Not a sandbox: the child runs with the instructor's user rights. Grade untrusted submissions
inside a container or a throwaway account.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import torch

from . import _codec
from .core import IN_BATCH_CHILD, Outcome, Question, Result, _fmt, grade_outcomes
from .generate import question_ids as notebook_question_ids
from .registry import get_question, list_questions

__all__ = ["Submission", "grade_notebook", "grade_submissions", "write_gradebook"]

MAX_RESULT_BYTES = 50_000_000  # refuse to read a child's result file larger than this


@dataclass
class Submission:
    """The grading of one submitted file."""

    name: str  # unique, file-system safe: the folder name under --out
    path: str  # the file as given
    results: dict[str, Result] = field(default_factory=dict)  # question id -> Result
    error: str = ""  # why the submission could not be graded at all ("" if it could)
    notes: list[str] = field(default_factory=list)  # cell errors, time-outs, warnings
    seconds: float = 0.0  # wall time to grade it

    @property
    def score(self) -> float:
        return float(sum(r.score for r in self.results.values()))

    @property
    def max_score(self) -> float:
        return float(sum(r.max_score for r in self.results.values()))


def _safe_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "submission"


def _resolve_questions(nb, wanted: list[str] | None) -> tuple[list[str], list[str]]:
    """(question ids to grade, notes). ``wanted`` holds ids or prefixes such as "ch03"."""
    known = list_questions()
    notes = []
    if wanted:
        ids = []
        for item in wanted:
            matched = [q for q in known if q == item or q.startswith(item.rstrip(".") + ".")]
            if not matched:
                notes.append(f"no question matches {item!r}")
            ids += [q for q in matched if q not in ids]
        return ids, notes
    meta = nb.metadata.get("attention_course", {}) if nb is not None else {}
    listed = meta.get("questions") if isinstance(meta, dict) else None
    ids = [q for q in listed if isinstance(q, str)] if isinstance(listed, list) else []
    if not ids and nb is not None:
        ids = notebook_question_ids(nb)
    unknown = [q for q in ids if q not in known]
    if unknown:
        notes.append(f"unknown question ids ignored: {', '.join(unknown)}")
    return [q for q in ids if q in known], notes


def _run_path(question: Question) -> str:
    run = question.run
    return f"{run.__module__}:{run.__qualname__}"


def _kill(process: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _read_outcomes(path: Path, cases: list[list]) -> list[list[Outcome]] | None:
    if not path.exists() or path.stat().st_size > MAX_RESULT_BYTES:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a forged file may warn about its pickle protocol
            raw = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - a corrupt or forged file
        return None
    if not isinstance(raw, list) or len(raw) != len(cases):
        return None
    outcomes = []
    for row, test_cases in zip(raw, cases):
        if not isinstance(row, list) or len(row) != len(test_cases):
            return None
        outcomes.append([Outcome.from_plain(item) for item in row])
    return outcomes


def grade_notebook(
    path: str | Path,
    *,
    name: str | None = None,
    questions: list[str] | None = None,
    seed: int = 1,
    time_limit: float = 120.0,
    cell_timeout: float = 60.0,
    keep_log: Path | None = None,
) -> Submission:
    """Grade one submitted notebook in a child process. Never raises for a bad submission."""
    path = Path(path)
    start = time.perf_counter()
    sub = Submission(name=name or _safe_name(path), path=str(path))
    try:
        nb = nbformat.read(path, as_version=4)
        cells = [c.source for c in nb.cells if c.cell_type == "code"]
    except Exception as exc:  # noqa: BLE001 - anything that is not a readable notebook
        nb = None
        sub.error = f"not a readable Jupyter notebook ({type(exc).__name__}: {str(exc)[:150]})"
    ids, notes = _resolve_questions(nb, questions)
    sub.notes += notes
    if sub.error:
        for qid in ids:
            sub.results[qid] = Result(qid, [], error=sub.error)
        sub.seconds = time.perf_counter() - start
        return sub
    if not ids:
        sub.error = "found no question to grade (no check(...) calls); pass --questions"
        sub.seconds = time.perf_counter() - start
        return sub

    plan = [(get_question(qid), get_question(qid).make_inputs(seed)) for qid in ids]
    job = {
        "cells": cells,
        "time_limit": float(time_limit),
        "cell_timeout": float(cell_timeout),
        "questions": [
            {
                "id": q.id,
                "answer": q.answer,
                "run": _run_path(q),
                "timeout": float(q.timeout),
                "cases": [[_codec.encode(inputs) for inputs in test] for test in cases],
            }
            for q, cases in plan
        ],
    }
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        work = Path(tmp)
        torch.save(job, work / "job.pt")
        env = dict(os.environ)
        env.update({IN_BATCH_CHILD: "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
        log_path = work / "log.txt"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "attention_course.grading._child", str(work)],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            # the child's own limits cover the cells; the answers get their per-call limits
            calls = sum(len(t) for _, cases in plan for t in cases)
            budget = time_limit + calls * max(q.timeout for q, _ in plan) + 30.0
            try:
                process.wait(timeout=budget)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill(process)  # also ends anything the notebook started in its session
        if timed_out:
            sub.notes.append(f"the notebook ran out of time ({budget:.0f} s) and was stopped")
        elif process.returncode != 0:
            sub.notes.append(f"the grading process ended with exit code {process.returncode}")
        report = _read_report(work / "notebook.json")
        for error in report.get("cell_errors", [])[:20]:
            if isinstance(error, dict):
                sub.notes.append(f"cell {error.get('cell')}: {str(error.get('error'))[:200]}")
        answers = report.get("answers", {})
        for index, (question, cases) in enumerate(plan):
            module = answers.get(question.id, "") if isinstance(answers, dict) else ""
            if isinstance(module, str) and module.startswith("attention_course"):
                sub.notes.append(
                    f"{question.id}: the answer is the course's own {module} implementation"
                )
            outcomes = _read_outcomes(work / f"answers_{index}.pt", cases)
            if outcomes is None:
                why = "the notebook timed out" if timed_out else "the notebook's process crashed"
                message = f"no answer could be collected ({why} before this question)"
                outcomes = [[Outcome("missing", error=message)] * len(t) for t in cases]
            sub.results[question.id] = grade_outcomes(question, cases, outcomes)
        if keep_log is not None:
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            keep_log.write_bytes(log_path.read_bytes()[-200_000:])
    sub.seconds = time.perf_counter() - start
    return sub


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text()[:1_000_000])
        return report if isinstance(report, dict) else {}
    except Exception:  # noqa: BLE001 - missing or forged
        return {}


def results_json(sub: Submission) -> dict:
    """Gradescope's results format for one submission."""
    tests = []
    for qid, result in sub.results.items():
        if result.error or not result.tests:
            question = get_question(qid)
            tests.append(
                {
                    "name": f"{qid}",
                    "score": 0.0,
                    "max_score": question.max_score,
                    "status": "failed",
                    "output": result.error or sub.error,
                    "visibility": "visible",
                }
            )
            continue
        for test in result.tests:
            tests.append(
                {
                    "name": f"{qid}: {test.name}",
                    "score": test.points,
                    "max_score": test.max_points,
                    "status": "passed" if test.passed else "failed",
                    "output": test.message,
                    "visibility": "visible",
                }
            )
    max_score = sum(t["max_score"] for t in tests)
    summary = [f"{sub.path}: {_fmt(sub.score)}/{_fmt(max_score)} points"]
    if sub.error:
        summary.append(f"Error: {sub.error}")
    summary += [f"Note: {note}" for note in sub.notes]
    return {
        "score": sub.score,
        "execution_time": round(sub.seconds, 2),
        "output": "\n".join(summary),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
        "extra_data": {
            "submission": sub.name,
            "file": sub.path,
            "max_score": max_score,
            "questions": {
                qid: {"score": r.score, "max_score": get_question(qid).max_score}
                for qid, r in sub.results.items()
            },
            "error": sub.error,
            "notes": sub.notes,
        },
    }


def write_gradebook(subs: list[Submission], path: Path) -> list[str]:
    """One row per submission, one column per question, a total; returns the question columns."""
    columns: list[str] = []  # in the order the notebooks ask the questions
    for sub in subs:
        columns += [qid for qid in sub.results if qid not in columns]
    maxima = {qid: get_question(qid).max_score for qid in columns}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["submission", "file", *columns, "total", "max_total", "seconds", "status", "notes"]
        )
        for sub in subs:
            scores = [_fmt(sub.results[q].score) if q in sub.results else "0" for q in columns]
            writer.writerow(
                [
                    sub.name,
                    sub.path,
                    *scores,
                    _fmt(sub.score),
                    _fmt(sum(maxima.values())),
                    f"{sub.seconds:.1f}",
                    f"error: {sub.error}" if sub.error else "ok",
                    " | ".join(sub.notes),
                ]
            )
    return columns


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            files.append(path)
    return files


def grade_submissions(
    paths: list[str],
    out: str | Path,
    *,
    questions: list[str] | None = None,
    seed: int = 1,
    time_limit: float = 120.0,
    cell_timeout: float = 60.0,
    jobs: int = 1,
    progress=print,
) -> list[Submission]:
    """Grade every notebook (folders are searched for *.ipynb); write the results and gradebook."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    list_questions()  # load the registry once, before the worker threads start
    files = _expand(paths)
    names: list[str] = []
    for file in files:
        base, name, n = _safe_name(file), _safe_name(file), 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)

    def one(item: tuple[Path, str]) -> Submission:
        file, name = item
        sub = grade_notebook(
            file,
            name=name,
            questions=questions,
            seed=seed,
            time_limit=time_limit,
            cell_timeout=cell_timeout,
            keep_log=out / name / "log.txt",
        )
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results_json(sub), indent=2) + "\n")
        if progress:
            status = f"error: {sub.error}" if sub.error else "ok"
            progress(
                f"{name}: {_fmt(sub.score)}/{_fmt(sub.max_score)} in {sub.seconds:.1f} s ({status})"
            )
        return sub

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        subs = list(pool.map(one, zip(files, names)))
    write_gradebook(subs, out / "gradebook.csv")
    return subs
