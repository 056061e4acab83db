//! One worker thread per open image, for the librbd calls that block:
//! open, close (which flushes librbd's cache), header refreshes behind
//! `rbd_stat`, `rbd_diff_iterate2` and `rbd_resize`. Data requests never
//! pass through it: they are `rbd_aio_*` submissions from the caller's
//! thread, completed by librbd's own threads.

use std::io;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::oneshot;
use crate::sys;

type Job = Box<dyn FnOnce(&sys::Image) + Send>;

/// The way to the worker of one image.
pub(crate) struct Lane {
    tx: mpsc::Sender<Job>,
}

impl Lane {
    /// Run `f` on the worker. `None` from the receiver: the worker is gone
    /// (it panicked).
    pub(crate) fn call<T, F>(&self, f: F) -> oneshot::Receiver<T>
    where
        T: Send + 'static,
        F: FnOnce(&sys::Image) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // A send error drops the job and with it `tx`: the receiver sees None.
        let _ = self.tx.send(Box::new(move |img| tx.send(f(img))));
        rx
    }
}

/// What an opening worker hands back: the handle for `rbd_aio_*` and the
/// lane. Keep the field order: the handle must be dropped before the lane,
/// so that when the worker sees its last lane go, its own `Arc` is the last
/// one and the image is closed on the worker, not on the caller's thread.
pub(crate) struct Opened {
    pub handle: Arc<sys::Image>,
    pub lane: Lane,
}

/// Start a worker that runs `open`, reports through `reply`, then serves
/// jobs until every `Lane` is dropped, then closes the image.
pub(crate) fn start<F>(open: F, reply: oneshot::Sender<io::Result<Opened>>) -> io::Result<()>
where
    F: FnOnce() -> io::Result<sys::Image> + Send + 'static,
{
    thread::Builder::new()
        .name("rbd-image".into())
        .spawn(move || {
            let img = match open() {
                Ok(img) => Arc::new(img),
                Err(e) => return reply.send(Err(e)),
            };
            *lock(&OPEN) += 1;
            let (tx, rx) = mpsc::channel::<Job>();
            reply.send(Ok(Opened {
                handle: Arc::clone(&img),
                lane: Lane { tx },
            }));
            for job in rx {
                job(&img);
            }
            // Closing happens here (sys::Image::drop: waits for in-flight
            // requests, then rbd_close), then the pool context and, if it
            // was the last user, the cluster handle.
            drop(img);
            *lock(&OPEN) -= 1;
            CLOSED.notify_all();
        })
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start the rbd worker thread: {e}")))
}

/// Images open in this process (counted by their workers).
static OPEN: Mutex<usize> = Mutex::new(0);
static CLOSED: Condvar = Condvar::new();

fn lock(m: &Mutex<usize>) -> std::sync::MutexGuard<'_, usize> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until every image whose last handle was dropped has been closed
/// by its worker (at most `timeout`); whether none is left open.
///
/// A process that exits with an image still open leaves its header watch
/// and exclusive lock behind, and the next client to open the image waits
/// for the cluster to time them out (30 s and more); a server calls this
/// after dropping its images, before it exits.
pub fn wait_closed(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut open = lock(&OPEN);
    while *open > 0 {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        open = CLOSED
            .wait_timeout(open, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}
