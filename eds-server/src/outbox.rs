//! The queue between one xDS stream's task and its HTTP/2 response body:
//! bounded, and, for state of the world, holding only the latest response
//! of each type.
//!
//! ```text
//!  stream task --send(resp)--> [ queued responses ... ] --poll_recv--> WireBody
//!                   │
//!                   ├─ queued responses the new one supersedes lose what it
//!                   │  replaces; emptied ones are dropped; the new one is
//!                   │  queued last
//!                   ├─ room left: queued
//!                   └─ full: the task waits until the body takes one
//!  finish(status) --> the stream's last item, after every queued response
//! ```
//!
//! Why: a subscriber that stops reading (a stuck client, a full TCP window)
//! used to accumulate one response per topology change, up to the queue's
//! bound, each pinning a whole topology's encodings. A state-of-the-world
//! response carries the full state of its type for the stream, so a queued
//! one that was never sent is worth nothing once a newer one of its type
//! exists: such a subscriber now holds one response per type whatever
//! happens meanwhile. Delta responses are increments and are never dropped;
//! the bound stops the task instead, and the topology `watch` it then stops
//! reading keeps only the latest state, which the delta machine diffs
//! against what it already sent when the client reads again.
//!
//! An LDS or CDS response carries all the stream's resources of its type,
//! so a newer one drops an older one whole. An EDS or RDS response may
//! carry only the resources that changed (see `xds::sotw`), so a newer one
//! strips from an older one the resources it carries again, and the older
//! one is dropped only once nothing is left in it. Either way each resource
//! is queued at most once per type, so what an unread stream holds is
//! bounded by its subscription, not by the number of changes.
//!
//! Dropping a queued response is safe for the protocol: the client never
//! saw its nonce, and the newer response's nonce is the one it will
//! answer. Order is kept: the newer response is queued after everything
//! queued before it, as it would have been anyway.
//!
//! Not a general channel: one sender (the stream task), one receiver (the
//! response body).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tonic::Status;

/// A response that may make an older queued one, or part of it, pointless.
pub trait Supersede {
    /// Removes from `older`, queued before this response and never sent,
    /// what this response replaces; true if nothing worth sending is left
    /// of it.
    fn supersede(&self, older: &mut Self) -> bool;
}

/// A new outbox holding at most `capacity` responses (at least one).
pub fn outbox<T: Supersede>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            end: None,
            sender_gone: false,
            receiver_gone: false,
            waker: None,
            superseded: 0,
        }),
        room: Notify::new(),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the sender when the receiver took a response or left.
    room: Notify,
    capacity: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    /// The stream's final status, sent after the queue drains.
    end: Option<Status>,
    sender_gone: bool,
    receiver_gone: bool,
    /// The response body waiting for something to send.
    waker: Option<Waker>,
    /// Responses dropped because a newer one superseded them.
    superseded: u64,
}

impl<T> Shared<T> {
    fn backlog(&self) -> Backlog {
        let state = self.lock();
        Backlog {
            queued: state.queue.len(),
            superseded: state.superseded,
        }
    }

    /// The state; a panic while holding the lock leaves a queue that is
    /// still consistent (every change is one push or pop), so poisoning is
    /// ignored.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The receiver left: nobody reads this stream any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The stream task's end of an outbox.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Supersede> Sender<T> {
    /// Queues `response`, waiting while the outbox is full (after dropping
    /// what it supersedes).
    pub async fn send(&self, response: T) -> Result<(), Closed> {
        let mut response = Some(response);
        loop {
            // Registered before looking, so a take between the look and the
            // wait is not missed (`Notify` keeps one permit for a single waiter).
            let room = self.shared.room.notified();
            {
                let mut state = self.shared.lock();
                if state.receiver_gone {
                    return Err(Closed);
                }
                let Some(new) = response.take() else {
                    return Ok(());
                };
                let before = state.queue.len();
                state.queue.retain_mut(|old| !new.supersede(old));
                state.superseded += (before - state.queue.len()) as u64;
                if state.queue.len() < self.shared.capacity {
                    state.queue.push_back(new);
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                    return Ok(());
                }
                response = Some(new);
            }
            room.await;
        }
    }

    /// Ends the stream with `status` once every queued response is sent.
    pub fn finish(self, status: Status) {
        self.shared.lock().end = Some(status);
        // Dropping `self` wakes the receiver.
    }

    /// How many responses wait to be sent, and how many were dropped so
    /// far because a newer one superseded them.
    pub fn backlog(&self) -> Backlog {
        self.shared.backlog()
    }

    /// A handle that reads the backlog without being able to send.
    pub fn observer(&self) -> Observer<T> {
        Observer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// An outbox's backlog, for the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// Responses waiting for the client to read.
    pub queued: usize,
    /// Responses never sent because a newer one of their type replaced them.
    pub superseded: u64,
}

/// Reads an outbox's backlog (for the client registry).
pub struct Observer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Observer<T> {
    /// The backlog now.
    pub fn backlog(&self) -> Backlog {
        self.shared.backlog()
    }
}

/// The response body's end of an outbox.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

macro_rules! debug_as_backlog {
    ($($end:ident),*) => {$(
        impl<T> std::fmt::Debug for $end<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(concat!("outbox::", stringify!($end)))
                    .field(&self.shared.backlog())
                    .finish()
            }
        }
    )*};
}
debug_as_backlog!(Sender, Receiver, Observer);

impl<T> Receiver<T> {
    /// The next response; then the final status (`Err`), or `None` when the
    /// sender left without one.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Status>>> {
        let mut state = self.shared.lock();
        if let Some(response) = state.queue.pop_front() {
            drop(state);
            self.shared.room.notify_one();
            return Poll::Ready(Some(Ok(response)));
        }
        if let Some(status) = state.end.take() {
            return Poll::Ready(Some(Err(status)));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        // What was queued is freed now, not when the task notices.
        state.queue.clear();
        drop(state);
        self.shared.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    /// (kind, sequence): a response supersedes an older one of its kind
    /// when the kind is not 0 (0 stands for a delta response).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct R(u8, u32);

    impl Supersede for R {
        fn supersede(&self, older: &mut Self) -> bool {
            self.0 != 0 && self.0 == older.0
        }
    }

    async fn recv(rx: &mut Receiver<R>) -> Option<Result<R, Status>> {
        poll_fn(|cx| rx.poll_recv(cx)).await
    }

    #[tokio::test]
    async fn an_unread_stream_keeps_only_the_latest_response_of_each_kind() {
        let (tx, mut rx) = outbox::<R>(1024);
        for i in 0..500 {
            tx.send(R(1, i)).await.unwrap();
            tx.send(R(2, i)).await.unwrap();
        }
        assert_eq!(
            tx.backlog(),
            Backlog {
                queued: 2,
                superseded: 998
            }
        );
        assert_eq!(recv(&mut rx).await.unwrap().unwrap(), R(1, 499));
        assert_eq!(recv(&mut rx).await.unwrap().unwrap(), R(2, 499));
        tx.finish(Status::unavailable("bye"));
        let end = recv(&mut rx).await.unwrap().unwrap_err();
        assert_eq!(end.message(), "bye");
        assert!(recv(&mut rx).await.is_none());
    }

    #[tokio::test]
    async fn order_is_kept_and_a_superseding_response_goes_last() {
        let (tx, mut rx) = outbox::<R>(8);
        for r in [R(1, 0), R(2, 1), R(0, 2), R(1, 3)] {
            tx.send(r).await.unwrap();
        }
        let mut got = Vec::new();
        drop(tx);
        while let Some(Ok(r)) = recv(&mut rx).await {
            got.push(r);
        }
        assert_eq!(got, vec![R(2, 1), R(0, 2), R(1, 3)]);
    }

    #[tokio::test]
    async fn increments_are_never_dropped_and_a_full_outbox_makes_the_sender_wait() {
        let (tx, mut rx) = outbox::<R>(3);
        for i in 0..3 {
            tx.send(R(0, i)).await.unwrap();
        }
        let waiting = tokio::spawn(async move {
            tx.send(R(0, 3)).await.unwrap();
            tx
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "sent into a full outbox");
        assert_eq!(recv(&mut rx).await.unwrap().unwrap(), R(0, 0));
        let tx = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the sender was not woken by the take")
            .unwrap();
        assert_eq!(tx.backlog().queued, 3);
        for i in 1..4 {
            assert_eq!(recv(&mut rx).await.unwrap().unwrap(), R(0, i));
        }
    }

    #[tokio::test]
    async fn a_receiver_that_leaves_frees_the_queue_and_releases_a_waiting_sender() {
        let (tx, rx) = outbox::<R>(1);
        tx.send(R(0, 0)).await.unwrap();
        let observer = tx.observer();
        let waiting = tokio::spawn(async move { tx.send(R(0, 1)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting sender was not released")
            .unwrap();
        assert_eq!(sent, Err(Closed));
        assert_eq!(observer.backlog().queued, 0);
    }
}
