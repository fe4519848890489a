"""A FUSE passthrough that loses every write not yet fsynced when its process dies: power loss, in software.

    python -m loadtest.lazyfs BACKING MOUNTPOINT     # serves until killed; SIGKILL = the power goes

Like Jepsen's LazyFS: file data written through MOUNTPOINT stays in this process's memory (the "page cache")
until the file is fsynced, when the dirty pages go to BACKING and are fsynced there. Kill this process and
every unsynced write is gone; BACKING holds exactly what a disk would after a power cut at that instant.
Metadata (create, rename, unlink, mkdir) goes to BACKING at once, as on a journaling file system whose
journal was committed: after a crash a file exists with the contents of its last fsync (empty if never).
The kernel's own periodic writeback (dirty pages flushed after ~30 s) is not modelled: the worst case.

Used by loadtest.powerloss under NATS's JetStream store; tests/test_durability.py checks it on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mfusepy as fuse

PAGE = 4096
STAT_KEYS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


@dataclass
class Dirty:
    """One file's unsynced state: its size as readers see it, how much of the backing file is still valid
    (a truncate since the last fsync invalidates the rest), and the pages written since."""

    size: int
    valid: int
    pages: dict[int, bytearray] = field(default_factory=dict)


class LazyFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.dirty: dict[str, Dirty] = {}
        self.mutex = threading.Lock()

    def real(self, path: str) -> str:
        return str(self.backing) + path

    # ------------------------------------------------------------------ unsynced file data
    def _state(self, path: str) -> Dirty:
        d = self.dirty.get(path)
        if d is None:
            size = os.stat(self.real(path)).st_size
            d = self.dirty[path] = Dirty(size=size, valid=size)
        return d

    def _page(self, path: str, d: Dirty, i: int) -> bytearray:
        page = d.pages.get(i)
        if page is None:
            start = i * PAGE
            data = b""
            if start < d.valid:
                fd = os.open(self.real(path), os.O_RDONLY)
                try:
                    data = os.pread(fd, min(PAGE, d.valid - start), start)
                finally:
                    os.close(fd)
            page = d.pages[i] = bytearray(data.ljust(PAGE, b"\0"))
        return page

    def _sync(self, path: str) -> None:
        d = self.dirty.pop(path, None)
        if d is None:
            return
        fd = os.open(self.real(path), os.O_WRONLY)
        try:
            for i, page in sorted(d.pages.items()):
                n = min(PAGE, d.size - i * PAGE)
                if n > 0:
                    os.pwrite(fd, bytes(page[:n]), i * PAGE)
            os.ftruncate(fd, d.size)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ files
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self.real(path))
        attrs = {k: getattr(st, k) for k in STAT_KEYS}
        with self.mutex:
            d = self.dirty.get(path)
            if d is not None:
                attrs["st_size"] = d.size
        return attrs

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        os.close(os.open(self.real(path), os.O_CREAT | os.O_WRONLY, mode))
        return 0

    def open(self, path: str, flags: int) -> int:
        if not os.path.exists(self.real(path)):
            raise fuse.FuseOSError(errno.ENOENT)
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            d = self.dirty.get(path)
            if d is None:
                fd = os.open(self.real(path), os.O_RDONLY)
                try:
                    return os.pread(fd, size, offset)
                finally:
                    os.close(fd)
            end = min(offset + size, d.size)
            out = bytearray()
            pos = offset
            while pos < end:
                i, at = divmod(pos, PAGE)
                take = min(PAGE - at, end - pos)
                out += self._page(path, d, i)[at:at + take]
                pos += take
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            d = self._state(path)
            pos, view = offset, memoryview(data)
            while view:
                i, at = divmod(pos, PAGE)
                take = min(PAGE - at, len(view))
                self._page(path, d, i)[at:at + take] = view[:take]
                pos += take
                view = view[take:]
            d.size = max(d.size, offset + len(data))
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.mutex:
            d = self._state(path)
            if length < d.size:
                for i in [i for i in d.pages if i * PAGE >= length]:
                    del d.pages[i]
                i, at = divmod(length, PAGE)
                if at:
                    page = self._page(path, d, i)
                    page[at:] = bytes(PAGE - at)
                d.valid = min(d.valid, length)
            d.size = length
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self._sync(path)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() persists nothing: only fsync does

    def release(self, path: str, fh: int) -> int:
        return 0

    # ------------------------------------------------------------------ metadata: durable at once
    def destroy(self, path: str) -> None:
        """A clean unmount writes everything back, as an orderly shutdown does."""
        with self.mutex:
            for key in list(self.dirty):
                with contextlib.suppress(OSError):
                    self._sync(key)

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self.real(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self.real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self.real(path))
        return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            os.unlink(self.real(path))
            self.dirty.pop(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            os.rename(self.real(old), self.real(new))
            self.dirty.pop(new, None)
            for key in [k for k in self.dirty if k == old or k.startswith(old + "/")]:
                self.dirty[new + key[len(old):]] = self.dirty.pop(key)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self.real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self.real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self.real(path))
        else:
            os.utime(self.real(path), ns=times)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.real(path))
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                            "f_ffree", "f_favail", "f_flag", "f_namemax")}


class Mount:
    """A LazyFS in its own process (so that killing it is the crash), mounted until `crash()` or `close()`."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.target = str(mountpoint.resolve())  # as /proc/mounts names it (resolved before anything is mounted)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.unmount()  # a mount left by a crash
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.lazyfs", str(self.backing), str(self.mountpoint)])
        deadline = time.monotonic() + timeout
        while not self.mounted():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint}")
            time.sleep(0.05)

    def crash(self) -> None:
        """The power goes: SIGKILL, so nothing unsynced reaches BACKING; then detach the dead mount."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.unmount()

    def mounted(self) -> bool:
        """From /proc/mounts: a dead daemon's mount is still there, though stat() on it fails."""
        with open("/proc/mounts") as f:
            return any(line.split()[1] == self.target for line in f)

    def unmount(self) -> None:
        fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
        for _ in range(50):
            if not self.mounted():
                return
            subprocess.run([fusermount, "-u", "-z", str(self.mountpoint)], check=False, capture_output=True)
            time.sleep(0.05)

    def close(self) -> None:
        """Orderly: unmount while serving, which writes everything back (`destroy`)."""
        self.unmount()
        if self.proc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("backing", type=Path)
    p.add_argument("mountpoint", type=Path)
    args = p.parse_args()
    fuse.FUSE(LazyFS(args.backing.resolve()), str(args.mountpoint), foreground=True, nothreads=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
