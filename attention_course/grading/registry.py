"""Finds every question: each module in ``attention_course.grading.questions`` that defines
``QUESTIONS`` (a list of ``Question``) contributes its questions. Nobody edits a central list.

A module that fails to import is skipped (so one broken chapter cannot break another's checks)
and its error is kept in ``import_errors()``; the tests assert that there are none.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback

from .core import Question

__all__ = ["get_question", "import_errors", "list_questions", "question_modules"]

_QUESTIONS: dict[str, Question] = {}
_ERRORS: dict[str, str] = {}
_LOADED = False


def question_modules() -> list[str]:
    """Names of the modules in the questions package, e.g. ``['...questions.ch03']``."""
    from . import questions

    return sorted(
        f"{questions.__name__}.{info.name}"
        for info in pkgutil.iter_modules(questions.__path__)
        if not info.name.startswith("_")
    )


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    found: dict[str, Question] = {}
    for name in question_modules():
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - keep the other chapters working
            _ERRORS[name] = traceback.format_exc(limit=5)
            continue
        for question in getattr(module, "QUESTIONS", []):
            if not isinstance(question, Question):
                _ERRORS[name] = f"QUESTIONS holds a {type(question).__name__}, not a Question"
                continue
            if question.id in found:
                _ERRORS[name] = f"duplicate question id {question.id!r}"
                continue
            found[question.id] = question
    _QUESTIONS.update(found)
    _LOADED = True


def list_questions(prefix: str = "") -> list[str]:
    """Every question id, sorted (only those starting with ``prefix`` if given, e.g. "ch03")."""
    _load()
    return sorted(qid for qid in _QUESTIONS if qid.startswith(prefix))


def get_question(question_id: str) -> Question:
    """The Question with this id; KeyError if there is none."""
    _load()
    return _QUESTIONS[question_id]


def import_errors() -> dict[str, str]:
    """{module name: traceback} for question modules that failed to import."""
    _load()
    return dict(_ERRORS)
