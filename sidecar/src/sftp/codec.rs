//! SFTP version 3 wire format (draft-ietf-secsh-filexfer-02 as OpenSSH speaks it): bytes to typed
//! requests and typed responses to bytes. Pure and allocation-light so it can be unit tested and
//! fuzzed on malformed input; names stay raw bytes (no UTF-8 assumption anywhere).

use bytes::{BufMut, Bytes, BytesMut};

use super::requests::Kind;

/// Largest SFTP packet (length field excluded) we accept; we advertise `MAX_PACKET` in
/// `limits@openssh.com` and allow a little slack for request headers around a maximal WRITE.
pub const MAX_PACKET: u32 = 256 * 1024;
pub const MAX_INCOMING_PACKET: u32 = MAX_PACKET + 1024;
/// Largest READ/WRITE payload we advertise (leaves room for headers inside `MAX_PACKET`).
pub const MAX_IO: u32 = MAX_PACKET - 1024;

pub mod fxp {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

/// SSH_FX_* status codes of version 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StatusCode {
    Ok = 0,
    Eof = 1,
    NoSuchFile = 2,
    PermissionDenied = 3,
    Failure = 4,
    BadMessage = 5,
    OpUnsupported = 8,
}

pub mod pflags {
    pub const READ: u32 = 0x01;
    pub const WRITE: u32 = 0x02;
    pub const APPEND: u32 = 0x04;
    pub const CREAT: u32 = 0x08;
    pub const TRUNC: u32 = 0x10;
    pub const EXCL: u32 = 0x20;
}

mod attr_flags {
    pub const SIZE: u32 = 0x01;
    pub const UIDGID: u32 = 0x02;
    pub const PERMISSIONS: u32 = 0x04;
    pub const ACMODTIME: u32 = 0x08;
    pub const EXTENDED: u32 = 0x8000_0000;
}

/// File attributes; `None` means "not present" on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    pub permissions: Option<u32>,
    /// (atime, mtime) in seconds since the epoch.
    pub times: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Open {
        path: Vec<u8>,
        pflags: u32,
        attrs: Attrs,
    },
    Close {
        handle: Vec<u8>,
    },
    Read {
        handle: Vec<u8>,
        offset: u64,
        len: u32,
    },
    Write {
        handle: Vec<u8>,
        offset: u64,
        data: Bytes,
    },
    Lstat {
        path: Vec<u8>,
    },
    Fstat {
        handle: Vec<u8>,
    },
    Setstat {
        path: Vec<u8>,
        attrs: Attrs,
    },
    Fsetstat {
        handle: Vec<u8>,
        attrs: Attrs,
    },
    Opendir {
        path: Vec<u8>,
    },
    Readdir {
        handle: Vec<u8>,
    },
    Remove {
        path: Vec<u8>,
    },
    Mkdir {
        path: Vec<u8>,
        attrs: Attrs,
    },
    Rmdir {
        path: Vec<u8>,
    },
    Realpath {
        path: Vec<u8>,
    },
    Stat {
        path: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Readlink {
        path: Vec<u8>,
    },
    /// OpenSSH order on the wire: target first, then the link path.
    Symlink {
        target: Vec<u8>,
        link: Vec<u8>,
    },
    PosixRename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Statvfs {
        path: Vec<u8>,
    },
    Fstatvfs {
        handle: Vec<u8>,
    },
    Hardlink {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Fsync {
        handle: Vec<u8>,
    },
    Lsetstat {
        path: Vec<u8>,
        attrs: Attrs,
    },
    Limits,
    ExpandPath {
        path: Vec<u8>,
    },
    CopyData {
        read_handle: Vec<u8>,
        read_offset: u64,
        len: u64,
        write_handle: Vec<u8>,
        write_offset: u64,
    },
    HomeDirectory,
    /// `users-groups-by-id@openssh.com`: names for these ids.
    UsersGroupsById {
        uids: Vec<u32>,
        gids: Vec<u32>,
    },
    /// An extension we do not implement: answered with SSH_FX_OP_UNSUPPORTED.
    UnknownExtended {
        name: Vec<u8>,
    },
    /// A packet type we do not know: answered with SSH_FX_OP_UNSUPPORTED.
    Unknown {
        kind: u8,
    },
}

/// A decoded request packet: the request id and what is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Init { version: u32 },
    Request { id: u32, request: Request },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("packet truncated")]
    Truncated,
    #[error("empty packet")]
    Empty,
    #[error("id list of {0} bytes is not a list of uint32")]
    IdList(usize),
}

/// Reads big-endian SSH primitives from a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(((self.u32()? as u64) << 32) | self.u32()? as u64)
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<Vec<u8>, DecodeError> {
        Ok(self.bytes()?.to_vec())
    }
    fn attrs(&mut self) -> Result<Attrs, DecodeError> {
        let flags = self.u32()?;
        let mut attrs = Attrs::default();
        if flags & attr_flags::SIZE != 0 {
            attrs.size = Some(self.u64()?);
        }
        if flags & attr_flags::UIDGID != 0 {
            attrs.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & attr_flags::PERMISSIONS != 0 {
            attrs.permissions = Some(self.u32()?);
        }
        if flags & attr_flags::ACMODTIME != 0 {
            attrs.times = Some((self.u32()?, self.u32()?));
        }
        if flags & attr_flags::EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Ok(attrs)
    }
}

/// Decodes one packet body (the bytes after the 4-byte length). `body` is a `Bytes` so WRITE
/// payloads are sliced, not copied.
pub fn decode(body: &Bytes) -> Result<Packet, DecodeError> {
    let mut r = Reader { buf: body };
    let kind = r.u8().map_err(|_| DecodeError::Empty)?;
    if kind == fxp::INIT {
        // Extensions a v3 client may append after the version are ignored.
        return Ok(Packet::Init { version: r.u32()? });
    }
    let id = r.u32()?;
    let request = match kind {
        fxp::OPEN => Request::Open { path: r.string()?, pflags: r.u32()?, attrs: r.attrs()? },
        fxp::CLOSE => Request::Close { handle: r.string()? },
        fxp::READ => Request::Read { handle: r.string()?, offset: r.u64()?, len: r.u32()? },
        fxp::WRITE => {
            let handle = r.string()?;
            let offset = r.u64()?;
            let data = r.bytes()?;
            let start = data.as_ptr() as usize - body.as_ptr() as usize;
            Request::Write { handle, offset, data: body.slice(start..start + data.len()) }
        }
        fxp::LSTAT => Request::Lstat { path: r.string()? },
        fxp::FSTAT => Request::Fstat { handle: r.string()? },
        fxp::SETSTAT => Request::Setstat { path: r.string()?, attrs: r.attrs()? },
        fxp::FSETSTAT => Request::Fsetstat { handle: r.string()?, attrs: r.attrs()? },
        fxp::OPENDIR => Request::Opendir { path: r.string()? },
        fxp::READDIR => Request::Readdir { handle: r.string()? },
        fxp::REMOVE => Request::Remove { path: r.string()? },
        fxp::MKDIR => Request::Mkdir { path: r.string()?, attrs: r.attrs()? },
        fxp::RMDIR => Request::Rmdir { path: r.string()? },
        fxp::REALPATH => Request::Realpath { path: r.string()? },
        fxp::STAT => Request::Stat { path: r.string()? },
        fxp::RENAME => Request::Rename { from: r.string()?, to: r.string()? },
        fxp::READLINK => Request::Readlink { path: r.string()? },
        fxp::SYMLINK => Request::Symlink { target: r.string()?, link: r.string()? },
        fxp::EXTENDED => decode_extended(&mut r)?,
        other => Request::Unknown { kind: other },
    };
    // Like OpenSSH, bytes after the fields are ignored: clients pad packets (older pkg/sftp
    // pads WRITEs), append REALPATH's v6 control byte or RENAME's v5 flags.
    Ok(Packet::Request { id, request })
}

fn decode_extended(r: &mut Reader<'_>) -> Result<Request, DecodeError> {
    let name = r.bytes()?;
    Ok(match Kind::extension(name) {
        Some(Kind::PosixRename) => Request::PosixRename { from: r.string()?, to: r.string()? },
        Some(Kind::Statvfs) => Request::Statvfs { path: r.string()? },
        Some(Kind::Fstatvfs) => Request::Fstatvfs { handle: r.string()? },
        Some(Kind::Hardlink) => Request::Hardlink { from: r.string()?, to: r.string()? },
        Some(Kind::Fsync) => Request::Fsync { handle: r.string()? },
        Some(Kind::Lsetstat) => Request::Lsetstat { path: r.string()?, attrs: r.attrs()? },
        Some(Kind::Limits) => Request::Limits,
        Some(Kind::ExpandPath) => Request::ExpandPath { path: r.string()? },
        Some(Kind::CopyData) => Request::CopyData {
            read_handle: r.string()?,
            read_offset: r.u64()?,
            len: r.u64()?,
            write_handle: r.string()?,
            write_offset: r.u64()?,
        },
        Some(Kind::HomeDirectory) => {
            r.bytes()?;
            Request::HomeDirectory
        }
        Some(Kind::UsersGroupsById) => Request::UsersGroupsById { uids: id_list(r.bytes()?)?, gids: id_list(r.bytes()?)? },
        _ => Request::UnknownExtended { name: name.to_vec() },
    })
}

/// A string holding packed uint32s.
fn id_list(bytes: &[u8]) -> Result<Vec<u32>, DecodeError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(DecodeError::IdList(bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// One entry of a NAME response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    pub filename: Vec<u8>,
    pub longname: Vec<u8>,
    pub attrs: Attrs,
}

/// `statvfs@openssh.com` reply fields, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatVfs {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub favail: u64,
    pub fsid: u64,
    pub flag: u64,
    pub namemax: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Version {
        extensions: Vec<(&'static str, &'static str)>,
    },
    Status {
        id: u32,
        code: StatusCode,
        message: String,
    },
    Handle {
        id: u32,
        handle: Vec<u8>,
    },
    Data {
        id: u32,
        data: Bytes,
    },
    Name {
        id: u32,
        entries: Vec<NameEntry>,
    },
    Attrs {
        id: u32,
        attrs: Attrs,
    },
    StatVfs {
        id: u32,
        stat: StatVfs,
    },
    Limits {
        id: u32,
        max_packet: u64,
        max_read: u64,
        max_write: u64,
        max_handles: u64,
    },
    /// Names in request order, empty where an id has none.
    UsersGroups {
        id: u32,
        users: Vec<Vec<u8>>,
        groups: Vec<Vec<u8>>,
    },
}

impl Response {
    /// The request this answers (VERSION answers INIT, which has no id).
    fn id(&self) -> Option<u32> {
        use Response::*;
        match self {
            Version { .. } => None,
            Status { id, .. }
            | Handle { id, .. }
            | Data { id, .. }
            | Name { id, .. }
            | Attrs { id, .. }
            | StatVfs { id, .. }
            | Limits { id, .. }
            | UsersGroups { id, .. } => Some(*id),
        }
    }
}

fn put_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

fn put_attrs(out: &mut BytesMut, a: &Attrs) {
    let mut flags = 0;
    if a.size.is_some() {
        flags |= attr_flags::SIZE;
    }
    if a.uid_gid.is_some() {
        flags |= attr_flags::UIDGID;
    }
    if a.permissions.is_some() {
        flags |= attr_flags::PERMISSIONS;
    }
    if a.times.is_some() {
        flags |= attr_flags::ACMODTIME;
    }
    out.put_u32(flags);
    if let Some(size) = a.size {
        out.put_u64(size);
    }
    if let Some((uid, gid)) = a.uid_gid {
        out.put_u32(uid);
        out.put_u32(gid);
    }
    if let Some(p) = a.permissions {
        out.put_u32(p);
    }
    if let Some((at, mt)) = a.times {
        out.put_u32(at);
        out.put_u32(mt);
    }
}

/// Appends the full packet (length prefix included) to `out`. For DATA only the header is
/// written and the payload is returned, so callers can write it without copying.
///
/// No packet exceeds the `MAX_PACKET` we advertise (OpenSSH clients end the session on a larger
/// one): a reply that would (names for too many ids) is answered with SSH_FX_FAILURE instead.
pub fn encode(response: &Response, out: &mut BytesMut) -> Option<Bytes> {
    let start = out.len();
    let payload = encode_unbounded(response, out);
    let len = out.len() - start - 4 + payload.as_ref().map_or(0, |p| p.len());
    match response.id() {
        Some(id) if len > MAX_PACKET as usize => {
            out.truncate(start);
            let message = format!("the reply ({len} bytes) would exceed the {MAX_PACKET}-byte packet limit; ask for less");
            encode_unbounded(&Response::Status { id, code: StatusCode::Failure, message }, out)
        }
        _ => payload,
    }
}

fn encode_unbounded(response: &Response, out: &mut BytesMut) -> Option<Bytes> {
    let start = out.len();
    out.put_u32(0); // length, patched below
    let mut payload = None;
    match response {
        Response::Version { extensions } => {
            out.put_u8(fxp::VERSION);
            out.put_u32(3);
            for (name, data) in extensions {
                put_string(out, name.as_bytes());
                put_string(out, data.as_bytes());
            }
        }
        Response::Status { id, code, message } => {
            out.put_u8(fxp::STATUS);
            out.put_u32(*id);
            out.put_u32(*code as u32);
            put_string(out, message.as_bytes());
            put_string(out, b"en");
        }
        Response::Handle { id, handle } => {
            out.put_u8(fxp::HANDLE);
            out.put_u32(*id);
            put_string(out, handle);
        }
        Response::Data { id, data } => {
            out.put_u8(fxp::DATA);
            out.put_u32(*id);
            out.put_u32(data.len() as u32);
            payload = Some(data.clone());
        }
        Response::Name { id, entries } => {
            out.put_u8(fxp::NAME);
            out.put_u32(*id);
            out.put_u32(entries.len() as u32);
            for e in entries {
                put_string(out, &e.filename);
                put_string(out, &e.longname);
                put_attrs(out, &e.attrs);
            }
        }
        Response::Attrs { id, attrs } => {
            out.put_u8(fxp::ATTRS);
            out.put_u32(*id);
            put_attrs(out, attrs);
        }
        Response::StatVfs { id, stat: s } => {
            out.put_u8(fxp::EXTENDED_REPLY);
            out.put_u32(*id);
            for v in [s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, s.fsid, s.flag, s.namemax] {
                out.put_u64(v);
            }
        }
        Response::Limits { id, max_packet, max_read, max_write, max_handles } => {
            out.put_u8(fxp::EXTENDED_REPLY);
            out.put_u32(*id);
            for v in [max_packet, max_read, max_write, max_handles] {
                out.put_u64(*v);
            }
        }
        Response::UsersGroups { id, users, groups } => {
            out.put_u8(fxp::EXTENDED_REPLY);
            out.put_u32(*id);
            for names in [users, groups] {
                let packed: Vec<u8> = names.iter().flat_map(|n| [&(n.len() as u32).to_be_bytes()[..], n].concat()).collect();
                put_string(out, &packed);
            }
        }
    }
    let len = out.len() - start - 4 + payload.as_ref().map_or(0, |p| p.len());
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(kind);
        b.put_u32(id);
        for f in fields {
            b.put_slice(f);
        }
        b.freeze()
    }

    fn s(v: &[u8]) -> Vec<u8> {
        let mut out = (v.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(v);
        out
    }

    #[test]
    fn decodes_open_with_non_utf8_name() {
        let body = packet(fxp::OPEN, 7, &[&s(b"caf\xe9"), &pflags::READ.to_be_bytes(), &0u32.to_be_bytes()]);
        assert_eq!(
            decode(&body),
            Ok(Packet::Request {
                id: 7,
                request: Request::Open { path: b"caf\xe9".to_vec(), pflags: pflags::READ, attrs: Attrs::default() }
            })
        );
    }

    #[test]
    fn write_payload_is_sliced_exactly() {
        let body = packet(fxp::WRITE, 1, &[&s(b"h1"), &5u64.to_be_bytes(), &s(b"hello")]);
        match decode(&body) {
            Ok(Packet::Request { request: Request::Write { data, offset, .. }, .. }) => {
                assert_eq!(&data[..], b"hello");
                assert_eq!(offset, 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn symlink_keeps_openssh_argument_order() {
        let body = packet(fxp::SYMLINK, 2, &[&s(b"/target"), &s(b"link")]);
        assert_eq!(
            decode(&body),
            Ok(Packet::Request { id: 2, request: Request::Symlink { target: b"/target".to_vec(), link: b"link".to_vec() } })
        );
    }

    #[test]
    fn every_truncation_of_valid_packets_is_an_error_not_a_panic() {
        let valid = [
            packet(
                fxp::OPEN,
                7,
                &[
                    &s(b"name"),
                    &3u32.to_be_bytes(),
                    &15u32.to_be_bytes(),
                    &9u64.to_be_bytes(),
                    &1u32.to_be_bytes(),
                    &2u32.to_be_bytes(),
                    &0o644u32.to_be_bytes(),
                    &1u32.to_be_bytes(),
                    &2u32.to_be_bytes(),
                ],
            ),
            packet(fxp::WRITE, 1, &[&s(b"h1"), &5u64.to_be_bytes(), &s(b"hello")]),
            packet(
                fxp::EXTENDED,
                3,
                &[&s(b"copy-data"), &s(b"h"), &1u64.to_be_bytes(), &2u64.to_be_bytes(), &s(b"g"), &3u64.to_be_bytes()],
            ),
        ];
        for body in valid {
            assert!(decode(&body).is_ok());
            for cut in 0..body.len() {
                assert!(decode(&body.slice(..cut)).is_err(), "cut at {cut} accepted");
            }
        }
    }

    #[test]
    fn huge_string_length_is_truncated_not_allocated() {
        let body = packet(fxp::STAT, 1, &[&u32::MAX.to_be_bytes(), b"x"]);
        assert_eq!(decode(&body), Err(DecodeError::Truncated));
    }

    #[test]
    fn trailing_bytes_are_ignored_and_unknown_types_tolerated() {
        let body = packet(fxp::STAT, 1, &[&s(b"a"), b"zz"]);
        assert_eq!(decode(&body), Ok(Packet::Request { id: 1, request: Request::Stat { path: b"a".to_vec() } }));
        let body = packet(99, 4, &[b"whatever"]);
        assert_eq!(decode(&body), Ok(Packet::Request { id: 4, request: Request::Unknown { kind: 99 } }));
    }

    #[test]
    fn random_bytes_never_panic() {
        // Deterministic xorshift so the test is reproducible.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let mut v = Vec::with_capacity(len);
            let mut y = x;
            for _ in 0..len {
                y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
                v.push((y >> 56) as u8);
            }
            if let Some(first) = v.first_mut() {
                *first = (*first % 21).max(1);
            }
            let _ = decode(&Bytes::from(v));
        }
    }

    #[test]
    fn data_response_length_counts_the_payload() {
        let mut out = BytesMut::new();
        let payload = encode(&Response::Data { id: 9, data: Bytes::from_static(b"abc") }, &mut out);
        assert_eq!(&out[..4], &(1 + 4 + 4 + 3u32).to_be_bytes());
        assert_eq!(payload.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn users_groups_by_id_request_and_reply() {
        let uids = [0u32.to_be_bytes(), 1000u32.to_be_bytes()].concat();
        let p = packet(fxp::EXTENDED, 5, &[&s(b"users-groups-by-id@openssh.com"), &s(&uids), &s(&7u32.to_be_bytes())]);
        let expected = Request::UsersGroupsById { uids: vec![0, 1000], gids: vec![7] };
        assert_eq!(decode(&p), Ok(Packet::Request { id: 5, request: expected }));
        let odd = packet(fxp::EXTENDED, 5, &[&s(b"users-groups-by-id@openssh.com"), &s(b"abc"), &s(b"")]);
        assert_eq!(decode(&odd), Err(DecodeError::IdList(3)));

        let mut out = BytesMut::new();
        let reply = Response::UsersGroups { id: 5, users: vec![b"root".to_vec(), Vec::new()], groups: vec![b"g".to_vec()] };
        assert_eq!(encode(&reply, &mut out), None);
        let users = [s(b"root"), s(b"")].concat();
        let body = [&[fxp::EXTENDED_REPLY][..], &5u32.to_be_bytes(), &s(&users), &s(&s(b"g"))].concat();
        assert_eq!(&out[..], &[&(body.len() as u32).to_be_bytes()[..], &body].concat()[..]);
    }

    #[test]
    fn a_reply_over_the_packet_limit_becomes_a_failure_status() {
        let names = vec![vec![b'n'; 32]; 10_000];
        let mut out = BytesMut::new();
        assert_eq!(encode(&Response::UsersGroups { id: 6, users: names, groups: Vec::new() }, &mut out), None);
        assert!(out.len() <= MAX_PACKET as usize + 4, "{} bytes", out.len());
        assert_eq!(out[4], fxp::STATUS);
        assert_eq!(&out[5..13], &[&6u32.to_be_bytes()[..], &(StatusCode::Failure as u32).to_be_bytes()].concat()[..]);
    }

    #[test]
    fn attrs_round_trip() {
        let attrs = Attrs { size: Some(5), uid_gid: Some((1, 2)), permissions: Some(0o100644), times: Some((3, 4)) };
        let mut out = BytesMut::new();
        put_attrs(&mut out, &attrs);
        let mut r = Reader { buf: &out };
        assert_eq!(r.attrs(), Ok(attrs));
        assert!(r.buf.is_empty());
    }
}
