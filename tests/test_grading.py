"""The grading framework: check/grade never raise, report per test, time out, and every
question module found in the package is well formed (its reference scores full marks)."""

from __future__ import annotations

import importlib
import json
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attention_course.attention import masked_softmax, scaled_dot_product_attention
from attention_course.grading import (
    Fail,
    Question,
    Result,
    Test,
    call_args,
    check,
    get_question,
    grade,
    list_questions,
)
from attention_course.grading import core as grading_core
from attention_course.grading._codec import Opaque, decode, encode
from attention_course.grading.judges import expect_close, expect_tensor, expect_unchanged
from attention_course.grading.registry import import_errors, question_modules

ROOT_DIR = Path(__file__).resolve().parents[1]

SOFTMAX = "ch03.masked_softmax"


# --------------------------------------------------------------------------- check and grade


def test_check_prints_one_line_per_test_and_the_score(capsys):
    result = check(SOFTMAX, masked_softmax)
    lines = capsys.readouterr().out.strip().splitlines()
    question = get_question(SOFTMAX)
    assert lines[0] == SOFTMAX
    assert len(lines) == len(question.tests) + 2
    assert all(line.startswith("  [pass] ") for line in lines[1:-1])
    assert lines[-1] == f"Score: {question.max_score:g}/{question.max_score:g}"
    assert isinstance(result, Result) and result.passed
    assert result.score == result.max_score == question.max_score
    assert [t.name for t in result.tests] == [t.name for t in question.tests]
    assert all(t.passed and t.message == "" for t in result.tests)


def test_not_implemented_scores_zero_in_one_line(capsys):
    def stub(scores, mask=None, dim=-1):
        raise NotImplementedError("fill masked scores with -inf")

    result = check(SOFTMAX, stub)
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Traceback" not in out
    assert result.score == 0 and not result.passed and result.not_implemented
    assert all(t.message == "not implemented yet" for t in result.tests)
    assert out.strip().splitlines()[-1].startswith("Score: 0/")


class _HostileError(Exception):
    def __str__(self):
        raise RuntimeError("no message")


def _raise_hostile(*args, **kwargs):
    raise _HostileError


class _Weird:
    def __eq__(self, other):  # claims to equal anything
        return True

    def __repr__(self):
        raise RuntimeError("no repr either")


def _gen():
    yield 1


@pytest.mark.parametrize(
    "answer",
    [
        None,
        42,
        "masked_softmax",
        lambda *a, **k: None,
        lambda *a, **k: "weights",
        lambda *a, **k: _Weird(),
        lambda *a, **k: _gen(),
        lambda *a, **k: [[0.5, 0.5]],
        lambda *a, **k: 1 / 0,
        lambda *a, **k: sys.exit(3),
        lambda *a, **k: {}["missing"],
        lambda *a, **k: torch.zeros(2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2),
        _raise_hostile,
    ],
    ids=[
        "none",
        "int",
        "str",
        "returns-none",
        "returns-str",
        "returns-object",
        "returns-generator",
        "returns-list",
        "zero-division",
        "sys-exit",
        "key-error",
        "huge-rank",
        "hostile-exception",
    ],
)
def test_check_never_raises_and_fails_with_a_message(answer, capsys):
    result = check(SOFTMAX, answer)
    out = capsys.readouterr().out
    assert result.score == 0 and not result.passed
    assert all(not t.passed and t.message for t in result.tests)
    assert "Traceback" not in out and "Score: 0/" in out


def test_errors_are_reported_with_their_type():
    result = grade(SOFTMAX, lambda *a, **k: 1 / 0)
    assert "raised ZeroDivisionError" in result.tests[0].message
    result = grade(SOFTMAX, lambda *a, **k: None)
    assert "should be a torch.Tensor, got NoneType" in result.tests[0].message


def test_unknown_question_is_an_error_not_an_exception(capsys):
    result = check("ch99.nothing", masked_softmax)
    out = capsys.readouterr().out
    assert "unknown question id 'ch99.nothing'" in out and SOFTMAX in out
    assert result.error and result.score == 0 and not result.passed


def test_a_result_does_not_repeat_itself_in_a_notebook():
    result = grade(SOFTMAX, masked_softmax)
    assert result._ipython_display_() is None  # check() already printed the report
    n = f"{result.max_score:g}"
    assert repr(result) == f"<Result {SOFTMAX}: {n}/{n}>"


def test_checks_are_fast():
    for qid, answer in [(SOFTMAX, masked_softmax), (SOFTMAX, None)]:
        start = time.perf_counter()
        grade(qid, answer)
        assert time.perf_counter() - start < 2.0  # about 0.01 s alone
    start = time.perf_counter()
    grade("ch03.scaled_dot_product_attention", scaled_dot_product_attention)
    assert time.perf_counter() - start < 2.0


def test_an_infinite_loop_times_out_and_stops_early():
    def loops(scores, mask=None, dim=-1):
        while True:
            pass

    start = time.perf_counter()
    result = grade(SOFTMAX, loops)
    seconds = time.perf_counter() - start
    assert result.score == 0
    assert "timed out after 2 s" in result.tests[0].message
    assert "earlier calls timed out" in result.tests[-1].message
    assert seconds < 2.0 * grading_core.MAX_TIMEOUTS + 3.0  # not one time limit per case


def test_time_limit_outside_the_main_thread_falls_back_to_a_thread():
    box = {}

    def worker():
        start = time.perf_counter()
        try:
            grading_core._call_with_time_limit(lambda: time.sleep(3), 0.3)
        except grading_core.TimeLimitExceeded:
            box["timed_out"] = time.perf_counter() - start

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert 0.2 < box["timed_out"] < 2.0
    assert grading_core._call_with_time_limit(lambda: 7, 0.3) == 7


def test_the_alarm_is_removed_after_a_call():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    grade(SOFTMAX, masked_softmax)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_inputs_reach_the_answer_as_private_copies():
    seen = []

    def keeps(scores, mask=None, dim=-1):
        seen.append(scores)
        return masked_softmax(scores, mask, dim)

    question = get_question(SOFTMAX)
    cases = question.make_inputs(0)
    grade(SOFTMAX, keeps)
    originals = [case["args"][0] for test in cases for case in test]
    assert seen and not any(any(s is o for o in originals) for s in seen)


def test_inputs_are_seeded_and_differ_between_seeds():
    question = get_question(SOFTMAX)
    a, b, c = question.make_inputs(0), question.make_inputs(0), question.make_inputs(1)
    assert torch.equal(a[1][0]["args"][0], b[1][0]["args"][0])
    assert not torch.equal(a[1][0]["args"][0], c[1][0]["args"][0])


def test_a_custom_question_with_a_class_answer_and_its_own_runner():
    question = Question(
        id="ch00.scaler",
        answer="Scaler",
        reference=_ReferenceScaler,
        run=_run_scaler,
        tests=(
            Test(
                "scales",
                lambda g: [{"factor": 2.0, "x": torch.randn(3, generator=g)}],
                _judge_scaler,
            ),
        ),
    )
    assert grade(question, _ReferenceScaler).passed

    class Wrong(_ReferenceScaler):
        def __call__(self, x):
            return x + self.factor

    result = grade(question, Wrong)
    assert not result.passed and "wrong values" in result.tests[0].message


class _ReferenceScaler:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x):
        return x * self.factor


def _run_scaler(answer, inputs):
    return answer(inputs["factor"])(inputs["x"])


def _judge_scaler(case):
    expect_close(case.output, case.expected, "scaled")


# --------------------------------------------------------------------------- judges and codec


def test_judges_name_the_problem():
    like = torch.zeros(2, 3)
    with pytest.raises(Fail, match="NumPy array"):
        expect_tensor(np.zeros((2, 3)), like)
    with pytest.raises(Fail, match="wrong order"):
        expect_tensor(torch.zeros(3, 2), like)
    with pytest.raises(Fail, match="dtype"):
        expect_tensor(torch.zeros(2, 3, dtype=torch.float64), like)
    with pytest.raises(Fail, match="contains NaN"):
        expect_close(torch.full((2, 3), float("nan")), like)
    with pytest.raises(Fail, match="the hint"):
        expect_close(torch.ones(2, 3), like, mistakes=[("the hint", lambda: torch.ones(2, 3))])
    with pytest.raises(Fail, match="largest difference 1"):
        expect_close(torch.ones(2, 3), like, mistakes=[("no", lambda: 1 / 0)])


def test_expect_unchanged_catches_in_place_changes():
    x = torch.randn(3)
    case = grading_core.Case(call_args(x, None), None, call_args(x + 1, None), None)
    with pytest.raises(Fail, match="changed its input `scores` in place"):
        expect_unchanged(case, ["scores", "mask"])
    same = grading_core.Case(call_args(x, None), None, call_args(x.clone(), None), None)
    expect_unchanged(same, ["scores", "mask"])


def test_codec_keeps_plain_data_and_drops_everything_else():
    class Sneaky(torch.Tensor):
        def __eq__(self, other):
            return True

    value = {
        "t": torch.ones(2).as_subclass(Sneaky),
        "a": np.arange(3.0),
        "nested": (1, 2.5, None, "s", [True]),
        "object": _Weird(),
        "strings": np.array(["a", "b"]),
    }
    out = decode(encode(value))
    assert type(out["t"]) is torch.Tensor and torch.equal(out["t"], torch.ones(2))
    assert isinstance(out["a"], np.ndarray) and out["a"].tolist() == [0.0, 1.0, 2.0]
    assert out["nested"] == (1, 2.5, None, "s", [True])
    assert isinstance(out["object"], Opaque) and out["object"].type_name == "_Weird"
    assert isinstance(out["strings"], Opaque)


# --------------------------------------------------------------------------- the question registry


def test_question_modules_import_without_errors():
    assert question_modules(), "no question modules found"
    assert import_errors() == {}


def test_question_ids_are_stable_readable_and_listed():
    ids = list_questions()
    assert {SOFTMAX, "ch03.scaled_dot_product_attention"} <= set(ids)
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert list_questions("ch03") == [q for q in ids if q.startswith("ch03")]


ALL_QUESTIONS = list_questions()


@pytest.mark.parametrize("qid", ALL_QUESTIONS)
def test_every_question_is_well_formed(qid):
    question = get_question(qid)
    assert re.fullmatch(r"ch\d\d[a-z]?\.[A-Za-z][A-Za-z0-9_]*", qid), qid
    assert question.answer.isidentifier()
    assert question.tests and question.max_score > 0
    assert len({t.name for t in question.tests}) == len(question.tests), "duplicate test names"
    # the runner must be importable by name: batch grading calls it in a child process
    run = question.run
    module = importlib.import_module(run.__module__)
    target = module
    for part in run.__qualname__.split("."):
        target = getattr(target, part)
    assert target is run, f"{qid}: run must be a module-level function"
    for test_cases in question.make_inputs(0):
        assert test_cases, f"{qid}: a test without input cases"


@pytest.mark.parametrize("qid", ALL_QUESTIONS)
def test_every_reference_scores_full_marks(qid):
    question = get_question(qid)
    for seed in (0, 1):
        result = grade(qid, question.reference, seed=seed)
        assert result.passed, result.report()


def test_the_time_limit_works_inside_a_jupyter_kernel():
    """ipykernel runs cells in the main thread, so SIGALRM stops an infinite loop there too."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from attention_course.grading import check\n\n\n"
            "def masked_softmax(scores, mask=None, dim=-1):\n    while True:\n        pass"
        ),
        nbformat.v4.new_code_cell(f"result = check({SOFTMAX!r}, masked_softmax)"),
        nbformat.v4.new_code_cell("print(result.score, result.max_score)"),
    ]
    nbclient.NotebookClient(nb, timeout=60).execute()
    report = nb.cells[1].outputs[0]["text"]
    assert "timed out after 2 s" in report and "Score: 0/10" in report
    assert nb.cells[2].outputs[0]["text"].strip() == "0.0 10.0"


def _solution_lines_and_stub_hints():
    """Code lines inside the solution blocks of solutions/*.ipynb, and their stub hints."""
    lines, stubs = [], []
    for path in sorted((ROOT_DIR / "solutions").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            inside = False
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            for line in source.splitlines():
                if "### BEGIN SOLUTION" in line:
                    inside, hint = True, re.search(r"hint:\s*(.*)", line)
                    if hint:
                        stubs.append((f"stub hint in {path.name}", hint.group(1)))
                elif "### END SOLUTION" in line:
                    inside = False
                elif inside and line.split("#")[0].strip():
                    lines.append(line.split("#")[0].strip())
    return lines, stubs


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).replace('"', "'")


def test_no_hint_contains_a_solution_line():
    """Hints are a first nudge that names the mistake: neither a grader hint (shared hints, the
    question modules' texts, error hints) nor a stub hint holds a line of a solution, or the
    right-hand side of one (lines of 12 characters or more, spaces and quotes ignored)."""
    lines, hints = _solution_lines_and_stub_hints()
    modules = [importlib.import_module("attention_course.grading.hints")]
    for name in question_modules():
        if name not in import_errors():  # a broken module fails its own test above
            modules.append(importlib.import_module(name))
    for module in modules:
        hints += [(f"{module.__name__}.{k}", v) for k, v in vars(module).items()
                  if k.isupper() and isinstance(v, str)]  # fmt: skip
        for question in getattr(module, "QUESTIONS", []):
            hints += [(f"{question.id} error hint", text) for _, text in question.error_hints]
    fragments = set()
    for line in lines:
        fragments.add(_squash(line))
        if re.match(r"^[\w, ]+=[^=]", line):
            fragments.add(_squash(line.split("=", 1)[1]))
    fragments = {f for f in fragments if len(f) >= 12}
    leaks = [(name, f) for name, text in hints for f in fragments if f in _squash(text)]
    assert not leaks, leaks
