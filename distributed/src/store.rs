//! libtorch's `TCPStore` (the key-value store torchrun's workers rendezvous through), optionally under a
//! `PrefixStore`. Keys are strings, values bytes; every blocking call has a timeout.
use crate::ffi;
use anyhow::{Context, Result};
use std::ffi::{CString, c_void};
use std::time::Duration;

/// A connection to (or the host of) a TCPStore.
pub struct Store {
    raw: *mut c_void,
    addr: String,
    port: u16,
    timeout: Duration,
}

// The C++ TCPStore serialises its own requests (it holds a lock per operation).
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Hosts the store on `host:port` (port 0: an ephemeral port, read back with [`Store::port`]).
    pub fn serve(host: &str, port: u16, timeout: Duration) -> Result<Self> {
        Self::open(host, port, true, timeout, "").with_context(|| {
            format!("could not host the rendezvous store on {host}:{port} (is the port in use?)")
        })
    }

    /// Connects to the store at `host:port`, retrying until `timeout`; keys are put under `prefix`
    /// (torchrun's agent store uses `/worker/attempt_<restart count>`).
    pub fn connect(host: &str, port: u16, timeout: Duration, prefix: &str) -> Result<Self> {
        Self::open(host, port, false, timeout, prefix).with_context(|| {
            format!(
                "could not reach the rendezvous store at {host}:{port} within {:.1}s (MASTER_ADDR / MASTER_PORT)",
                timeout.as_secs_f64()
            )
        })
    }

    fn open(host: &str, port: u16, server: bool, timeout: Duration, prefix: &str) -> Result<Self> {
        let (h, p) = (cstr(host)?, cstr(prefix)?);
        let raw = ffi::object("TCPStore", |e, l| unsafe {
            ffi::spar_store_new(
                h.as_ptr(),
                port,
                server as i32,
                0,
                ms(timeout),
                p.as_ptr(),
                e,
                l,
            )
        })?;
        let port = unsafe { ffi::spar_store_port(raw) };
        Ok(Self {
            raw,
            addr: host.to_string(),
            port,
            timeout,
        })
    }

    /// A view of this store with every key under `prefix` (a subgroup's own namespace).
    pub fn prefixed(&self, prefix: &str) -> Result<Self> {
        let p = cstr(prefix)?;
        let raw = ffi::object("PrefixStore", |e, l| unsafe {
            ffi::spar_store_prefixed(self.raw, p.as_ptr(), e, l)
        })?;
        Ok(Self {
            raw,
            addr: self.addr.clone(),
            port: self.port,
            timeout: self.timeout,
        })
    }

    /// The port the store listens on (server) or connects to (client).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, for error messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    /// The default timeout of blocking calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = cstr(key)?;
        ffi::status(&format!("store set {key}"), |e, l| unsafe {
            ffi::spar_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len(), e, l)
        })
    }

    /// The value of `key`, waiting up to `timeout` for it to be set.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let k = cstr(key)?;
        let (mut p, mut n) = (std::ptr::null_mut(), 0usize);
        ffi::status(&format!("store get {key}"), |e, l| unsafe {
            ffi::spar_store_get(self.raw, k.as_ptr(), ms(timeout), &mut p, &mut n, e, l)
        })?;
        Ok(ffi::take_bytes(p, n))
    }

    /// Sets `key` to `desired` if it currently holds `expected` (an empty `expected` matches a missing key);
    /// returns the value the key holds afterwards.
    pub fn compare_set(&self, key: &str, expected: &[u8], desired: &[u8]) -> Result<Vec<u8>> {
        let k = cstr(key)?;
        let (mut p, mut n) = (std::ptr::null_mut(), 0usize);
        ffi::status(&format!("store compare_set {key}"), |e, l| unsafe {
            ffi::spar_store_compare_set(
                self.raw,
                k.as_ptr(),
                expected.as_ptr(),
                expected.len(),
                desired.as_ptr(),
                desired.len(),
                &mut p,
                &mut n,
                e,
                l,
            )
        })?;
        Ok(ffi::take_bytes(p, n))
    }

    /// Adds `delta` to the integer at `key` (missing: 0) and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let k = cstr(key)?;
        let mut out = 0i64;
        ffi::status(&format!("store add {key}"), |e, l| unsafe {
            ffi::spar_store_add(self.raw, k.as_ptr(), delta, &mut out, e, l)
        })?;
        Ok(out)
    }

    /// Whether `key` is set (does not wait).
    pub fn check(&self, key: &str) -> Result<bool> {
        let k = cstr(key)?;
        let mut out = 0;
        ffi::status(&format!("store check {key}"), |e, l| unsafe {
            ffi::spar_store_check(self.raw, k.as_ptr(), &mut out, e, l)
        })?;
        Ok(out != 0)
    }

    pub(crate) fn raw(&self) -> *mut c_void {
        self.raw
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        unsafe { ffi::spar_store_free(self.raw) }
    }
}
