//! The confined filesystem: the ONE place where client paths touch the kernel.
//!
//! The served root is opened once as a directory fd. Every client path is resolved relative to it
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so `..`, absolute symlinks and symlink
//! chains (including ones swapped in while a session runs) are resolved by the kernel as if the
//! root were `/`. Operations that act on a name (mkdir, unlink, rename, symlink, readlink, lstat,
//! link) resolve the parent directory that way and then use the `*at` syscall on the final
//! component, which never follows a symlink in that position (a trailing slash asks the kernel
//! to follow it: such lookups resolve the whole path in-root instead). Symlink targets are stored
//! verbatim; they are resolved in-root whenever they are followed later.
//!
//! The kernel's own filesystems (procfs, sysfs) mounted under the served root are not entered
//! unless the operator allows it: no SFTP user needs the app's `/proc`, which lists the
//! sidecar's own processes (defence in depth next to their PR_SET_DUMPABLE 0).
//!
//! A client path of `PATH_MAX` (4096) bytes or more is refused with `ENAMETOOLONG` before any
//! work, as OpenSSH's sftp-server refuses it, also where the kernel would accept its parent and
//! its last component separately.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FsWord, Mode, OFlags, RenameFlags, ResolveFlags, Stat, Timestamps};
use rustix::io::Errno;

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
/// Symlinks followed while computing a realpath before giving up (the kernel's limit).
const MAX_SYMLINKS: usize = 40;
/// Filesystems refused unless allowed (see the module comment).
const PSEUDO_FILESYSTEMS: [FsWord; 2] = [rustix::fs::PROC_SUPER_MAGIC, libc::SYSFS_MAGIC as FsWord];
/// Longest path, terminating NUL included (the kernel's and OpenSSH's limit).
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// Changes to a file's metadata (SETSTAT and its variants), applied in OpenSSH's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metadata {
    pub size: Option<u64>,
    /// Permission bits; file type bits are ignored.
    pub mode: Option<u32>,
    /// (atime, mtime) in seconds since the epoch.
    pub times: Option<(i64, i64)>,
    pub owner: Option<(u32, u32)>,
}

/// The directory a session is confined to.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    pseudo_filesystems: bool,
}

/// A client path split into the directory that holds it and its final component.
enum Split<'a> {
    /// `parent` resolved in-root, then `name` is acted on with an `*at` call. `name` is the
    /// final component as written: it may be `.` or `..`, and keeps trailing slashes (the
    /// kernel's rule: the name must then be a directory, and a final symlink is followed).
    Entry { parent: &'a [u8], name: &'a [u8] },
    /// The path names the root itself.
    Root,
}

/// The path, unless it is too long to name anything (see the module comment).
fn within_path_max(path: &[u8]) -> io::Result<&[u8]> {
    if path.len() < PATH_MAX { Ok(path) } else { Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)) }
}

/// The path, unless it names nothing: an empty path is no file, as for the kernel and OpenSSH
/// (only REALPATH reads it as `.`).
fn nonempty(path: &[u8]) -> io::Result<&[u8]> {
    if path.is_empty() { Err(io::Error::from_raw_os_error(libc::ENOENT)) } else { within_path_max(path) }
}

fn split(path: &[u8]) -> io::Result<Split<'_>> {
    let path = nonempty(path)?;
    let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let trimmed = &path[..end];
    if trimmed.is_empty() {
        return Ok(Split::Root);
    }
    Ok(match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => Split::Entry { parent: b"/", name: &path[1..] },
        Some(i) => Split::Entry { parent: &trimmed[..i], name: &path[i + 1..] },
        None => Split::Entry { parent: b".", name: path },
    })
}

/// Whether the kernel, looking `name` up in its parent, would follow it (a trailing slash
/// follows a final symlink) or leave the parent (`..`). Lookups of such names resolve the
/// whole path in-root instead. Calls that create or remove a name never follow it and refuse
/// `.` and `..` before acting, so those get the name as written.
fn follows(name: &[u8]) -> bool {
    name.ends_with(b"/") || name == b"." || name == b".."
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

impl Root {
    /// Opens `path` (a host path such as `/proc/<pid>/root` or `--dir`) as the root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(io_err)?;
        Ok(Root { fd, pseudo_filesystems: false })
    }

    /// Lets client paths enter procfs and sysfs mounts (`--serve-pseudo-filesystems`).
    pub fn serving_pseudo_filesystems(self) -> Root {
        Root { pseudo_filesystems: true, ..self }
    }

    /// `fd`, unless it lies on a refused pseudo-filesystem (`EACCES`, like a permission).
    fn allowed(&self, fd: OwnedFd) -> io::Result<OwnedFd> {
        let pseudo = || rustix::fs::fstatfs(&fd).is_ok_and(|fs| PSEUDO_FILESYSTEMS.contains(&(fs.f_type as FsWord)));
        if !self.pseudo_filesystems && pseudo() { Err(io::Error::from_raw_os_error(libc::EACCES)) } else { Ok(fd) }
    }

    /// Narrows the root to a subdirectory, itself resolved inside the current root (`--root`).
    pub fn subdir(&self, sub: &[u8]) -> io::Result<Root> {
        Ok(Root { fd: self.resolve(sub, OFlags::PATH | OFlags::DIRECTORY)?, pseudo_filesystems: self.pseudo_filesystems })
    }

    fn resolve(&self, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat2(&self.fd, nonempty(path)?, flags | OFlags::CLOEXEC, Mode::empty(), RESOLVE).map_err(io_err)?;
        self.allowed(fd)
    }

    fn resolve_parent(&self, parent: &[u8]) -> io::Result<OwnedFd> {
        self.resolve(parent, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// Opens a file for I/O; `flags` are the access/creation flags derived from SFTP pflags.
    pub fn open_file(&self, path: &[u8], flags: OFlags, mode: u32) -> io::Result<File> {
        // openat2 insists on a zero mode unless a file may be created.
        let mode = if flags.contains(OFlags::CREATE) { Mode::from_raw_mode(mode & 0o7777) } else { Mode::empty() };
        let path = nonempty(path)?;
        let fd = rustix::fs::openat2(&self.fd, path, flags | OFlags::CLOEXEC | OFlags::NOCTTY, mode, RESOLVE).map_err(io_err)?;
        Ok(File::from(self.allowed(fd)?))
    }

    /// Opens a directory for listing.
    pub fn open_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// `stat`, following symlinks (in-root).
    pub fn stat(&self, path: &[u8]) -> io::Result<Stat> {
        rustix::fs::fstat(self.resolve(path, OFlags::PATH)?).map_err(io_err)
    }

    /// `lstat`: a symlink in the final position is described, not followed.
    pub fn lstat(&self, path: &[u8]) -> io::Result<Stat> {
        match split(path)? {
            Split::Entry { parent, name } if !follows(name) => {
                rustix::fs::statat(self.resolve_parent(parent)?, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)
            }
            _ => self.stat(path),
        }
    }

    /// The parent and final name of a path that is about to be created, removed or renamed.
    fn entry<'a>(&self, path: &'a [u8]) -> io::Result<(OwnedFd, &'a [u8])> {
        match split(path)? {
            Split::Root => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            Split::Entry { parent, name } => Ok((self.resolve_parent(parent)?, name)),
        }
    }

    pub fn mkdir(&self, path: &[u8], mode: u32) -> io::Result<()> {
        let (dir, name) = self.entry(path)?;
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o7777)).map_err(io_err)
    }

    pub fn rmdir(&self, path: &[u8]) -> io::Result<()> {
        let (dir, name) = self.entry(path).map_err(busy_for_directory)?;
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io_err)
    }

    pub fn remove(&self, path: &[u8]) -> io::Result<()> {
        let (dir, name) = self.entry(path).map_err(busy_for_directory)?;
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io_err)
    }

    /// Renames; `replace` false gives SFTP v3 semantics (fail when the target exists), and then
    /// the source is looked up first, as OpenSSH's RENAME does: a file named with a trailing
    /// slash is reported as such (the kernel would report the existing target first).
    pub fn rename(&self, from: &[u8], to: &[u8], replace: bool) -> io::Result<()> {
        let (from_dir, from_name) = self.entry(from).map_err(busy_for_directory)?;
        if !replace {
            self.lstat(from)?;
        }
        let (to_dir, to_name) = self.entry(to)?;
        let flags = if replace { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
        rustix::fs::renameat_with(from_dir, from_name, to_dir, to_name, flags).map_err(io_err)
    }

    /// Creates `link` pointing at `target`, stored verbatim.
    pub fn symlink(&self, target: &[u8], link: &[u8]) -> io::Result<()> {
        let (dir, name) = self.entry(link)?;
        rustix::fs::symlinkat(target, dir, name).map_err(io_err)
    }

    pub fn readlink(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        match split(path)? {
            Split::Entry { parent, name } if !follows(name) => {
                Ok(rustix::fs::readlinkat(self.resolve_parent(parent)?, name, Vec::new()).map_err(io_err)?.into_bytes())
            }
            // What the kernel would look at is a directory (or nothing), never a link.
            _ => self.stat(path).and(Err(io::Error::from_raw_os_error(libc::EINVAL))),
        }
    }

    pub fn hardlink(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (from_dir, from_name) = match split(from)? {
            Split::Entry { parent, name } if !follows(name) => (self.resolve_parent(parent)?, name),
            // A directory, which cannot be linked (or nothing).
            _ => return self.stat(from).and(Err(io::Error::from_raw_os_error(libc::EPERM))),
        };
        let (to_dir, to_name) = self.entry(to)?;
        rustix::fs::linkat(from_dir, from_name, to_dir, to_name, AtFlags::empty()).map_err(io_err)
    }

    /// SETSTAT (`follow`) or lsetstat@openssh.com (`!follow`).
    pub fn setstat(&self, path: &[u8], metadata: &Metadata, follow: bool) -> io::Result<()> {
        let target = match (follow, split(path)?) {
            // A symlink has no size to set (OpenSSH answers BAD_MESSAGE, our EINVAL's).
            (false, _) if metadata.size.is_some() => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            // Truncating needs the file open for writing; the rest needs only ownership.
            (true, _) if metadata.size.is_some() => self.resolve(path, OFlags::WRONLY | OFlags::NONBLOCK)?,
            (false, Split::Entry { parent, name }) if !follows(name) => {
                rustix::fs::openat(self.resolve_parent(parent)?, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(io_err)?
            }
            _ => self.resolve(path, OFlags::PATH)?,
        };
        set_metadata(target.as_fd(), metadata)
    }

    pub fn statvfs(&self, path: &[u8]) -> io::Result<rustix::fs::StatVfs> {
        rustix::fs::fstatvfs(self.resolve(path, OFlags::PATH)?).map_err(io_err)
    }

    /// Whether `stat` describes the root directory itself (used to hide the root's real parent).
    pub fn is_root(&self, stat: &Stat) -> bool {
        rustix::fs::fstat(&self.fd).is_ok_and(|root| root.st_dev == stat.st_dev && root.st_ino == stat.st_ino)
    }

    /// The canonical absolute path of `path` inside the root, computed the way RESOLVE_IN_ROOT
    /// resolves it: `..` stops at the root and absolute symlink targets restart at the root.
    /// A last component that does not exist is kept as written unless a slash follows it (a
    /// trailing slash asks for a directory); a missing one before it is an error, like OpenSSH's.
    /// Linear in the number of components: each is looked up once, in
    /// the directory reached so far.
    pub fn realpath(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        let mut walk = Walk::at_root(self)?;
        let mut pending: Vec<Vec<u8>> = components(within_path_max(path)?).rev().map(<[u8]>::to_vec).collect();
        // Whether a slash follows the last name (written, or ending the symlink that named it).
        let mut slash_after_last = path.ends_with(b"/");
        let mut links = 0;
        while let Some(part) = pending.pop() {
            match part.as_slice() {
                b"." => continue,
                b".." => {
                    walk.up(self)?;
                    continue;
                }
                _ => {}
            }
            if !walk.in_directory() {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            // A single name, not `..`, never followed: the fd is the entry itself.
            let entry = match rustix::fs::openat(&walk.dir, &part[..], OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
                Ok(entry) => entry,
                // A last name that does not exist yet (clients realpath names they will
                // create) stands as written, as in OpenSSH.
                Err(Errno::NOENT) if pending.is_empty() && !slash_after_last => {
                    walk.push(part, None)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let st = rustix::fs::fstat(&entry)?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = rustix::fs::readlinkat(&entry, c"", Vec::new())?.into_bytes();
                    if target.first() == Some(&b'/') {
                        walk = Walk::at_root(self)?;
                    }
                    if pending.is_empty() {
                        slash_after_last |= target.ends_with(b"/");
                    }
                    pending.extend(components(&target).rev().map(<[u8]>::to_vec));
                }
                libc::S_IFDIR => walk.push(part, Some((entry, file_id(&st))))?,
                _ => walk.push(part, None)?,
            }
        }
        Ok(join(&walk.names))
    }
}

/// Where a realpath has got to: the names from the root, the identities of the directories
/// they pass through (the root first) and an fd of the last of those. Only the last name can
/// be something else (a file, or a name still to be created).
struct Walk {
    dir: OwnedFd,
    names: Vec<Vec<u8>>,
    ids: Vec<(u64, u64)>,
    /// Bytes of `names` joined with slashes.
    len: usize,
}

impl Walk {
    fn at_root(root: &Root) -> io::Result<Walk> {
        let id = file_id(&rustix::fs::fstat(&root.fd)?);
        Ok(Walk { dir: root.fd.try_clone()?, names: Vec::new(), ids: vec![id], len: 0 })
    }

    /// Whether every name so far is a directory (`dir` is the last of them).
    fn in_directory(&self) -> bool {
        self.ids.len() == self.names.len() + 1
    }

    fn push(&mut self, name: Vec<u8>, dir: Option<(OwnedFd, (u64, u64))>) -> io::Result<()> {
        self.len += 1 + name.len();
        if self.len >= PATH_MAX {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        self.names.push(name);
        if let Some((fd, id)) = dir {
            self.dir = fd;
            self.ids.push(id);
        }
        Ok(())
    }

    /// `..`: the parent, or the root at the root. The physical parent is taken when it is the
    /// directory passed on the way down; if that changed (a rename meanwhile), the parent is
    /// resolved in-root again.
    fn up(&mut self, root: &Root) -> io::Result<()> {
        let leaves_directory = self.in_directory();
        let Some(name) = self.names.pop() else { return Ok(()) };
        self.len -= 1 + name.len();
        if leaves_directory {
            self.ids.pop();
            let parent = rustix::fs::openat(&self.dir, c"..", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            self.dir = if self.ids.last() == Some(&file_id(&rustix::fs::fstat(&parent)?)) {
                parent
            } else {
                root.resolve(&join(&self.names), OFlags::PATH | OFlags::DIRECTORY)?
            };
        }
        Ok(())
    }
}

#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
fn file_id(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

fn busy_for_directory(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AlreadyExists { io::Error::from_raw_os_error(libc::EBUSY) } else { e }
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    out
}

/// Applies `metadata` to a file already resolved in-root: SETSTAT on its `O_PATH` (or, to
/// truncate, writable) fd and FSETSTAT on a handle's fd. Size needs the fd open for writing;
/// mode, times and owner need only ownership, like chmod(2).
pub fn set_metadata(fd: BorrowedFd<'_>, metadata: &Metadata) -> io::Result<()> {
    const EMPTY: &CStr = c"";
    if let Some(size) = metadata.size {
        rustix::fs::ftruncate(fd, size).map_err(io_err)?;
    }
    if let Some(mode) = metadata.mode {
        // fchmodat2 (Linux 6.6) accepts AT_EMPTY_PATH on an O_PATH fd; older kernels get the
        // same effect through the fd's /proc/self/fd entry, which is our own, already-resolved fd.
        // SAFETY: a raw syscall (rustix has no fchmodat2 yet) on a live fd and a NUL-terminated
        // empty string.
        let rc = unsafe { libc::syscall(libc::SYS_fchmodat2, fd.as_raw_fd(), EMPTY.as_ptr(), mode & 0o7777, libc::AT_EMPTY_PATH) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOSYS) {
                rustix::fs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()), Mode::from_raw_mode(mode & 0o7777)).map_err(io_err)?;
            } else {
                return Err(err);
            }
        }
    }
    if let Some((atime, mtime)) = metadata.times {
        let ts = |secs: i64| rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 };
        let times = Timestamps { last_access: ts(atime), last_modification: ts(mtime) };
        rustix::fs::utimensat(fd, EMPTY, &times, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)?;
    }
    if let Some((uid, gid)) = metadata.owner {
        // An id of -1 leaves it as it is, as chown(2) (and so OpenSSH's sftp-server) has it;
        // rustix refuses to build such an id.
        let given = |id: u32| (id != u32::MAX).then_some(id);
        rustix::fs::chownat(
            fd,
            EMPTY,
            given(uid).map(rustix::fs::Uid::from_raw),
            given(gid).map(rustix::fs::Gid::from_raw),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/file"), b"inside").unwrap();
        symlink("/", dir.path().join("abs")).unwrap();
        symlink("../../../../..", dir.path().join("sub/up")).unwrap();
        symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn dotdot_and_symlinks_stay_inside() {
        let (dir, root) = setup();
        let inside = std::fs::metadata(dir.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        for p in [&b"/.."[..], b"../../..", b"abs", b"abs/..", b"sub/up", b"sub/up/.."] {
            let st = root.stat(p).unwrap();
            assert_eq!(st.st_ino, inside.ino(), "{}", String::from_utf8_lossy(p));
        }
        assert!(root.stat(b"passwd").is_err(), "/etc/passwd resolved outside the root");
        assert_eq!(root.realpath(b"sub/up/abs/sub/../sub/file").unwrap(), b"/sub/file");
        assert_eq!(root.realpath(b"../..").unwrap(), b"/");
    }

    #[test]
    fn name_operations_never_follow_final_symlink() {
        let (dir, root) = setup();
        // Removing a symlink to / removes the link, not anything it points at.
        root.remove(b"abs").unwrap();
        assert!(dir.path().join("sub").exists());
        root.symlink(b"/sub/file", b"sub/link").unwrap();
        assert_eq!(root.readlink(b"/sub/link").unwrap(), b"/sub/file");
        let mut f = root.open_file(b"sub/link", OFlags::RDONLY, 0).unwrap();
        let mut s = String::new();
        use std::io::Read;
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "inside");
        assert!(root.mkdir(b"..", 0o755).is_err());
        assert!(root.rmdir(b"/").is_err());
    }

    #[test]
    fn a_trailing_slash_follows_the_final_symlink_inside_the_root() {
        let (dir, root) = setup();
        use std::os::unix::fs::MetadataExt;
        let inside = std::fs::metadata(dir.path()).unwrap();
        // `abs` -> `/`: with a trailing slash the link is followed, to the served root.
        assert_eq!(root.lstat(b"abs/").unwrap().st_ino, inside.ino());
        assert_eq!(root.readlink(b"abs/").unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert_eq!(root.hardlink(b"abs/", b"x").unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(root.remove(b"abs/").unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(root.lstat(b"passwd/").unwrap_err().raw_os_error(), Some(libc::ENOENT), "/etc/passwd seen outside");
        assert_eq!(root.remove(b"sub/file/").unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
        assert!(dir.path().join("abs").is_symlink() && dir.path().join("sub/file").exists());
    }

    #[test]
    fn subdir_is_a_new_root() {
        let (_dir, root) = setup();
        let sub = root.subdir(b"/sub").unwrap();
        assert!(sub.stat(b"file").is_ok());
        assert!(sub.stat(b"../sub/file").is_err());
        assert!(sub.stat(b"/up/sub").is_err());
    }

    fn enametoolong<T: std::fmt::Debug>(r: io::Result<T>) {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    }

    /// 16 nested directories of 250-byte names: a 4016-byte path the kernel resolves.
    fn deep_tree(top: &Path) -> Vec<u8> {
        let name = "d".repeat(250);
        let mut dir = rustix::fs::open(top, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..16 {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = rustix::fs::openat(&dir, name.as_str(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        format!("/{name}").repeat(16).into_bytes()
    }

    #[test]
    fn paths_of_path_max_bytes_or_more_are_refused() {
        let (dir, root) = setup();
        let just_fits = [&b"/"[..], &b"./".repeat(2045), b"sub/"].concat();
        assert_eq!(just_fits.len(), PATH_MAX - 1);
        assert_eq!(root.realpath(&just_fits).unwrap(), b"/sub");
        let too_long = [&just_fits[..], b"."].concat();
        enametoolong(root.realpath(&too_long));
        enametoolong(root.realpath(&b"/a".repeat(131_000)));
        enametoolong(root.stat(&too_long));
        enametoolong(root.lstat(&too_long));
        enametoolong(root.mkdir(&too_long, 0o755));
        enametoolong(root.open_file(&too_long, OFlags::RDONLY, 0));
        // A symlink that expands past the limit.
        let deep = deep_tree(dir.path());
        symlink(std::str::from_utf8(&deep).unwrap(), dir.path().join("deep")).unwrap();
        assert_eq!(root.realpath(&[&b"deep/"[..], &[b'n'; 70]].concat()).unwrap(), [&deep[..], b"/", &[b'n'; 70]].concat());
        enametoolong(root.realpath(&[&b"deep/"[..], &[b'n'; 100]].concat()));
    }

    #[test]
    fn a_name_that_makes_the_path_too_long_is_refused_though_the_kernel_takes_it() {
        let (dir, root) = setup();
        let deep = deep_tree(dir.path());
        let child = [&deep[..], b"/", &[b'n'; 100]].concat();
        enametoolong(root.mkdir(&child, 0o755));
        enametoolong(root.symlink(b"x", &child));
        let shorter = [&deep[..], b"/", &[b'n'; 50]].concat();
        root.mkdir(&shorter, 0o755).unwrap();
    }

    #[test]
    fn realpath_walks_up_and_down_deep_trees() {
        let (dir, root) = setup();
        let deep = deep_tree(dir.path());
        let d = "d".repeat(250);
        assert_eq!(root.realpath(&deep).unwrap(), deep);
        let fourteen = &deep[..deep.len() - 2 * 251];
        let up = [fourteen, b"/", d.as_bytes(), b"/../../", d.as_bytes()].concat();
        assert_eq!(root.realpath(&up).unwrap(), fourteen);
        let missing = |r: io::Result<Vec<u8>>| r.unwrap_err().raw_os_error();
        assert_eq!(missing(root.realpath(&[&deep[..], b"/missing/more"].concat())), Some(libc::ENOENT));
        assert_eq!(missing(root.realpath(b"sub/file/x/../../file")), Some(libc::ENOTDIR));
        assert_eq!(root.realpath(b"sub/file/../file/.").unwrap(), b"/sub/file");
        let to_top = [&b"/.."[..], &b"/sub/..".repeat(2), &deep[..], &b"/..".repeat(17)].concat();
        assert_eq!(root.realpath(&to_top).unwrap(), b"/");
    }

    #[test]
    fn an_owner_id_of_minus_one_is_left_as_it_is() {
        let (dir, root) = setup();
        let path = dir.path().join("sub/file");
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(&path).unwrap();
        root.setstat(b"sub/file", &Metadata { owner: Some((u32::MAX, u32::MAX)), ..Metadata::default() }, true).unwrap();
        root.setstat(b"sub/file", &Metadata { owner: Some((u32::MAX, 4242)), ..Metadata::default() }, false).unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!((after.uid(), after.gid()), (before.uid(), 4242));
    }

    #[test]
    fn setstat_changes_mode_and_times() {
        let (dir, root) = setup();
        root.setstat(b"sub/file", &Metadata { mode: Some(0o600), times: Some((1, 2)), ..Metadata::default() }, true).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.path().join("sub/file")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(m.mtime(), 2);
    }
}
