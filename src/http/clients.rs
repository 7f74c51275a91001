//! The client connections the built-in listener holds open, recorded so that a forked child
//! closes its copies.
//!
//! A child forked without exec inherits every descriptor, and the connections' owner (the
//! listener's polling thread) does not exist in it, so nothing there would ever close them.
//! While the child's copy lives, the parent's close of a connection sends the client nothing:
//! no FIN for a wait cancelled or a connection dropped, no reset for a slow reader cut at its
//! deadline; the client waits on a socket only the child holds, until the child exits. The
//! child hook closes every recorded descriptor: `close(2)` and atomics only, as a hook in the
//! child must.

use crate::fork::{GuardSlot, HeldAcrossFork, Hooks, Rank};
use std::io;
use std::mem::ManuallyDrop;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Connections recorded at once, across every listener of the process: four times the
/// default table's 64. Beyond them a connection is served but not recorded, and a child forked
/// meanwhile keeps its copy.
const SLOTS: usize = 256;

/// A free slot.
const EMPTY: i32 = -1;

/// The descriptors of the open connections. A descriptor is recorded after it is accepted
/// and forgotten before it is closed, so a recorded one is always open: the child never
/// closes a descriptor that has since been given to something else.
static OPEN: [AtomicI32; SLOTS] = [const { AtomicI32::new(EMPTY) }; SLOTS];

/// Held from an accept to its record, and from a record's removal to the close: a fork
/// falls in neither window, so the child's record names every connection open at the fork.
static RECORDING: HeldAcrossFork<Mutex<()>> =
    HeldAcrossFork::new(Rank::HttpClients, &FORK_HOOKS, Mutex::new(()));

static FORK_HOOKS: Hooks = Hooks {
    take: |forking| {
        let recording = RECORDING.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, recording.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    // Atomics and close(2) only, so also when the lock was not taken (a record may then miss a
    // connection accepted at that instant, never name a closed descriptor; see `OPEN`).
    in_child: Some(|_| close_recorded()),
};

static HELD_FOR_FORK: GuardSlot<MutexGuard<'static, ()>> = GuardSlot::new();

fn recording() -> MutexGuard<'static, ()> {
    RECORDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// In a forked child: closes the child's copies of the parent's connections.
fn close_recorded() {
    for slot in &OPEN {
        let fd = slot.swap(EMPTY, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: a recorded descriptor was open at the fork (see `OPEN`) and is the copy
            // of a connection owned by a thread of the parent's, which does not exist here:
            // nothing in this process owns or will close it.
            unsafe { libc::close(fd) };
        }
    }
}

/// An accepted connection, recorded while it is open.
#[derive(Debug)]
pub(super) struct Client {
    stream: ManuallyDrop<TcpStream>,
    /// Its slot in [`OPEN`]; `None`: every slot was taken.
    slot: Option<usize>,
}

impl Client {
    /// Accepts a connection from `listener` and records it.
    pub(super) fn accept(listener: &TcpListener) -> io::Result<Client> {
        let _recording = recording();
        let (stream, _) = listener.accept()?;
        let fd = stream.as_raw_fd();
        let slot = OPEN.iter().position(|slot| {
            slot.compare_exchange(EMPTY, fd, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        Ok(Client {
            stream: ManuallyDrop::new(stream),
            slot,
        })
    }
}

impl std::ops::Deref for Client {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _recording = recording();
        if let Some(slot) = self.slot {
            OPEN[slot].store(EMPTY, Ordering::Release);
        }
        // SAFETY: the stream is dropped here only, once, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.stream) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_recorded_while_open() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let _peer = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let client = Client::accept(&listener).expect("accept");
        let fd = client.as_raw_fd();
        let slot = client.slot.expect("a slot");
        assert_eq!(OPEN[slot].load(Ordering::Relaxed), fd);
        drop(client);
        assert_ne!(
            OPEN[slot].load(Ordering::Relaxed),
            fd,
            "forgotten when closed"
        );
    }
}
