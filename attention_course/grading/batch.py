"""Batch grading: many submitted notebooks -> per-submission ``results.json`` + ``gradebook.csv``.

The parent (this module) reads every submission into memory first, makes every test's inputs
from a seeded generator and keeps them; per submission a child process (``_child``) runs in a
sandbox (``sandbox``: bubblewrap namespaces, or loudly degraded to rlimits) with limits enforced
from OUTSIDE: the parent kills the whole sandbox at the wall-clock limit, rlimits cap memory,
processes, CPU seconds and file sizes. The child executes the notebook, calls the answers on
copies of the inputs and writes plain data into its scratch folder.

Everything the child writes is hostile: the parent opens only regular files (no symlinks, no
pipes), reads a bounded number of bytes, decodes them with ``_codec.unpack`` (shapes, dtypes and
element counts checked before a tensor exists), type-checks every field, and judges each
submission inside its own error boundary and under a watchdog, so one submission can only ever
cost its own row. The question set and every maximum come from ``questions`` (the command
line's ``--questions`` or ``--manifest``), never from a notebook. Outputs are written by the
parent only, atomically, into a folder the children cannot see, refusing symlinks.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import _codec
from .core import Outcome, Question, Result, _fmt, grade_outcomes
from .registry import get_question, list_questions
from .sandbox import PACKAGE_ROOT, Limits, Sandbox, detect

__all__ = [
    "Submission",
    "grade_submissions",
    "resolve_questions",
    "results_json",
    "write_gradebook",
]

MAX_NOTEBOOK_BYTES = 20_000_000  # a submission larger than this is not read
MAX_CELLS = 2_000
MAX_RESULT_BYTES = 64_000_000  # one answers file from a child
MAX_REPORT_BYTES = 1_000_000
LOG_KEEP = 64_000  # bytes of the child's output kept (head and tail)
NOT_ATTEMPTED = "not attempted"


@dataclass
class Submission:
    """The grading of one submitted file."""

    name: str  # unique, file-system safe: the folder name under --out
    path: str  # the file as given (printable form)
    results: dict[str, Result] = field(default_factory=dict)  # question id -> Result
    attempted: dict[str, bool] = field(default_factory=dict)  # question id -> answer defined
    maxima: dict[str, float] = field(default_factory=dict)  # from the question set, never a file
    error: str = ""  # why the submission could not be graded at all ("" if it could)
    notes: list[str] = field(default_factory=list)  # cell errors, time-outs, warnings
    seconds: float = 0.0  # wall time to grade it
    child_cpu: float | None = None  # CPU seconds the child reported (diagnostics only)
    log: bytes = b""

    @property
    def score(self) -> float:
        return float(sum(r.score for r in self.results.values()))

    @property
    def max_score(self) -> float:
        return float(sum(self.maxima.values()))


# --------------------------------------------------------------------------- names and questions


def printable(text: str | os.PathLike, limit: int = 300) -> str:
    """A file name or note made safe to show: undecodable bytes and control characters escaped."""
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else f"\\x{ord(ch):02x}" for ch in text)
    return text[:limit]


def submission_ids(files: list[Path]) -> list[str]:
    """One id per file, injective: the file's stem when it is plain ([A-Za-z0-9_-], unique in
    the batch), else a cleaned stem plus a hash of the exact path, so "alice .ipynb" can never
    take the id of "alice.ipynb", whatever the order."""
    stems = [os.fsencode(f.name).removesuffix(b".ipynb") for f in files]
    plain = [re.fullmatch(rb"[A-Za-z0-9][A-Za-z0-9_-]{0,80}", s) is not None for s in stems]
    counts: dict[bytes, int] = {}
    for stem, ok in zip(stems, plain):
        if ok:
            counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    ids = []
    for file, stem, ok in zip(files, stems, plain):
        if ok and counts[stem.lower()] == 1:
            ids.append(stem.decode())
            continue
        clean = re.sub(rb"[^A-Za-z0-9_-]+", b"_", stem).strip(b"_-")[:60].decode() or "submission"
        digest = hashlib.sha256(os.fsencode(os.path.abspath(file))).hexdigest()[:10]
        ids.append(f"{clean}-{digest}")
    assert len(set(i.lower() for i in ids)) == len(ids), "submission ids collide"
    return ids


def resolve_questions(wanted: list[str] | None, manifest: str | Path | None = None) -> list[str]:
    """Question ids from ``--questions`` (ids or chapter prefixes such as "ch03") and/or an
    assignment manifest (JSON ``{"questions": [...]}``). Raises ValueError when none match."""
    items = list(wanted or [])
    if manifest is not None:
        data = json.loads(Path(manifest).read_text(encoding="utf-8"))
        listed = data.get("questions") if isinstance(data, dict) else None
        if not isinstance(listed, list) or not all(isinstance(q, str) for q in listed):
            raise ValueError(f"{manifest}: expected {{'questions': [question ids]}}")
        items += listed
    if not items:
        raise ValueError("say which questions to grade: --questions ch03 (or --manifest FILE)")
    known, ids = list_questions(), []
    for item in items:
        matched = [q for q in known if q == item or q.startswith(item.rstrip(".") + ".")]
        if not matched:
            raise ValueError(f"no question matches {item!r} (see --list)")
        ids += [q for q in matched if q not in ids]
    return ids


# --------------------------------------------------------------------------- reading files


def read_regular(path: str | Path, limit: int, *, dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file, refusing symlinks, pipes, devices, folders and anything over
    ``limit`` bytes, without ever blocking on the open or the read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if info.st_size > limit:
            raise OSError(f"larger than {limit} bytes")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise OSError(f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_notebook(data: bytes) -> tuple[list[str], list[str]]:
    """(code cell sources, notes). Raises ValueError when it is not a notebook at all; a cell
    that is malformed is skipped with a note (it cannot crash the batch)."""
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("no list of cells")
    cells, notes = [], []
    for index, cell in enumerate(nb["cells"][:MAX_CELLS]):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source")
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            source = "".join(source)
        if not isinstance(source, str):
            notes.append(f"cell {index}: its source is not text; skipped")
            continue
        cells.append(source)
    if len(nb["cells"]) > MAX_CELLS:
        notes.append(f"only the first {MAX_CELLS} cells were run")
    return cells, notes


# --------------------------------------------------------------------------- one submission


class _Drain(threading.Thread):
    """Reads a child's output pipe to the end, keeping only its head and tail."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.head, self.tail, self.total = stream, b"", b"", 0

    def run(self):
        with contextlib.suppress(Exception):
            while chunk := self.stream.read(65536):
                self.total += len(chunk)
                if len(self.head) < LOG_KEEP // 2:
                    self.head += chunk[: LOG_KEEP // 2 - len(self.head)]
                self.tail = (self.tail + chunk)[-LOG_KEEP // 2 :]

    def text(self) -> bytes:
        if self.total <= LOG_KEEP // 2:
            return self.head
        return self.head + f"\n[... {self.total} bytes in all ...]\n".encode() + self.tail


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, OSError):
        process.kill()
    with contextlib.suppress(Exception):
        process.wait(timeout=30)


def _kill_uid(uid: int | None) -> int:
    """Kill every process of a dedicated child uid (degraded path as root); how many."""
    if uid is None or not os.path.isdir("/proc"):
        return 0
    killed = 0
    for _ in range(3):
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status", encoding="utf-8") as handle:
                    line = next(x for x in handle if x.startswith("Uid:"))
                if int(line.split()[1]) == uid:
                    os.kill(int(entry), signal.SIGKILL)
                    found += 1
            except (OSError, StopIteration, ValueError):
                continue
        killed += found
        if not found:
            break
        time.sleep(0.05)
    return killed


_LIVE: set[int] = set()  # pids of the children this process is running right now
_LIVE_LOCK = threading.RLock()


def _become_subreaper() -> bool:
    """Linux: orphaned descendants of our children become OUR children (so they can be found)."""
    try:
        import ctypes

        return (
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
        )  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _kill_orphans() -> int:
    """Kill every child of this process that is not a live grading child: processes a
    submission started that outlived it (reparented here by the subreaper flag)."""
    if not os.path.isdir("/proc"):
        return 0
    with _LIVE_LOCK:  # no child is spawned while we sweep
        return _sweep(os.getpid())


def _sweep(me: int) -> int:
    killed = 0
    for _ in range(5):
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me and int(entry) not in _LIVE:
                with contextlib.suppress(OSError):
                    os.kill(int(entry), signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(int(entry), 0)
                    found += 1
        killed += found
        if not found:
            break
        time.sleep(0.05)
    return killed


def _read_outcomes(data: bytes, cases: list[list]) -> list[list[Outcome]] | None:
    raw = _codec.unpack(data, _codec.Limits(max_bytes=MAX_RESULT_BYTES))
    if not isinstance(raw, list) or len(raw) != len(cases):
        return None
    outcomes = []
    for row, test_cases in zip(raw, cases):
        if not isinstance(row, list) or len(row) != len(test_cases):
            return None
        outcomes.append([Outcome.from_plain(item) for item in row])
    return outcomes


@dataclass
class _Config:
    questions: list[Question]
    seed: int
    time_limit: float
    cell_timeout: float
    limits: Limits
    sandbox: Sandbox
    work_root: str


def _run_child(sub: Submission, cells: list[str], plan, cfg: _Config, slot: int) -> dict:
    """Run the child in its sandbox; return {"report": dict, "answers": {index: bytes}}."""
    work = Path(cfg.work_root) / secrets.token_hex(8)
    work.mkdir(mode=0o711)
    scratch = work / "scratch"
    scratch.mkdir(mode=0o700)
    uid = cfg.sandbox.child_uid(slot)
    if uid is not None:
        os.chown(scratch, uid, uid)
    job = {
        "cells": cells,
        "time_limit": float(cfg.time_limit),
        "cell_timeout": float(cfg.cell_timeout),
        "questions": [
            {
                "id": q.id,
                "answer": q.answer,
                "runs": [f"{r.__module__}:{r.__qualname__}" for r in q.runs()],
                "timeout": float(q.timeout),
                "cases": [[_codec.encode(inputs) for inputs in test] for test in cases],
            }
            for q, cases in plan
        ],
    }
    job_path = work / "job.bin"
    job_path.write_bytes(_codec.pack(job))
    job_path.chmod(0o644)
    calls = sum(len(t) for _, cases in plan for t in cases)
    answer_budget = min(calls * max(q.timeout for q, _ in plan), 4 * cfg.time_limit)
    wall = cfg.time_limit + answer_budget + 20.0
    limits = Limits(**{**cfg.limits.__dict__, "cpu_seconds": int(wall) + 5})
    boot = {"rlimits": limits.rlimits(), "root": PACKAGE_ROOT, "uid": uid}
    argv = cfg.sandbox.command(boot, job=str(job_path), scratch=str(scratch))
    try:
        with _LIVE_LOCK:  # no orphan sweep between the spawn and the registration
            process = subprocess.Popen(
                argv,
                cwd=str(scratch) if cfg.sandbox.kind != "bwrap" else "/",
                env=cfg.sandbox.environment(str(scratch)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
            _LIVE.add(process.pid)
        drain = _Drain(process.stdout)
        drain.start()
        try:
            process.wait(timeout=wall)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(process)  # the bwrap process: its PID namespace dies with it
        with _LIVE_LOCK:
            _LIVE.discard(process.pid)
        stray = 0
        if cfg.sandbox.kind != "bwrap":  # no PID namespace: find what escaped the group
            stray = _kill_uid(uid) + _kill_orphans()
        drain.join(timeout=5)
        with contextlib.suppress(OSError):
            process.stdout.close()
        sub.log = drain.text()
        if timed_out:
            sub.notes.append(f"the notebook ran out of time ({wall:.0f} s) and was stopped")
        elif process.returncode != 0:
            sub.notes.append(f"the grading process ended with exit code {process.returncode}")
        if stray:
            sub.notes.append(f"{stray} stray process(es) of the submission were killed")
        found = {"report": {}, "answers": {}, "timed_out": timed_out}
        try:
            report = _codec.unpack(read_regular(scratch / "report.bin", MAX_REPORT_BYTES))
            found["report"] = report if isinstance(report, dict) else {}
        except (OSError, ValueError) as exc:
            found["report"] = {"unreadable": str(exc)[:100]}
        for index in range(len(plan)):
            try:
                found["answers"][index] = read_regular(
                    scratch / f"answers_{index}.bin", MAX_RESULT_BYTES
                )
            except FileNotFoundError:
                pass
            except OSError as exc:
                why = printable(str(exc.strerror or exc), 80)
                sub.notes.append(
                    f"{plan[index][0].id}: the child's answers file was refused ({why})"
                )
        return found
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _grade_one(data: bytes | None, read_error: str, sub: Submission, cfg: _Config, slot: int):
    """Grade one submission in place (``sub``); the caller's boundary catches anything else."""
    start = time.perf_counter()
    plan = [(q, q.make_inputs(cfg.seed)) for q in cfg.questions]
    sub.maxima = {q.id: q.max_score for q in cfg.questions}
    sub.attempted = {q.id: False for q in cfg.questions}
    try:
        if data is None:
            raise ValueError(read_error)
        cells, notes = parse_notebook(data)
        sub.notes += notes
    except ValueError as exc:
        sub.error = f"not a readable Jupyter notebook ({printable(str(exc), 150)})"
        sub.seconds = time.perf_counter() - start
        return
    found = _run_child(sub, cells, plan, cfg, slot)
    report = found["report"]
    cpu = report.get("cpu")
    sub.child_cpu = float(cpu) if type(cpu) in (int, float) and 0 <= cpu < 1e6 else None
    errors = report.get("cell_errors", [])
    for error in errors[:20] if isinstance(errors, list) else []:
        if isinstance(error, dict):
            cell, text = error.get("cell"), error.get("error")
            sub.notes.append(f"cell {printable(str(cell), 10)}: {printable(str(text), 200)}")
    answers = report.get("answers", {})
    answers = answers if isinstance(answers, dict) else {}
    for index, (question, cases) in enumerate(plan):
        module = answers.get(question.id, "")
        if isinstance(module, str) and module.startswith("attention_course"):
            sub.notes.append(
                f"{question.id}: the answer is the course's own {printable(module, 100)} "
                f"implementation"
            )
        outcomes = None
        if index in found["answers"]:
            try:
                outcomes = _read_outcomes(found["answers"][index], cases)
            except (ValueError, RecursionError) as exc:
                sub.notes.append(f"{question.id}: the child's answers file was refused ({exc})")
        if outcomes is None:
            why = (
                "the notebook timed out" if found["timed_out"] else "the notebook's process crashed"
            )
            message = f"no answer could be collected ({why} before this question)"
            outcomes = [[Outcome("missing", error=message)] * len(t) for t in cases]
        else:
            sub.attempted[question.id] = not all(
                o.status == "missing" or o.status == "not_implemented"
                for row in outcomes
                for o in row
            )
        sub.results[question.id] = grade_outcomes(question, cases, outcomes)
    sub.seconds = time.perf_counter() - start


# --------------------------------------------------------------------------- outputs


def _cell(value) -> str:
    """A CSV cell that no spreadsheet will run as a formula."""
    text = printable(str(value), 2000)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r", "|") else text


def _open_dir(name: str, parent_fd: int | None) -> int:
    """Open (creating if needed) a real folder, never through a symlink: a symlink, file or
    anything else in its place is moved aside first (named ``<name>.refused-<random>``)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(3):
        try:
            return os.open(name, flags, dir_fd=parent_fd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        except OSError:
            if parent_fd is None:
                raise
            aside = f"{name}.refused-{secrets.token_hex(4)}"
            os.rename(name, aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    raise OSError(f"could not create the folder {name!r}")


def _atomic_write(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``name`` in the folder ``dir_fd`` atomically (temp file + rename); whatever was
    there (a symlink, a folder, a pipe) is replaced or moved aside, never followed."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:  # e.g. a folder in the way
        aside = f"{name}.refused-{secrets.token_hex(4)}"
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def results_json(sub: Submission) -> dict:
    """Gradescope's results format for one submission."""
    tests = []
    for qid, maximum in sub.maxima.items():
        result = sub.results.get(qid)
        if result is None or result.error or not result.tests:
            output = (result.error if result else "") or sub.error or NOT_ATTEMPTED
            tests.append({"name": qid, "score": 0.0, "max_score": maximum, "status": "failed",
                          "output": output, "visibility": "visible"})  # fmt: skip
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
    summary = [f"{sub.path}: {_fmt(sub.score)}/{_fmt(sub.max_score)} points"]
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
            "max_score": sub.max_score,
            "questions": {
                qid: {
                    "score": sub.results[qid].score if qid in sub.results else 0.0,
                    "max_score": maximum,
                    "attempted": sub.attempted.get(qid, False),
                }
                for qid, maximum in sub.maxima.items()
            },
            "error": sub.error,
            "notes": sub.notes,
        },
    }


def gradebook_csv(subs: list[Submission], questions: list[Question]) -> bytes:
    """One row per submission, one column per question (score, or "not attempted")."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    ids = [q.id for q in questions]
    max_total = sum(q.max_score for q in questions)
    writer.writerow(["submission", "file", *ids, "total", "max_total", "seconds", "status",
                     "notes"])  # fmt: skip
    for sub in subs:
        scores = []
        for qid in ids:
            if sub.attempted.get(qid) and qid in sub.results:
                scores.append(_fmt(sub.results[qid].score))
            else:
                scores.append(NOT_ATTEMPTED)
        status = f"error: {sub.error}" if sub.error else "ok"
        writer.writerow([_cell(sub.name), _cell(sub.path), *scores, _fmt(sub.score),
                         _fmt(max_total), f"{sub.seconds:.1f}", _cell(status),
                         _cell(" | ".join(sub.notes))])  # fmt: skip
    return buffer.getvalue().encode("utf-8")


def write_gradebook(subs: list[Submission], out: str | Path, questions: list[Question]) -> None:
    """Write ``out/gradebook.csv`` atomically (refusing symlinks)."""
    fd = _open_dir(str(out), None)
    try:
        _atomic_write(fd, "gradebook.csv", gradebook_csv(subs, questions))
    finally:
        os.close(fd)


def _write_submission(sub: Submission, out_fd: int) -> None:
    fd = _open_dir(sub.name, out_fd)
    try:
        _atomic_write(fd, "results.json", (json.dumps(results_json(sub), indent=2) + "\n").encode())
        _atomic_write(fd, "log.txt", sub.log)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the batch


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir() and not path.is_symlink():
            found = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            files += found
        else:
            files.append(path)
    return files


def grade_submissions(
    paths: list[str],
    out: str | Path,
    *,
    questions: list[str] | None = None,
    manifest: str | Path | None = None,
    seed: int = 1,
    time_limit: float = 120.0,
    cell_timeout: float = 60.0,
    jobs: int = 1,
    limits: Limits | None = None,
    sandbox: str = "auto",
    progress=print,
) -> list[Submission]:
    """Grade every notebook (folders are searched for *.ipynb); write the results and gradebook.

    ``questions`` (ids or prefixes) and/or ``manifest`` give the question set; ``sandbox``:
    "auto", "bwrap" (required) or "none" (degraded). Raises ValueError for a bad question set or
    an out folder that is a symlink; never raises because of a submission.
    """
    question_list = [get_question(q) for q in resolve_questions(questions, manifest)]
    out = Path(out)
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symlink; give a real folder")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    out_fd = _open_dir(str(out), None)
    files = _expand(paths)
    names = submission_ids(files)
    box = detect(sandbox)
    box.hidden = sorted({str(out.resolve())} | {str(f.parent.resolve()) for f in files})
    if box.kind != "bwrap":
        _become_subreaper()
        if progress:
            progress(f"WARNING: no sandbox ({box.reason}); see book/for_instructors.md")
    # read everything first: a child can never change a classmate's input afterwards
    contents: list[tuple[bytes | None, str]] = []
    for file in files:
        try:
            contents.append((read_regular(file, MAX_NOTEBOOK_BYTES), ""))
        except OSError as exc:
            contents.append((None, f"{printable(str(exc.strerror or exc), 100)}"))
    torch.set_num_threads(1)
    work_root = tempfile.mkdtemp(prefix="grading-")
    os.chmod(work_root, 0o711)
    cfg = _Config(question_list, seed, time_limit, cell_timeout, limits or Limits(), box,
                  work_root)  # fmt: skip
    subs = [Submission(name=n, path=printable(f)) for f, n in zip(files, names)]
    for sub in subs:
        sub.maxima = {q.id: q.max_score for q in question_list}
    slots = threading.BoundedSemaphore(max(1, jobs))
    free = list(range(max(1, jobs)))
    lock = threading.Lock()

    def worker(index: int) -> None:
        with slots:
            with lock:
                slot = free.pop()
            try:
                _grade_one(*contents[index], subs[index], cfg, slot)
            except BaseException as exc:  # noqa: BLE001 - one submission costs one row only
                subs[index].error = f"the grader failed on this submission ({type(exc).__name__})"
                subs[index].notes.append(printable(str(exc), 200))
            finally:
                with lock:
                    free.append(slot)

    calls = sum(len(t) for q in question_list for t in q.make_inputs(seed))
    watchdog = 2 * time_limit + 5 * calls * max(q.timeout for q in question_list) + 120
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(subs))]
    try:
        for thread in threads:
            thread.start()
        start = time.monotonic()
        for index, thread in enumerate(threads):
            # each submission waits at most its own budget after the previous ones
            thread.join(
                timeout=max(
                    1.0, watchdog * (index // max(1, jobs) + 1) - (time.monotonic() - start)
                )
            )
            sub = subs[index]
            if thread.is_alive():
                sub.error = f"the grader's watchdog stopped waiting after {watchdog:.0f} s"
            try:
                _write_submission(sub, out_fd)
            except OSError as exc:
                sub.notes.append(f"could not write its results ({printable(str(exc), 100)})")
            if progress:
                status = f"error: {sub.error}" if sub.error else "ok"
                progress(f"{sub.name}: {_fmt(sub.score)}/{_fmt(sub.max_score)} in "
                         f"{sub.seconds:.1f} s ({status})")  # fmt: skip
        _atomic_write(out_fd, "gradebook.csv", gradebook_csv(subs, question_list))
    finally:
        os.close(out_fd)
        shutil.rmtree(work_root, ignore_errors=True)
    return subs
