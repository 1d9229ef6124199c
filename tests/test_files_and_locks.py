"""Files that survive a kill at any byte, and the run-directory lock.

The JSON-lines files are cut at every byte offset (what a SIGKILL mid-write can leave) and must
read back as their complete records; the writer must append after a torn tail without gluing
lines together; the progress follower must survive a resume's rewrite. The lock is taken by a
real second process, and released by the kernel when that process is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from axolab.files import (JsonlFollower, append_jsonl, drop_torn_tail, read_jsonl,
                          rewrite_jsonl, write_text_atomic)
from axolab.metrics import MetricsLog, read_metrics
from axolab.runlock import RunDirLock, RunDirLocked, check_unlocked

RECORDS = [{"step": i, "loss": 4.0 / i, "note": "é ünïcode"} for i in range(1, 6)]


def _whole(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_a_cut_at_any_byte_reads_as_the_complete_lines(tmp_path):
    data = _whole(RECORDS)
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    path = tmp_path / "m.jsonl"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        complete = sum(1 for e in ends if e <= cut)
        assert read_jsonl(path) == RECORDS[:complete], cut


def test_the_writer_cuts_a_torn_tail_before_appending(tmp_path):
    data = _whole(RECORDS)
    path = tmp_path / "metrics.jsonl"
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        survivors = read_jsonl(path)
        # What the training loop does on resume: open the log, append the next record.
        log = MetricsLog(path, resume_step=len(survivors), enabled=True)
        log.write({"step": len(survivors) + 1, "loss": 0.0})
        text = path.read_text()
        assert text.endswith("\n")
        assert [json.loads(line) for line in text.splitlines()] == \
            survivors + [{"step": len(survivors) + 1, "loss": 0.0}]


def test_resume_drops_lines_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_whole(RECORDS) + b'{"step": 6, "lo')
    MetricsLog(path, resume_step=3, enabled=True)
    assert read_metrics(tmp_path) == RECORDS[:3]
    assert drop_torn_tail(path) == 0


def test_follower_reads_across_a_rewrite_and_never_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for r in RECORDS[:3]:
        append_jsonl(path, r)
    follower = JsonlFollower(path)  # started on a file from an earlier session
    assert follower.records() == []
    with open(path, "ab") as f:
        f.write(b'{"step": 4, "lo')  # half a line: not yet
    assert follower.records() == []
    with open(path, "ab") as f:
        f.write(b'ss": 1.0}\nnot json at all\n')
    assert follower.records() == [{"step": 4, "loss": 1.0}]
    # A resume rewrites the file (a new inode) and appends at once, so that the new file is
    # longer than the old offset: the follower must start over, not read from mid-line.
    rewrite_jsonl(path, lambda r: r["step"] <= 2)
    for r in RECORDS[2:]:
        append_jsonl(path, r)
    assert follower.records() == RECORDS


def test_atomic_write_leaves_old_or_new(tmp_path):
    path = tmp_path / "status.json"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


HOLDER = """
import sys, time
from axolab.runlock import RunDirLock
lock = RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"in use by pid {holder.pid} on "):
            check_unlocked(run_dir)
        started = time.monotonic()
        with pytest.raises(RunDirLocked, match=f"in use by pid {holder.pid}"):
            RunDirLock(run_dir, wait_s=0.5).acquire()
        assert time.monotonic() - started >= 0.5
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock: no stale lock to clean up by hand.
    check_unlocked(run_dir)
    with RunDirLock(run_dir) as lock:
        assert json.loads(Path(lock.path).read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirLocked):
            RunDirLock(run_dir).acquire()  # a second lock in the same process is refused too


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_of_any_new_file(tmp_path, umask):
    """A rewritten file has the mode open() would give a new one (0o666 less the umask), not
    the temporary file's private 0o600; the umask itself is left as it was."""
    from axolab.files import current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        path = tmp_path / "eval.json"
        write_text_atomic(path, "{}\n")
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        path.chmod(0o600)  # a rewrite gives the normal mode again
        write_text_atomic(path, "{}\n")
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        with open(tmp_path / "plain", "w"):
            pass
        assert (tmp_path / "plain").stat().st_mode & 0o777 == path.stat().st_mode & 0o777
        assert os.umask(umask) == umask  # current_umask did not change it
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
