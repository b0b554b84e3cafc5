"""The course's own Sphinx extension, loaded by the book build (``_config.yml``:
``sphinx.local_extensions``). It keeps the published pages clean:

- It marks the build as unattended before any notebook is executed: the kernels that
  jupyter-cache/nbclient start inherit this process's environment, so
  ``attention_course.utils.progress`` (and ``utils.train``) draw no progress bar into the pages.
  A reader running the same notebook in Jupyter still sees the bar.
- It drops repeated ``<script>`` tags from every page: sphinx-thebe adds its inline configuration
  (``const THEBE_JS_URL = ...``) twice, and the second copy is a JavaScript error
  ("Identifier 'THEBE_JS_URL' has already been declared") on every page.
- On pages with saved ipywidgets, it puts a small script between require.js and the widget
  manager (``embed-amd.js``, vendored in ``book/_vendor/widgets``): (1) a require.js path that
  resolves the manager's module to ``_static/widgets/``, where its icon fonts are (webpack
  derives the fonts' address from the module's address; without this they are fetched from
  ``<page folder>/@jupyter-widgets/html-manager/dist/`` and 404); (2) ``MathJax.Hub.Queue``, the
  MathJax 2 call the manager makes to typeset labels, mapped onto the book's MathJax 3 (without
  it every widget page logs "Cannot read properties of undefined (reading 'Queue')").
- It registers the bibliography style ``authoryear`` (used by ``book/references.md``): entries
  sorted by first author and year, labelled "Bahdanau et al. 2014" like the author-year
  citations in the text (pybtex's default labels look like ``[BCB14]``).
"""

from __future__ import annotations

import os
import re

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle

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
    # In place: the list is the builder's own, and other handlers append page scripts to it
    # (myst-nb's widget state and manager); a new list would lose them.
    scripts[:] = unique


def _last_name(person) -> str:
    return re.sub(r"[{}]", "", " ".join(person.prelast_names + person.last_names))


class AuthorYearLabels(BaseLabelStyle):
    """Labels "Vaswani et al. 2017", "Nadaraya 1964", "Loshchilov and Hutter 2017"; a, b, ...
    added when two entries would get the same label."""

    def format_labels(self, sorted_entries):
        labels = []
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_last_name(p) for p in people]
            if not names:
                who = entry.fields.get("title", entry.key)
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            labels.append(f"{who} {entry.fields.get('year', 'n.d.')}")
        counts = {label: labels.count(label) for label in labels}
        seen: dict[str, int] = {}
        for label in labels:
            if counts[label] > 1:
                seen[label] = seen.get(label, 0) + 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            else:
                yield label


class AuthorYearStyle(UnsrtStyle):
    default_sorting_style = "author_year_title"
    default_label_style = "authoryear"


register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


WIDGET_PAGE_JS = """
require.config({paths: {
  "@jupyter-widgets/html-manager/dist": "%(widgets)s",
  "@jupyter-widgets": "%(widgets)s"
}});
(function () {
  // ipywidgets' HTML manager typesets with MathJax 2's API; the book loads MathJax 3.
  var hub = {Queue: function (command) {
    var element = command && command[2];
    if (element && window.MathJax && window.MathJax.typesetPromise) {
      window.MathJax.typesetPromise([element]);
    }
  }};
  var config = window.MathJax || {};
  var startup = config.startup || {};
  startup.ready = function () {
    window.MathJax.startup.defaultReady();
    window.MathJax.Hub = hub;
  };
  config.startup = startup;
  config.Hub = hub;
  window.MathJax = config;
})();
"""


def widget_page_script(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    names = [str(getattr(script, "filename", "") or "") for script in scripts]
    if not any(name.endswith("embed-amd.js") for name in names):
        return
    where = next((i for i, name in enumerate(names) if name.endswith("require.js")), None)
    if where is None:
        return
    from sphinx.builders.html._assets import _JavaScript

    widgets = context["pathto"]("_static/widgets", 1)
    body = WIDGET_PAGE_JS % {"widgets": widgets}
    scripts.insert(where + 1, _JavaScript("", priority=scripts[where].priority, body=body))


def setup(app) -> dict:
    os.environ[QUIET_PROGRESS_ENV] = "1"
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    app.connect("html-page-context", widget_page_script, priority=910)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
