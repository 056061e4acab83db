//! A one-value channel from a worker thread to a future: the worker stores
//! the value and wakes the waiting task; a worker that ends without sending
//! (it panicked) wakes it with `None`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct State<T> {
    value: Option<T>,
    closed: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Sender<T>(Arc<Shared<T>>);
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value: None,
            closed: false,
            waker: None,
        }),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T> Sender<T> {
    /// Deliver `value`. If the receiver is gone, `value` is dropped here,
    /// on the sending thread, before this returns.
    pub(crate) fn send(self, value: T) {
        let mut st = self.0.lock();
        st.value = Some(value);
        // Drop happens through `Drop for Sender` below (wakes the receiver).
        drop(st);
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.0.lock();
            st.closed = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = self.0.lock();
        if let Some(v) = st.value.take() {
            return Poll::Ready(Some(v));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn value_and_closed() {
        let (tx, rx) = channel();
        std::thread::spawn(move || tx.send(7u32));
        assert_eq!(rx.await, Some(7));
        let (tx, rx) = channel::<u32>();
        std::thread::spawn(move || drop(tx));
        assert_eq!(rx.await, None);
    }

    #[test]
    fn value_sent_to_a_dropped_receiver_is_dropped_by_send() {
        struct Flag(Arc<Mutex<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = true;
            }
        }
        let dropped = Arc::new(Mutex::new(false));
        let (tx, rx) = channel();
        drop(rx);
        tx.send(Flag(Arc::clone(&dropped)));
        assert!(*dropped.lock().unwrap());
    }
}
