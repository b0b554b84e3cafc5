"""Notebook housekeeping for the course's maintainers: the Colab set-up cell and output stripping.

``python -m attention_course.nbtools strip FILE...``      clear outputs and execution counts
``python -m attention_course.nbtools colab FILE...``      make sure the Colab set-up cell is first

Every notebook a student may open on Colab starts with the same set-up cell (tagged
``colab-install``): on Colab it installs this package from the repository; anywhere else
(laptop, Binder, CI) it does nothing. ``tests/test_hygiene.py`` checks that it is present and
unchanged, and that no other code cell downloads anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

REPOSITORY = "https://github.com/attention-course/attention-from-rnns-to-cnns"
COLAB_TAG = "colab-install"
COLAB_INSTALL_SOURCE = f"""\
# Set-up for Colab: installs the course package there; does nothing anywhere else.
import sys

if "google.colab" in sys.modules:
    import subprocess

    package = "git+{REPOSITORY}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)"""


def colab_cell() -> nbformat.NotebookNode:
    """A fresh copy of the canonical Colab set-up cell."""
    cell = nbformat.v4.new_code_cell(COLAB_INSTALL_SOURCE)
    cell.metadata["tags"] = [COLAB_TAG]
    cell.pop("id", None)
    return cell


def ensure_colab_cell(nb: nbformat.NotebookNode) -> bool:
    """Put the canonical set-up cell first among the code cells; return True if nb changed."""
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    if first_code < len(nb.cells):
        cell = nb.cells[first_code]
        if COLAB_TAG in cell.metadata.get("tags", []):
            if cell.source == COLAB_INSTALL_SOURCE:
                return False
            cell.source = COLAB_INSTALL_SOURCE
            return True
    new = colab_cell()
    new["id"] = f"colab-{len(nb.cells)}"
    nb.cells.insert(first_code, new)
    return True


def strip(nb: nbformat.NotebookNode) -> bool:
    """Clear outputs and execution counts in place; return True if anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            changed = True
        cell.outputs = []
        cell.execution_count = None
    return changed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in {"strip", "colab"}:
        print(__doc__)
        return 2
    action, paths = argv[0], argv[1:]
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        changed = strip(nb) if action == "strip" else ensure_colab_cell(nb) | strip(nb)
        if changed:
            nbformat.write(nb, path)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
