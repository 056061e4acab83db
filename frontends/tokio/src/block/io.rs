//! The result of a node's I/O: ready now, or a future to wait for.
//!
//! Most drivers finish their work in the call (a RAM disk, a file read on
//! the blocking pool, a filter that forwards to its child): they return
//! [`Io::Ready`] and cost no allocation and no hand-off. Drivers that wait
//! (for the network, a throttle's next slot, an injected delay) return
//! [`Io::Pending`]. A filter forwards its child's `Io` as it is, so the
//! common path through a stack of filters stays allocation-free; only a
//! driver that itself has to wait boxes a future.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A boxed I/O future borrowing the request's buffers.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// What a node's I/O call returns.
#[must_use = "I/O that is not awaited may not have happened"]
pub enum Io<'a, T> {
    /// Finished in the call.
    Ready(io::Result<T>),
    /// Finishes when the future does.
    Pending(IoFuture<'a, T>),
}

impl<'a, T: Send + 'a> Io<'a, T> {
    pub fn ok(t: T) -> Self {
        Io::Ready(Ok(t))
    }

    pub fn err(e: io::Error) -> Self {
        Io::Ready(Err(e))
    }

    /// An I/O error with this errno.
    pub fn errno(e: i32) -> Self {
        Io::Ready(Err(io::Error::from_raw_os_error(e)))
    }

    pub fn pending(f: impl Future<Output = io::Result<T>> + Send + 'a) -> Self {
        Io::Pending(Box::pin(f))
    }

    pub fn from_result(r: io::Result<T>) -> Self {
        Io::Ready(r)
    }

    /// Waits for the result.
    pub async fn wait(self) -> io::Result<T> {
        match self {
            Io::Ready(r) => r,
            Io::Pending(f) => f.await,
        }
    }

    /// Continues with `f` once this succeeded: at once if it is ready (no
    /// allocation), else as one future.
    pub fn and_then<U: Send + 'a>(self, f: impl FnOnce(T) -> Io<'a, U> + Send + 'a) -> Io<'a, U> {
        match self {
            Io::Ready(Ok(t)) => f(t),
            Io::Ready(Err(e)) => Io::Ready(Err(e)),
            Io::Pending(fut) => Io::pending(async move { f(fut.await?).wait().await }),
        }
    }

    /// Maps the result, whatever it is.
    pub fn map<U: Send + 'a>(
        self,
        f: impl FnOnce(io::Result<T>) -> io::Result<U> + Send + 'a,
    ) -> Io<'a, U> {
        match self {
            Io::Ready(r) => Io::Ready(f(r)),
            Io::Pending(fut) => Io::pending(async move { f(fut.await) }),
        }
    }
}

/// Polls `fut` once, with a waker that does nothing. For work known not to
/// wait (a stack whose nodes all answer [`Io::Ready`]), this runs it to the
/// end in the caller with no task and no allocation; `None` means it did
/// wait after all.
pub fn poll_once<F: Future>(fut: Pin<&mut F>) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match fut.poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_chains_without_waiting() {
        let io: Io<'_, u32> = Io::ok(2);
        let r = io.and_then(|v| Io::ok(v * 3));
        assert!(matches!(r, Io::Ready(Ok(6))));
        let e: Io<'_, u32> = Io::errno(libc::EIO);
        assert!(matches!(e.and_then(|v| Io::ok(v)), Io::Ready(Err(_))));
    }

    #[tokio::test]
    async fn pending_chains_as_one_future() {
        let io: Io<'_, u32> = Io::pending(async {
            tokio::task::yield_now().await;
            Ok(5)
        });
        let r = io.and_then(|v| Io::ok(v + 1)).map(|r| r.map(|v| v * 2));
        assert!(matches!(r, Io::Pending(_)));
        assert_eq!(r.wait().await.unwrap(), 12);
    }

    #[test]
    fn poll_once_finishes_ready_work() {
        let mut f = std::pin::pin!(async { Io::<u8>::ok(1).wait().await });
        assert_eq!(poll_once(f.as_mut()).unwrap().unwrap(), 1);
    }
}
