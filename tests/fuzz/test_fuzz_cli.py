"""The command line on hostile input, as a user runs it (real subprocesses, a few: each costs a Python start).

The in-process cases (test_fuzz_importers, test_fuzz_control) cover the parsing; these check what only a
real process shows: exit codes, that stderr holds one `error:` line and never a traceback, and that
`summary --json` on stdout is strict JSON. Independent commands run two at a time.
"""

from __future__ import annotations

import subprocess
import sys

from tests.fuzz.fuzzing import FIX, strict_json, written_files
from tests.logbook.proc_helpers import ROOT, child_env


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "midflight.logbook", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


def _done(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=120)
    assert "Traceback" not in err, err
    return p.returncode, out, err


def _one_line_error(rc: int, err: str) -> None:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(("error:", "usage:")) or "error:" in lines[-1], err


def test_cli_on_hostile_files(tmp_path):
    hostile = tmp_path / "hostile.log"
    lines = (FIX / "fairseq_legacy_pipe_format.log").read_bytes().splitlines()
    lines[3:3] = [
        b"| loaded checkpoint /c/x.pt (epoch 1 @ 99999999999999999999 updates)",
        b"| epoch 001:   3 / 9999 loss=4.0, ppl=16.0, num_updates=1e30, lr=0.1",
        b"| epoch 001:   4 / 9999 loss=4.0, num_updates=" + b"9" * (128 * 1024 + 1),
        b"\x00\xff\xfe binary junk \x1f\x8b",
    ]
    hostile.write_bytes(b"\r\n".join(lines) + b"\r\n")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    run, refused = tmp_path / "run", tmp_path / "refused"

    a = _start("import", "fairseq", hostile, "--run-dir", run, "-q")
    b = _start("import", "csv", empty, "--run-dir", refused, "-q")
    rc, out, err = _done(a)
    assert rc == 0 and "skipped 3 malformed lines" in out, out + err
    rc, out, err = _done(b)
    _one_line_error(rc, err)
    assert not written_files(refused)  # a refused import leaves no run behind

    summary = _start("summary", run, "--json", "-q")
    annotate = _start("annotate", run, "--step", "99999999999999999999", "--text", "x")
    rc, out, err = _done(summary)
    assert rc == 0, err
    assert strict_json(out)["last_step"] is not None
    rc, out, err = _done(annotate)
    _one_line_error(rc, err)

    rc, out, err = _done(_start("export", "html", run, "-o", tmp_path / "run.html", "-q"))
    assert rc == 0 and (tmp_path / "run.html").stat().st_size > 0, err
