//! What the fuzz targets share: an encoder for SFTP requests written from the protocol draft,
//! independent of the sidecar's decoder so a round trip checks one against the other, and the
//! framing of a fuzz input as a stream of SFTP packets.

use bytes::{BufMut, Bytes, BytesMut};
use podsftp_sidecar::sftp::codec::{Attrs, Packet, Request};

fn put_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

/// Attribute flags (size, uid/gid, permissions, times) and the fields that are present.
fn put_attrs(out: &mut BytesMut, a: &Attrs) {
    let pair = |x: u32, y: u32| [x.to_be_bytes(), y.to_be_bytes()].concat();
    let fields = [
        a.size.map(|size| size.to_be_bytes().to_vec()),
        a.uid_gid.map(|(uid, gid)| pair(uid, gid)),
        a.permissions.map(|mode| mode.to_be_bytes().to_vec()),
        a.times.map(|(atime, mtime)| pair(atime, mtime)),
    ];
    let flags = fields.iter().enumerate().filter(|(_, f)| f.is_some()).fold(0, |flags, (bit, _)| flags | 1 << bit);
    out.put_u32(flags);
    for field in fields.iter().flatten() {
        out.put_slice(field);
    }
}

fn put_ids(out: &mut BytesMut, ids: &[u32]) {
    let packed: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    put_string(out, &packed);
}

/// The body of the packet (type byte first, no length prefix) a client sends for `packet`.
pub fn encode_request(packet: &Packet) -> Bytes {
    let mut out = BytesMut::new();
    let (id, request) = match packet {
        Packet::Init { version } => {
            out.put_u8(1);
            out.put_u32(*version);
            return out.freeze();
        }
        Packet::Request { id, request } => (*id, request),
    };
    let (kind, extension): (u8, Option<&[u8]>) = match request {
        Request::Open { .. } => (3, None),
        Request::Close { .. } => (4, None),
        Request::Read { .. } => (5, None),
        Request::Write { .. } => (6, None),
        Request::Lstat { .. } => (7, None),
        Request::Fstat { .. } => (8, None),
        Request::Setstat { .. } => (9, None),
        Request::Fsetstat { .. } => (10, None),
        Request::Opendir { .. } => (11, None),
        Request::Readdir { .. } => (12, None),
        Request::Remove { .. } => (13, None),
        Request::Mkdir { .. } => (14, None),
        Request::Rmdir { .. } => (15, None),
        Request::Realpath { .. } => (16, None),
        Request::Stat { .. } => (17, None),
        Request::Rename { .. } => (18, None),
        Request::Readlink { .. } => (19, None),
        Request::Symlink { .. } => (20, None),
        Request::PosixRename { .. } => (200, Some(b"posix-rename@openssh.com")),
        Request::Statvfs { .. } => (200, Some(b"statvfs@openssh.com")),
        Request::Fstatvfs { .. } => (200, Some(b"fstatvfs@openssh.com")),
        Request::Hardlink { .. } => (200, Some(b"hardlink@openssh.com")),
        Request::Fsync { .. } => (200, Some(b"fsync@openssh.com")),
        Request::Lsetstat { .. } => (200, Some(b"lsetstat@openssh.com")),
        Request::Limits => (200, Some(b"limits@openssh.com")),
        Request::ExpandPath { .. } => (200, Some(b"expand-path@openssh.com")),
        Request::CopyData { .. } => (200, Some(b"copy-data")),
        Request::HomeDirectory => (200, Some(b"home-directory")),
        Request::UsersGroupsById { .. } => (200, Some(b"users-groups-by-id@openssh.com")),
        Request::UnknownExtended { name } => (200, Some(name)),
        Request::Unknown { kind } => (*kind, None),
    };
    out.put_u8(kind);
    out.put_u32(id);
    if let Some(name) = extension {
        put_string(&mut out, name);
    }
    match request {
        Request::Open { path, pflags, attrs } => {
            put_string(&mut out, path);
            out.put_u32(*pflags);
            put_attrs(&mut out, attrs);
        }
        Request::Read { handle, offset, len } => {
            put_string(&mut out, handle);
            out.put_u64(*offset);
            out.put_u32(*len);
        }
        Request::Write { handle, offset, data } => {
            put_string(&mut out, handle);
            out.put_u64(*offset);
            put_string(&mut out, data);
        }
        // A handle is a string on the wire like a path.
        Request::Setstat { path, attrs }
        | Request::Mkdir { path, attrs }
        | Request::Lsetstat { path, attrs }
        | Request::Fsetstat { handle: path, attrs } => {
            put_string(&mut out, path);
            put_attrs(&mut out, attrs);
        }
        Request::Lstat { path }
        | Request::Opendir { path }
        | Request::Remove { path }
        | Request::Rmdir { path }
        | Request::Realpath { path }
        | Request::Stat { path }
        | Request::Readlink { path }
        | Request::Statvfs { path }
        | Request::ExpandPath { path }
        | Request::Close { handle: path }
        | Request::Fstat { handle: path }
        | Request::Readdir { handle: path }
        | Request::Fstatvfs { handle: path }
        | Request::Fsync { handle: path } => put_string(&mut out, path),
        // SYMLINK as OpenSSH sends it: target first.
        Request::Rename { from, to }
        | Request::PosixRename { from, to }
        | Request::Hardlink { from, to }
        | Request::Symlink { target: from, link: to } => {
            put_string(&mut out, from);
            put_string(&mut out, to);
        }
        Request::CopyData { read_handle, read_offset, len, write_handle, write_offset } => {
            put_string(&mut out, read_handle);
            out.put_u64(*read_offset);
            out.put_u64(*len);
            put_string(&mut out, write_handle);
            out.put_u64(*write_offset);
        }
        Request::HomeDirectory => put_string(&mut out, b""),
        Request::UsersGroupsById { uids, gids } => {
            put_ids(&mut out, uids);
            put_ids(&mut out, gids);
        }
        Request::Limits | Request::UnknownExtended { .. } | Request::Unknown { .. } => {}
    }
    out.freeze()
}

/// A client's byte stream: INIT, then each piece of `data` (a big-endian u16 length and that
/// many bytes; a short last piece is cut) as one length-prefixed packet.
pub fn packet_stream(data: &[u8]) -> Vec<u8> {
    let mut stream = vec![0, 0, 0, 5, 1, 0, 0, 0, 3];
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (body, next) = tail.split_at(len);
        stream.extend_from_slice(&(len as u32).to_be_bytes());
        stream.extend_from_slice(body);
        rest = next;
    }
    stream
}
