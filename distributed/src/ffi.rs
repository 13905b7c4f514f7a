//! The C ABI of `csrc/c10d.cpp` and `csrc/nccl.cpp`, and the one helper that turns their error buffers into
//! `anyhow` errors. Everything here is private to the crate; the safe types live in `store.rs` and `group.rs`.
use anyhow::{Result, bail};
use std::ffi::{CStr, c_char, c_int, c_void};
use tch::Tensor;

/// `at::Tensor*` as tch hands it out.
pub(crate) type RawTensor = *mut c_void;

unsafe extern "C" {
    pub(crate) fn spar_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: i64,
        timeout_ms: i64,
        prefix: *const c_char,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_store_free(s: *mut c_void);
    pub(crate) fn spar_store_port(s: *mut c_void) -> u16;
    pub(crate) fn spar_store_set(
        s: *mut c_void,
        key: *const c_char,
        v: *const u8,
        n: usize,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    pub(crate) fn spar_store_get(
        s: *mut c_void,
        key: *const c_char,
        timeout_ms: i64,
        out: *mut *mut u8,
        n: *mut usize,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    pub(crate) fn spar_store_compare_set(
        s: *mut c_void,
        key: *const c_char,
        expected: *const u8,
        ne: usize,
        desired: *const u8,
        nd: usize,
        out: *mut *mut u8,
        n: *mut usize,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    pub(crate) fn spar_bytes_free(p: *mut u8);
    pub(crate) fn spar_store_add(
        s: *mut c_void,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    pub(crate) fn spar_store_check(
        s: *mut c_void,
        key: *const c_char,
        out: *mut c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    pub(crate) fn spar_pg_gloo_new(
        s: *mut c_void,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        iface: *const c_char,
        host: *const c_char,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_pg_nccl_new(
        s: *mut c_void,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        device: c_int,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_nccl_compiled() -> c_int;
    pub(crate) fn spar_pg_free(g: *mut c_void);
    pub(crate) fn spar_pg_all_reduce(
        g: *mut c_void,
        t: RawTensor,
        op: c_int,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_pg_broadcast(
        g: *mut c_void,
        t: RawTensor,
        root: c_int,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_pg_all_gather_into(
        g: *mut c_void,
        out: RawTensor,
        input: RawTensor,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_pg_reduce_scatter(
        g: *mut c_void,
        out: RawTensor,
        input: RawTensor,
        op: c_int,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_pg_all_to_all_single(
        g: *mut c_void,
        out: RawTensor,
        input: RawTensor,
        out_splits: *const i64,
        n_out: usize,
        in_splits: *const i64,
        n_in: usize,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_pg_all_to_all_autograd(
        g: *mut c_void,
        input: RawTensor,
        out_splits: *const i64,
        n_out: usize,
        in_splits: *const i64,
        n_in: usize,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_store_prefixed(
        s: *mut c_void,
        prefix: *const c_char,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    pub(crate) fn spar_pg_barrier(g: *mut c_void, err: *mut c_char, len: usize) -> *mut c_void;
    pub(crate) fn spar_work_wait(
        w: *mut c_void,
        timeout_ms: i64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    pub(crate) fn spar_work_free(w: *mut c_void);
}

const ERR_LEN: usize = 4096;

/// Runs `f` with an error buffer; `ok(result)` says whether it succeeded. On failure the C++ message becomes
/// the error, prefixed by `what`.
pub(crate) fn call<T>(
    what: &str,
    f: impl FnOnce(*mut c_char, usize) -> T,
    ok: impl Fn(&T) -> bool,
) -> Result<T> {
    let mut buf = vec![0 as c_char; ERR_LEN];
    let out = f(buf.as_mut_ptr(), ERR_LEN);
    if ok(&out) {
        return Ok(out);
    }
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    bail!("{what}: {}", msg.trim())
}

/// A status-code call (0 = success).
pub(crate) fn status(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    call(what, f, |rc| *rc == 0).map(|_| ())
}

/// A constructor call (null = failure).
pub(crate) fn object(
    what: &str,
    f: impl FnOnce(*mut c_char, usize) -> *mut c_void,
) -> Result<*mut c_void> {
    call(what, f, |p| !p.is_null())
}

/// The `at::Tensor*` behind a tch tensor. The shim only reads the pointer during the call (c10d copies the
/// tensor handle, which keeps the storage alive until the work completes).
pub(crate) fn raw(t: &Tensor) -> RawTensor {
    t.as_ptr() as RawTensor
}

/// A byte buffer malloc'd by the shim, copied out and freed.
pub(crate) fn take_bytes(p: *mut u8, n: usize) -> Vec<u8> {
    let v = unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
    unsafe { spar_bytes_free(p) };
    v
}
