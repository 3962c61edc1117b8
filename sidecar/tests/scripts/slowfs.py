"""A read-only FUSE filesystem whose one file, slow.bin, takes SLOW seconds per read: a slow
disk for the concurrency test. Usage: slowfs.py MOUNTPOINT SLOW_SECONDS (runs in the
foreground until unmounted or killed)."""
import errno, stat, sys, time

from fusepy import FUSE, FuseOSError, Operations  # Debian's python3-fusepy

CONTENT = b"slow disk\n" * 1000


class SlowFs(Operations):
    def __init__(self, slow):
        self.slow = slow

    def getattr(self, path, fh=None):
        now = time.time()
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_atime=now, st_mtime=now, st_ctime=now)
        if path == "/slow.bin":
            return dict(st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=len(CONTENT), st_atime=now, st_mtime=now, st_ctime=now)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "slow.bin"]

    def read(self, path, size, offset, fh):
        time.sleep(self.slow)
        return CONTENT[offset:offset + size]


if __name__ == "__main__":
    # direct_io: every read reaches us (no page cache), so every read is slow.
    FUSE(SlowFs(float(sys.argv[2])), sys.argv[1], foreground=True, ro=True, nothreads=False, allow_other=True, direct_io=True)
