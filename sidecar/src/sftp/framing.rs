//! The client's stream cut into SFTP packets, from the front end's input ring (`crate::ring`:
//! bodies are read where they lie) or from a byte stream (`Framer`: `worker sftp` run by hand,
//! tests, fuzzing). In a stream, a body larger than the read-ahead buffer is read straight into a
//! buffer of its size that is never zeroed first (only its part already read ahead is copied);
//! small packets are read ahead together, so a batch of pipelined requests costs one read.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use bytes::Bytes;
use rustix::buffer::spare_capacity;

use super::codec;
use super::engine::SessionError;
use crate::ring;

/// The ring must hold the largest packet with its length field.
const _: () = assert!(ring::REQUESTS_BYTES >= 4 + codec::MAX_INCOMING_PACKET as usize);

/// Where a session's requests come from.
pub trait Packets: Send {
    /// The next packet's body (its length field removed); `None` when the stream ends before a
    /// packet's body begins (like OpenSSH's sftp-server, a partial length field is an end too).
    fn next_packet(&mut self) -> Result<Option<Bytes>, SessionError>;
}

/// The body length of the packet `buffered` starts with, once its length field is complete.
fn body_len(buffered: &[u8]) -> Result<Option<usize>, SessionError> {
    let Some(&[a, b, c, d]) = buffered.first_chunk() else { return Ok(None) };
    let len = u32::from_be_bytes([a, b, c, d]);
    if len > codec::MAX_INCOMING_PACKET {
        return Err(SessionError::Oversized(len));
    }
    Ok(Some(len as usize))
}

/// The end of the stream with `buffered` bytes of a packet begun.
fn ended(buffered: usize) -> Result<Option<Bytes>, SessionError> {
    if buffered < 4 { Ok(None) } else { Err(SessionError::Truncated) }
}

impl Packets for ring::Consumer {
    fn next_packet(&mut self) -> Result<Option<Bytes>, SessionError> {
        loop {
            let buffered = self.buffered()?;
            let shown = buffered.len();
            if let Some(len) = body_len(buffered)?
                && shown >= 4 + len
            {
                return Ok(Some(self.take(4, len)?));
            }
            if !self.wait(shown)? {
                return ended(shown);
            }
        }
    }
}

/// Requests are small; reading ahead saves a read per request.
const READ_AHEAD: usize = 64 * 1024;

/// A stream requests are read from.
pub trait Source: Send {
    /// Appends what is available into `buf`'s spare capacity (never beyond it, never zeroing
    /// it first); 0 at the end of the stream. `buf` has spare capacity.
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;
}

fn read_fd(fd: impl AsFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        match rustix::io::read(&fd, spare_capacity(buf)) {
            Err(rustix::io::Errno::INTR) => {}
            read => return read.map_err(io::Error::from),
        }
    }
}

/// The worker's stdin.
impl Source for File {
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        read_fd(&*self, buf)
    }
}

/// The engine's tests.
impl Source for UnixStream {
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        read_fd(&*self, buf)
    }
}

/// A stream held in memory (the fuzz targets).
impl Source for &[u8] {
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let (now, later) = self.split_at(self.len().min(buf.capacity() - buf.len()));
        buf.extend_from_slice(now);
        *self = later;
        Ok(now.len())
    }
}

pub struct Framer<S> {
    source: S,
    /// Bytes read ahead; those before `start` belong to packets already returned.
    ahead: Vec<u8>,
    start: usize,
}

impl<S: Source> Framer<S> {
    pub fn new(source: S) -> Self {
        Framer { source, ahead: Vec::with_capacity(READ_AHEAD), start: 0 }
    }

    /// Reads more into `ahead` after making room (what was consumed goes, a partial packet
    /// moves to the front); false at the end of the stream.
    fn read_ahead(&mut self) -> Result<bool, SessionError> {
        self.ahead.drain(..self.start);
        self.start = 0;
        Ok(self.source.read_into(&mut self.ahead)? > 0)
    }
}

impl<S: Source> Packets for Framer<S> {
    fn next_packet(&mut self) -> Result<Option<Bytes>, SessionError> {
        let len = loop {
            let buffered = &self.ahead[self.start..];
            if let Some(len) = body_len(buffered)? {
                if let Some(body) = buffered.get(4..4 + len) {
                    let body = Bytes::copy_from_slice(body);
                    self.start += 4 + len;
                    return Ok(Some(body));
                }
                if 4 + len > self.ahead.capacity() {
                    break len;
                }
            }
            let buffered = buffered.len();
            if !self.read_ahead()? {
                return ended(buffered);
            }
        };
        // Larger than the read-ahead buffer: the rest goes straight into the packet's own buffer.
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(&self.ahead[self.start + 4..]);
        self.ahead.clear();
        self.start = 0;
        while body.len() < len {
            if self.source.read_into(&mut body)? == 0 {
                return Err(SessionError::Truncated);
            }
        }
        // The allocator may have given more room than asked for: what came after the packet is
        // the next one's beginning.
        if body.len() > len {
            self.ahead.extend_from_slice(&body[len..]);
            body.truncate(len);
        }
        Ok(Some(Bytes::from(body)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Packets of every size class (empty, read ahead together, straddling the read-ahead
    //! buffer's end, larger than it) through sources that return short reads at arbitrary
    //! points, and every way a stream can end.
    use super::*;

    /// Hands out `data` in pieces of the given sizes, in turn (a pipe returns what was written).
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: std::iter::Cycle<std::slice::Iter<'a, usize>>,
    }

    impl Source for Pieces<'_> {
        fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
            let want = *self.sizes.next().unwrap_or(&1);
            let mut piece = &self.data[..want.min(self.data.len())];
            let n = piece.read_into(buf)?;
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    pub(crate) fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        bodies.iter().flat_map(|b| [&(b.len() as u32).to_be_bytes()[..], b].concat()).collect()
    }

    /// Bodies of many sizes whose bytes differ from packet to packet and within one.
    pub(crate) fn bodies() -> Vec<Vec<u8>> {
        let sizes = [0, 1, 13, 4000, 32 * 1024, READ_AHEAD - 4, READ_AHEAD - 3, READ_AHEAD, 100_000, codec::MAX_IO as usize, 7, 29];
        let mut sizes = sizes.repeat(3);
        // Many small requests in a row, as pipelined clients send them.
        sizes.extend(std::iter::repeat_n(37, 3000));
        sizes.push(codec::MAX_INCOMING_PACKET as usize);
        sizes.iter().enumerate().map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7 + j / 251) as u8).collect()).collect()
    }

    #[test]
    fn every_packet_arrives_whole_whatever_the_reads_return() {
        let bodies = bodies();
        let stream = framed(&bodies);
        for sizes in [vec![usize::MAX], vec![1], vec![3, 5, 70_000], vec![4096, 65_537, 2, 300_000], vec![65_536]] {
            let mut framer = Framer::new(Pieces { data: &stream, sizes: sizes.iter().cycle() });
            for (i, body) in bodies.iter().enumerate() {
                let got = framer.next_packet().unwrap().unwrap_or_else(|| panic!("packet {i} missing, reads {sizes:?}"));
                assert!(got == body[..], "packet {i} of {} bytes differs, reads {sizes:?}", body.len());
            }
            assert!(framer.next_packet().unwrap().is_none());
        }
    }

    #[test]
    fn a_stream_ends_cleanly_only_between_packets_or_in_a_length_field() {
        let whole = framed(&[b"abc".to_vec(), vec![9; 200_000]]);
        for (cut, ending) in [(7, "clean"), (9, "clean"), (11, "truncated"), (100, "truncated"), (whole.len() - 1, "truncated")] {
            let mut framer = Framer::new(&whole[..cut]);
            assert_eq!(framer.next_packet().unwrap().as_deref(), Some(&b"abc"[..]));
            match (framer.next_packet(), ending) {
                (Ok(None), "clean") | (Err(SessionError::Truncated), "truncated") => {}
                (other, _) => panic!("cut at {cut}: {other:?}, expected {ending}"),
            }
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body_is_read() {
        let mut stream = (codec::MAX_INCOMING_PACKET + 1).to_be_bytes().to_vec();
        stream.extend([0; 16]);
        let mut framer = Framer::new(&stream[..]);
        assert!(matches!(framer.next_packet(), Err(SessionError::Oversized(n)) if n == codec::MAX_INCOMING_PACKET + 1));
    }
}
