"""Notebook and repository hygiene: what every committed notebook must (not) contain."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attention_course.nbtools import COLAB_INSTALL_SOURCE, COLAB_TAG

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for folder in ("notebooks", "exercises", "solutions") for p in (ROOT / folder).glob("*.ipynb")
)
IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]

# Anything that fetches from the network. The course's data is synthetic or ships in a package.
DOWNLOAD = re.compile(
    r"https?://|urlopen|urlretrieve|requests\.(get|post)|\bwget\b|\bcurl\b|download\s*=\s*True"
    r"|torch\.hub|load_dataset\(|fetch_openml|fetch_[a-z0-9_]+\(|snapshot_download|hf_hub"
    r"|^\s*[!%]\s*pip|^\s*%pip",
    re.MULTILINE,
)


def test_there_are_notebooks():
    assert (ROOT / "notebooks" / "00_setup.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_valid_and_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"cell {i} has committed outputs: strip the notebook"
            assert cell.execution_count is None, f"cell {i} has an execution count: strip it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_kernel_and_title(path):
    nb = nbformat.read(path, as_version=4)
    kernelspec = nb.metadata.get("kernelspec", {})
    assert kernelspec.get("name") == "python3", "kernelspec must be python3"
    assert kernelspec.get("language", "python") == "python"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), (
        "the first cell must be the page title, a '# ' heading"
    )
    titles = [
        line
        for c in nb.cells
        if c.cell_type == "markdown"
        for line in c.source.splitlines()
        if line.startswith("# ")
    ]
    assert len(titles) == 1, f"exactly one '# ' title per notebook, found {titles}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_starts_with_colab_setup_and_downloads_nothing(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    assert (
        COLAB_TAG in code[0].metadata.get("tags", []) and code[0].source == COLAB_INSTALL_SOURCE
    ), (
        "the first code cell must be the canonical Colab set-up cell: "
        "run `python -m attention_course.nbtools colab FILE`"
    )
    for i, cell in enumerate(code[1:], start=1):
        match = DOWNLOAD.search(cell.source)
        assert match is None, f"code cell {i} may download something: {match.group(0)!r}"


def test_download_pattern_catches_downloads():
    # The hygiene rule is only as good as its pattern: make sure it can fail.
    for bad in [
        "urllib.request.urlretrieve(url, 'x.zip')",
        "datasets.MNIST('.', download=True)",
        "torch.hub.load('x', 'y')",
        "!pip install thing",
        "X = fetch_openml('mnist_784')",
        "requests.get('https://example.org')",
    ]:
        assert DOWNLOAD.search(bad), bad
    assert DOWNLOAD.search("torch.randn(3, 4)") is None


def test_ruff_lint_and_format_are_clean():
    # The ruff pinned in requirements.txt, installed beside this Python; a system ruff may differ.
    beside = Path(sys.executable).with_name("ruff")
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -r requirements.txt"
    targets = [
        "conftest.py",
        "attention_course",
        "tests",
        "tools",
        "notebooks",
        "solutions",
        "exercises",
    ]
    lint = subprocess.run([ruff, "check", *targets], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, "ruff check found problems:\n" + lint.stdout + lint.stderr
    fmt = subprocess.run(
        [ruff, "format", "--check", *targets], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, "ruff format would change files:\n" + fmt.stdout + fmt.stderr


def test_requirements_pin_every_package():
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert "-e ." in lines
    assert "torch==2.13.0" in lines
    for line in lines:
        if line != "-e .":
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][^\s]*", line), f"not pinned: {line}"
