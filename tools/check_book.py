"""Check a built book the way a reader meets it: every page opened in a real, headless Chromium.

Usage::

    python tools/check_book.py [_build/html] [--screens DIR] [--report FILE] [--static-only]

Static checks (the HTML files): every page of the table of contents is there; maths, widgets and
require.js load from the book's own files (no CDN needed offline); the setup page carries its
widget state; no page shows a Python traceback; the intro's chapter map links every chapter in
``_toc.yml`` and every chapter notebook in ``notebooks/`` is in ``_toc.yml``.

Browser checks (every ``.html`` page, served on 127.0.0.1, window 1280 px wide). A page fails on:

- a JavaScript error (uncaught exception or ``console.error``);
- a failed request (HTTP status >= 400, or a request that never completed);
- raw TeX in the rendered text (``\\(``, ``$x$``, ``\\frac``...) or maths typed as plain text in
  prose (``n^2``, ``x_{k}``, ``<=``);
- an image without meaningful alt text (none, or a file name/path instead of words);
- a figure shown at less than 60 % of its natural size (drawn wider than the text column);
- a visible progress bar (tqdm text or widget), or a blank output area (a hidden bar's gap);
- the same figure shown twice on one page;
- an ipywidget that did not render;
- a broken link (a local page or file that does not exist, or an ``#anchor`` that is not on it).

A full-page screenshot of every page goes to ``_build/screens/`` for a person to look at.

Why the DevTools protocol over a small websocket client (``websocket-client``, pinned in
requirements.txt) rather than Playwright: Playwright drives a browser build of its own, which
cannot be downloaded here (only PyPI, npm and Debian's packages are reachable), and its driver is
tied to particular browser versions; Debian's ``chromium`` (or any Chrome on a CI runner) speaks the
same DevTools protocol, and the few commands used here (navigate, evaluate, screenshot, the
Network/Runtime/Log events) have been stable for years.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
WINDOW_WIDTH = 1280
WINDOW_HEIGHT = 1000
MIN_FIGURE_SCALE = 0.60
PAGE_TIMEOUT_S = 60.0
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    f"--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}",
]


# --------------------------------------------------------------------------------------------
# Static checks of the HTML files
# --------------------------------------------------------------------------------------------


def toc_files(toc: dict) -> list[str]:
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files.extend(section["file"] for section in chapter.get("sections", []))
    return files


def static_problems(html: Path) -> list[str]:
    problems: list[str] = []
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    sources = toc_files(toc)
    pages = {f: html / (re.sub(r"\.(md|ipynb)$", "", f) + ".html") for f in sources}
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
    intro_page = html / "book" / "intro.html"
    intro = intro_page.read_text(encoding="utf-8") if intro_page.exists() else ""
    # The page's own text only: the sidebar links every page of the book on every page.
    article = re.search(r"<article\b.*?</article>", intro, re.S)
    intro = article.group(0) if article else intro
    for source in pages:
        if source.startswith("notebooks/") and Path(source).name + ".html" not in intro:
            problems.append(f"the intro's chapter map does not link {source}")
    in_toc = {Path(s).stem for s in sources if s.startswith("notebooks/")}
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]*.ipynb")):
        if notebook.stem not in in_toc:
            problems.append(f"notebooks/{notebook.name} is not in _toc.yml (nor in the book)")
    return problems


# --------------------------------------------------------------------------------------------
# A minimal DevTools-protocol client
# --------------------------------------------------------------------------------------------


def find_browser() -> str | None:
    wanted = os.environ.get("CHROME")
    if wanted:
        return wanted
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, executable: str):
        import websocket  # websocket-client

        self._profile = tempfile.mkdtemp(prefix="check_book_chrome_")
        self.process = subprocess.Popen(
            [executable, *CHROME_FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{executable} did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as reply:
            targets = json.load(reply)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=PAGE_TIMEOUT_S, suppress_origin=True
        )
        self._next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: Any) -> dict:
        self._next_id += 1
        message_id = self._next_id
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds`` (the page keeps loading meanwhile)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                message = json.loads(self.ws.recv())
            except Exception:  # websocket timeout: nothing more arrived
                break
            if "method" in message:
                self.events.append(message)
        self.ws.settimeout(PAGE_TIMEOUT_S)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the browser closed a connection early (a cancelled request): not the book's fault


def serve(html: Path) -> tuple[socketserver.TCPServer, int]:
    handler = functools.partial(QuietHandler, directory=str(html))
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


# --------------------------------------------------------------------------------------------
# What is looked at on every page (runs inside the page)
# --------------------------------------------------------------------------------------------

PAGE_JS = (Path(__file__).with_name("check_book.js")).read_text(encoding="utf-8")


def meaningful_alt(alt: str, src: str) -> bool:
    if len(alt.split()) < 3:
        return False
    looks_like_a_file = re.fullmatch(
        r"\S*\.(png|jpe?g|svg|gif)|\S*/\S*|[0-9a-f]{16,}|image|figure|plot", alt, re.I
    )
    return not looks_like_a_file and alt != src


# --------------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------------


@functools.cache
def anchors_of(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return frozenset(re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", text))


def broken_links(links: list[str], base: str, html: Path) -> list[str]:
    broken = []
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue  # another site (Binder, Colab, GitHub, a DOI): not reachable offline
        parsed = urllib.parse.urlparse(link)
        path = urllib.parse.unquote(parsed.path).lstrip("/")
        target = html / path
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(f"{link[len(base) :]} (no such file)")
            continue
        if parsed.fragment and target.suffix == ".html":
            fragment = urllib.parse.unquote(parsed.fragment)
            if fragment not in anchors_of(target):
                broken.append(f"{link[len(base) :]} (no anchor #{fragment} on that page)")
    return broken


# --------------------------------------------------------------------------------------------
# One page
# --------------------------------------------------------------------------------------------


def check_page(browser: Browser, url: str, base: str, html: Path, shot: Path | None) -> list[str]:
    browser.events.clear()
    for domain in ("Page", "Runtime", "Network", "Log"):
        browser.call(f"{domain}.enable")
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        width=WINDOW_WIDTH,
        height=WINDOW_HEIGHT,
        deviceScaleFactor=1,
        mobile=False,
    )
    browser.call("Page.navigate", url=url)
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while not any(e["method"] == "Page.loadEventFired" for e in browser.events):
        if time.monotonic() > deadline:
            return [f"did not finish loading in {PAGE_TIMEOUT_S:.0f} s"]
        browser.pump(0.5)
    browser.evaluate(PAGE_JS)
    height = browser.evaluate("checkBook.waitForPage()")
    browser.pump(1.0)  # late requests (fonts, widget assets) and their failures
    found = browser.evaluate("checkBook.inspectPage()")
    problems: list[str] = []

    requests: dict[str, str] = {}
    for event in browser.events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            requests[params["requestId"]] = params["request"]["url"]
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            response = params["response"]
            problems.append(
                f"failed request: HTTP {response['status']} {short(response['url'], base)}"
            )
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            target = short(requests.get(params["requestId"], "?"), base)
            problems.append(f"failed request: {params.get('errorText')} {target}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            source = short(details.get("url", ""), base)
            problems.append(f"JavaScript error: {first_line(text)} ({source})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"JavaScript console error: {first_line(text)}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            if entry.get("source") != "network":  # network errors are reported above
                problems.append(f"browser error: {first_line(entry.get('text', ''))}")

    for item in found["rawTex"]:
        problems.append(f"raw TeX in the page: {item}")
    for item in found["plainMaths"]:
        problems.append(f"maths as plain text (typeset it with $...$): {item}")
    for image in found["images"]:
        if image["logo"]:
            continue
        # A figure drawn by a widget (an explorer's live output) is redrawn by the reader; its
        # default view is a separate captioned figure, so it needs no alt text or caption here.
        if not image["widget"] and not meaningful_alt(image["alt"], image["src"]):
            problems.append(
                f"image without meaningful alt text {image['where']}: "
                f"alt={image['alt']!r} ({image['src']})"
            )
        if image["complete"] and image["natural"] and image["shown"]:
            scale = image["shown"] / image["natural"]
            if scale < MIN_FIGURE_SCALE:
                problems.append(
                    f"figure shown at {scale:.0%} of its size {image['where']}: drawn "
                    f"{image['natural']} px wide, shown {image['shown']:.0f} px ({image['src']})"
                )
        if not image["caption"] and not image["widget"] and image["src"].endswith(".png"):
            problems.append(f"figure without a numbered caption {image['where']} ({image['src']})")
    for item in found["duplicates"]:
        problems.append(f"the same figure shown twice: {item}")
    for item in found["progress"]:
        problems.append(f"visible progress bar {item}")
    for item in found["blankOutputs"]:
        problems.append(f"blank output area (a hidden progress bar?) {item}")
    for item in found["widgets"]:
        problems.append(f"widget did not render {item}")
    for item in found["overflow"]:
        problems.append(f"wider than the text column {item}")
    for item in broken_links(found["links"], base, html):
        problems.append(f"broken link: {item}")

    if shot is not None:
        full = min(int(height or WINDOW_HEIGHT), 30000)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            width=WINDOW_WIDTH,
            height=full,
            deviceScaleFactor=1,
            mobile=False,
        )
        browser.pump(0.3)
        data = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.write_bytes(base64.b64decode(data["data"]))
    return problems


def short(url: str, base: str) -> str:
    return url[len(base) :] if url.startswith(base) else url


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else "(no message)"


def pages_of(html: Path) -> Iterator[Path]:
    skip = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
    for page in sorted(html.rglob("*.html")):
        if not skip & set(page.relative_to(html).parts):
            yield page


def browser_problems(html: Path, screens: Path | None) -> dict[str, list[str]]:
    executable = find_browser()
    if executable is None:
        looked = ", ".join(BROWSERS)
        return {"(browser)": [f"no Chromium found (looked for {looked}; or set CHROME)"]}
    server, port = serve(html)
    base = f"http://127.0.0.1:{port}/"
    results: dict[str, list[str]] = defaultdict(list)
    browser = Browser(executable)
    try:
        for page in pages_of(html):
            name = page.relative_to(html).as_posix()
            shot = None
            if screens is not None:
                shot = screens / (name.removesuffix(".html").replace("/", "__") + ".png")
            try:
                results[name] = check_page(browser, base + name, base, html, shot)
            except Exception as error:  # a page that breaks the checker is a failed page
                results[name] = [f"could not be checked: {type(error).__name__}: {error}"]
                browser.close()
                browser = Browser(executable)
    finally:
        browser.close()
        server.shutdown()
    return results


def markdown_report(static: list[str], pages: dict[str, list[str]], html: Path) -> str:
    lines = [
        "# Real-browser check of the built book",
        "",
        f"`python tools/check_book.py {html}` at {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}"
        f" UTC: {len(pages)} pages, {sum(map(len, pages.values())) + len(static)} problem(s).",
        "",
    ]
    if static:
        lines += ["## Whole book", ""] + [f"- {p}" for p in static] + [""]
    for name, problems in sorted(pages.items()):
        lines.append(f"## {name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        lines += [""] + [f"- {p}" for p in problems] + [""] if problems else [""]
    return "\n".join(lines)


def problem_kind(problem: str) -> str:
    """What kind of problem, without where or how much: "figure shown at % of its size"."""
    head = re.split(r" #|: | \(", problem, maxsplit=1)[0]
    return re.sub(r"\d+", "", head).strip()


def read_known(path: Path | None) -> set[tuple[str, str]]:
    """``PAGE | KIND`` lines: problems already filed and not yet fixed (``#`` starts a comment)."""
    known: set[tuple[str, str]] = set()
    if path is None or not path.exists():
        return known
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "|" in line:
            page, kind = (part.strip() for part in line.split("|", 1))
            known.add((page, kind))
    return known


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", nargs="?", default="_build/html")
    parser.add_argument("--screens", help="screenshot folder (default: beside html/, screens/)")
    parser.add_argument("--report", help="also write the findings as Markdown to this file")
    parser.add_argument("--static-only", action="store_true", help="skip the browser")
    parser.add_argument(
        "--known",
        help="a file of 'PAGE | KIND' lines: problems filed and not yet fixed, reported but "
        "not failing (new problems, and any problem of another kind, still fail)",
    )
    args = parser.parse_args(argv)
    html = Path(args.html).resolve()
    static = static_problems(html)
    pages: dict[str, list[str]] = {}
    if not args.static_only:
        screens = Path(args.screens) if args.screens else html.parent / "screens"
        pages = browser_problems(html, screens)
    known = read_known(Path(args.known) if args.known else None)
    for line in static:
        print(f"- {line}")
    failing = len(static)
    tolerated = 0
    seen_known: set[tuple[str, str]] = set()
    for name, problems in sorted(pages.items()):
        print(f"{name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for line in problems:
            key = (name, problem_kind(line))
            if key in known:
                seen_known.add(key)
                tolerated += 1
                print(f"    - (known) {line}")
            else:
                failing += 1
                print(f"    - {line}")
    for page, kind in sorted(known - seen_known):
        print(f"fixed, remove from {args.known}: {page} | {kind}")
    print(
        f"checked {len(pages)} pages in a browser, {html}: {failing} problem(s)"
        + (f", and {tolerated} known problem(s) listed in {args.known}" if tolerated else "")
    )
    if args.report:
        Path(args.report).write_text(markdown_report(static, pages, html), encoding="utf-8")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
