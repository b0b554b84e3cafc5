"""exercises/ is generated from solutions/: up to date, paired, and leaking no solution."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from attention_course.grading.generate import (
    BEGIN,
    END,
    GenerateError,
    is_up_to_date,
    main,
    make_exercise,
    render_source,
)

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def test_there_is_at_least_one_exercise_set():
    assert SOLUTIONS, "no solutions/*.ipynb"


def test_every_exercise_has_a_solution_twin_and_vice_versa():
    assert [p.name for p in SOLUTIONS] == [p.name for p in EXERCISES]


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_exercises_are_up_to_date(solution):
    assert is_up_to_date(solution, ROOT / "exercises"), (
        f"exercises/{solution.name} is stale: run python -m attention_course.grading.generate"
    )


def _solution_lines(nb) -> tuple[set[str], set[str]]:
    """(lines inside solution blocks or solution-only cells, lines outside them)."""
    inside, outside = set(), set()
    for cell in nb.cells:
        only = "solution-only" in cell.get("metadata", {}).get("tags", [])
        in_block = False
        for line in cell.source.split("\n"):
            if BEGIN.match(line):
                in_block = True
            elif END.match(line):
                in_block = False
            elif line.strip():
                (inside if (in_block or only) else outside).add(line.strip())
    return inside, outside


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_no_marker_or_solution_text_leaks(solution):
    source = nbformat.read(solution, as_version=4)
    exercise = nbformat.read(ROOT / "exercises" / solution.name, as_version=4)
    inside, outside = _solution_lines(source)
    secret = {line for line in inside - outside if len(line) > 3 and not line.startswith("#")}
    assert any(BEGIN.match(line) for c in source.cells for line in c.source.split("\n"))
    for cell in exercise.cells:
        assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
        assert "solution-only" not in cell.get("metadata", {}).get("tags", [])
        for line in cell.source.split("\n"):
            assert line.strip() not in secret, f"solution text leaks: {line.strip()!r}"
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_every_stub_raises_not_implemented(solution):
    exercise = nbformat.read(ROOT / "exercises" / solution.name, as_version=4)
    source = nbformat.read(solution, as_version=4)
    blocks = sum(1 for c in source.cells for line in c.source.split("\n") if BEGIN.match(line))
    stubs = sum(c.source.count("raise NotImplementedError(") for c in exercise.cells)
    assert stubs >= blocks


def test_render_replaces_blocks_at_their_indentation():
    source = "\n".join(
        [
            "def f(x):",
            '    """Doc."""',
            '    ### BEGIN SOLUTION hint: "Double it."',
            "    y = 2 * x",
            "    return y",
            "    ### END SOLUTION",
            "",
            "### BEGIN SOLUTION",
            "z = 1",
            "### END SOLUTION",
            "print('kept')",
        ]
    )
    assert render_source(source) == "\n".join(
        [
            "def f(x):",
            '    """Doc."""',
            '    raise NotImplementedError("Double it.")',
            "",
            'raise NotImplementedError("Write your solution here")',
            "print('kept')",
        ]
    )


def test_render_wraps_a_long_hint_as_ruff_formats_it():
    hint = "word " * 30
    out = render_source(f"    ### BEGIN SOLUTION hint: {hint}\n    x = 1\n    ### END SOLUTION")
    assert out.split("\n") == [
        "    raise NotImplementedError(",
        f'        "{hint.strip()}"',
        "    )",
    ]


def test_render_in_markdown_gives_the_hint_in_italics():
    out = render_source(
        "Answer:\n### BEGIN SOLUTION hint: Explain why.\nBecause.\n### END SOLUTION", code=False
    )
    assert out == "Answer:\n*Explain why.*"


@pytest.mark.parametrize(
    "source",
    [
        "### BEGIN SOLUTION\nx = 1",
        "x = 1\n### END SOLUTION",
        "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
    ],
)
def test_unbalanced_markers_are_an_error(source):
    with pytest.raises(GenerateError):
        render_source(source)


def test_make_exercise_drops_solution_only_cells_and_outputs():
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("### BEGIN SOLUTION hint: h\nx = 1\n### END SOLUTION")
    code.outputs = [nbformat.v4.new_output("stream", text="1")]
    code.execution_count = 3
    only = nbformat.v4.new_code_cell("assert x == 1")
    only.metadata["tags"] = ["solution-only"]
    nb.cells = [code, only, nbformat.v4.new_code_cell('check("ch03.masked_softmax", f)')]
    out = make_exercise(nb, "00_test.ipynb")
    assert len(out.cells) == 2 and out.cells[0].source == 'raise NotImplementedError("h")'
    assert out.cells[0].outputs == [] and out.cells[0].execution_count is None
    assert out.metadata["attention_course"]["questions"] == ["ch03.masked_softmax"]
    assert len(nb.cells) == 3 and nb.cells[0].outputs  # the source notebook is untouched


def test_generator_cli_writes_and_checks(tmp_path, capsys):
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")]
    nbformat.write(nb, solutions / "01_x.ipynb")
    dirs = ["--solutions-dir", str(solutions), "--exercises-dir", str(exercises)]
    assert main([*dirs, "--check"]) == 1
    assert main(dirs) == 0
    assert main([*dirs, "--check"]) == 0
    text = (exercises / "01_x.ipynb").read_text()
    assert "NotImplementedError" in text and not re.search("SOLUTION", text)
