//! The bytes between the front end and a session's worker, in memory they share instead of
//! pipes (issue 16): one ring for the client's requests (front end to worker) and one for the
//! worker's replies (worker to front end). A pipe cost a kernel copy in, a kernel copy out, and a
//! page allocated, charged to the memory cgroup and freed per 4 KiB; a ring costs one copy in
//! user space. The worker reads requests where they lie: a large body (a WRITE's data) goes from
//! the ring to the file without another copy, and its room is given back when the request is
//! done with it.
//!
//! Each ring is a memfd made by the front end and sealed against shrinking and growing (a worker
//! cannot make the front end's mapping fault; punching holes only zeroes pages), sent to the
//! worker over a stream socket (its stdin for requests, its stdout for replies), and mapped twice
//! in a row so that every packet is contiguous wherever it wraps. A header page holds `written`
//! (bytes put in, written only by the producer), `consumed` (bytes done with, written only by the
//! consumer) and a flag per side saying it sleeps on the socket: a byte on the socket means "look
//! again" (more data for the consumer, more room for the producer). The worker runs as the app's
//! user: the front end takes the worker's counter only between what it saw last and what the
//! ring can hold, and copies replies out of the ring without ever making a reference into it.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::AsyncReadExt;

use crate::lock;

/// The requests' ring: like the 1 MiB pipe it replaces; it must hold the largest packet with
/// its length field (checked in `sftp::framing`).
pub const REQUESTS_BYTES: usize = 1024 * 1024;
/// The replies' ring: replies need not fit whole (the front end copies out what is there), and
/// a downloading session keeps every page it used, so it is smaller than the 1 MiB pipe: 20
/// clients downloading took 67 MiB of PSS with 1 MiB, over the 64 MiB the sidecar aims at.
const REPLIES_BYTES: usize = 256 * 1024;
/// Bodies at least this large are lent from the ring; smaller ones are copied out at once, so a
/// small request that waits (in its handle's lane, or for the disk) never holds the ring's room.
const LEND_FROM: usize = 16 * 1024;

/// The shared page: each counter and flag on its own cache line.
#[repr(C)]
struct Header {
    written: Line<AtomicU64>,
    consumed: Line<AtomicU64>,
    consumer_asleep: Line<AtomicU32>,
    producer_asleep: Line<AtomicU32>,
}

#[repr(C, align(64))]
struct Line<T>(T);

/// One side's view of the ring's memory.
struct Mapping {
    header: Unmap,
    /// `2 * len`: the ring, then the ring again.
    data: Unmap,
    /// The ring's size, a multiple of the page size.
    len: usize,
}

/// A mapping, unmapped when dropped.
struct Unmap {
    at: *mut c_void,
    len: usize,
}

impl Drop for Unmap {
    fn drop(&mut self) {
        // SAFETY: `at`/`len` is a mapping this process made and nothing refers to it any more
        // (its owner is being dropped).
        let _ = unsafe { rustix::mm::munmap(self.at, self.len) };
    }
}

// SAFETY: the mappings are plain memory shared with another process anyway; every access goes
// through atomics (the header) or raw copies of ranges one side owns at the time (the data).
unsafe impl Send for Unmap {}
// SAFETY: as above.
unsafe impl Sync for Unmap {}

fn header_bytes() -> usize {
    rustix::param::page_size()
}

impl Mapping {
    /// A new ring, mapped, and its memfd to send to the worker.
    fn create(name: &str, len: usize) -> io::Result<(Mapping, OwnedFd)> {
        let memfd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&memfd, (header_bytes() + len) as u64)?;
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Ok((Mapping::new(&memfd, len)?, memfd))
    }

    /// Makes a ring and sends it on `socket` (the worker's end is its stdin or stdout).
    fn create_and_send(name: &str, len: usize, socket: &OwnedFd) -> io::Result<Mapping> {
        let (map, memfd) = Mapping::create(name, len)?;
        let fds = [memfd.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        // One byte into a new socket's empty buffer: never waits.
        rustix::net::sendmsg(socket, &[IoSlice::new(&[0])], &mut control, SendFlags::NOSIGNAL)?;
        Ok(map)
    }

    /// Maps the ring `create_and_send` sent on `socket`; it must be `len` long.
    fn receive(socket: &OwnedFd, len: usize) -> io::Result<Mapping> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0];
        rustix::net::recvmsg(socket, &mut [IoSliceMut::new(&mut byte)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
        let memfd = control.drain().find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        });
        let memfd = memfd.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ring on the socket"))?;
        let size = rustix::fs::fstat(&memfd)?.st_size;
        if u64::try_from(size).ok() != Some((header_bytes() + len) as u64) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the ring is {size} bytes")));
        }
        Mapping::new(&memfd, len)
    }

    fn new(memfd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        let read_write = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a new shared mapping wherever the kernel puts it; nothing else refers to it.
        let header = unsafe { rustix::mm::mmap(ptr::null_mut(), header_bytes(), read_write, MapFlags::SHARED, memfd, 0)? };
        let header = Unmap { at: header, len: header_bytes() };
        // Room for both copies first, then the ring mapped over each half.
        // SAFETY: as above, an inaccessible reservation.
        let data = unsafe { rustix::mm::mmap_anonymous(ptr::null_mut(), 2 * len, ProtFlags::empty(), MapFlags::PRIVATE)? };
        let data = Unmap { at: data, len: 2 * len };
        for half in [0, len] {
            // SAFETY: MAP_FIXED replaces only our own reservation above (`half + len` is within
            // it); the memfd is `header_bytes() + len` long (made so, or checked).
            unsafe {
                rustix::mm::mmap(
                    data.at.cast::<u8>().add(half).cast(),
                    len,
                    read_write,
                    MapFlags::SHARED | MapFlags::FIXED,
                    memfd,
                    header_bytes() as u64,
                )?
            };
        }
        Ok(Mapping { header, data, len })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is a page (≥ the header's size, page-aligned), lives as long as
        // `self`, and atomics are valid for any bytes (a new memfd is zeros).
        unsafe { &*self.header.at.cast::<Header>() }
    }

    /// The ring's byte at position `at`, followed by `len` mapped bytes.
    fn data(&self, at: u64) -> *mut u8 {
        // SAFETY: `at % len < len`: within the first copy of the ring.
        unsafe { self.data.at.cast::<u8>().add((at % self.len as u64) as usize) }
    }
}

/// The other side's counter was not between what this side saw last and what can be.
#[derive(Debug, thiserror::Error)]
#[error("the ring's other side claims {claimed} bytes {counter}, outside {low}..={high}")]
pub struct Broken {
    counter: &'static str,
    claimed: u64,
    low: u64,
    high: u64,
}

impl From<Broken> for io::Error {
    fn from(broken: Broken) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, broken)
    }
}

/// Fills a ring (the front end with requests, the worker with replies); no I/O of its own.
struct Producer {
    map: Mapping,
    /// What this side wrote; never read back from the shared page.
    written: u64,
    consumed: u64,
}

impl Producer {
    fn new(map: Mapping) -> Producer {
        Producer { map, written: 0, consumed: 0 }
    }

    /// Copies as much of `data` as there is room for; how much.
    fn push(&mut self, data: &[u8]) -> Result<usize, Broken> {
        let n = self.room()?.min(data.len());
        if n > 0 {
            // SAFETY: `n <= len` bytes from `data(written)` stay within the double mapping;
            // they are room the consumer gave back (it reads only below `written`, which passes
            // them only after the copy). A hostile consumer writing here too only garbles its own
            // input: nothing is read back.
            unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.map.data(self.written), n) };
            self.written += n as u64;
            self.map.header().written.0.store(self.written, Ordering::Release);
        }
        Ok(n)
    }

    fn room(&mut self) -> Result<usize, Broken> {
        let claimed = self.map.header().consumed.0.load(Ordering::Acquire);
        if claimed < self.consumed || claimed > self.written {
            return Err(Broken { counter: "consumed", claimed, low: self.consumed, high: self.written });
        }
        self.consumed = claimed;
        Ok(self.map.len - (self.written - claimed) as usize)
    }

    /// After a push: whether the consumer sleeps on the socket and needs a byte to wake up (it
    /// is marked awake: one byte per sleep).
    fn consumer_needs_waking(&self) -> bool {
        fence(Ordering::SeqCst);
        self.map.header().consumer_asleep.0.swap(0, Ordering::Relaxed) != 0
    }

    /// Marks this side asleep for want of room, unless there is room now (true).
    fn sleep_unless_room(&mut self) -> Result<bool, Broken> {
        self.map.header().producer_asleep.0.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let room = self.room()? > 0;
        if room {
            self.map.header().producer_asleep.0.store(0, Ordering::Relaxed);
        }
        Ok(room)
    }
}

/// Wakes the other side with a byte on the socket, unless one is waiting there already (a full
/// socket); an error when the other side is gone.
fn ring(socket: &impl AsFd) -> io::Result<()> {
    match rustix::net::send(socket, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
        Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Blocks until a byte arrives on the socket; false when the other side is gone (closed, or
/// closed with a byte of ours unread: reset).
fn sleep_on(socket: &OwnedFd) -> io::Result<bool> {
    loop {
        match rustix::io::read(socket, &mut [0; 64]) {
            Err(rustix::io::Errno::INTR) => {}
            Ok(0) | Err(rustix::io::Errno::CONNRESET) => return Ok(false),
            read => return read.map(|_| true).map_err(io::Error::from),
        }
    }
}

/// Waits for a byte on the socket through tokio's cooperative budget (a worker that keeps the
/// socket full still lets the thread serve other connections); false when the worker is gone.
async fn sleep_on_async(socket: &mut tokio::net::UnixStream) -> io::Result<bool> {
    match socket.read(&mut [0; 256]).await {
        Ok(0) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(false),
        read => read.map(|_| true),
    }
}

fn tokio_socket(socket: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let socket = std::os::unix::net::UnixStream::from(socket);
    socket.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(socket)
}

/// The front end's end of the requests' ring: what `Handler::data` writes to.
pub struct Sender {
    ring: Producer,
    socket: tokio::net::UnixStream,
}

impl Sender {
    /// Makes the ring and sends it on `socket` (the other end is the worker's stdin).
    pub fn new(socket: OwnedFd) -> io::Result<Sender> {
        let ring = Producer::new(Mapping::create_and_send("podsftp-requests", REQUESTS_BYTES, &socket)?);
        Ok(Sender { ring, socket: tokio_socket(socket)? })
    }

    /// Puts all of `data` into the ring, waiting for room as needed; an error once the worker is
    /// gone or broke the ring.
    pub async fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        loop {
            let n = self.ring.push(data)?;
            data = &data[n..];
            if n > 0 && self.ring.consumer_needs_waking() {
                // Straight to the socket: tokio's `try_write` answers WouldBlock without trying
                // until its reactor has seen the socket writable, which lost the first wake-up.
                ring(&self.socket)?;
            }
            if data.is_empty() {
                return Ok(());
            }
            while !self.ring.sleep_unless_room()? {
                if !sleep_on_async(&mut self.socket).await? {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            }
        }
    }
}

/// The worker's end of the replies' ring: its stdout.
pub struct Writer {
    ring: Producer,
    socket: OwnedFd,
}

impl Writer {
    /// Receives the ring on `socket` (stdout) from `Receiver::new`.
    pub fn receive(socket: OwnedFd) -> io::Result<Writer> {
        Ok(Writer { ring: Producer::new(Mapping::receive(&socket, REPLIES_BYTES)?), socket })
    }
}

impl io::Write for Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    /// As much of the slices as there is room for, waiting only while there is none.
    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if slices.iter().all(|slice| slice.is_empty()) {
            return Ok(0);
        }
        while !self.ring.sleep_unless_room()? {
            if !sleep_on(&self.socket)? {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
        }
        let mut total = 0;
        for slice in slices {
            let n = self.ring.push(slice)?;
            total += n;
            if n < slice.len() {
                break;
            }
        }
        if self.ring.consumer_needs_waking() {
            ring(&self.socket)?;
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The front end's end of the replies' ring: copied out to the client's channel.
pub struct Receiver {
    map: Mapping,
    socket: tokio::net::UnixStream,
    consumed: u64,
    /// The worker's `written` as last taken.
    written: u64,
}

impl Receiver {
    /// Makes the ring and sends it on `socket` (the other end is the worker's stdout).
    pub fn new(socket: OwnedFd) -> io::Result<Receiver> {
        let map = Mapping::create_and_send("podsftp-replies", REPLIES_BYTES, &socket)?;
        Ok(Receiver { map, socket: tokio_socket(socket)?, consumed: 0, written: 0 })
    }

    /// Copies what the worker wrote into `buf`, waiting while there is nothing; 0 once the
    /// worker is gone and all it wrote was read (or `buf` is empty); an error when it broke the
    /// ring.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // A worker that keeps writing must not keep this task from yielding.
        tokio::task::consume_budget().await;
        loop {
            let n = self.unread()?.min(buf.len());
            if n > 0 {
                // SAFETY: `n <= len` bytes from `data(consumed)` lie in the double
                // mapping; copied as raw bytes into our own buffer, never referenced, so a worker
                // writing them meanwhile can garble only its own replies.
                unsafe { ptr::copy_nonoverlapping(self.map.data(self.consumed), buf.as_mut_ptr(), n) };
                self.consumed += n as u64;
                let header = self.map.header();
                header.consumed.0.store(self.consumed, Ordering::Release);
                fence(Ordering::SeqCst);
                if header.producer_asleep.0.swap(0, Ordering::Relaxed) != 0 {
                    // A worker that died asleep needs no wake-up; what it wrote is still read.
                    let _ = ring(&self.socket);
                }
                return Ok(n);
            }
            self.map.header().consumer_asleep.0.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.unread()? > 0 {
                self.map.header().consumer_asleep.0.store(0, Ordering::Relaxed);
                continue;
            }
            if !sleep_on_async(&mut self.socket).await? && self.unread()? == 0 {
                return Ok(0);
            }
        }
    }

    /// Bytes written and not yet read, from the worker's `written` (taken only between what was
    /// taken before and a full ring).
    fn unread(&mut self) -> Result<usize, Broken> {
        let claimed = self.map.header().written.0.load(Ordering::Acquire);
        let high = self.consumed + self.map.len as u64;
        if claimed < self.written || claimed > high {
            return Err(Broken { counter: "written", claimed, low: self.written, high });
        }
        self.written = claimed;
        Ok((claimed - self.consumed) as usize)
    }
}

/// The worker's end: requests are read where they lie in the ring.
pub struct Consumer {
    shared: Arc<Shared>,
    /// What was cut into packets so far.
    framed: u64,
}

struct Shared {
    map: Mapping,
    socket: OwnedFd,
    /// From the oldest body still lent out on: the end of each packet cut since, and whether its
    /// body is back (copied ones are at once); `consumed` stops at the oldest still out.
    lent: Mutex<VecDeque<(u64, bool)>>,
}

impl Consumer {
    /// Receives the ring on `socket` (stdin) from `Sender::new`.
    pub fn receive(socket: OwnedFd) -> io::Result<Consumer> {
        let map = Mapping::receive(&socket, REQUESTS_BYTES)?;
        Ok(Consumer { shared: Arc::new(Shared { map, socket, lent: Mutex::new(VecDeque::new()) }), framed: 0 })
    }

    /// The bytes written past what was cut into packets (contiguous, at most the ring's size).
    pub fn buffered(&self) -> io::Result<&[u8]> {
        let written = self.shared.map.header().written.0.load(Ordering::Acquire);
        let len = written.checked_sub(self.framed).filter(|&n| n <= self.shared.map.len as u64);
        let len = len.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the input ring's counters disagree"))?;
        // SAFETY: at most the ring's size from `data(framed)` lie in the double mapping; the front
        // end wrote them before `written` passed them and writes only into room given back, which
        // these bytes are not until they are consumed.
        Ok(unsafe { std::slice::from_raw_parts(self.shared.map.data(self.framed), len as usize) })
    }

    /// Waits until more than the `shown` bytes `buffered` showed are written; false once the
    /// front end is gone and everything it wrote was shown.
    pub fn wait(&self, shown: usize) -> io::Result<bool> {
        let header = self.shared.map.header();
        let more = || header.written.0.load(Ordering::Acquire) > self.framed + shown as u64;
        loop {
            if more() {
                return Ok(true);
            }
            header.consumer_asleep.0.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if more() {
                header.consumer_asleep.0.store(0, Ordering::Relaxed);
                return Ok(true);
            }
            let awake = sleep_on(&self.shared.socket)?;
            header.consumer_asleep.0.store(0, Ordering::Relaxed);
            if !awake {
                return Ok(more());
            }
        }
    }

    /// Cuts the next `skip + len` buffered bytes off as a packet whose body is the last `len`:
    /// lent from the ring when large (its room comes back when the last `Bytes` of it is
    /// dropped), else copied. The caller saw them in `buffered`.
    pub fn take(&mut self, skip: usize, len: usize) -> io::Result<Bytes> {
        let end = self.framed + (skip + len) as u64;
        let start = self.framed + skip as u64;
        let body = self.buffered()?.get(skip..skip + len).ok_or_else(|| io::Error::other("packet cut beyond the written bytes"))?;
        let body = if len < LEND_FROM {
            let body = Bytes::copy_from_slice(body);
            self.shared.done(end, false);
            body
        } else {
            lock(&self.shared.lent).push_back((end, false));
            Bytes::from_owner(Lent { shared: self.shared.clone(), start, len, end })
        };
        self.framed = end;
        Ok(body)
    }
}

/// A body lent from the ring.
struct Lent {
    shared: Arc<Shared>,
    start: u64,
    len: usize,
    end: u64,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= REQUESTS_BYTES` bytes at `data(start)`, in the double mapping; the front
        // end does not write there until `consumed` passes `end`, which waits for this drop.
        unsafe { std::slice::from_raw_parts(self.shared.map.data(self.start), self.len) }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.shared.done(self.end, true);
    }
}

impl Shared {
    /// The ring up to `end` is done with (`was_lent`: a lent body came back); gives the room
    /// back as far as no lent body precedes it, and wakes the front end if it waits for room.
    fn done(&self, end: u64, was_lent: bool) {
        let mut lent = lock(&self.lent);
        if was_lent {
            if let Ok(i) = lent.binary_search_by_key(&end, |&(e, _)| e) {
                lent[i].1 = true;
            }
        } else if !lent.is_empty() {
            lent.push_back((end, true));
            return;
        }
        let mut consumed = if was_lent { None } else { Some(end) };
        while let Some(&(e, true)) = lent.front() {
            consumed = Some(e);
            lent.pop_front();
        }
        let Some(consumed) = consumed else { return };
        // Under the lock: `consumed` only grows.
        let header = self.map.header();
        header.consumed.0.store(consumed, Ordering::Release);
        fence(Ordering::SeqCst);
        if header.producer_asleep.0.swap(0, Ordering::Relaxed) != 0 {
            // A front end that is gone needs no wake-up.
            let _ = ring(&self.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Both ends in one process (two mappings of one memfd, as in two processes): every byte
    //! arrives in order through wrap-arounds and a full ring, with bodies held and given back
    //! out of order; a worker's lies about `consumed` are refused; the memfd cannot shrink.
    use std::time::Duration;

    use super::*;
    use crate::sftp::framing::{
        Packets,
        tests::{bodies, framed},
    };

    fn sockets() -> (OwnedFd, OwnedFd) {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap()
    }

    fn pair() -> (Sender, Consumer) {
        let (front, worker) = sockets();
        (Sender::new(front).unwrap(), Consumer::receive(worker).unwrap())
    }

    fn replies() -> (Receiver, Writer) {
        let (front, worker) = sockets();
        (Receiver::new(front).unwrap(), Writer::receive(worker).unwrap())
    }

    /// Everything the worker wrote, read in pieces of `piece` bytes, until the end.
    async fn read_to_end(receiver: &mut Receiver, piece: usize) -> Vec<u8> {
        let (mut got, mut buf) = (Vec::new(), vec![0; piece]);
        loop {
            match receiver.read(&mut buf).await.unwrap() {
                0 => return got,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reply_byte_arrives_in_order_through_a_full_ring_and_the_end_is_seen() {
        use std::io::Write;
        let stream = framed(&bodies());
        let (mut receiver, mut writer) = replies();
        let expected = stream.clone();
        // Header and payload in one vectored write, as the engine writes a reply.
        let worker = std::thread::spawn(move || {
            for reply in expected.chunks(40_000) {
                let (header, payload) = reply.split_at(reply.len().min(13));
                let mut slices = [IoSlice::new(header), IoSlice::new(payload)];
                let mut slices = &mut slices[..];
                while !slices.is_empty() {
                    let n = writer.write_vectored(slices).unwrap();
                    IoSlice::advance_slices(&mut slices, n);
                }
            }
        });
        // Smaller reads than the writes, so the ring fills up.
        let got = read_to_end(&mut receiver, 7_000).await;
        tokio::task::spawn_blocking(move || worker.join()).await.unwrap().unwrap();
        assert!(got == stream, "{} bytes received of {}", got.len(), stream.len());
    }

    #[tokio::test]
    async fn replies_of_a_worker_that_died_waiting_for_room_all_arrive() {
        use std::io::Write;
        let (mut receiver, mut writer) = replies();
        let sent: Vec<u8> = (0..REPLIES_BYTES + 100).map(|i| (i % 251) as u8).collect();
        assert_eq!(writer.write(&sent).unwrap(), REPLIES_BYTES, "the ring takes what fits");
        // As if it had gone to sleep for room, then died (killed, out of memory).
        writer.ring.map.header().producer_asleep.0.store(1, Ordering::SeqCst);
        drop(writer.socket);
        let got = read_to_end(&mut receiver, 10_000).await;
        assert!(got == sent[..REPLIES_BYTES], "{} bytes of {}", got.len(), REPLIES_BYTES);
    }

    #[tokio::test]
    async fn a_worker_that_claims_more_replies_than_the_ring_holds_is_refused() {
        use std::io::Write;
        let (mut receiver, mut writer) = replies();
        writer.write_all(b"abc").unwrap();
        assert_eq!(receiver.read(&mut [0; 2]).await.unwrap(), 2);
        for claimed in [2, REPLIES_BYTES as u64 + 3] {
            writer.ring.map.header().written.0.store(claimed, Ordering::Release);
            let error = receiver.read(&mut [0; 8]).await.unwrap_err();
            let high = REPLIES_BYTES + 2;
            assert!(error.to_string().contains(&format!("claims {claimed} bytes written, outside 3..={high}")), "{error}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_body_arrives_whole_through_a_full_ring_with_bodies_held_out_of_order() {
        let bodies = bodies();
        let stream = framed(&bodies);
        let (mut sender, mut consumer) = pair();
        let expected = bodies.clone();
        let worker = std::thread::spawn(move || {
            // Keeps up to two bodies and gives back the older or the newer in turn, so bodies
            // come back out of order. (Not more: the engine gives every body back without
            // waiting for more input, a test that holds them must leave room for the next.)
            let mut held = VecDeque::new();
            for (i, body) in expected.iter().enumerate() {
                let got = consumer.next_packet().unwrap().unwrap_or_else(|| panic!("packet {i} missing"));
                assert!(got == body[..], "packet {i} of {} bytes differs", body.len());
                held.push_back(got);
                if held.len() == 3 {
                    held.remove(i % 2);
                }
                if i % 7 == 0 {
                    held.clear();
                }
            }
            drop(held);
            assert!(consumer.next_packet().unwrap().is_none(), "a packet after the last");
        });
        for piece in stream.chunks(32 * 1024 + 13) {
            sender.send(piece).await.unwrap();
        }
        drop(sender);
        tokio::task::spawn_blocking(move || worker.join()).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_worker_that_claims_too_much_is_refused() {
        let (mut sender, consumer) = pair();
        sender.send(b"abcd").await.unwrap();
        for claimed in [5, u64::MAX] {
            consumer.shared.map.header().consumed.0.store(claimed, Ordering::Release);
            let error = sender.send(b"e").await.unwrap_err();
            assert!(error.to_string().contains(&format!("claims {claimed} bytes consumed, outside 0..=4")), "{error}");
        }
        consumer.shared.map.header().consumed.0.store(2, Ordering::Release);
        sender.send(b"e").await.unwrap();
        consumer.shared.map.header().consumed.0.store(1, Ordering::Release);
        let error = sender.send(b"f").await.unwrap_err();
        assert!(error.to_string().contains("claims 1 bytes consumed, outside 2..=5"), "{error}");
    }

    #[test]
    fn the_first_request_wakes_a_worker_already_waiting() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (mut sender, mut consumer) = runtime.block_on(async { pair() });
        let shared = consumer.shared.clone();
        let (got, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || got.send(consumer.next_packet().unwrap().map(|body| body.to_vec())));
        while shared.map.header().consumer_asleep.0.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        runtime.block_on(sender.send(&framed(&[b"first".to_vec()]))).unwrap();
        assert_eq!(received.recv_timeout(Duration::from_secs(5)), Ok(Some(b"first".to_vec())), "the worker was not woken");
    }

    #[tokio::test]
    async fn the_stream_ends_cleanly_though_the_front_end_left_a_doorbell_unread() {
        let (mut sender, mut consumer) = pair();
        // A byte the worker rang while the front end found room by itself (a race of every
        // upload that fills the ring): closing a socket with unread bytes resets the peer's.
        rustix::net::send(&consumer.shared.socket, &[1], SendFlags::empty()).unwrap();
        sender.send(&framed(&[b"last".to_vec()])).await.unwrap();
        drop(sender);
        assert_eq!(consumer.next_packet().unwrap().as_deref(), Some(&b"last"[..]));
        assert!(consumer.next_packet().unwrap().is_none());
    }

    #[test]
    fn the_worker_cannot_resize_the_ring() {
        let (_ring, memfd) = Mapping::create("test", REQUESTS_BYTES).unwrap();
        for size in [0, 2 * (header_bytes() + REQUESTS_BYTES) as u64] {
            assert_eq!(rustix::fs::ftruncate(&memfd, size), Err(rustix::io::Errno::PERM), "resize to {size}");
        }
    }
}
