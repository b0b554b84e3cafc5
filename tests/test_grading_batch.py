"""Batch grading end to end: the CLI on a folder of sample submissions, honest and hostile.

Every submission runs in its own sandboxed child process; the tests check the gradebook, the
Gradescope-format results, the time limits, and that tampering in the child gains nothing.
The hostile submissions (one per attack class the grader was beaten with, and a few more of the
same classes) are in tests/test_grading_hostile.py; this file keeps the ordinary cases.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attention_course.grading import get_question
from attention_course.grading.__main__ import main
from attention_course.grading.batch import grade_submissions
from attention_course.grading.generate import question_ids

ROOT = Path(__file__).resolve().parents[1]
SOFTMAX, ATTENTION = "ch03.masked_softmax", "ch03.scaled_dot_product_attention"
MAX = {q: get_question(q).max_score for q in (SOFTMAX, ATTENTION)}

SETUP = "import torch\n\nfrom attention_course.grading import check"
GOOD_SOFTMAX = """
def masked_softmax(scores, mask=None, dim=-1):
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    top = torch.nan_to_num(scores.amax(dim, keepdim=True), neginf=0.0)
    e = torch.exp(scores - top)
    return e / e.sum(dim, keepdim=True).clamp(min=torch.finfo(e.dtype).tiny)
"""
FLIPPED_SOFTMAX = GOOD_SOFTMAX.replace("masked_fill(~mask", "masked_fill(mask")
LOOPING_SOFTMAX = "def masked_softmax(scores, mask=None, dim=-1):\n    while True:\n        pass\n"
ZERO_SOFTMAX = (
    "def masked_softmax(scores, mask=None, dim=-1):\n    return torch.zeros_like(scores)\n"
)
GOOD_ATTENTION = """
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5
    weights = masked_softmax(scores, attn_mask)
    return weights @ value, weights
"""
UNSCALED_ATTENTION = GOOD_ATTENTION.replace(" / query.shape[-1] ** 0.5", "")
CHECKS = f'check("{SOFTMAX}", masked_softmax)\ncheck("{ATTENTION}", scaled_dot_product_attention)'

TAMPER = '''
import os
import pickle

import numpy as np

import attention_course.grading as grading
import attention_course.grading.core as core
import attention_course.grading.judges as judges

torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
np.allclose = lambda *a, **k: True
np.array_equal = lambda *a, **k: True
judges.expect_close = judges.expect_tensor = lambda *a, **k: None
judges.matches = lambda *a, **k: True
core.judge_test = lambda q, t, *a: core.TestResult(t.name, True, t.points, t.points, "")
core.grade_outcomes = lambda *a, **k: None
grading.grade = grading.check = lambda *a, **k: "full marks"


class Liar(torch.Tensor):
    """A tensor that claims to equal anything."""

    def __eq__(self, other):
        return torch.ones((), dtype=torch.bool)

    def allclose(self, *args, **kwargs):
        return True


_zeros = ZERO_ANSWER


def masked_softmax(scores, mask=None, dim=-1):
    return _zeros(scores, mask, dim).as_subclass(Liar)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))


import pathlib

_write_bytes = pathlib.Path.write_bytes


def forging_write(self, data):
    if "answers_1" in str(self):  # the second question's results: a malicious pickle
        return _write_bytes(self, pickle.dumps(Evil()))
    return _write_bytes(self, data)


pathlib.Path.write_bytes = forging_write
'''


def _notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.strip("\n")) for c in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    out = tmp_path_factory.mktemp("out")
    marker = subs / "PWNED"
    zero_answer = "lambda scores, mask, dim: torch.zeros_like(scores)"
    _notebook(subs / "correct.ipynb", SETUP, GOOD_SOFTMAX, GOOD_ATTENTION, CHECKS)
    _notebook(subs / "flipped.ipynb", SETUP, FLIPPED_SOFTMAX, UNSCALED_ATTENTION, CHECKS)
    _notebook(
        subs / "loops_at_top.ipynb",
        SETUP,
        GOOD_SOFTMAX,
        GOOD_ATTENTION,
        CHECKS,
        "while True:\n    pass",
    )
    _notebook(subs / "loops_in_answer.ipynb", SETUP, LOOPING_SOFTMAX, GOOD_ATTENTION, CHECKS)
    _notebook(
        subs / "bad_import.ipynb",
        "import not_a_module_of_this_course",
        SETUP,
        GOOD_SOFTMAX,
        GOOD_ATTENTION,
        CHECKS,
    )
    _notebook(subs / "undefined.ipynb", SETUP, "1 / 0\n" + GOOD_SOFTMAX, GOOD_ATTENTION, CHECKS)
    _notebook(
        subs / "crashes.ipynb",
        SETUP,
        "import os\n\ndef masked_softmax(scores, mask=None, dim=-1):\n    os._exit(1)",
        GOOD_ATTENTION,
        CHECKS,
    )
    _notebook(subs / "zeros.ipynb", SETUP, ZERO_SOFTMAX, UNSCALED_ATTENTION, CHECKS)
    _notebook(
        subs / "zeros_tampering.ipynb",
        SETUP,
        TAMPER.replace("ZERO_ANSWER", zero_answer).replace("MARKER", repr(str(marker))),
        UNSCALED_ATTENTION,
        CHECKS,
    )
    _notebook(
        subs / "uses_reference.ipynb",
        SETUP,
        "from attention_course.attention import masked_softmax",
        GOOD_ATTENTION,
        CHECKS,
    )
    (subs / "broken.ipynb").write_text("{ this is not json")
    (subs / "not_a_notebook.ipynb").write_text(json.dumps({"cells": 5}))
    argv = [str(subs), "--out", str(out), "--jobs", "2", "--cell-timeout", "3"]
    argv += ["--questions", SOFTMAX, ATTENTION, "--timeout", "30"]
    assert main(argv) == 0
    with open(out / "gradebook.csv", newline="") as handle:
        rows = {row["submission"]: row for row in csv.DictReader(handle)}
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}
    return rows, results, marker


def _scores(row):
    return float(row[SOFTMAX]), float(row[ATTENTION])


def test_gradebook_has_a_row_per_submission_and_a_column_per_question(graded):
    rows, results, _ = graded
    assert len(rows) == 12 and set(rows) == set(results)
    header = list(next(iter(rows.values())).keys())
    assert header == [
        "submission",
        "file",
        SOFTMAX,
        ATTENTION,
        "total",
        "max_total",
        "seconds",
        "status",
        "notes",
    ]
    assert all(float(r["max_total"]) == sum(MAX.values()) for r in rows.values())


def test_a_correct_submission_scores_full_marks_quickly(graded):
    rows, results, _ = graded
    row = rows["correct"]
    assert _scores(row) == (MAX[SOFTMAX], MAX[ATTENTION]) and row["status"] == "ok"
    assert float(row["total"]) == sum(MAX.values()) and float(row["seconds"]) < 30
    assert results["correct"]["score"] == sum(MAX.values())


def test_wrong_answers_lose_points_with_hints_in_results_json(graded):
    rows, results, _ = graded
    assert 0 < float(rows["flipped"]["total"]) < sum(MAX.values())
    tests = results["flipped"]["tests"]
    outputs = " ".join(t["output"] for t in tests if t["status"] == "failed")
    assert "polarity is flipped" in outputs and "1/sqrt(E)" in outputs
    for test in tests:  # Gradescope's per-test fields
        assert set(test) >= {"name", "score", "max_score", "status", "output"}
        assert test["score"] in (0.0, test["max_score"])
        assert test["status"] == ("passed" if test["score"] == test["max_score"] else "failed")


def test_an_infinite_loop_in_a_cell_is_stopped_and_the_rest_graded(graded):
    rows, _, _ = graded
    row = rows["loops_at_top"]
    assert _scores(row) == (MAX[SOFTMAX], MAX[ATTENTION])
    assert "timed out after 3 s" in row["notes"] or "ran out of time" in row["notes"]


def test_an_infinite_loop_in_an_answer_times_out(graded):
    rows, results, _ = graded
    assert _scores(rows["loops_in_answer"]) == (0, 0)  # attention calls the looping softmax
    outputs = [t["output"] for t in results["loops_in_answer"]["tests"]]
    assert any("timed out" in o for o in outputs)
    assert float(rows["loops_in_answer"]["seconds"]) < 60


def test_an_import_error_is_noted_and_later_cells_still_count(graded):
    rows, _, _ = graded
    row = rows["bad_import"]
    assert _scores(row) == (MAX[SOFTMAX], MAX[ATTENTION])
    assert "ModuleNotFoundError" in row["notes"]


def test_an_answer_that_never_got_defined_is_reported(graded):
    rows, results, _ = graded
    assert rows["undefined"][SOFTMAX] == "not attempted"
    assert "ZeroDivisionError" in rows["undefined"]["notes"]
    outputs = [t["output"] for t in results["undefined"]["tests"]]
    assert any("`masked_softmax` is not defined in the notebook" in o for o in outputs)


def test_a_crashing_child_is_a_row_not_a_crash(graded):
    rows, results, _ = graded
    assert float(rows["crashes"]["total"]) == 0
    assert "exit code" in rows["crashes"]["notes"]
    assert any("crashed" in t["output"] for t in results["crashes"]["tests"])
    assert rows["correct"]["status"] == "ok"  # graded in the same batch all the same


@pytest.mark.parametrize("name", ["broken", "not_a_notebook"])
def test_a_file_that_is_not_a_notebook_gets_an_error_row(graded, name):
    rows, results, _ = graded
    assert rows[name]["status"].startswith("error: not a readable Jupyter notebook")
    assert float(rows[name]["total"]) == 0
    assert "not a readable Jupyter notebook" in results[name]["output"]


def test_tampering_in_the_child_gains_nothing(graded):
    rows, results, marker = graded
    honest, tampered = rows["zeros"], rows["zeros_tampering"]
    assert float(honest["total"]) < sum(MAX.values())
    assert float(tampered[SOFTMAX]) <= float(honest[SOFTMAX])
    assert tampered[ATTENTION] == "not attempted"  # its results file was a malicious pickle
    assert not marker.exists(), "the parent unpickled the child's malicious file"
    assert "answers file was refused" in tampered["notes"]


def test_an_answer_imported_from_the_course_package_is_flagged(graded):
    rows, _, _ = graded
    assert (
        "the answer is the course's own attention_course.attention.core"
        in (rows["uses_reference"]["notes"])
    )


def test_results_json_is_gradescope_shaped(graded):
    _, results, _ = graded
    for result in results.values():
        assert {"score", "execution_time", "output", "tests"} <= set(result)
        assert result["score"] == sum(t["score"] for t in result["tests"])


SETS = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("name", SETS)
def test_unmodified_exercises_score_zero_and_solutions_full_marks(tmp_path, name):
    exercise, solution = ROOT / "exercises" / name, ROOT / "solutions" / name
    questions = question_ids(nbformat.read(exercise, as_version=4))  # the assignment's set
    subs = grade_submissions(
        [str(exercise), str(solution)], tmp_path, questions=questions, jobs=2, progress=None
    )
    graded_exercise, graded_solution = subs
    for sub in subs:
        assert not sub.error and sub.results, (sub.path, sub.error)
    assert graded_exercise.score == 0 and not any(graded_exercise.attempted.values())
    assert all(
        t.message == "not implemented yet"
        for r in graded_exercise.results.values()
        for t in r.tests
    )
    assert graded_solution.score == graded_solution.max_score > 0, graded_solution.notes
    assert set(graded_solution.results) == set(graded_exercise.results)


def test_list_questions_on_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "attention_course.grading", "--list"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert SOFTMAX in out and ATTENTION in out


def test_the_question_set_is_required(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "--questions" in capsys.readouterr().err
