"""The real-browser book checker (tools/check_book.py) must catch what a reader trips on.

Two small pages are served and opened in headless Chromium: a clean one that must pass, and one
with every fault the checker exists for, each of which must be reported. Without a browser the
test is skipped on a laptop, and fails in CI (where .ci/run installs Chromium).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_book", ROOT / "tools" / "check_book.py")
assert spec is not None and spec.loader is not None
check_book = importlib.util.module_from_spec(spec)
sys.modules["check_book"] = check_book
spec.loader.exec_module(check_book)

if check_book.find_browser() is None:
    if os.environ.get("CI"):
        pytest.fail("no Chromium in CI: .ci/run should have installed it", pytrace=False)
    pytest.skip("no Chromium on this machine (apt-get install chromium)", allow_module_level=True)

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,"></head>
<body><main style="width: 700px">{body}</main></body></html>"""

GOOD = """
<section id="start"><h1>A clean page</h1>
<p>Attention weights sum to one; see <a href="good.html#start">the start</a>
and <a href="bad.html">the other page</a>.</p>
<figure id="fig-line"><img src="_images/small.png" alt="A dark rectangle, one hundred by fifty.">
<figcaption><p>Fig. 1 A small figure shown at its natural size.</p></figcaption></figure>
<div class="cell_output"><pre>loss 0.12</pre></div>
</section>
"""

BAD = """
<section id="faults"><h1>Every fault</h1>
<script>undefinedFunctionCall();</script>
<p>Raw maths: \\frac{a}{b}.</p>
<p>The cost grows as n^2 with the length.</p>
<img src="_images/missing.png" alt="_images/missing.png">
<figure><img src="_images/wide.png" alt="A wide figure squeezed into a narrow column."
  style="width: 300px"><figcaption><p>Fig. 2 Too small.</p></figcaption></figure>
<figure><img src="_images/small.png" alt="A dark rectangle, one hundred by fifty.">
<figcaption><p>Fig. 3 Once.</p></figcaption></figure>
<figure><img src="_images/small.png" alt="A dark rectangle, one hundred by fifty.">
<figcaption><p>Fig. 4 Twice.</p></figcaption></figure>
<div class="cell_output"><pre>
training the zoo: 100%|##########| 14/14 [00:03&lt;00:00,  4.1it/s]</pre></div>
<div class="cell_output" style="height: 90px"></div>
<div><script type="application/vnd.jupyter.widget-view+json">{"model_id": "abc"}</script></div>
<p><a href="nowhere.html">a missing page</a> and <a href="good.html#no-such-anchor">a
missing anchor</a>.</p>
</section>
"""


@pytest.fixture(scope="module")
def findings(tmp_path_factory) -> dict[str, list[str]]:
    html = tmp_path_factory.mktemp("html")
    (html / "_images").mkdir()
    matplotlib.image.imsave(html / "_images" / "small.png", np.zeros((50, 100, 3)))
    matplotlib.image.imsave(html / "_images" / "wide.png", np.zeros((100, 1000, 3)))
    (html / "good.html").write_text(PAGE.format(title="good", body=GOOD), encoding="utf-8")
    (html / "bad.html").write_text(PAGE.format(title="bad", body=BAD), encoding="utf-8")
    screens = html.parent / "screens"
    results = check_book.browser_problems(html, screens)
    assert (screens / "good.png").stat().st_size > 1000, "no screenshot written"
    return results


def test_a_clean_page_passes(findings):
    assert findings["good.html"] == []


@pytest.mark.parametrize(
    "expected",
    [
        "JavaScript error: ReferenceError: undefinedFunctionCall",
        "failed request: HTTP 404 _images/missing.png",
        "raw TeX in the page",
        "maths as plain text",
        "image without meaningful alt text",
        "figure shown at 30% of its size",
        "the same figure shown twice: small.png",
        "visible progress bar",
        "blank output area",
        "widget did not render",
        "broken link: nowhere.html (no such file)",
        "broken link: good.html#no-such-anchor (no anchor #no-such-anchor on that page)",
    ],
)
def test_every_fault_is_reported(findings, expected):
    problems = findings["bad.html"]
    assert any(expected in p for p in problems), f"{expected!r} not in {problems}"
