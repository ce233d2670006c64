//! Every hint a person reads from `hwpass`: what to do next, by the kind of trouble. The library
//! reports facts ([`DesktopError`], [`Reason`]); the advice lives here.

use hwpass::desktop::{DesktopError, Reason, Verdict};

/// What the person should do next.
pub fn hint(reason: Reason) -> &'static str {
    match reason {
        Reason::NotEnrolled => "run `hwpass enroll --trust issuer.jwks`, then request a pass",
        Reason::AlreadyEnrolled => "use the existing enrolment, or pass --force to replace it (its pass is lost)",
        Reason::NoPass => "run `hwpass request --subject you@corp`, send the request to your admin and `hwpass install` the pass you get back",
        Reason::Expired => "request a new pass",
        Reason::NotYetValid => "check the computer's clock, or wait until the pass becomes valid",
        Reason::Invalid => "ask your admin for a new pass; this one was damaged, altered or is from an issuer this desktop does not trust",
        Reason::OtherDevice => "this pass belongs to another machine: request a pass from this one",
        Reason::Revoked => "ask your admin why; if you should still have access, request a new pass",
        Reason::StaleDenyList => "nothing to do: this desktop already has a newer list; get the current one (`hwpass refresh --server URL`)",
        Reason::Fetch => "check the server address and your network, or bring the list over by file (`hwpass-issuer denylist`, then `hwpass refresh --file`)",
        Reason::KeyUnusable => "enrol this desktop again (`hwpass enroll --force`) and request a new pass",
        Reason::Foreign => "this state belongs to another machine or was damaged: enrol again (`hwpass enroll --force`) and request a new pass",
        Reason::Rollback => "set the computer's clock to the correct time and check again",
        Reason::Damaged => "restore the file from a backup, or enrol again (`hwpass enroll --force`)",
        Reason::DeviceUnavailable => "check that the TPM is reachable (--tcti, HWPASS_TCTI) and try again",
        Reason::Input => "fix the problem above and try again",
        _ => "see `hwpass --help`",
    }
}

/// Prints an error and its hint on stderr; returns the exit code.
pub fn report(e: &DesktopError) -> i32 {
    eprintln!("hwpass: error: {e}");
    eprintln!("hint: {}", hint(e.reason()));
    e.exit_code()
}

/// A verdict with the hint for its reason filled in.
pub fn advised(mut v: Verdict) -> Verdict {
    if v.hint.is_none() {
        v.hint = v.reason.map(|r| hint(r).to_string());
    }
    v
}
