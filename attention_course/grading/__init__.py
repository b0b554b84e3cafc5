"""Graded exercises: ``check`` for students, batch grading for instructors, and the questions.

For students, in an exercise notebook::

    from attention_course.grading import check
    check("ch03.masked_softmax", masked_softmax)   # one line per test, then the score

``check`` never raises: a stub that still raises ``NotImplementedError`` reports "not
implemented yet" and scores 0; any other error, a wrong shape, dtype, NaN, wrong values, a
mutated input or a time-out (2 s per call) fails that test with a hint. It returns a ``Result``
(``score``, ``max_score``, ``passed``, ``tests``); ``grade(...)`` does the same silently.
``list_questions()`` lists every question id.

For instructors (see book/for_instructors.md)::

    python -m attention_course.grading submissions/ --questions ch03 --out grading-out
    python -m attention_course.grading gradescope --questions ch03 --out autograder.zip
    python -m attention_course.grading.generate          # exercises/ from solutions/

Batch grading runs each notebook in a bubblewrap sandbox (``sandbox``) and treats what it
returns as hostile (``batch``). New questions are best written with the declarative kit
(``kit``: test builders, ``hints``, the mistake ``models``); ``tests/test_grading_kit.py`` is a
complete example. The lower-level recipe below still works.

How to define a question (``questions/ch03.py`` is the worked example)
-------------------------------------------------------------------

1. Create ``attention_course/grading/questions/chNN.py`` (or ``chNN_topic.py``). Any module in
   that package with a module-level ``QUESTIONS`` list is discovered; edit no other file.
2. Put the reference answer in the package (e.g. ``attention_course.attention``) and import it.
3. Write tests. A ``Test(name, inputs, judge, points=1)`` has:

   - ``inputs(gen) -> list of cases``: plain data made from the seeded ``torch.Generator``
     (tensors, NumPy arrays, numbers, strings, None, and lists/tuples/dicts of them). Make
     several shapes: batch and head dims, length 1, odd sizes. For a function answer, a case is
     ``call_args(*args, **kwargs)``;
   - ``judge(case) -> None``: raise ``Fail("specific hint")`` when wrong. ``case.output`` is
     what the answer returned, ``case.expected`` what the reference returned for the same
     inputs, ``case.inputs`` / ``case.args`` the inputs, ``case.inputs_after`` the answer's copy
     of the inputs after the call. Use the helpers in ``attention_course.grading.judges``:
     ``expect_tensor`` (type, shape, dtype), ``expect_close`` (values, with *mistake models*:
     ``(hint, thunk)`` pairs computing what a known wrong answer returns, so the hint can name the
     mistake), ``expect_sequence``, ``expect_unchanged`` (no in-place mutation). Check
     properties too (rows sum to 1, masked keys get exactly 0).

   A test scores its points only when every case passes.
4. Declare the question::

       MY_QUESTION = Question(
           id="ch03.masked_softmax",        # stable forever: "chNN.snake_case_name"
           answer="masked_softmax",         # the answer's name in the notebook
           reference=reference_masked_softmax,
           tests=(Test(...), ...),
           run=call,                        # optional: run(answer, inputs) -> output
           arg_names=("scores", "mask", "dim"),   # to describe a failing case
           error_hints=((r"regex on 'ErrorType: message'", "hint"),),
           timeout=2.0,                     # seconds per call of the answer
       )
       QUESTIONS = [MY_QUESTION]

   ``run`` defaults to ``call`` (``answer(*args, **kwargs)``). For a class answer, or anything
   else, write a MODULE-LEVEL function ``run(answer, inputs)`` that builds and calls it and
   returns plain data: e.g. instantiate ``answer(embed_dim, num_heads)``, load a state dict
   carried in ``inputs``, call ``forward`` under ``torch.no_grad()`` and return the tensors.
   In batch grading ``run`` executes in the child process next to the student's code; the
   inputs and the judging stay in the parent, so ``run`` must be importable by name and must
   not compute anything the judge trusts beyond what the answer returns.
5. Add the catalogue ``tests/test_grader_chNN.py``: every plausible wrong answer loses points
   and its failing test's message contains the hint you wrote for it; at least two
   differently written correct answers score full marks (``grade(id, answer).passed``).
6. In ``solutions/NN_name.ipynb``: define the answer between ``### BEGIN SOLUTION hint: ...``
   and ``### END SOLUTION`` and call ``check("chNN.id", answer)``; regenerate ``exercises/``.
"""

from .core import Case, Question, Result, Test, TestResult, call, call_args, check, grade
from .judges import Fail
from .registry import get_question, list_questions

__all__ = [
    "Case",
    "Fail",
    "Question",
    "Result",
    "Test",
    "TestResult",
    "call",
    "call_args",
    "check",
    "get_question",
    "grade",
    "list_questions",
]
