//! SIGINT / SIGTERM to the launcher: remembered here, forwarded to the ranks by the watch loop.
use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: the one thing a signal handler may safely do here.
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Installs the handlers (idempotent).
pub(super) fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// The last signal received, if any (cleared by reading).
pub(super) fn received() -> Option<i32> {
    match RECEIVED.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
