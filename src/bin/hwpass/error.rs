//! Every hint a person reads from `hwpass`: what to do next, by the kind of trouble. The library
//! reports facts ([`DesktopError`], [`Reason`]); the advice lives here.

use hwpass::desktop::{DesktopError, OnlineReason, Reason, Verdict};
use hwpass::DocKind;

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
        Reason::Rollback => "if the clock is right now, it was ahead before: request a new pass (`hwpass request`) and install it, which resets this desktop's time; otherwise set the clock to the correct time",
        Reason::Damaged => "restore the file from a backup, or enrol again (`hwpass enroll --force`)",
        Reason::DeviceUnavailable => "check that the TPM is reachable (--tcti, HWPASS_TCTI) and try again",
        Reason::DeviceMissing => "this computer shows no TPM: enable it in the firmware (UEFI) settings, or load its driver (modprobe tpm_crb or tpm_tis); or name another with --tcti",
        Reason::DevicePermission => "add your account to the tss group (`sudo usermod -aG tss $USER`, then log in again); the udev rule shipped with tpm2-tss (tpm-udev) gives /dev/tpmrm0 to group tss",
        Reason::DeviceNotListening => "start the TPM simulator (swtpm socket --tpm2 …) or fix the address in --tcti / HWPASS_TCTI",
        Reason::DeviceLockout => "the TPM is in dictionary-attack lockout: wait for it to end (hwpass's own keys are exempt, but the TPM refuses some commands meanwhile)",
        Reason::DeviceFailure => "the TPM is in failure mode: restart the computer; if that does not help, update the TPM firmware",
        Reason::Transit => "the text was damaged on its way here (cut short or altered in transit): paste it again, whole, or ask for it to be sent again",
        Reason::StateRolledBack => "put back the newest copy of the state directory (the one this TPM wrote last), or enrol again (`hwpass enroll --force`) and request a new pass",
        Reason::WrongDocument(found) => wrong_document(found),
        Reason::Input => "fix the problem above and try again",
        Reason::Online(o) => online(o),
        _ => "see `hwpass --help`",
    }
}

/// What to do when `request --server` got no pass. The offline path always remains.
fn online(reason: OnlineReason) -> &'static str {
    match reason {
        OnlineReason::InsecureUrl => "use the service's https:// address (plain http:// is accepted only for this computer's own loopback address); if the address above is the sign-in provider's, tell the service's administrators",
        OnlineReason::Service => "check the server address and your network; or use the offline path: `hwpass request --subject you@corp`, paste the line on the service's page or send it to your admin, and `hwpass install` the pass",
        OnlineReason::NoSelfService => "get your pass the offline way: `hwpass request --subject you@corp`, send the line to your admin, and `hwpass install` the pass you get back",
        OnlineReason::IdpUnavailable => "try again in a while; or use the offline path: `hwpass request --subject you@corp` and send the line to your admin",
        OnlineReason::IdpConfig => "tell the service's administrators: the sign-in provider is not set up for device sign-in from hwpass (docs/sign-in.md)",
        OnlineReason::Denied => "run the command again and approve the sign-in on the provider's page (after checking that the code there is the one shown here)",
        OnlineReason::Expired => "run the command again and finish signing in before the countdown ends",
        OnlineReason::TokenRefused => "run the command again; if it is refused again, tell the service's administrators (their log says why): a provider or service clock that is off causes this too",
        OnlineReason::NoGroup => "ask your IT department to add you to one of the groups named above, then run the command again",
        OnlineReason::RateLimited => "wait until the time named above, or ask an admin for a pass",
        OnlineReason::WrongSubject => "leave out --subject (the pass is for whoever signs in), or sign in as that person; nothing was signed",
        OnlineReason::Refused => "fix what the service says above, or ask its administrators",
        _ => "see `hwpass request --help`",
    }
}

/// What to do with a document given in the wrong place.
fn wrong_document(found: DocKind) -> &'static str {
    match found {
        DocKind::Request => "this is the request you send: give it to your admin (or their issuing page), and install the pass you get back",
        DocKind::Pass | DocKind::Delivery => "install a pass with `hwpass install`",
        DocKind::DenyList => "install a deny list with `hwpass refresh --file`",
        DocKind::TrustBundle => "enrol with a trust bundle (`hwpass enroll --trust FILE`); `hwpass refresh` wants the deny list (`hwpass-issuer denylist`, or --server)",
        DocKind::IssuerConfig => "that is the issuer's own config: ask your admin for the trust bundle (`hwpass-issuer jwks > issuer.jwks`)",
        _ => "check what you pasted: hwpass documents are passes, requests, deny lists and trust bundles",
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
