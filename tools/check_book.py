"""Check a built book the way a reader would meet it: every page of the table of contents is
there, maths and widgets load from the book's own files (no CDN needed), the setup page carries
its widget state, and no page shows a Python traceback.

Usage: python tools/check_book.py [_build/html]        (exits non-zero on the first problem list)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files(toc: dict) -> list[str]:
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files.extend(section["file"] for section in chapter.get("sections", []))
    return files


def main(html_dir: str = "_build/html") -> int:
    html = Path(html_dir)
    problems: list[str] = []
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = {f: html / (re.sub(r"\.(md|ipynb)$", "", f) + ".html") for f in toc_files(toc)}
    if not (html / "index.html").exists():
        problems.append("index.html is missing")
    for source, page in pages.items():
        if not page.exists():
            problems.append(f"{source}: no page {page}")
            continue
        text = page.read_text(encoding="utf-8")
        if "cdn.jsdelivr.net/npm/mathjax" in text or "cdnjs.cloudflare.com" in text:
            problems.append(f"{page}: loads maths or require.js from a CDN (lost offline)")
        if "Traceback (most recent call last)" in text:
            problems.append(f"{page}: shows a Python traceback")
    for asset in ("mathjax/tex-svg-full.js", "widgets/embed-amd.js", "requirejs/require.js"):
        if not (html / "_static" / asset).exists():
            problems.append(f"_static/{asset} is missing: the vendored assets were not copied")
    setup = pages.get("notebooks/00_setup")
    if setup is not None and setup.exists():
        text = setup.read_text(encoding="utf-8")
        if "application/vnd.jupyter.widget-state+json" not in text:
            problems.append(f"{setup}: no saved widget state, the slider would not show")
        if "_static/widgets/embed-amd.js" not in text:
            problems.append(f"{setup}: does not load the vendored widget manager")
    intro = (html / "book" / "intro.html").read_text(encoding="utf-8")
    for source in pages:
        if source.startswith("notebooks/") and Path(source).name + ".html" not in intro:
            problems.append(f"the intro's chapter map does not link {source}")
    for line in problems:
        print(f"- {line}")
    print(f"checked {len(pages)} pages in {html}: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
