"""Questions, tests, results, and the in-notebook ``check`` / ``grade``.

A test of a question has three steps, and the split between them is what makes batch grading
tamper-proof:

1. ``Test.inputs(gen)`` makes a list of input cases from a seeded ``torch.Generator``
   (in the judging process);
2. ``Question.run(answer, inputs)`` calls the student's answer on one case (in a CHILD process
   during batch grading, in the notebook's own process for ``check``); what it returns crosses
   back as plain data (see ``_codec``);
3. ``Test.judge(case)`` compares the answer's output with the reference's (in the judging
   process) and raises ``Fail("a specific hint")`` when it is wrong.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _codec
from .hints import REQUIRES_GRAD_LEFT
from .judges import Fail, expect_unchanged

__all__ = [
    "Case",
    "Outcome",
    "Question",
    "Result",
    "Test",
    "TestResult",
    "call",
    "call_args",
    "call_grad",
    "grad_args",
    "check",
    "grade",
    "run_question",
]

NOT_IMPLEMENTED = "not implemented yet"
IN_BATCH_CHILD = "ATTENTION_COURSE_GRADING_CHILD"  # env var set in batch grading's child process


# --------------------------------------------------------------------------- defining questions


def call_args(*args, **kwargs) -> dict:
    """One input case for the default runner ``call``: ``answer(*args, **kwargs)``."""
    return {"args": list(args), "kwargs": dict(kwargs)}


def call(answer, inputs: dict):
    """The default ``Question.run``: call the answer with the case's positional and keyword args."""
    return answer(*inputs["args"], **inputs["kwargs"])


def grad_args(*args, wrt=None, **kwargs) -> dict:
    """An input case for ``call_grad``: like ``call_args``, plus ``wrt``, the positions (int) or
    keyword names (str) of the inputs whose gradient is checked (default: every floating-point
    tensor argument)."""
    case = call_args(*args, **kwargs)
    case["wrt"] = None if wrt is None else list(wrt)
    return case


def _cotangent(tensor: torch.Tensor, index: int) -> torch.Tensor:
    """A fixed random direction for a vector-Jacobian product (same for answer and reference)."""
    gen = torch.Generator().manual_seed(1000 + index)
    noise = torch.randn(tuple(tensor.shape), generator=gen, dtype=torch.float64)
    return noise.to(tensor.dtype)


def _float_tensors(value, found: list) -> list:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            found.append(value)
    elif isinstance(value, list | tuple):
        for item in value:
            _float_tensors(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _float_tensors(item, found)
    return found


def call_grad(answer, inputs: dict):
    """A ``Test.run`` that checks gradient flow: calls the answer on leaf copies (requires_grad)
    of the ``wrt`` inputs, back-propagates a fixed random direction from every floating-point
    output, and returns ``{"output": ..., "connected": bool, "grads": {name: grad or None}}``.
    Judge it with ``judges.expect_grads``."""
    args, kwargs = list(inputs["args"]), dict(inputs["kwargs"])
    wrt = inputs.get("wrt")
    if wrt is None:
        wrt = [i for i, a in enumerate(args) if torch.is_tensor(a) and a.is_floating_point()]
    leaves = {}
    for key in wrt:
        holder = args if isinstance(key, int) else kwargs
        holder[key] = holder[key].detach().clone().requires_grad_(True)
        leaves[str(key)] = holder[key]
    output = answer(*args, **kwargs)
    outs = [t for t in _float_tensors(output, []) if t.requires_grad]
    grads: dict = {name: None for name in leaves}
    if outs:
        cots = [_cotangent(t, i) for i, t in enumerate(outs)]
        found = torch.autograd.grad(outs, list(leaves.values()), cots, allow_unused=True)
        grads = dict(zip(leaves, found))
    return {"output": output, "connected": bool(outs), "grads": grads}


@dataclass
class Case:
    """What a judge sees for one input case (all plain data, owned by the judging process)."""

    inputs: Any  # what Test.inputs made for this case (never touched by the answer)
    output: Any  # what run(answer, inputs) returned (NumPy arrays stay NumPy, tensors plain)
    inputs_after: Any  # the answer's copy of the inputs after the call (to catch mutation)
    expected: Any  # what run(reference, inputs) returned

    @property
    def args(self) -> list:
        """Positional arguments of a ``call_args`` case."""
        return self.inputs["args"]

    @property
    def kwargs(self) -> dict:
        """Keyword arguments of a ``call_args`` case."""
        return self.inputs["kwargs"]


@dataclass(frozen=True)
class Test:
    """One graded test of a question: worth ``points`` when every input case passes."""

    __test__ = False  # not a pytest test class

    name: str  # shown to the student, e.g. "masked keys get exactly zero weight"
    inputs: Callable[[torch.Generator], list]  # gen -> list of input cases (plain data)
    judge: Callable[[Case], None]  # raises judges.Fail("hint") when the output is wrong
    points: float = 1.0  # what passing this test is worth
    run: Callable[[Any, Any], Any] | None = None  # overrides Question.run (e.g. call_grad)


@dataclass(frozen=True)
class Question:
    """A graded question. Define it in ``attention_course/grading/questions/chNN*.py`` and list it
    in that module's ``QUESTIONS``; see ``attention_course.grading`` for a worked example."""

    id: str  # stable forever, "chNN.name", e.g. "ch03.masked_softmax"
    answer: str  # the name the answer has in the notebook, e.g. "masked_softmax"
    reference: Any  # the correct answer; run(reference, inputs) gives Case.expected
    tests: Sequence[Test]  # each worth its points
    run: Callable[[Any, Any], Any] = call  # module-level function run(answer, inputs) -> output
    title: str = ""  # one line for listings
    arg_names: Sequence[str] = ()  # names of call_args positions, to describe a failing case
    # (regex searched in "ErrorType: message", hint) for errors the answer raises
    error_hints: Sequence[tuple[str, str]] = ()
    timeout: float = 2.0  # seconds allowed for one call of the answer
    # False: every case of every test also fails when the answer changed an input in place
    mutates_inputs: bool = False

    @property
    def max_score(self) -> float:
        return float(sum(test.points for test in self.tests))

    def runs(self) -> list[Callable]:
        """The run function of every test (the test's own, else the question's)."""
        return [test.run or self.run for test in self.tests]

    def make_inputs(self, seed: int = 0) -> list[list]:
        """Input cases for every test, from a generator seeded by (question id, seed, test)."""
        cases = []
        for index, test in enumerate(self.tests):
            key = zlib.crc32(f"{self.id}/{seed}/{index}".encode())
            cases.append(list(test.inputs(torch.Generator().manual_seed(key))))
        return cases


# --------------------------------------------------------------------------- results


@dataclass
class TestResult:
    """The outcome of one test."""

    name: str  # the test's name
    passed: bool  # every input case passed
    points: float  # points earned (all or nothing per test)
    max_points: float  # what the test is worth
    message: str = ""  # the hint on failure, "" on success


@dataclass
class Result:
    """The outcome of one question: ``score``, ``max_score``, ``passed`` and per-test ``tests``."""

    question_id: str
    tests: list[TestResult] = field(default_factory=list)
    error: str = ""  # set when the question could not be graded at all (e.g. unknown id)

    @property
    def score(self) -> float:
        return float(sum(t.points for t in self.tests))

    @property
    def max_score(self) -> float:
        return float(sum(t.max_points for t in self.tests))

    @property
    def passed(self) -> bool:
        """True when every test passed (and there was at least one)."""
        return bool(self.tests) and all(t.passed for t in self.tests) and not self.error

    @property
    def not_implemented(self) -> bool:
        return bool(self.tests) and all(t.message == NOT_IMPLEMENTED for t in self.tests)

    def report(self) -> str:
        """The text ``check`` prints: one line per test, then the score."""
        lines = [f"{self.question_id}"]
        if self.error:
            lines.append(f"  [FAIL] {self.error}")
        elif self.not_implemented:
            lines.append(
                f"  not implemented yet: replace `raise NotImplementedError(...)` "
                f"with your code ({len(self.tests)} tests waiting)"
            )
        else:
            for t in self.tests:
                if t.passed:
                    lines.append(f"  [pass] {t.name}")
                else:
                    lines.append(f"  [FAIL] {t.name}: {t.message}")
        lines.append(f"Score: {_fmt(self.score)}/{_fmt(self.max_score)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Result {self.question_id}: {_fmt(self.score)}/{_fmt(self.max_score)}>"

    def _ipython_display_(self) -> None:
        # check() has already printed the report; showing the result again would repeat it
        return None


def _fmt(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------- running an answer


class TimeLimitExceeded(BaseException):
    """Raised in a call that ran out of time (a BaseException: `except Exception` misses it)."""


@dataclass
class Outcome:
    """What happened when an answer ran on one case (plain data, safe to send between processes)."""

    status: str  # "ok", "error", "timeout", "not_implemented"
    output: Any = None  # encoded output when status == "ok"
    inputs_after: Any = None  # encoded inputs after the call
    error: str = ""  # "ErrorType: message" when status == "error"
    seconds: float = 0.0  # wall time of the call
    leaked: str = ""  # the first input the answer left with requires_grad switched on

    def to_plain(self) -> dict:
        return {
            "status": self.status,
            "output": self.output,
            "inputs_after": self.inputs_after,
            "error": self.error,
            "seconds": self.seconds,
            "leaked": self.leaked,
        }

    @classmethod
    def from_plain(cls, data) -> Outcome:
        if not isinstance(data, dict) or data.get("status") not in (
            "ok",
            "error",
            "timeout",
            "not_implemented",
            "missing",
        ):
            return cls("error", error="the answer's result could not be read")
        error, seconds, leaked = data.get("error", ""), data.get("seconds", 0.0), data.get("leaked")
        return cls(
            status=str(data["status"]),
            output=data.get("output"),
            inputs_after=data.get("inputs_after"),
            error=error[:500] if isinstance(error, str) else "an unreadable error",
            seconds=float(seconds) if type(seconds) in (int, float) else 0.0,
            leaked=leaked[:100] if isinstance(leaked, str) else "",
        )


@contextlib.contextmanager
def _alarm(seconds: float):
    """Raise TimeLimitExceeded in the main thread after ``seconds`` (Unix SIGALRM).

    In the batch grader's child the limit is on CPU seconds (SIGPROF), with a wall-clock
    backstop at 5x, so a loaded grading machine does not time out correct answers; the hard
    limits are enforced from outside the child anyway.
    """
    state = {"active": True}

    def handler(signum, frame):
        if state["active"]:
            raise TimeLimitExceeded(seconds)

    cpu = bool(os.environ.get(IN_BATCH_CHILD)) and hasattr(signal, "ITIMER_PROF")
    previous = signal.signal(signal.SIGALRM, handler)
    previous_prof = signal.signal(signal.SIGPROF, handler) if cpu else None
    # re-fire every 50 ms, so code that swallows the first exception with a bare except is hit again
    signal.setitimer(signal.ITIMER_REAL, seconds * (5 if cpu else 1), 0.05)
    if cpu:
        signal.setitimer(signal.ITIMER_PROF, seconds, 0.05)
    try:
        yield
    finally:
        state["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if cpu:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, previous_prof)


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _call_with_time_limit(fn: Callable[[], Any], seconds: float):
    """Run ``fn()`` with a time limit. SIGALRM where possible; elsewhere (Windows, threads) in a
    daemon thread that is abandoned (not killed) when it runs over."""
    if not seconds or seconds <= 0:
        return fn()
    if _can_alarm():
        with _alarm(seconds):
            return fn()
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeLimitExceeded(seconds)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _describe_error(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}".strip()
    except BaseException:  # noqa: BLE001 - an exception whose __str__ raises
        text = type(exc).__name__
    text = re.sub(r"\s+", " ", text)
    return text[:300]


def run_case(run: Callable, answer, encoded_inputs, timeout: float) -> Outcome:
    """Call ``run(answer, inputs)`` on a private copy of the inputs and capture what happened.

    Used by ``check`` (in the notebook) and by the batch grader's child process alike. Never
    raises (except KeyboardInterrupt from a user who stops the cell).
    """
    start = time.perf_counter()
    try:
        inputs = _codec.decode(encoded_inputs)  # a private copy: the judge keeps the original
        output = _call_with_time_limit(lambda: run(answer, inputs), timeout)
        status, error = "ok", ""
    except NotImplementedError:
        return Outcome("not_implemented", seconds=time.perf_counter() - start)
    except TimeLimitExceeded:
        return Outcome("timeout", seconds=time.perf_counter() - start)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the student's code may raise anything
        return Outcome("error", error=_describe_error(exc), seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    try:
        encoded_output = _codec.encode(output)
        encoded_after = _codec.encode(inputs)
        leaked = _leaked(inputs)
    except BaseException as exc:  # noqa: BLE001 - a hostile object in the output
        return Outcome("error", error=f"the returned value could not be read ({exc!r})"[:300])
    return Outcome(status, encoded_output, encoded_after, error, seconds, leaked)


def _leaked(inputs) -> str:
    """Name of the first input tensor left with requires_grad on ("" if none)."""
    if isinstance(inputs, dict) and "args" in inputs:
        named = [(str(i), a) for i, a in enumerate(inputs["args"])]
        named += list(inputs.get("kwargs", {}).items())
    elif isinstance(inputs, dict):
        named = list(inputs.items())
    else:
        named = [("inputs", inputs)]
    for name, value in named:
        if any(t.requires_grad for t in _float_tensors(value, [])):
            return str(name)
    return ""


MAX_TIMEOUTS = 2  # after this many time-outs in one question, the remaining calls are skipped


def run_question(run, answer, encoded_cases: list[list], timeout: float):
    """Run the answer on every case of every test; return ``outcomes[test][case]``.

    ``run`` is one function for every test, or a list with one per test (``Question.runs()``).

    A test stops at its first case that raises or times out (tests are all or nothing), and
    after ``MAX_TIMEOUTS`` time-outs nothing more is called, so an infinite loop costs a few
    seconds, not one time limit per case.
    """
    timeouts = 0
    outcomes: list[list[Outcome]] = []
    runs = run if isinstance(run, list | tuple) else [run] * len(encoded_cases)
    for run, test_cases in zip(runs, encoded_cases):
        row: list[Outcome] = []
        for inputs in test_cases:
            if timeouts >= MAX_TIMEOUTS:
                outcome = Outcome("timeout", error="not run: earlier calls timed out")
            else:
                outcome = run_case(run, answer, inputs, timeout)
                timeouts += outcome.status == "timeout"
            row.append(outcome)
            if outcome.status != "ok":
                row.extend([outcome] * (len(test_cases) - len(row)))
                break
        outcomes.append(row)
    return outcomes


# --------------------------------------------------------------------------- judging


def _shape_of(value) -> str | None:
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    return str(tuple(shape))


def describe_case(question: Question, inputs) -> str:
    """A short description of a case for failure messages: the shapes of the arguments."""
    if not (isinstance(inputs, dict) and "args" in inputs):
        return ""
    parts = []
    names = list(question.arg_names)
    for i, value in enumerate(inputs["args"]):
        name = names[i] if i < len(names) else f"arg{i}"
        shape = _shape_of(value)
        if shape is not None:
            parts.append(f"{name} {shape}")
        elif value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            parts.append(f"{name}={value}")
    for name, value in inputs["kwargs"].items():
        shape = _shape_of(value)
        parts.append(f"{name} {shape}" if shape is not None else f"{name}={value!r}")
    return ", ".join(parts)


def judge_test(question: Question, test: Test, cases: list, outcomes: list[Outcome], expected):
    """Judge every case of one test; return a TestResult (all or nothing)."""
    for inputs, outcome, exp in zip(cases, outcomes, expected):
        message = _judge_case(question, test, inputs, outcome, exp)
        if message:
            return TestResult(test.name, False, 0.0, float(test.points), message)
    return TestResult(test.name, True, float(test.points), float(test.points), "")


def _judge_case(question: Question, test: Test, inputs, outcome: Outcome, expected) -> str:
    where = describe_case(question, inputs)
    suffix = f" [case: {where}]" if where else ""
    if outcome.status == "not_implemented":
        return NOT_IMPLEMENTED
    if outcome.status == "timeout" and outcome.error:
        return f"{outcome.error} (after {question.timeout:g} s each)"
    if outcome.status == "timeout":
        return (
            f"timed out after {question.timeout:g} s (an infinite loop, or a Python loop over "
            f"every element?){suffix}"
        )
    if outcome.status == "missing":
        return outcome.error or f"`{question.answer}` is not defined in the notebook"
    if outcome.status == "error":
        hint = ""
        for pattern, text in question.error_hints:
            if re.search(pattern, outcome.error, flags=re.IGNORECASE):
                hint = f" Hint: {text}"
                break
        return f"raised {outcome.error}.{hint}{suffix}"
    case = Case(
        inputs=inputs,
        output=_codec.decode(outcome.output),
        inputs_after=_codec.decode(outcome.inputs_after),
        expected=expected,
    )
    try:
        test.judge(case)
        if not question.mutates_inputs:
            expect_unchanged(case, question.arg_names)
        if outcome.leaked:
            name = outcome.leaked
            if name.isdigit() and int(name) < len(question.arg_names):
                name = question.arg_names[int(name)]
            raise Fail(REQUIRES_GRAD_LEFT.format(name=name))
    except Fail as failure:
        return f"{failure}{suffix}"
    except Exception as exc:  # noqa: BLE001 - a judge tripping on an odd output is a failure
        return f"the output could not be checked ({_describe_error(exc)}){suffix}"
    return ""


def expected_outputs(question: Question, cases: list[list]) -> list[list]:
    """run(reference, inputs) for every case, in the judging process."""
    out = []
    for run, test_cases in zip(question.runs(), cases):
        row = []
        for inputs in test_cases:
            copy = _codec.decode(_codec.encode(inputs))
            row.append(_codec.decode(_codec.encode(run(question.reference, copy))))
        out.append(row)
    return out


def grade_outcomes(question: Question, cases, outcomes) -> Result:
    """Judge a question given every case's Outcome (``outcomes[test][case]``)."""
    expected = expected_outputs(question, cases)
    result = Result(question.id)
    for test, test_cases, test_outcomes, test_expected in zip(
        question.tests, cases, outcomes, expected
    ):
        result.tests.append(judge_test(question, test, test_cases, test_outcomes, test_expected))
    return result


def _error_result(question_id: str, message: str) -> Result:
    return Result(question_id, [], error=message)


def grade(question_id: str | Question, answer, *, seed: int = 0) -> Result:
    """Grade ``answer`` for ``question_id`` (or a Question) silently; return the Result.

    Never raises.
    """
    from .registry import get_question, list_questions

    if isinstance(question_id, Question):
        question = question_id
    else:
        try:
            question = get_question(question_id)
        except KeyError:
            known = ", ".join(list_questions()) or "none"
            return _error_result(
                str(question_id), f"unknown question id {question_id!r} (known: {known})"
            )
    try:
        cases = question.make_inputs(seed)
        encoded = [[_codec.encode(inputs) for inputs in test_cases] for test_cases in cases]
        outcomes = run_question(question.runs(), answer, encoded, question.timeout)
        return grade_outcomes(question, cases, outcomes)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - a bug in the grader must not crash a student's cell
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return _error_result(question.id, f"the grader itself failed ({detail}); tell the course")


def check(question_id: str | Question, answer, *, seed: int = 0) -> Result:
    """Grade ``answer`` and print one line per test (pass, or fail with a hint) and the score.

    Never raises. Returns the Result (``score``, ``max_score``, ``passed``, ``tests``).
    Inside the batch grader's child process it does nothing (the instructor's grader runs the
    tests itself) and returns an empty Result.
    """
    if os.environ.get(IN_BATCH_CHILD):
        return Result(getattr(question_id, "id", str(question_id)))
    result = grade(question_id, answer, seed=seed)
    print(result.report())
    return result
