#!/usr/bin/env python3
"""Writes the hand-made seeds of the SFTP fuzz targets (run from this directory): sessions
that touch every request type for sftp_session (each packet framed as a u16 length and its
body, as the target reads them) and each packet body alone for sftp_codec. Handles are the
server's "0", "1", ... in the order they are opened."""
import os
import struct
def s(b): return struct.pack(">I", len(b)) + b
def u32(x): return struct.pack(">I", x)
def u64(x): return struct.pack(">Q", x)
NOATTR = u32(0)
def req(kind, id, *fields): return bytes([kind]) + u32(id) + b"".join(fields)
def ext(id, name, *fields): return req(200, id, s(name), *fields)
def frame(bodies): return b"".join(struct.pack(">H", len(b)) + b for b in bodies)
sessions = {
 "write_read": [req(3, 1, s(b"/new"), u32(0x1a), NOATTR), req(6, 2, s(b"0"), u64(0), s(b"hello")), req(8, 3, s(b"0")),
                req(10, 4, s(b"0"), u32(4), u32(0o600)), ext(5, b"fsync@openssh.com", s(b"0")), req(4, 6, s(b"0")),
                req(3, 7, s(b"/new"), u32(1), NOATTR), req(5, 8, s(b"1"), u64(0), u32(100)), req(5, 9, s(b"1"), u64(5), u32(100)), req(4, 10, s(b"1"))],
 "listing": [req(11, 1, s(b"/")), req(12, 2, s(b"0")), req(12, 3, s(b"0")), req(4, 4, s(b"0")),
             ext(5, b"users-groups-by-id@openssh.com", s(u32(0) + u32(1000)), s(u32(0)))],
 "paths": [req(16, 1, s(b"/l/../d/up/f")), ext(2, b"expand-path@openssh.com", s(b"~/d")), req(17, 3, s(b"/l")), req(7, 4, s(b"/l")),
           req(19, 5, s(b"/l")), req(20, 6, s(b"/f"), s(b"/d/link")), req(14, 7, s(b"/d/sub"), NOATTR), req(18, 8, s(b"/d/sub"), s(b"/d/sub2")),
           ext(9, b"posix-rename@openssh.com", s(b"/d/sub2"), s(b"/d/sub3")), req(15, 10, s(b"/d/sub3")),
           ext(11, b"hardlink@openssh.com", s(b"/f"), s(b"/d/hard")), req(13, 12, s(b"/d/hard")),
           req(9, 13, s(b"/f"), u32(0xf), u64(3), u32(0), u32(0), u32(0o644), u32(1), u32(2)),
           ext(14, b"lsetstat@openssh.com", s(b"/l"), u32(8), u32(1), u32(2)), ext(15, b"statvfs@openssh.com", s(b"/")),
           ext(16, b"limits@openssh.com"), ext(17, b"home-directory", s(b""))],
 "copy": [req(3, 1, s(b"/f"), u32(1), NOATTR), req(3, 2, s(b"/copy"), u32(0x1a), NOATTR),
          ext(3, b"copy-data", s(b"0"), u64(0), u64(0), s(b"1"), u64(0)), ext(4, b"fstatvfs@openssh.com", s(b"1")), req(4, 5, s(b"0")), req(4, 6, s(b"1"))],
}
os.makedirs("sftp_session", exist_ok=True)
os.makedirs("sftp_codec", exist_ok=True)
for name, bodies in sessions.items():
    with open(os.path.join("sftp_session", name), "wb") as f:
        f.write(frame(bodies))
    for i, body in enumerate(bodies):
        with open(os.path.join("sftp_codec", f"{name}-{i}"), "wb") as f:
            f.write(body)
