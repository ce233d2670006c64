//! The C ABI of the hwpass desktop library: an application (C, C++, C#/.NET through P/Invoke,
//! …) checks its pass in-process instead of running `hwpass check --json`.
//!
//! Every function returns the status code `hwpass check` would exit with (0 valid, 1 other
//! error, 2 usage — a null or non-UTF-8 argument —, 3 no pass, 4 invalid, 5 expired, 6 another
//! device, 7 clock rollback, 8 revoked) and never lets a panic cross the boundary (it becomes
//! 1). Strings and verdicts it returns are owned by the library: give them back with
//! [`hwpass_string_free`] / [`hwpass_verdict_free`].
//!
//! Thread safety: every function may be called from any thread, and calls on different state
//! directories may run at once. Calls on the *same* state directory must not overlap (the
//! application serialises them): a check may write the sealed state and advance the TPM's NV
//! counter.
//!
//! This crate is the one place in hwpass with `unsafe` code: reading the caller's C strings
//! and handing back and taking back the library's allocations.

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr;

use hwpass::desktop::{self, exit, DesktopError, DeviceOptions, Verdict};

/// The `hwpass` binary's advice for each kind of trouble: the same hints `hwpass check --json`
/// prints, from the same file.
#[allow(dead_code)]
#[path = "../../src/bin/hwpass/error.rs"]
mod hints;

/// Usage error: a required argument is null or not UTF-8.
const USAGE: i32 = 2;

/// How to reach the device key. Both members may be null.
#[repr(C)]
#[derive(Debug)]
pub struct HwpassOptions {
    /// TPM connection (TCTI), e.g. `device:/dev/tpmrm0`; null: the enrolment's, or
    /// `HWPASS_TCTI` / `TPM2TOOLS_TCTI`.
    pub tcti: *const c_char,
    /// For the software backend: a file holding the machine identity; null: the platform's.
    pub machine_id_file: *const c_char,
}

/// The verdict of a check or install, as `hwpass check --json` reports it.
#[repr(C)]
#[derive(Debug)]
pub struct HwpassVerdict {
    /// The status code (also the function's return value).
    pub exit_code: i32,
    /// `valid`, `no-pass`, `invalid`, `expired`, `wrong-device`, `rollback`, `revoked`,
    /// `error`.
    pub status: *mut c_char,
    /// One sentence.
    pub message: *mut c_char,
    /// What to do next; null when valid.
    pub hint: *mut c_char,
    /// Renew before going offline; null unless `renew`.
    pub warning: *mut c_char,
    /// The pass's subject; null when not valid.
    pub subject: *mut c_char,
    /// Expiry, Unix seconds; 0 when not valid.
    pub expires_at: i64,
    /// Seconds left; 0 when not valid.
    pub remaining_seconds: i64,
    /// Valid, but close to expiry: renew while online.
    pub renew: bool,
    /// The whole verdict as the JSON `hwpass check --json` prints.
    pub json: *mut c_char,
}

/// A string for the caller (null for `None`, or if it held a NUL byte).
fn out_string(s: Option<&str>) -> *mut c_char {
    s.and_then(|s| CString::new(s).ok())
        .map_or(ptr::null_mut(), CString::into_raw)
}

/// Reads an optional C string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid for the call.
unsafe fn in_str<'a>(p: *const c_char) -> Result<Option<&'a str>, i32> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller promises a NUL-terminated string valid for this call.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map(Some).map_err(|_| USAGE)
}

/// The options and state directory a call names.
///
/// # Safety
/// As [`in_str`] for `state_dir` and the members of `options` (which may be null).
unsafe fn context(
    state_dir: *const c_char,
    options: *const HwpassOptions,
) -> Result<(PathBuf, DeviceOptions), i32> {
    // SAFETY: as promised by the caller.
    let dir = unsafe { in_str(state_dir) }?
        .map(PathBuf::from)
        .or_else(desktop::default_state_dir)
        .ok_or(exit::OTHER)?;
    let mut opts = DeviceOptions::default();
    if !options.is_null() {
        // SAFETY: a non-null `options` points to an `HwpassOptions` valid for the call.
        let o = unsafe { &*options };
        // SAFETY: its members are null or valid C strings (the caller's promise).
        opts.tcti = unsafe { in_str(o.tcti) }?.map(str::to_owned);
        // SAFETY: as above.
        opts.machine_id_file = unsafe { in_str(o.machine_id_file) }?.map(PathBuf::from);
    }
    Ok((dir, opts))
}

/// `now` as given, or the system clock when 0.
fn clock(now: i64) -> Result<i64, i32> {
    if now != 0 {
        return Ok(now);
    }
    hwpass::os::now().map_err(|_| exit::OTHER)
}

/// Runs `f`, turning a panic into status 1 (a panic must not unwind into C).
fn guarded(f: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(exit::OTHER)
}

fn verdict_out(v: Verdict, out: *mut *mut HwpassVerdict) -> i32 {
    let v = hints::advised(v);
    let code = v.exit_code;
    if out.is_null() {
        return code;
    }
    let json = serde_json::to_string(&v).ok();
    let boxed = Box::new(HwpassVerdict {
        exit_code: code,
        status: out_string(Some(v.status)),
        message: out_string(Some(&v.message)),
        hint: out_string(v.hint.as_deref()),
        warning: out_string(v.warning.as_deref()),
        subject: out_string(v.subject.as_deref()),
        expires_at: v.expires_at.unwrap_or(0),
        remaining_seconds: v.remaining_seconds.unwrap_or(0),
        renew: v.renew,
        json: out_string(json.as_deref()),
    });
    // SAFETY: `out` is non-null and, by the caller's promise, points to writable storage for
    // one pointer.
    unsafe { *out = Box::into_raw(boxed) };
    code
}

fn report_out(value: Result<serde_json::Value, DesktopError>, out: *mut *mut c_char) -> i32 {
    let (code, text) = match value {
        Ok(v) => (exit::VALID, v.to_string()),
        Err(e) => {
            let v = hints::advised(Verdict::from_error(&e));
            (e.exit_code(), serde_json::to_string(&v).unwrap_or_default())
        }
    };
    if !out.is_null() {
        // SAFETY: `out` is non-null and points to writable storage for one pointer.
        unsafe { *out = out_string(Some(&text)) };
    }
    code
}

/// Checks the installed pass offline, with a fresh proof of possession of the device key.
///
/// `state_dir`: the desktop's state directory, or null for the default. `options`: may be null.
/// `now`: Unix seconds, or 0 for the system clock. `out`: if not null, receives a verdict to
/// free with [`hwpass_verdict_free`]. Returns the status code.
///
/// # Safety
/// String arguments are null or NUL-terminated and valid for the call; `options` is null or
/// points to a valid [`HwpassOptions`]; `out` is null or points to writable storage for one
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn hwpass_check(
    state_dir: *const c_char,
    options: *const HwpassOptions,
    now: i64,
    out: *mut *mut HwpassVerdict,
) -> i32 {
    guarded(|| {
        // SAFETY: forwarded from this function's contract.
        let (dir, opts) = match unsafe { context(state_dir, options) } {
            Ok(c) => c,
            Err(code) => return code,
        };
        let now = match clock(now) {
            Ok(n) => n,
            Err(code) => return code,
        };
        verdict_out(desktop::check(&dir, &opts, now), out)
    })
}

/// Verifies a pass (as pasted: wrapped, quoted or mail-quoted is fine; or a pass sealed to
/// this TPM) and installs it. Arguments as [`hwpass_check`]; `pass` must not be null.
///
/// # Safety
/// As [`hwpass_check`]; `pass` is a NUL-terminated string valid for the call.
#[no_mangle]
pub unsafe extern "C" fn hwpass_install(
    state_dir: *const c_char,
    options: *const HwpassOptions,
    pass: *const c_char,
    now: i64,
    out: *mut *mut HwpassVerdict,
) -> i32 {
    guarded(|| {
        // SAFETY: forwarded from this function's contract.
        let (dir, opts) = match unsafe { context(state_dir, options) } {
            Ok(c) => c,
            Err(code) => return code,
        };
        // SAFETY: as promised by the caller.
        let pass = match unsafe { in_str(pass) } {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => return USAGE,
        };
        let now = match clock(now) {
            Ok(n) => n,
            Err(code) => return code,
        };
        let v =
            desktop::install(&dir, &opts, pass, now).unwrap_or_else(|e| Verdict::from_error(&e));
        verdict_out(v, out)
    })
}

/// The enrolment and the installed pass with its state now, as `hwpass status --json` prints
/// it. `json_out`, if not null, receives a string to free with [`hwpass_string_free`] (the
/// report, or the error as a verdict). Returns 0 or the error's status code.
///
/// # Safety
/// As [`hwpass_check`], with `json_out` null or pointing to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn hwpass_status(
    state_dir: *const c_char,
    options: *const HwpassOptions,
    now: i64,
    json_out: *mut *mut c_char,
) -> i32 {
    guarded(|| {
        // SAFETY: forwarded from this function's contract.
        let (dir, opts) = match unsafe { context(state_dir, options) } {
            Ok(c) => c,
            Err(code) => return code,
        };
        let now = match clock(now) {
            Ok(n) => n,
            Err(code) => return code,
        };
        let report = desktop::status(&dir, &opts, now)
            .and_then(|r| serde_json::to_value(r).map_err(|e| DesktopError::Input(e.to_string())));
        report_out(report, json_out)
    })
}

/// Installs a signed deny list from a file (`hwpass refresh --file`). `json_out` as
/// [`hwpass_status`]. Returns 0 (installed or already up to date) or the error's status code.
///
/// # Safety
/// As [`hwpass_status`]; `path` is a NUL-terminated string valid for the call.
#[no_mangle]
pub unsafe extern "C" fn hwpass_refresh_file(
    state_dir: *const c_char,
    options: *const HwpassOptions,
    path: *const c_char,
    now: i64,
    json_out: *mut *mut c_char,
) -> i32 {
    guarded(|| {
        // SAFETY: forwarded from this function's contract.
        let (dir, opts) = match unsafe { context(state_dir, options) } {
            Ok(c) => c,
            Err(code) => return code,
        };
        // SAFETY: as promised by the caller.
        let path = match unsafe { in_str(path) } {
            Ok(Some(p)) => PathBuf::from(p),
            Ok(None) | Err(_) => return USAGE,
        };
        let now = match clock(now) {
            Ok(n) => n,
            Err(code) => return code,
        };
        let result = std::fs::read_to_string(&path)
            .map_err(|e| DesktopError::Input(format!("cannot read {}: {e}", path.display())))
            .and_then(|text| desktop::refresh(&dir, &opts, &text, None, now))
            .and_then(|r| serde_json::to_value(r).map_err(|e| DesktopError::Input(e.to_string())));
        report_out(result, json_out)
    })
}

/// Frees a verdict from [`hwpass_check`] or [`hwpass_install`] (null is fine).
///
/// # Safety
/// `v` is null or a verdict this library returned, not freed before.
#[no_mangle]
pub unsafe extern "C" fn hwpass_verdict_free(v: *mut HwpassVerdict) {
    if v.is_null() {
        return;
    }
    // SAFETY: `v` came from `Box::into_raw` in `verdict_out` and is freed once (the contract).
    let v = unsafe { Box::from_raw(v) };
    for s in [v.status, v.message, v.hint, v.warning, v.subject, v.json] {
        // SAFETY: each is null or came from `CString::into_raw` in `out_string`, freed once.
        unsafe { hwpass_string_free(s) };
    }
}

/// Frees a string this library returned (null is fine).
///
/// # Safety
/// `s` is null or a string this library returned, not freed before.
#[no_mangle]
pub unsafe extern "C" fn hwpass_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from `CString::into_raw` and is freed once (the contract).
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The library's version, a static string (do not free).
#[no_mangle]
pub extern "C" fn hwpass_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
