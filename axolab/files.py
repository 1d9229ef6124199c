"""Files that survive a kill at any byte: atomic rewrites and append-only JSON lines.

Every file a run keeps (metrics, sessions, status, configs) is written one of two ways (and a
directory a command produces whole, a dataset or a report, replaces the old one in one step,
``replace_directory``):
- rewritten whole through a temporary file in the same directory and a rename, so a reader sees
  the old file or the new one, never half of either;
- appended one JSON line at a time by a single writer (the run directory's lock holder). A kill
  can leave only the last line incomplete; readers drop it, and the next writer cuts it off
  before appending, so a torn line is never glued to the next record.
Torch-free: the notebook kernel and the launcher read these files.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc, kernel 4.7+):
    setting it to read it back would briefly apply another umask to every other thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a uniquely named temporary file and a rename (two
    writers never share a temporary file; a reader never sees a partial file). The file gets
    the mode any new file gets (0o666 less the umask), not the temporary file's private 0o600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE). False where the
    system or the file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc older than 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(new: str | Path, out: str | Path) -> None:
    """Put the finished directory ``new`` (a sibling of ``out``) at ``out``, replacing what is
    there. With an atomic exchange there is always a whole directory at ``out``; without one, a
    kill between the two renames leaves the previous one whole under ``.<name>.*.old`` beside
    it. The previous directory is deleted only once the new one is in place."""
    new, out = Path(new), Path(out)
    if not os.path.lexists(out):
        new.rename(out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # now the previous directory
        return
    old = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _complete_length(path: Path) -> int:
    """Bytes of ``path`` up to and including its last newline."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                return pos - step + cut + 1
            pos -= step
    return 0


def drop_torn_tail(path: str | Path) -> int:
    """Cut an incomplete last line (left by a kill mid-write) off ``path``; returns the bytes
    removed. Only the file's single writer may call it."""
    path = Path(path)
    if not path.is_file():
        return 0
    size, keep = path.stat().st_size, _complete_length(path)
    if keep < size:
        os.truncate(path, keep)
    return size - keep


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as one line with a single write to an O_APPEND descriptor."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a short write (signals, full pipes): finish the line
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)


def parse_jsonl(text: str, where: str = "JSON lines", skip_damaged: bool = False) -> list[dict]:
    """Records of complete lines; a last line without its newline is incomplete and dropped.
    A damaged line elsewhere is an error naming the file and the line (or, with
    ``skip_damaged``, left out)."""
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1] is "" or the torn tail
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if not skip_damaged:
                raise ValueError(f"{where}, line {number}: not valid JSON ({e})") from None
    return records


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete record of a JSON-lines file ([] if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return parse_jsonl(path.read_text(errors="replace"), str(path))


def rewrite_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> None:
    """Atomically rewrite ``path`` with the complete records that ``keep`` accepts. A damaged
    line (edited by hand, say) is left out rather than stopping a resume over a log."""
    path = Path(path)
    text = path.read_text(errors="replace") if path.is_file() else ""
    records = [r for r in parse_jsonl(text, str(path), skip_damaged=True)
               if isinstance(r, dict) and keep(r)]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


class JsonlFollower:
    """New complete records of a JSON-lines file that another process appends to, across
    atomic rewrites (a new inode: read again from the start) and torn tails (never parsed
    until their newline arrives). A line that does not parse is skipped, never raised: a
    watcher must not stop a healthy job over a display."""

    def __init__(self, path: str | Path, from_start: bool = False):
        self.path = Path(path)
        self.inode, self.offset = None, 0
        if not from_start and self.path.exists():
            st = self.path.stat()
            self.inode, self.offset = st.st_ino, _complete_length(self.path)

    def records(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self.inode, self.offset = st.st_ino, 0
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out
