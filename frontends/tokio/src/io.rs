//! Socket plumbing shared by the connection driver: the input buffer, the
//! split into read and write halves, vectored writes, the buffer pool.

use std::io::{self, IoSlice};
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

/// A stream the server can run over, and how it splits into halves that
/// two tasks can own.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split_owned(self) -> (Self::Read, Self::Write);
}

impl Socket for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split_owned(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Socket for UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split_owned(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl<S: Socket> Socket for tokio_rustls::server::TlsStream<S> {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;
    fn split_owned(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// Received bytes not yet consumed by the protocol machine.
pub struct InBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0u8; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads once from `r`; `Ok(0)` at end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        self.fill_upto(r, usize::MAX).await
    }

    /// Reads once from `r`, at most `max` bytes (at least one).
    pub async fn fill_upto<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> io::Result<usize> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let stop = self.end + max.clamp(1, self.buf.len() - self.end);
        let n = r.read(&mut self.buf[self.end..stop]).await?;
        self.end += n;
        Ok(n)
    }
}

/// Writes every byte of `slices`, as few system calls as the kernel allows.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Read and write buffers of one connection, reused so that the hot path
/// does not allocate (or fault in fresh pages) per request.
pub struct BufPool {
    free: Mutex<Pooled>,
}

#[derive(Default)]
struct Pooled {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

/// Buffers kept for reuse per connection: one per request that can be in
/// flight, so a steady stream of requests allocates (and zeroes) nothing.
/// With fewer, every request past the pool paid for a fresh zeroed buffer:
/// a third of the server's time at 4K random reads, iodepth 32.
const POOLED: usize = crate::connection::MAX_IN_FLIGHT + 8;
/// Bytes kept for reuse per connection at most: what the connection may
/// have in flight, so that the pool never holds more than the budget let
/// the client use at once.
const MAX_POOLED_BYTES: usize = crate::connection::BYTE_BUDGET;
/// Larger buffers (a request over the budget) are freed after use rather
/// than kept.
const MAX_POOLED_LEN: usize = MAX_POOLED_BYTES;
/// Smallest buffer handed out: a page, so that a 4 KiB request does not
/// zero sixteen pages it never uses.
const MIN_LEN: usize = 4 << 10;

impl Default for BufPool {
    fn default() -> Self {
        Self {
            free: Mutex::new(Pooled::default()),
        }
    }
}

impl BufPool {
    /// A buffer of at least `len` bytes (contents unspecified).
    pub fn get(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let best = free
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let b = free.bufs.swap_remove(i);
                free.bytes -= b.len();
                b
            }
            None => {
                drop(free);
                vec![0u8; len.max(MIN_LEN)]
            }
        }
    }

    pub fn put(&self, buf: Vec<u8>) {
        if buf.len() > MAX_POOLED_LEN {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.bufs.len() < POOLED && free.bytes + buf.len() <= MAX_POOLED_BYTES {
            free.bytes += buf.len();
            free.bufs.push(buf);
        } else if let Some(i) = (0..free.bufs.len()).min_by_key(|&i| free.bufs[i].len()) {
            // Keep the larger of the two: it can serve any request the
            // smaller one could.
            let old = free.bufs[i].len();
            if old < buf.len() && free.bytes - old + buf.len() <= MAX_POOLED_BYTES {
                free.bytes = free.bytes - old + buf.len();
                free.bufs[i] = buf;
            }
        }
    }
}

/// Flushes and half-closes, ignoring a peer that already went away.
pub async fn close<W: AsyncWrite + Unpin>(w: &mut W) {
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_best_fit() {
        let p = BufPool::default();
        let a = p.get(100);
        assert_eq!(a.len(), MIN_LEN);
        let b = p.get(1 << 20);
        p.put(a);
        p.put(b);
        assert_eq!(p.get(10).len(), MIN_LEN);
        assert_eq!(p.get(200_000).len(), 1 << 20);
    }

    #[test]
    fn pool_holds_one_buffer_per_request_in_flight() {
        let p = BufPool::default();
        let bufs: Vec<_> = (0..crate::connection::MAX_IN_FLIGHT)
            .map(|_| p.get(4096))
            .collect();
        let ptrs: Vec<_> = bufs.iter().map(|b| b.as_ptr()).collect();
        for b in bufs {
            p.put(b);
        }
        // A second round reuses every buffer: no allocation, no zeroing.
        let again: Vec<Vec<u8>> = (0..crate::connection::MAX_IN_FLIGHT)
            .map(|_| p.get(4096))
            .collect();
        for b in &again {
            assert!(ptrs.contains(&b.as_ptr()));
        }
    }

    #[test]
    fn pool_bytes_are_bounded() {
        let p = BufPool::default();
        for _ in 0..10 {
            p.put(vec![0u8; MAX_POOLED_LEN]);
        }
        let free = p.free.lock().unwrap();
        assert!(free.bytes <= MAX_POOLED_BYTES);
        assert_eq!(free.bytes, free.bufs.iter().map(|b| b.len()).sum::<usize>());
    }

    #[tokio::test]
    async fn inbuf_fill_upto_reads_no_more_than_asked() {
        let mut b = InBuf::new(8);
        let mut src: &[u8] = b"abcdefghij";
        assert_eq!(b.fill_upto(&mut src, 3).await.unwrap(), 3);
        assert_eq!(b.data(), b"abc");
        assert_eq!(b.fill_upto(&mut src, 0).await.unwrap(), 1);
        assert_eq!(b.fill_upto(&mut src, 100).await.unwrap(), 4);
        assert_eq!(b.data(), b"abcdefgh");
    }

    #[tokio::test]
    async fn inbuf_compacts_when_full() {
        let mut b = InBuf::new(8);
        let mut src: &[u8] = b"abcdefghij";
        b.fill(&mut src).await.unwrap();
        assert_eq!(b.data(), b"abcdefgh");
        b.consume(6);
        b.fill(&mut src).await.unwrap();
        assert_eq!(b.data(), b"ghij");
    }

    #[tokio::test]
    async fn vectored_write_survives_partial_writes() {
        let (mut a, mut b) = tokio::io::duplex(3);
        let t = tokio::spawn(async move {
            let mut v = Vec::new();
            b.read_to_end(&mut v).await.unwrap();
            v
        });
        let mut s = [
            IoSlice::new(b"hello "),
            IoSlice::new(b""),
            IoSlice::new(b"world"),
        ];
        write_all_vectored(&mut a, &mut s).await.unwrap();
        drop(a);
        assert_eq!(t.await.unwrap(), b"hello world");
    }
}
