"""Batch-grade submitted notebooks.

    python -m attention_course.grading SUBMISSION.ipynb... --questions ch03 --out DIR
    python -m attention_course.grading submissions/ --out DIR --manifest hw3.json --jobs 2
    python -m attention_course.grading --list
    python -m attention_course.grading gradescope --questions ch03 --out autograder.zip

Writes DIR/<submission>/results.json (Gradescope's format), DIR/<submission>/log.txt (what the
notebook printed) and DIR/gradebook.csv (one row per submission, one column per question).
"""

from __future__ import annotations

import argparse
import sys
import time

from .registry import get_question, import_errors, list_questions


def _gradescope(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attention_course.grading gradescope",
        description="Build a Gradescope autograder bundle (zip) for a question set.",
    )
    parser.add_argument("--questions", nargs="+", required=True, help="ids or prefixes")
    parser.add_argument("--out", default="autograder.zip", help="the zip (autograder.zip)")
    args = parser.parse_args(argv)
    from .gradescope import build_bundle

    ids = build_bundle(args.questions, args.out)
    print(f"wrote {args.out}: {len(ids)} question(s); upload it as the autograder")
    return 0


def _gradescope_run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m attention_course.grading gradescope-run")
    parser.add_argument("--root", default="/autograder")
    parser.add_argument("--manifest", required=True)
    args = parser.parse_args(argv)
    from .gradescope import run_autograder

    result = run_autograder(args.root, args.manifest)
    print(f"score {result.get('score')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gradescope"]:
        return _gradescope(argv[1:])
    if argv[:1] == ["gradescope-run"]:
        return _gradescope_run(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m attention_course.grading",
        description="Grade submitted notebooks; write results.json files and gradebook.csv.",
    )
    parser.add_argument("submissions", nargs="*", help="notebooks, or folders of notebooks")
    parser.add_argument("--out", default="grading-out", help="output folder (grading-out)")
    parser.add_argument(
        "--questions",
        nargs="+",
        help="question ids or chapter prefixes (e.g. ch03): the question set and its maxima",
    )
    parser.add_argument(
        "--manifest", help='assignment manifest, JSON {"questions": [ids or prefixes]}'
    )
    parser.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "none"),
        default="auto",
        help="bwrap: require bubblewrap; none: rlimits only; auto (default): bwrap if it works",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=1536, help="memory limit of one child (1536 MiB)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the test inputs (1)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to run one notebook's cells (120)"
    )
    parser.add_argument(
        "--cell-timeout", type=float, default=60.0, help="seconds for one cell (60)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at once (1)")
    parser.add_argument("--list", action="store_true", help="list the question ids and exit")
    args = parser.parse_args(argv)

    if args.list:
        for qid in list_questions():
            question = get_question(qid)
            print(f"{qid:45s} {question.max_score:g} points  {question.title}")
        for module, error in import_errors().items():
            print(f"could not import {module}: {error.strip().splitlines()[-1]}", file=sys.stderr)
        return 0
    if not args.submissions:
        parser.error("give at least one notebook or folder")

    from .batch import grade_submissions
    from .sandbox import Limits

    start = time.perf_counter()
    try:
        subs = grade_submissions(
            args.submissions,
            args.out,
            questions=args.questions,
            manifest=args.manifest,
            seed=args.seed,
            time_limit=args.timeout,
            cell_timeout=args.cell_timeout,
            jobs=args.jobs,
            limits=Limits(memory_mb=args.memory_mb),
            sandbox=args.sandbox,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"graded {len(subs)} submission(s) in {seconds:.1f} s; wrote {args.out}/gradebook.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
