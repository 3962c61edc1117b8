//! The request table: what each SFTP request is (its name, the handles it uses, whether it
//! modifies the filesystem, the lane it runs on, whether it may wait on the disk), like
//! `handlers[]` in OpenSSH's sftp-server.c, and next to it the table that maps errno values
//! to SFTP status codes. The session engine, read-only mode, audit and the advertised
//! extensions all read these facts from here and nowhere else.

use std::io;

use super::codec::{self, Request, StatusCode, pflags};

/// Where a request runs. Requests in one lane run in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane<'a> {
    /// Answered by the reader on the spot, without touching the filesystem.
    Reply,
    /// Names paths (or opens handles): in arrival order with the other path requests.
    Paths,
    /// Works on open handles: in arrival order with every request on any of them.
    Handles(&'a [u8], Option<&'a [u8]>),
}

/// Request kinds, one row each in [`Kind::row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Close,
    Read,
    Write,
    Lstat,
    Fstat,
    Setstat,
    Fsetstat,
    Opendir,
    Readdir,
    Remove,
    Mkdir,
    Rmdir,
    Realpath,
    Stat,
    Rename,
    Readlink,
    Symlink,
    PosixRename,
    Statvfs,
    Fstatvfs,
    Hardlink,
    Fsync,
    Lsetstat,
    Limits,
    ExpandPath,
    CopyData,
    HomeDirectory,
    UsersGroupsById,
    UnknownExtended,
    Unknown,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The request's name: the extension name for extended requests (as advertised and
    /// decoded), a short name for the others (audit lines and errors).
    pub name: &'static str,
    /// For extensions: the version advertised in SSH_FXP_VERSION (OpenSSH's).
    pub extension: Option<&'static str>,
    /// Changes the filesystem: refused by `--read-only`, logged for audit. (OPEN depends on
    /// its flags, see [`Request::modifies`].)
    pub modifies: bool,
    /// A single syscall that does not wait for the disk, run by the reader without hand-off:
    /// metadata, and WRITE, which lands in the page cache (it waits only where the kernel
    /// throttles dirty pages, and then for every writer alike). READ, listing, fsync and copies
    /// may wait on the disk, so they get a thread of their own. A hand-off costs a thread
    /// wake-up and two futex calls per request (see "Benchmarks (SFTP)" in the README).
    pub quick: bool,
}

const fn row(name: &'static str, modifies: bool, quick: bool) -> Row {
    Row { name, extension: None, modifies, quick }
}

const fn extension(name: &'static str, version: &'static str, modifies: bool, quick: bool) -> Row {
    Row { name, extension: Some(version), modifies, quick }
}

impl Kind {
    pub const ALL: [Kind; 31] = [
        Kind::Open,
        Kind::Close,
        Kind::Read,
        Kind::Write,
        Kind::Lstat,
        Kind::Fstat,
        Kind::Setstat,
        Kind::Fsetstat,
        Kind::Opendir,
        Kind::Readdir,
        Kind::Remove,
        Kind::Mkdir,
        Kind::Rmdir,
        Kind::Realpath,
        Kind::Stat,
        Kind::Rename,
        Kind::Readlink,
        Kind::Symlink,
        Kind::PosixRename,
        Kind::Statvfs,
        Kind::Fstatvfs,
        Kind::Hardlink,
        Kind::Fsync,
        Kind::Lsetstat,
        Kind::Limits,
        Kind::ExpandPath,
        Kind::CopyData,
        Kind::HomeDirectory,
        Kind::UsersGroupsById,
        Kind::UnknownExtended,
        Kind::Unknown,
    ];

    /// The table.
    pub const fn row(self) -> Row {
        match self {
            Kind::Open => row("open", false, true),
            Kind::Close => row("close", false, true),
            Kind::Read => row("read", false, false),
            Kind::Write => row("write", true, true),
            Kind::Lstat => row("lstat", false, true),
            Kind::Fstat => row("fstat", false, true),
            Kind::Setstat => row("setstat", true, true),
            Kind::Fsetstat => row("fsetstat", true, true),
            Kind::Opendir => row("opendir", false, true),
            Kind::Readdir => row("readdir", false, false),
            Kind::Remove => row("remove", true, true),
            Kind::Mkdir => row("mkdir", true, true),
            Kind::Rmdir => row("rmdir", true, true),
            Kind::Realpath => row("realpath", false, true),
            Kind::Stat => row("stat", false, true),
            Kind::Rename => row("rename", true, true),
            Kind::Readlink => row("readlink", false, true),
            Kind::Symlink => row("symlink", true, true),
            Kind::PosixRename => extension("posix-rename@openssh.com", "1", true, true),
            Kind::Statvfs => extension("statvfs@openssh.com", "2", false, true),
            Kind::Fstatvfs => extension("fstatvfs@openssh.com", "2", false, true),
            Kind::Hardlink => extension("hardlink@openssh.com", "1", true, true),
            Kind::Fsync => extension("fsync@openssh.com", "1", false, false),
            Kind::Lsetstat => extension("lsetstat@openssh.com", "1", true, true),
            Kind::Limits => extension("limits@openssh.com", "1", false, true),
            Kind::ExpandPath => extension("expand-path@openssh.com", "1", false, true),
            Kind::CopyData => extension("copy-data", "1", true, false),
            Kind::HomeDirectory => extension("home-directory", "1", false, true),
            Kind::UsersGroupsById => extension("users-groups-by-id@openssh.com", "1", false, true),
            Kind::UnknownExtended => row("unknown extension", false, true),
            Kind::Unknown => row("unknown request", false, true),
        }
    }

    /// The extension request named `name`, if we implement it.
    pub fn extension(name: &[u8]) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.row().extension.is_some() && k.row().name.as_bytes() == name)
    }
}

/// The extensions advertised in SSH_FXP_VERSION, in table order.
pub fn extensions() -> Vec<(&'static str, &'static str)> {
    Kind::ALL.iter().filter_map(|k| Some((k.row().name, k.row().extension?))).collect()
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Open { .. } => Kind::Open,
            Request::Close { .. } => Kind::Close,
            Request::Read { .. } => Kind::Read,
            Request::Write { .. } => Kind::Write,
            Request::Lstat { .. } => Kind::Lstat,
            Request::Fstat { .. } => Kind::Fstat,
            Request::Setstat { .. } => Kind::Setstat,
            Request::Fsetstat { .. } => Kind::Fsetstat,
            Request::Opendir { .. } => Kind::Opendir,
            Request::Readdir { .. } => Kind::Readdir,
            Request::Remove { .. } => Kind::Remove,
            Request::Mkdir { .. } => Kind::Mkdir,
            Request::Rmdir { .. } => Kind::Rmdir,
            Request::Realpath { .. } => Kind::Realpath,
            Request::Stat { .. } => Kind::Stat,
            Request::Rename { .. } => Kind::Rename,
            Request::Readlink { .. } => Kind::Readlink,
            Request::Symlink { .. } => Kind::Symlink,
            Request::PosixRename { .. } => Kind::PosixRename,
            Request::Statvfs { .. } => Kind::Statvfs,
            Request::Fstatvfs { .. } => Kind::Fstatvfs,
            Request::Hardlink { .. } => Kind::Hardlink,
            Request::Fsync { .. } => Kind::Fsync,
            Request::Lsetstat { .. } => Kind::Lsetstat,
            Request::Limits => Kind::Limits,
            Request::ExpandPath { .. } => Kind::ExpandPath,
            Request::CopyData { .. } => Kind::CopyData,
            Request::HomeDirectory => Kind::HomeDirectory,
            Request::UsersGroupsById { .. } => Kind::UsersGroupsById,
            Request::UnknownExtended { .. } => Kind::UnknownExtended,
            Request::Unknown { .. } => Kind::Unknown,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().row().name
    }

    pub fn modifies(&self) -> bool {
        match self {
            Request::Open { pflags, .. } => pflags & (pflags::WRITE | pflags::APPEND | pflags::CREAT | pflags::TRUNC) != 0,
            _ => self.kind().row().modifies,
        }
    }

    /// Run by the reader itself (see [`Row::quick`]).
    pub fn is_quick(&self) -> bool {
        self.kind().row().quick
    }

    /// Bytes its reply may take, held in the session's in-flight budget until it is written.
    pub fn expected_reply_len(&self) -> usize {
        match self {
            Request::Read { len, .. } => (*len).min(codec::MAX_IO) as usize + 13,
            Request::Readdir { .. } => 32 * 1024,
            _ => 256,
        }
    }

    pub fn lane(&self) -> Lane<'_> {
        use Request::*;
        match self {
            Close { handle }
            | Read { handle, .. }
            | Write { handle, .. }
            | Fstat { handle }
            | Fsetstat { handle, .. }
            | Readdir { handle }
            | Fstatvfs { handle }
            | Fsync { handle } => Lane::Handles(handle, None),
            CopyData { read_handle, write_handle, .. } => Lane::Handles(read_handle, Some(write_handle)),
            Limits | HomeDirectory | UsersGroupsById { .. } | UnknownExtended { .. } | Unknown { .. } => Lane::Reply,
            Open { .. }
            | Lstat { .. }
            | Setstat { .. }
            | Opendir { .. }
            | Remove { .. }
            | Mkdir { .. }
            | Rmdir { .. }
            | Realpath { .. }
            | Stat { .. }
            | Rename { .. }
            | Readlink { .. }
            | Symlink { .. }
            | PosixRename { .. }
            | Statvfs { .. }
            | Hardlink { .. }
            | Lsetstat { .. }
            | ExpandPath { .. } => Lane::Paths,
        }
    }
}

/// errno → status code, as OpenSSH's `errno_to_portable` answers; anything else is FAILURE.
const ERRNO_STATUS: &[(i32, StatusCode)] = &[
    (libc::ENOENT, StatusCode::NoSuchFile),
    (libc::ENOTDIR, StatusCode::NoSuchFile),
    (libc::EBADF, StatusCode::NoSuchFile),
    (libc::ELOOP, StatusCode::NoSuchFile),
    (libc::EPERM, StatusCode::PermissionDenied),
    (libc::EACCES, StatusCode::PermissionDenied),
    (libc::EFAULT, StatusCode::PermissionDenied),
    (libc::ENAMETOOLONG, StatusCode::BadMessage),
    (libc::EINVAL, StatusCode::BadMessage),
    (libc::ENOSYS, StatusCode::OpUnsupported),
];

/// The answer to a request naming a handle that is not open, or one of the wrong kind (a
/// directory's for a file request or the reverse): CLOSE and fsync say there is no such file,
/// the others fail (OpenSSH's answers).
pub fn invalid_handle(kind: Kind) -> StatusCode {
    if matches!(kind, Kind::Close | Kind::Fsync) { StatusCode::NoSuchFile } else { StatusCode::Failure }
}

/// The status code that answers `e`.
pub fn status_code(e: &io::Error) -> StatusCode {
    ERRNO_STATUS.iter().find(|(errno, _)| e.raw_os_error() == Some(*errno)).map_or(StatusCode::Failure, |(_, code)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_extension_decodes_to_its_own_row() {
        for (name, _) in extensions() {
            let kind = Kind::extension(name.as_bytes()).unwrap();
            assert_eq!(kind.row().name, name);
        }
        assert_eq!(Kind::extension(b"open"), None, "a plain request is no extension");
    }
}
