"""The course's own Sphinx extension, loaded by the book build (``_config.yml``:
``sphinx.local_extensions``). It keeps the published pages clean:

- It marks the build as unattended before any notebook is executed: the kernels that
  jupyter-cache/nbclient start inherit this process's environment, so
  ``attention_course.utils.progress`` (and ``utils.train``) draw no progress bar into the pages.
  A reader running the same notebook in Jupyter still sees the bar.
- It drops repeated ``<script>`` tags from every page: sphinx-thebe adds its inline configuration
  (``const THEBE_JS_URL = ...``) twice, and the second copy is a JavaScript error
  ("Identifier 'THEBE_JS_URL' has already been declared") on every page.
"""

from __future__ import annotations

import os

# the same name as attention_course.utils.QUIET_PROGRESS_ENV
QUIET_PROGRESS_ENV = "ATTENTION_COURSE_QUIET_PROGRESS"


def _script_key(script) -> tuple:
    filename = getattr(script, "filename", script)
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename or ""), str(attributes.get("body", "")))


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


def setup(app) -> dict:
    os.environ[QUIET_PROGRESS_ENV] = "1"
    app.connect("html-page-context", drop_repeated_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
