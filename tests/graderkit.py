"""Assertions shared by the graders' tests (tests/test_grader_chNN.py): a wrong answer must lose
points AND be told its mistake; a correct answer, however written, must get full marks."""

from __future__ import annotations

from attention_course.grading import grade


def assert_caught(question_id: str, answer, hint: str, seed: int = 0) -> None:
    """The answer loses points and one failing test's message contains ``hint``."""
    result = grade(question_id, answer, seed=seed)
    name = getattr(answer, "__name__", repr(answer))
    assert result.score < result.max_score, f"{name} scored full marks:\n{result.report()}"
    messages = [t.message for t in result.tests if not t.passed]
    assert any(hint.lower() in m.lower() for m in messages), (
        f"{name}: expected the hint {hint!r}; got:\n" + "\n".join(messages)
    )


def assert_full_marks(question_id: str, answer, seed: int = 0) -> None:
    """The answer passes every test."""
    result = grade(question_id, answer, seed=seed)
    assert result.passed and result.score == result.max_score > 0, result.report()
