"""A Gradescope autograder bundle: grading at scale on an existing engine.

    python -m attention_course.grading gradescope --questions ch03 --out autograder.zip

builds a zip with ``setup.sh`` (installs Python, bubblewrap and the pinned CPU requirements),
``run_autograder`` (grades ``/autograder/submission/*.ipynb``, writes
``/autograder/results/results.json``), ``requirements.txt`` (the versions installed here),
``manifest.json`` (the question set and maxima) and a copy of the course package. Gradescope runs
the bundle in a fresh container per submission; inside it the same batch grader runs (in
bubblewrap when the container allows namespaces, else in its loudly degraded path: the container
is then the sandbox). ``AUTOGRADER_ROOT`` replaces ``/autograder`` (the tests use it).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from .batch import grade_submissions, read_regular, resolve_questions
from .registry import get_question
from .sandbox import PACKAGE_ROOT

__all__ = ["build_bundle", "run_autograder"]

GRADING_REQUIREMENTS = (
    "torch", "numpy", "matplotlib", "scikit-learn", "tqdm", "ipywidgets", "ipykernel", "nbformat",
)  # fmt: skip
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image.
set -euo pipefail
apt-get update -qq
apt-get install -y -qq python3 python3-pip python3-venv bubblewrap
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --no-cache-dir --extra-index-url {index} \\
    -r /autograder/source/requirements.txt
/autograder/venv/bin/pip install --no-cache-dir --no-deps /autograder/source
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission; AUTOGRADER_ROOT replaces /autograder in tests.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PYTHON="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
cd "$ROOT/source"
exec "$PYTHON" -m attention_course.grading gradescope-run --root "$ROOT" \\
    --manifest "$ROOT/source/manifest.json"
"""


def _requirements() -> str:
    lines = ["# pinned to the versions the course was graded with (CPU torch)"]
    for name in GRADING_REQUIREMENTS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            lines.append(name)
            continue
        lines.append(f"{name}=={version.split('+')[0]}")
    return "\n".join(lines) + "\n"


def _add(bundle: zipfile.ZipFile, name: str, data: str | bytes, executable: bool = False):
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    bundle.writestr(info, data)


def build_bundle(questions: list[str], out: str | Path) -> list[str]:
    """Write the autograder zip for ``questions`` (ids or prefixes); return the question ids."""
    ids = resolve_questions(questions)
    manifest = {"questions": ids, "max_score": {q: get_question(q).max_score for q in ids}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        _add(bundle, "setup.sh", SETUP_SH.format(index=TORCH_CPU_INDEX), executable=True)
        _add(bundle, "run_autograder", RUN_AUTOGRADER, executable=True)
        _add(bundle, "requirements.txt", _requirements())
        _add(bundle, "manifest.json", json.dumps(manifest, indent=2) + "\n")
        root = Path(PACKAGE_ROOT)
        _add(bundle, "pyproject.toml", (root / "pyproject.toml").read_bytes())
        package = root / "attention_course"
        for path in sorted(package.rglob("*.py")):
            _add(bundle, str(path.relative_to(root)), path.read_bytes())
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out)
    return ids


def run_autograder(root: str | Path, manifest: str | Path) -> dict:
    """Grade the notebook in ``root/submission`` and write ``root/results/results.json``."""
    root = Path(root)
    notebooks = sorted((root / "submission").glob("*.ipynb"))
    results_dir = root / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    ids = resolve_questions(None, manifest)
    if not notebooks:
        result = {"score": 0.0, "output": "No .ipynb file was submitted.", "tests": []}
    else:
        if len(notebooks) > 1:
            names = ", ".join(p.name for p in notebooks)
            print(f"several notebooks submitted ({names}); grading {notebooks[0].name}")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            (sub,) = grade_submissions([str(notebooks[0])], out, questions=ids, jobs=1)
            result = json.loads(read_regular(out / sub.name / "results.json", 50_000_000))
    target = results_dir / "results.json"
    tmp_target = results_dir / ".results.json.tmp"
    tmp_target.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_target, target)
    return result


def unpack_bundle(bundle: str | Path, root: str | Path) -> Path:
    """Unzip a bundle as Gradescope does (into ``root/source``), keeping the executable bits."""
    source = Path(root) / "source"
    if source.exists():
        shutil.rmtree(source)
    with zipfile.ZipFile(bundle) as archive:
        for info in archive.infolist():
            target = source / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            target.chmod((info.external_attr >> 16) & 0o777 or 0o644)
    return source
