"""The batch grader against hostile submissions: every attack it was beaten with, and more of
the same classes, written as notebooks generated here, graded in ONE batch next to honest
classmates (bubblewrap sandbox), plus a few in the degraded path (no bwrap: rlimits + private
temp folder + dedicated uid) and fast unit tests of the parent's readers and writers.

Each test names the attack class of issue 13 it covers. A hostile submission may only ever cost
its own row: the honest classmates' rows are checked in the same batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import stat
import sys
import warnings
from pathlib import Path

import nbformat
import pytest
import torch

import attention_course
from attention_course.grading import _codec, batch, get_question
from attention_course.grading.sandbox import PACKAGE_ROOT, detect

SOFTMAX = "ch03.masked_softmax"
MAX = get_question(SOFTMAX).max_score
MARKER = "h3-escape-marker-7f3a9"
SECRET = "H3_INSTRUCTOR_SECRET"

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the uid sweep needs root"
)

GOOD = """
import torch

def masked_softmax(scores, mask=None, dim=-1):
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    top = torch.nan_to_num(scores.amax(dim, keepdim=True), neginf=0.0)
    e = torch.exp(scores - top)
    return e / e.sum(dim, keepdim=True).clamp(min=torch.finfo(e.dtype).tiny)
"""
ZERO = "import torch\n\ndef masked_softmax(scores, mask=None, dim=-1):\n    return scores * 0\n"

CRAFTED = """
import torch

class Weird:
    def __eq__(self, other): raise RuntimeError("boom")
    def __repr__(self): raise RuntimeError("boom")
    def __len__(self): return -1
    def __getattr__(self, name): raise RuntimeError("boom")

class Liar(torch.Tensor):
    def __eq__(self, other): return torch.ones((), dtype=torch.bool)
    def __getitem__(self, i): raise RuntimeError("boom")

def masked_softmax(scores, mask=None, dim=-1):
    if scores.dim() == 2:
        return (Weird(), {"__tensor__": 0}, {"__ndarray__": 5}, {"__opaque__": 3})
    return torch.zeros_like(scores).as_subclass(Liar)
"""

FORGE = """
import atexit, json, os
HERE = os.getcwd()

def forge():
    header = json.dumps({"tree": [[{"__tensor__": 0}]], "tensors": [
        {"dtype": "float32", "shape": [65536, 65536], "offset": 0, "nbytes": 4}]}).encode()
    data = b"ACGRADE1" + len(header).to_bytes(8, "little") + header + b"\\0" * 4
    for name in os.listdir(HERE):
        if name.startswith("answers_"):
            os.remove(os.path.join(HERE, name))
            if MODE == "forge":
                open(os.path.join(HERE, name), "wb").write(data)
            else:
                os.symlink("/etc/passwd", os.path.join(HERE, name))
    os.remove(os.path.join(HERE, "report.bin"))
    os.mkfifo(os.path.join(HERE, "report.bin"))

atexit.register(forge)
"""

KILL_PARENT = (
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)"
)

ESCAPE = f"""
import subprocess, sys
code = "import time, sys; time.sleep(6); [open(p, 'w').write('0') for p in sys.argv[1:]]"
subprocess.Popen([sys.executable, "-c", code, "{MARKER}", VICTIM, OUT + "/gradebook.csv",
                  OUT + "/escapes/results.json"], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""

PATCH = """
import attention_course.grading.core as core, attention_course.grading.judges as judges
for module in (core, judges):
    try:
        with open(module.__file__, "a") as handle:
            handle.write("\\n# patched by a submission\\n")
        print("PATCHED", module.__file__)
    except OSError as exc:
        print("patch refused:", type(exc).__name__)
"""

SNOOP = """
import glob, os
found = []
for path in glob.glob("/proc/*/cmdline") + glob.glob("/proc/*/environ") + glob.glob("/proc/*/fd/*"):
    try:
        found.append(open(path, "rb").read(100000))
    except Exception:
        pass
for path in [VICTIM, os.path.dirname(VICTIM)]:
    try:
        found.append(open(path, "rb").read())
    except Exception as exc:
        print("cannot read", type(exc).__name__)
text = b"".join(found)
print("SNOOPED", len(text), b"def masked_softmax" in text)
if b"def masked_softmax" in text:
    import json
    for cell in json.loads(open(VICTIM).read())["cells"]:
        exec("".join(cell["source"]))
else:
    import torch
    def masked_softmax(scores, mask=None, dim=-1):
        return scores * 0
"""

WRITE_OUT = """
import os
for action in (
    lambda: open(OUT + "/correct/results.json", "w").write("{}"),
    lambda: os.symlink(OUT + "/correct", OUT + "/writes_out"),
    lambda: (os.remove(OUT + "/gradebook.csv"), os.symlink(VICTIM, OUT + "/gradebook.csv")),
    lambda: open(VICTIM, "w").write("{}"),
):
    try:
        action()
        print("WROTE")
    except Exception as exc:
        print("refused", type(exc).__name__)
"""

ALLOCATE = "import torch\nbig = torch.ones(2**29)  # 2 GiB\nprint(float(big.sum()))"
NUMPY_ALLOCATE = "import numpy as np\nbig = np.ones(2**28)  # 2 GiB\nprint(big.sum())"
PRINTS = "import sys\nfor _ in range(40):\n    sys.stdout.write('x' * 1_000_000)"
IGNORE_ALARM = (
    "import signal, threading\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
    "threading.Event().wait()"
)
BLOCK_ALARM = (
    "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\n"
    "time.sleep(10**6)  # one long C call"
)
FORK = """
import os, time
children = []
try:
    for _ in range(500):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print("forks stopped after", len(children), type(exc).__name__)
    raise
"""
NETWORK = "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=2).sendall(b'leak')"
ENV = f"import os\nprint('ENV', sorted(os.environ))\nprint('SECRET', os.environ.get('{SECRET}'))"
WHICH_CODE = "import attention_course\nprint('PACKAGE', attention_course.__file__)"
DISK = "with open('big.bin', 'wb') as f:\n    f.write(b'0' * (200 << 20))"


def _notebook(path: Path, *cells: str, metadata: dict | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.strip("\n")) for c in cells]
    nb.metadata.update(metadata or {})
    path.write_text(nbformat.writes(nb))
    return path


def _package_digest(text: bool = False) -> str:
    """The grader files a submission tries to patch (their hash, or their text)."""
    folder = Path(attention_course.__file__).parent / "grading"
    data = b"".join((folder / name).read_bytes() for name in ("core.py", "judges.py"))
    return data.decode() if text else hashlib.sha256(data).hexdigest()


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _read(out: Path):
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {r["submission"]: r for r in rows}, rows


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    if detect("auto").kind != "bwrap":
        pytest.skip("bubblewrap is not usable here (CI installs it)")
    subs = tmp_path_factory.mktemp("hostile")
    out = tmp_path_factory.mktemp("hostile-out")
    victim = _notebook(subs / "correct.ipynb", GOOD)
    victim_bytes = victim.read_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    where = f"VICTIM = {str(victim)!r}\nOUT = {str(out)!r}\nPORT = {port}\nMODE = 'forge'\n"
    _notebook(subs / "crafted_object.ipynb", CRAFTED)
    _notebook(subs / "forged_files.ipynb", where, GOOD, FORGE)
    _notebook(subs / "forged_symlinks.ipynb", where.replace("forge'", "link'"), GOOD, FORGE)
    _notebook(subs / "kills_parent.ipynb", GOOD, KILL_PARENT)
    _notebook(subs / "escapes.ipynb", where, ESCAPE, GOOD)
    _notebook(subs / "patches_package.ipynb", PATCH, ZERO)
    _notebook(subs / "snoops.ipynb", where, SNOOP)
    _notebook(subs / "writes_out.ipynb", where, WRITE_OUT, ZERO)
    _notebook(subs / "allocates.ipynb", ALLOCATE, NUMPY_ALLOCATE, GOOD)
    _notebook(subs / "prints.ipynb", PRINTS, GOOD)
    every = {
        "attention_course": {"questions": [f"ch0{i}.x{j}" for i in range(9) for j in range(9)]}
    }
    _notebook(subs / "metadata.ipynb", GOOD, metadata=every)
    _notebook(subs / "alice.ipynb", GOOD)
    _notebook(subs / "alice .ipynb", ZERO)
    _notebook(subs / "=HYPERLINK(1).ipynb", ZERO)
    (subs / "json_source.ipynb").write_text(
        json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                    "cells": [{"cell_type": "code", "source": {"a": 1}, "metadata": {}},
                              {"cell_type": "code", "source": GOOD, "metadata": {}}]})
    )  # fmt: skip
    (subs / os.fsdecode(b"caf\xff.ipynb")).write_bytes(victim_bytes)
    _notebook(subs / "ignores_alarm.ipynb", GOOD, IGNORE_ALARM)
    _notebook(subs / "long_c_call.ipynb", GOOD, BLOCK_ALARM)
    _notebook(subs / "fork_bomb.ipynb", FORK, GOOD)
    _notebook(subs / "network.ipynb", where, NETWORK, GOOD)
    _notebook(subs / "environment.ipynb", ENV, WHICH_CODE, GOOD)
    _notebook(subs / "fills_disk.ipynb", DISK, GOOD)
    (out / "gradebook.csv").mkdir()  # an old gradebook.csv that is a folder
    digest = _package_digest()
    os.environ[SECRET] = "do-not-leak"
    try:
        grade = batch.grade_submissions(
            [str(subs)], out, questions=[SOFTMAX], jobs=2, time_limit=6, cell_timeout=3,
            sandbox="bwrap", progress=None,
        )  # fmt: skip
    finally:
        del os.environ[SECRET]
    try:
        listener.accept()
        connected = True
    except OSError:
        connected = False
    listener.close()
    left = _processes_with(MARKER)
    rows, ordered = _read(out)
    return {
        "subs": subs, "out": out, "rows": rows, "ordered": ordered, "graded": grade,
        "victim": victim, "victim_bytes": victim_bytes, "digest": digest, "left": left,
        "connected": connected,
    }  # fmt: skip


def _log(h, name: str) -> str:
    return (h["out"] / name / "log.txt").read_bytes().decode(errors="replace")


def _honest_rows_intact(h):
    for name in ("correct", "alice"):
        assert float(h["rows"][name][SOFTMAX]) == MAX, h["rows"][name]


def test_every_submission_has_a_row_and_honest_ones_full_marks(hostile):
    assert len(hostile["ordered"]) == len(list(hostile["subs"].glob("*.ipynb")))
    _honest_rows_intact(hostile)
    assert all(float(r["max_total"]) == MAX for r in hostile["ordered"])


def test_a_crafted_returned_object_costs_only_its_own_row(hostile):
    row = hostile["rows"]["crafted_object"]
    assert float(row[SOFTMAX]) < MAX and row["status"] == "ok"


def test_forged_pipe_and_symlinked_result_files_are_refused_without_hanging(hostile):
    for name in ("forged_files", "forged_symlinks"):
        row = hostile["rows"][name]
        assert row[SOFTMAX] == "not attempted", row
        assert "refused" in row["notes"], row["notes"]
        assert float(row["seconds"]) < 120


def test_killing_the_parent_ends_only_the_sandbox(hostile):
    row = hostile["rows"]["kills_parent"]
    assert row["status"] == "ok" and row[SOFTMAX] in ("not attempted", str(int(MAX)))


def test_a_process_in_its_own_session_dies_with_the_sandbox(hostile):
    assert hostile["left"] == [], "a submission's process outlived its sandbox"
    assert hostile["victim"].read_bytes() == hostile["victim_bytes"]
    assert float(hostile["rows"]["escapes"][SOFTMAX]) == MAX  # its own answer still graded


def test_the_course_package_is_read_only_to_submissions(hostile):
    log = _log(hostile, "patches_package")
    assert "PATCHED" not in log and log.count("patch refused") == 2
    assert "patched by a submission" not in _package_digest(text=True)


def test_classmates_notebooks_are_invisible(hostile):
    assert "SNOOPED" in _log(hostile, "snoops") and "True" not in _log(hostile, "snoops")
    assert float(hostile["rows"]["snoops"][SOFTMAX]) < MAX


def test_the_out_folder_is_out_of_reach(hostile):
    out = hostile["out"]
    assert "WROTE" not in _log(hostile, "writes_out")
    assert (out / "correct").is_dir() and not (out / "correct").is_symlink()
    results = json.loads((out / "correct" / "results.json").read_text())
    assert results["score"] == MAX
    assert not (out / "writes_out").is_symlink()
    assert stat.S_ISREG(os.lstat(out / "gradebook.csv").st_mode)
    assert hostile["victim"].read_bytes() == hostile["victim_bytes"]


def test_an_old_gradebook_folder_is_moved_aside_not_a_crash(hostile):
    aside = list(hostile["out"].glob("gradebook.csv.refused-*"))
    assert len(aside) == 1 and aside[0].is_dir()


def test_memory_is_limited(hostile):
    row = hostile["rows"]["allocates"]
    assert "cell 0" in row["notes"] and "cell 1" in row["notes"], row["notes"]
    assert float(row[SOFTMAX]) == MAX


def test_output_is_bounded(hostile):
    assert (hostile["out"] / "prints" / "log.txt").stat().st_size < 100_000
    assert float(hostile["rows"]["prints"][SOFTMAX]) == MAX


def test_the_question_set_never_comes_from_a_notebook(hostile):
    row = hostile["rows"]["metadata"]
    assert float(row["max_total"]) == MAX and float(row["total"]) == MAX
    assert list(hostile["ordered"][0])[2:4] == [SOFTMAX, "total"]


def test_ids_cannot_collide_and_cells_are_escaped(hostile):
    rows = hostile["rows"]
    assert float(rows["alice"][SOFTMAX]) == MAX and rows["alice"]["file"].endswith("/alice.ipynb")
    impostor = [r for n, r in rows.items() if n.startswith("alice_-") or n.startswith("alice-")]
    assert len(impostor) == 1 and float(impostor[0][SOFTMAX]) < MAX
    formula = [r for r in hostile["ordered"] if "HYPERLINK" in r["file"]]
    assert len(formula) == 1 and formula[0]["submission"][0] not in "=+-@"
    text = (hostile["out"] / "gradebook.csv").read_text(encoding="utf-8")
    assert "\n=" not in text and ",=" not in text
    assert any("caf\\xff" in r["file"] for r in hostile["ordered"])


def test_a_malformed_cell_is_skipped_with_a_note(hostile):
    row = hostile["rows"]["json_source"]
    assert "source is not text" in row["notes"] and float(row[SOFTMAX]) == MAX


def test_ignoring_or_blocking_the_alarm_meets_the_outside_wall_clock(hostile):
    for name in ("ignores_alarm", "long_c_call"):
        row = hostile["rows"][name]
        assert "ran out of time" in row["notes"], row
        assert float(row["seconds"]) < 120


def test_processes_are_limited(hostile):
    row = hostile["rows"]["fork_bomb"]
    assert "cell 0" in row["notes"] and float(row[SOFTMAX]) == MAX
    assert "forks stopped after" in _log(hostile, "fork_bomb")


def test_no_network(hostile):
    assert not hostile["connected"]
    assert "cell 1" in hostile["rows"]["network"]["notes"]


def test_clean_environment_and_the_parents_own_package(hostile):
    log = _log(hostile, "environment")
    assert "SECRET None" in log and SECRET not in log.replace("SECRET None", "")
    assert f"PACKAGE {PACKAGE_ROOT}/attention_course/__init__.py" in log


def test_file_size_is_limited(hostile):
    row = hostile["rows"]["fills_disk"]
    assert "too large" in row["notes"].lower() and float(row[SOFTMAX]) == MAX


# --------------------------------------------------------------------------- degraded path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
def test_the_degraded_path_is_loud_and_still_limits(tmp_path):
    """Without bwrap: a loud warning, rlimits, a private folder, and every process the
    submission left behind killed. Whether the child runs as a dedicated uid depends on the
    machine (not when Python lives in /root); the package-patching attempt is made only then."""
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    victim = _notebook(subs / "correct.ipynb", GOOD)
    before = victim.read_bytes()
    where = f"VICTIM = {str(tmp_path / 'scribble')!r}\nOUT = {str(tmp_path / 'elsewhere')!r}\n"
    _notebook(subs / "escapes.ipynb", where, ESCAPE, GOOD)
    _notebook(subs / "allocates.ipynb", ALLOCATE, GOOD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dedicated = detect("none").child_uid(0) is not None
    assert "WITHOUT A SANDBOX" in str(caught[0].message)
    if dedicated:
        _notebook(subs / "patches_package.ipynb", PATCH, ZERO)
    digest = _package_digest()
    with pytest.warns(RuntimeWarning, match="WITHOUT A SANDBOX"):
        batch.grade_submissions([str(subs)], out, questions=[SOFTMAX], jobs=2, time_limit=6,
                                cell_timeout=3, sandbox="none", progress=None)  # fmt: skip
    rows, _ = _read(out)
    assert float(rows["correct"][SOFTMAX]) == MAX
    assert _processes_with(MARKER) == [] and "stray process" in rows["escapes"]["notes"]
    assert victim.read_bytes() == before and _package_digest() == digest
    assert "patched by a submission" not in _package_digest(text=True)
    assert float(rows["allocates"][SOFTMAX]) == MAX and "cell 0" in rows["allocates"]["notes"]


# --------------------------------------------------------------------------- the parent's readers


@pytest.mark.parametrize(
    "meta",
    [
        {"dtype": "float32", "shape": [65536, 65536], "offset": 0, "nbytes": 4},  # stride-0 bomb
        {"dtype": "float32", "shape": [4], "offset": 0, "nbytes": 4},  # bytes do not match
        {"dtype": "float32", "shape": [1], "offset": 10**9, "nbytes": 4},  # outside the file
        {"dtype": "object", "shape": [1], "offset": 0, "nbytes": 4},  # not a tensor dtype
        {"dtype": "float32", "shape": [-1], "offset": 0, "nbytes": 4},
        {"dtype": "float32", "shape": [1.5], "offset": 0, "nbytes": 4},
        {"dtype": "float32", "shape": [1] * 40, "offset": 0, "nbytes": 4},
        "not a record",
    ],
)
def test_forged_tensors_are_refused_before_they_exist(meta):
    header = json.dumps({"tree": {"__tensor__": 0}, "tensors": [meta]}).encode()
    data = b"ACGRADE1" + len(header).to_bytes(8, "little") + header + b"\0" * 4
    with pytest.raises(_codec.WireError):
        _codec.unpack(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x04K\x01.",  # a pickle
        b"ACGRADE1" + (10**12).to_bytes(8, "little"),
        b"ACGRADE1" + (7).to_bytes(8, "little") + b"[" * 7,
        b"ACGRADE1" + (20000).to_bytes(8, "little") + b"[" * 10000 + b"]" * 10000,
    ],
)
def test_malformed_wire_files_are_refused(data):
    with pytest.raises(_codec.WireError):
        _codec.unpack(data)


def test_the_wire_format_round_trips_plain_data():
    value = {"a": [torch.randn(2, 3), (1, 2.5, None, "x")], "b": torch.ones(3, dtype=torch.bool)}
    back = _codec.decode(_codec.unpack(_codec.pack(value)))
    assert torch.equal(back["a"][0], value["a"][0]) and back["a"][1] == (1, 2.5, None, "x")
    assert back["b"].dtype == torch.bool


def test_read_regular_refuses_pipes_symlinks_folders_and_big_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "big").write_bytes(b"0" * 1000)
    (tmp_path / "link").symlink_to(tmp_path / "big")
    for name in ("fifo", "link", "big"):
        with pytest.raises(OSError):
            batch.read_regular(tmp_path / name, 100)
    with pytest.raises(OSError):
        batch.read_regular(tmp_path, 100)


def test_outputs_never_follow_symlinks(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "results.json").write_text("classmate")
    (out / "bob").symlink_to(elsewhere)
    (out / "gradebook.csv").symlink_to(elsewhere / "results.json")
    sub = batch.Submission(name="bob", path="bob.ipynb", maxima={SOFTMAX: MAX})
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        batch._write_submission(sub, fd)
        batch._atomic_write(fd, "gradebook.csv", b"ok")
    finally:
        os.close(fd)
    assert (elsewhere / "results.json").read_text() == "classmate"
    assert (out / "bob").is_dir() and not (out / "bob").is_symlink()
    assert (out / "gradebook.csv").read_bytes() == b"ok"
    (tmp_path / "link-out").symlink_to(out)
    with pytest.raises(ValueError, match="symlink"):
        batch.grade_submissions([], tmp_path / "link-out", questions=[SOFTMAX], progress=None)


def test_names_are_injective_and_printable(tmp_path):
    files = [Path("a/alice.ipynb"), Path("a/alice .ipynb"), Path("b/bob.ipynb"),
             Path("c/bob.ipynb"), Path(os.fsdecode(b"d/\xff.ipynb"))]  # fmt: skip
    ids = batch.submission_ids(files)
    assert ids[0] == "alice" and ids[1].startswith("alice-") and len(set(ids)) == 5
    assert ids[2] != ids[3] and all(i.isprintable() and "/" not in i for i in ids)
    assert batch.printable(os.fsdecode(b"caf\xff\n.ipynb")) == "caf\\xff\\x0a.ipynb"
    assert batch._cell("=1+1") == "'=1+1" and batch._cell("-2") == "'-2"


def test_a_manifest_gives_the_question_set(tmp_path):
    manifest = tmp_path / "hw.json"
    manifest.write_text(json.dumps({"questions": ["ch03.masked_softmax"]}))
    assert batch.resolve_questions(None, manifest) == [SOFTMAX]
    with pytest.raises(ValueError):
        batch.resolve_questions(None, None)
    assert sys.executable  # the child runs this interpreter, with the parent's package first
