"""The Gradescope bundle: built by the CLI, unpacked into a simulated /autograder (a root given
by AUTOGRADER_ROOT), and its own run_autograder grades a submission and writes results.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from attention_course.grading import get_question
from attention_course.grading.__main__ import main
from attention_course.grading.gradescope import unpack_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_run_autograder_grades_a_submission_in_a_simulated_autograder(tmp_path):
    bundle = tmp_path / "autograder.zip"
    assert main(["gradescope", "--questions", "ch03.masked_softmax", "--out", str(bundle)]) == 0
    names = set(zipfile.ZipFile(bundle).namelist())
    assert {"setup.sh", "run_autograder", "requirements.txt", "manifest.json"} <= names
    assert "attention_course/grading/batch.py" in names
    requirements = zipfile.ZipFile(bundle).read("requirements.txt").decode()
    assert "torch==" in requirements and "cpu" in zipfile.ZipFile(bundle).read("setup.sh").decode()

    root = tmp_path / "autograder"
    source = unpack_bundle(bundle, root)
    submission = root / "submission"
    submission.mkdir()
    solution = next((ROOT / "solutions").glob("03_*.ipynb"))
    shutil.copy(solution, submission / "my work.ipynb")
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=sys.executable)
    done = subprocess.run(["bash", str(source / "run_autograder")], env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((root / "results" / "results.json").read_text())
    maximum = get_question("ch03.masked_softmax").max_score
    assert result["score"] == maximum == sum(t["max_score"] for t in result["tests"])
    assert all(t["status"] == "passed" for t in result["tests"])
    # the bundle's own copy of the package graded it (the sandbox binds the parent's package)
    assert "masked_softmax" in json.dumps(result)
