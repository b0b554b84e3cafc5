"""The sandbox a submission's child process runs in, with limits enforced from outside it.

With bubblewrap (``bwrap``, Debian package ``bubblewrap``) the child gets its own PID, network,
IPC, UTS and mount namespaces: the whole file system read-only, a fresh ``/proc`` that shows only
its own processes, no network, a clean environment, ``/tmp`` (with its private scratch folder,
the only writable place), the instructor's home folders, the out folder, the other submissions
and the grader's own work folders hidden under empty tmpfs, and only the Python installation and
the course package bound back read-only. ``--die-with-parent``: killing the bwrap process (which
the parent does at the wall-clock limit) ends the PID namespace, so nothing the student started,
in any session, survives it.

Inside, a bootstrap (``BOOT``) sets hard resource limits (memory, processes/threads, CPU seconds,
file size, open files, no core files), gives up root for a dedicated unprivileged uid when it has
root (``PR_SET_NO_NEW_PRIVS`` too), puts the PARENT's package first on ``sys.path`` and only then
starts ``_child``: the child runs the very code the parent runs, read-only.

Without bwrap (macOS, Colab, a container without namespaces) ``detect()`` says so loudly and the
same bootstrap runs in a private temp folder with the same rlimits and, when the grader runs as
root, the dedicated uid (every process of that uid is killed after the child); what that path
cannot give (network isolation, hiding files the uid can read, stopping a non-root child from
signalling the grader) is listed in book/for_instructors.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import attention_course

__all__ = ["BOOT", "Limits", "Sandbox", "detect"]

PACKAGE_ROOT = str(Path(attention_course.__file__).resolve().parents[1])
CHILD_UID_BASE = 61000  # dedicated uids for children when the grader runs as root

BOOT = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
for name, value in cfg["rlimits"].items():
    kind = getattr(resource, name, None)
    if kind is None:
        continue
    soft, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))
uid = cfg.get("uid")
if uid is not None and os.getuid() == 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
except Exception:
    pass
os.chdir(cfg["scratch"])
sys.path.insert(0, cfg["root"])
import attention_course
if not os.path.realpath(attention_course.__file__).startswith(cfg["root"] + os.sep):
    sys.exit("the child imported another copy of the course package")
sys.argv = ["_child", cfg["job"], cfg["scratch"]]
import runpy
runpy.run_module("attention_course.grading._child", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one child (hard limits, set before any student code runs)."""

    memory_mb: int = 1536  # RLIMIT_DATA (heap and anonymous maps); address space gets 4x
    processes: int = 64  # RLIMIT_NPROC: processes and threads of the child's uid
    cpu_seconds: int = 300  # RLIMIT_CPU
    file_mb: int = 64  # RLIMIT_FSIZE: largest file it may write
    open_files: int = 256  # RLIMIT_NOFILE

    def rlimits(self) -> dict[str, int]:
        return {
            "RLIMIT_DATA": self.memory_mb << 20,
            "RLIMIT_AS": 4 * (self.memory_mb << 20) + (2 << 30),
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_CPU": self.cpu_seconds,
            "RLIMIT_FSIZE": self.file_mb << 20,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CORE": 0,
        }


@dataclass
class Sandbox:
    """How children are isolated in this batch: ``kind`` "bwrap" or "rlimits" (degraded)."""

    kind: str
    reason: str = ""  # why the degraded path was taken
    hidden: list[str] = field(default_factory=list)  # extra folders to hide (out, submissions)
    drop_uid: bool = True  # as root: run children as a dedicated uid (False: it cannot run)

    @property
    def as_root(self) -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0

    def child_uid(self, slot: int) -> int | None:
        if not (self.as_root and self.drop_uid):
            return None
        return CHILD_UID_BASE + slot % 1000

    def command(self, cfg: dict, *, job: str, scratch: str) -> list[str]:
        """The argv that starts one child; ``cfg`` goes to ``BOOT``."""
        python = [sys.executable, "-I", "-c", BOOT]
        if self.kind != "bwrap":
            return [*python, json.dumps(dict(cfg, job=job, scratch=scratch))]
        inside = dict(cfg, job="/tmp/job.bin", scratch="/tmp/scratch")
        return [*_bwrap_args(self.hidden, job, scratch, self.as_root), "--", *python,
                json.dumps(inside)]  # fmt: skip

    def environment(self, scratch: str) -> dict[str, str]:
        """A clean environment (nothing of the instructor's)."""
        home = "/tmp/scratch" if self.kind == "bwrap" else scratch
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": home,
            "IPYTHONDIR": f"{home}/.ipython",
            "MPLCONFIGDIR": f"{home}/.matplotlib",
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "ATTENTION_COURSE_GRADING_CHILD": "1",
        }


def _needed_paths() -> list[str]:
    """What the child must read: the interpreter, its libraries, the course package."""
    paths = {PACKAGE_ROOT, sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths.add(str(Path(sys.executable).parent))
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            paths.add(entry)
    return sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _bwrap_args(hidden: list[str], job: str, scratch: str, as_root: bool) -> list[str]:
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    masks = ["/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/run", "/mnt", "/media"]
    masks += [os.path.expanduser("~"), *hidden]
    masks = sorted({os.path.realpath(m) for m in masks if os.path.isdir(m) and m != "/"})
    for folder in masks:
        args += ["--tmpfs", folder]
    needed = _needed_paths()
    needed = [p for p in needed if not any(q != p and _under(p, q) for q in needed)]
    made: set[str] = set()
    for path in needed:  # bring back, read-only, what a mask covered
        mask = max((m for m in masks if _under(path, m)), key=len, default=None)
        if mask is None:
            continue
        parts = Path(path).relative_to(mask).parts
        for depth in range(1, len(parts)):  # traversable folders down to it (bwrap's are 0700)
            folder = str(Path(mask, *parts[:depth]))
            if folder not in made:
                made.add(folder)
                args += ["--perms", "0755", "--dir", folder]
        args += ["--ro-bind", path, path]
    args += ["--ro-bind", job, "/tmp/job.bin", "--bind", scratch, "/tmp/scratch"]
    args += ["--chdir", "/tmp/scratch", "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    args += ["--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if not as_root:  # an unprivileged user: a user namespace, and no capabilities in it
        args += ["--unshare-user", "--cap-drop", "ALL"]
    return args


_DETECTED: dict[str, Sandbox] = {}


def detect(mode: str = "auto") -> Sandbox:
    """The sandbox to use: ``mode`` "auto" (bwrap if it works here, else the degraded path with
    a loud warning), "bwrap" (required: raise if it does not work) or "none" (degraded)."""
    if mode == "none":
        found = Sandbox("rlimits", "asked for no sandbox (--sandbox none)")
    else:
        if mode not in _DETECTED:
            _DETECTED[mode] = _probe()
        found = _DETECTED[mode]
    if found.kind != "bwrap":
        if mode == "bwrap":
            raise RuntimeError(f"bubblewrap sandbox unavailable: {found.reason}")
        found = Sandbox(found.kind, found.reason, drop_uid=_uid_can_run())
        who = "a dedicated unprivileged uid" if found.child_uid(0) is not None else (
            "YOUR OWN user (it can write what you can write and signal the grader)"
        )  # fmt: skip
        warnings.warn(
            f"GRADING WITHOUT A SANDBOX ({found.reason}): submissions run as {who}, with "
            f"resource limits, in a private temp folder, with the network and your files in "
            f"reach; install bubblewrap (apt-get install bubblewrap) or grade in a throwaway "
            f"container. See book/for_instructors.md.",
            RuntimeWarning,
            stacklevel=2,
        )
    return Sandbox(found.kind, found.reason, drop_uid=found.drop_uid)


def _uid_can_run() -> bool:
    """As root without bwrap: can the dedicated uid run this interpreter and read the package?
    (Not when Python lives in a private home such as /root/.pyenv.)"""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    code = (
        "import sys, signal, json, importlib.util; sys.path.insert(0, sys.argv[1]); "
        "sys.exit(importlib.util.find_spec('attention_course.grading') is None)"
    )
    try:
        done = subprocess.run([sys.executable, "-I", "-c", code, PACKAGE_ROOT], user=CHILD_UID_BASE,
                              group=CHILD_UID_BASE, extra_groups=[], capture_output=True,
                              timeout=60, cwd="/", check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _probe() -> Sandbox:
    if not sys.platform.startswith("linux"):
        return Sandbox("rlimits", f"bubblewrap needs Linux (this is {sys.platform})")
    if shutil.which("bwrap") is None:
        return Sandbox("rlimits", "bwrap (bubblewrap) is not installed")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job"
        job.write_bytes(b"")
        args = _bwrap_args([], str(job), tmp, os.geteuid() == 0)
        probe = [*args, "--", sys.executable, "-I", "-c", "import sys; sys.exit(0)"]
        try:
            done = subprocess.run(probe, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Sandbox("rlimits", f"bwrap did not start ({exc})")
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-200:]
        return Sandbox("rlimits", f"bwrap does not work here ({detail})")
    return Sandbox("bwrap")
