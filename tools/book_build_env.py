"""Sphinx extension loaded by the book build (``_config.yml``: ``sphinx.local_extensions``).

It marks the build as unattended before any notebook is executed: the kernels that
jupyter-cache/nbclient start inherit this process's environment, so
``attention_course.utils.progress`` (and ``utils.train``) draw no progress bar into the pages.
A reader running the same notebook in Jupyter still sees the bar.
"""

from __future__ import annotations

import os

# the same name as attention_course.utils.QUIET_PROGRESS_ENV
QUIET_PROGRESS_ENV = "ATTENTION_COURSE_QUIET_PROGRESS"


def setup(app) -> dict:
    os.environ[QUIET_PROGRESS_ENV] = "1"
    return {"parallel_read_safe": True, "parallel_write_safe": True}
