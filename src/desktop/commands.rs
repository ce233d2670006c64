//! The desktop commands: enroll, request, install, refresh, check, status. Each is a library
//! call; `hwpass` is a thin front end over them.
//!
//! Every text a person pastes (a pass, a deny list, a trust bundle) goes through
//! [`crate::core::paste::clean`] first and is named for what it is when it is the wrong kind.

use std::path::{Path, PathBuf};

use super::clock;
use super::device::{self, Backend, BackendChoice, DeviceOptions, DeviceRecord, BACKENDS};
use super::enrolment::Enrolment;
use super::error::DesktopError;
use super::state::{io_err, read_limited, DesktopState, DEVICE_FILE};
use super::verdict::{EnrollReport, PassState, PassSummary, RefreshReport, StatusReport, Verdict};
use crate::core::b64::b64url;
use crate::core::claims::{
    check_text, EvidenceClaims, PassClaims, RequestClaims, StateMark, MAX_DEV_CHARS, MAX_SUB_CHARS,
};
use crate::core::delivery::Delivery;
use crate::core::denylist;
use crate::core::error::TokenError;
use crate::core::jwk::{Jwk, Jwks, TrustParams};
use crate::core::jws::{check_validity, decode, sign_request, LEEWAY_SECS};
use crate::core::paste::{clean, identify, DocKind};
use crate::core::time::format_time;
use crate::core::tpm_wire::{device_key_public, qualifying_data};
use crate::sys::{create_private_dir, write_atomic};

/// Refuses a document of another kind than `expected`, naming it; kinds it cannot tell are
/// left to the strict parser.
fn expect_kind(text: &str, expected: &[DocKind]) -> Result<(), DesktopError> {
    let found = identify(text);
    if expected.contains(&found) || found == DocKind::Unknown {
        return Ok(());
    }
    Err(DesktopError::WrongDocument {
        found,
        expected: expected[0],
    })
}

/// Enrols: creates the device key and the sealed state holding the trust bundle.
pub fn enroll(
    dir: &Path,
    trust_text: &str,
    choice: BackendChoice,
    force: bool,
    opts: &DeviceOptions,
    now: i64,
) -> Result<EnrollReport, DesktopError> {
    expect_kind(trust_text, &[DocKind::TrustBundle])?;
    let trust = Jwks::from_json(trust_text)?;
    let params = trust.hwpass.clone().ok_or_else(|| {
        DesktopError::Input(
            "the trust bundle lacks the hwpass issuer parameters; export it with `hwpass-issuer jwks`".into(),
        )
    })?;
    let record_path = dir.join(DEVICE_FILE);
    let replaced = match record_path.exists() {
        true if !force => return Err(DesktopError::AlreadyEnrolled { dir: dir.into() }),
        true => read_limited(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<DeviceRecord>(&b).ok()),
        false => None,
    };
    create_private_dir(dir).map_err(io_err(dir))?;
    let (backend, mut warnings) = choose_backend(&choice, opts)?;
    let created = backend.create(opts)?;
    warnings.extend(created.warning);
    let jwk = Jwk::new(*created.device.key().verifying_key());
    let record = DeviceRecord::new(backend.name(), &jwk, now, created.record);
    let enrolment = Enrolment::new(dir, record, backend.kind(), jwk, created.device);
    let mut state = DesktopState::new(trust.to_json(), params.iss, params.aud, now);
    // The state first, then the record: an interrupted enrolment leaves no device.json, so it
    // reads as "not enrolled" rather than as an enrolment without state.
    enrolment.save_state(&mut state)?;
    let bytes = serde_json::to_vec_pretty(&enrolment.record)
        .map_err(|e| DesktopError::Input(e.to_string()))?;
    write_atomic(&record_path, &bytes).map_err(io_err(&record_path))?;
    // The enrolment replaced (--force) gives back what it held in its device.
    if let Some(old) = replaced {
        if let (Ok(old_backend), Ok(old_record)) = (device::backend(&old.backend), old.record()) {
            old_backend.retire(old_record, opts);
        }
    }
    Ok(EnrollReport {
        kind: enrolment.kind,
        jkt: enrolment.jkt(),
        rollback_protected: enrolment.counter.get().is_some(),
        warnings,
    })
}

/// The backend `choice` names; for `auto`, the strongest that answers — but never another
/// one when the person named a device explicitly — with a warning when it is not the
/// strongest this build has.
fn choose_backend(
    choice: &BackendChoice,
    opts: &DeviceOptions,
) -> Result<(&'static dyn Backend, Vec<String>), DesktopError> {
    match choice {
        BackendChoice::Named(name) => Ok((device::backend(name)?, Vec::new())),
        BackendChoice::Auto => {
            let mut why: Option<(&str, DesktopError)> = None;
            for backend in BACKENDS {
                match backend.probe(opts) {
                    Ok(()) => {
                        let warning = why.map(|(name, e)| {
                            let strongest = if name == "tpm" {
                                "no TPM answered".to_string()
                            } else {
                                format!("the {name} device did not answer")
                            };
                            format!(
                                "{strongest} ({e}): using a {} key instead — the weaker binding; an issuer may refuse software-bound passes or give them a shorter life (README, \"Threat model\")",
                                backend.name()
                            )
                        });
                        return Ok((*backend, warning.into_iter().collect()));
                    }
                    // A device named explicitly (a TCTI) that does not answer is an error, not
                    // a reason to fall back to a weaker key.
                    Err(e) if backend.explicitly_requested(opts) => return Err(e),
                    Err(e) => {
                        why.get_or_insert((backend.name(), e));
                    }
                }
            }
            Err(why.map_or_else(
                || DesktopError::Input("this build of hwpass has no device backend".into()),
                |(_, e)| e,
            ))
        }
    }
}

/// Makes a request: signed by the device key, carrying its public key and the state it was
/// made at (so only the pass answering it can reset this desktop's time mark).
pub fn request(
    dir: &Path,
    opts: &DeviceOptions,
    subject: &str,
    ttl: Option<i64>,
    dev: Option<String>,
    now: i64,
) -> Result<String, DesktopError> {
    check_text(subject, MAX_SUB_CHARS)
        .map_err(|p| DesktopError::Input(format!("the subject {p}")))?;
    if let Some(d) = &dev {
        check_text(d, MAX_DEV_CHARS)
            .map_err(|p| DesktopError::Input(format!("the device name {p}")))?;
    }
    let e = Enrolment::open(dir, opts)?;
    let state = e.load_state()?;
    let att = e
        .device
        .evidence(&qualifying_data(&e.jkt()))?
        .map(|ev| EvidenceClaims {
            ekc: ev.ek_cert.as_deref().map(b64url),
            ekp: ev.ek_public.as_deref().map(b64url),
            eki: None,
            ak: b64url(&ev.ak_public),
            // Left out when the issuer can rebuild it from the request's key (hwpass's template).
            key: (ev.key_public != device_key_public(&e.jwk)).then(|| b64url(&ev.key_public)),
            cert: b64url(&ev.certify),
            sig: b64url(&ev.signature),
        });
    let claims = RequestClaims {
        sub: subject.into(),
        iat: now,
        kind: e.kind,
        ttl,
        dev,
        att,
        stm: Some(StateMark {
            n: state.n,
            hw: state.high_water,
        }),
    };
    Ok(sign_request(&claims, e.device.key())?)
}

/// Verifies a pass (or a pass sealed to this TPM) against the trust bundle and this device,
/// then stores it sealed. `text` is what the person pasted: transport damage is undone first.
pub fn install(
    dir: &Path,
    opts: &DeviceOptions,
    text: &str,
    now: i64,
) -> Result<Verdict, DesktopError> {
    install_remembering(dir, opts, text, None, now)
}

/// [`install`], also remembering `server` (with its CA file) for a bare `hwpass refresh`, in
/// the same write of the sealed state (`request --server`).
pub(super) fn install_remembering(
    dir: &Path,
    opts: &DeviceOptions,
    text: &str,
    server: Option<(&str, Option<&Path>)>,
    now: i64,
) -> Result<Verdict, DesktopError> {
    let text = clean(text);
    expect_kind(&text, &[DocKind::Pass, DocKind::Delivery])?;
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    // A pass delivered sealed to this TPM: ActivateCredential releases the key that opens it.
    let pass = match Delivery::parse(&text) {
        Some(delivery) => {
            let delivery = delivery.map_err(DesktopError::DeliveryDamaged)?;
            let credential = e
                .device
                .activate(&delivery.id_object, &delivery.encrypted_secret)?;
            // The TPM released the credential, so the delivery was made for this TPM: a
            // ciphertext that does not open was damaged on its way.
            delivery
                .open(&credential)
                .map_err(DesktopError::DeliveryDamaged)?
        }
        None => text,
    };
    let claims = e.verify(&state, &pass, now)?;
    let tpm = e.device.prove(&e.jwk)?;
    match clock::check(&state, now, tpm.as_ref()) {
        Ok(()) => clock::record(&mut state, now, tpm.as_ref()),
        // A pass answering a request made at this very state carries trusted time: the clock
        // is right now, it was ahead before. Nothing older qualifies.
        Err(rollback)
            if claims.stm
                == Some(StateMark {
                    n: state.n,
                    hw: state.high_water,
                }) =>
        {
            let _ = rollback;
            clock::reset(&mut state, now.max(claims.iat), tpm.as_ref());
        }
        Err(rollback) => return Err(rollback),
    }
    state.pass = Some(pass);
    if let Some((url, ca)) = server {
        state.server = Some(url.to_string());
        state.ca = ca.map(Path::to_path_buf);
    }
    e.save_state(&mut state)?;
    Ok(Verdict::valid(&claims, now))
}

/// Installs a signed deny list: verified against the issuer keys trusted now, for this
/// desktop's issuer and audience, and only if its sequence number is higher than the installed
/// one (the same number is "already up to date"; a lower one is refused). Replaces the trusted
/// keys with the list's (key rotation) and the revocations with its. `server` (with its CA
/// file) is remembered for a bare `hwpass refresh`.
pub fn refresh(
    dir: &Path,
    opts: &DeviceOptions,
    text: &str,
    server: Option<(&str, Option<&Path>)>,
    now: i64,
) -> Result<RefreshReport, DesktopError> {
    let text = clean(text);
    expect_kind(&text, &[DocKind::DenyList])?;
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    let trust = e.trust(&state)?;
    let params = TrustParams {
        iss: state.iss.clone(),
        aud: state.aud.clone(),
    };
    let list = denylist::verify(&text, &trust, &params, now)?;
    let previous_seq = state.denylist_seq;
    if list.seq < previous_seq {
        return Err(DesktopError::StaleDenyList {
            offered: list.seq,
            installed: previous_seq,
        });
    }
    let updated = list.seq > previous_seq;
    let trust = if updated { list.trust()? } else { trust };
    let mut dirty = updated;
    if updated {
        state.trust = trust.to_json();
        state.denylist_seq = list.seq;
        state.revoked_passes = list.passes.iter().map(|p| p.jti.clone()).collect();
        state.revoked_devices = list.devices.clone();
    }
    if let Some((url, ca)) = server {
        let ca = ca.map(Path::to_path_buf);
        if state.server.as_deref() != Some(url) || state.ca != ca {
            state.server = Some(url.to_string());
            state.ca = ca;
            dirty = true;
        }
    }
    if dirty {
        // The list's signed time is the issuer's word: it may raise the mark, never lower it.
        clock::record(&mut state, list.iat.min(now), None);
        e.save_state(&mut state)?;
    }
    let installed_jti = state
        .pass
        .as_deref()
        .and_then(|p| decode(p).ok())
        .and_then(|d| d.payload().ok())
        .and_then(|v| v.get("jti").and_then(|j| j.as_str()).map(String::from));
    let installed_pass_revoked = state.revoked_devices.contains(&e.jkt())
        || installed_jti.is_some_and(|j| state.revoked_passes.contains(&j));
    Ok(RefreshReport {
        seq: list.seq,
        previous_seq,
        updated,
        trusted_keys: trust.keys.into_iter().map(|(k, _)| k).collect(),
        revoked_passes: state.revoked_passes.len(),
        revoked_devices: state.revoked_devices.len(),
        installed_pass_revoked,
    })
}

/// The issuing service (and CA file) the last `refresh --server` used.
pub fn remembered_server(
    dir: &Path,
    opts: &DeviceOptions,
) -> Result<Option<(String, Option<PathBuf>)>, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let state = e.load_state()?;
    Ok(state.server.map(|s| (s, state.ca)))
}

/// Checks the installed pass offline, with a fresh proof of possession. Never panics; every
/// failure is a verdict with its exit code.
///
/// The state is written (with a TPM: one NV counter increment) only when something must be
/// remembered: a pass seen expired for the first time, or a time mark older than
/// [`clock::MARK_EVERY_SECS`]. An ordinary check writes nothing.
pub fn check(dir: &Path, opts: &DeviceOptions, now: i64) -> Verdict {
    match check_inner(dir, opts, now) {
        Ok(v) => v,
        Err(e) => Verdict::from_error(&e),
    }
}

fn check_inner(dir: &Path, opts: &DeviceOptions, now: i64) -> Result<Verdict, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    let pass = state.pass.clone().ok_or(DesktopError::NoPass)?;
    // Proof of possession first: it also brings the TPM's signed clock for the time check.
    let tpm = e.device.prove(&e.jwk)?;
    // A clock below what was seen is refused, and nothing is written (a pass requested at this
    // state can still reset the mark).
    clock::check(&state, now, tpm.as_ref())?;
    match e.verify(&state, &pass, now) {
        Ok(claims) => {
            if clock::due(&state, now, e.cheap_writes()) {
                clock::record(&mut state, now, tpm.as_ref());
                e.save_state(&mut state)?;
            }
            Ok(Verdict::valid(&claims, now))
        }
        Err(err) => {
            // An expiry once seen stays seen: the first check past expiry records the time.
            let expired_unrecorded = matches!(&err,
                DesktopError::Token(TokenError::Expired { exp, .. })
                    if state.high_water < exp.saturating_add(LEEWAY_SECS));
            if expired_unrecorded || (e.cheap_writes() && now > state.high_water) {
                clock::record(&mut state, now, tpm.as_ref());
                e.save_state(&mut state)?;
            }
            Err(err)
        }
    }
}

/// Shows the enrolment and the installed pass with its state now (valid, expired, revoked, not
/// yet valid, or a clock behind what was seen), without proving possession (`check` does).
/// Works without the device: then it says what it cannot tell.
pub fn status(dir: &Path, opts: &DeviceOptions, now: i64) -> Result<StatusReport, DesktopError> {
    let e = match Enrolment::open(dir, opts) {
        Ok(e) => e,
        // The device cannot be reached right now: show what the record says.
        Err(DesktopError::Device(f)) if f.kind.is_now() => {
            let (record, jwk) = Enrolment::read_record(dir)?;
            let backend = device::backend(&record.backend)?;
            return Ok(StatusReport {
                binding: backend.kind(),
                backend: record.backend.clone(),
                device_key: jwk.thumbprint(),
                enrolled_at: record.created,
                device_error: Some(f.to_string()),
                ..StatusReport::empty(dir)
            });
        }
        Err(other) => return Err(other),
    };
    let mut report = StatusReport {
        state_dir: dir.into(),
        binding: e.kind,
        backend: e.record.backend.clone(),
        device_key: e.jkt(),
        enrolled_at: e.record.created,
        issuer: None,
        audience: None,
        trusted_keys: Vec::new(),
        denylist_seq: None,
        rollback_protected: None,
        server: None,
        pass: None,
        device_error: None,
    };
    let state = match e.load_state() {
        Ok(s) => s,
        // The device cannot be reached right now: show what the record says.
        Err(DesktopError::Device(f)) if f.kind.is_now() => {
            report.device_error = Some(f.to_string());
            return Ok(report);
        }
        Err(other) => return Err(other),
    };
    let trust = e.trust(&state)?;
    report.rollback_protected = Some(e.counter.get().is_some());
    report.trusted_keys = trust.keys.iter().map(|(k, _)| k.clone()).collect();
    report.denylist_seq = Some(state.denylist_seq);
    report.server = state.server.clone();
    if let Some(p) = &state.pass {
        let d = decode(p)?;
        let c: PassClaims =
            serde_json::from_value(d.payload()?).map_err(|err| TokenError::Json {
                part: "claims",
                detail: err.to_string(),
            })?;
        let now_state = if clock::check(&state, now, None).is_err() {
            PassState::ClockBehind
        } else if state.revoked_passes.contains(&c.jti) || state.revoked_devices.contains(&e.jkt())
        {
            PassState::Revoked
        } else {
            match check_validity(c.nbf, c.exp, now) {
                Ok(()) => PassState::Valid,
                Err(TokenError::NotYetValid { .. }) => PassState::NotYetValid,
                Err(_) => PassState::Expired,
            }
        };
        report.pass = Some(PassSummary {
            subject: c.sub,
            expires_at: c.exp,
            expires: format_time(c.exp),
            jti: c.jti,
            state: now_state,
            token: p.clone(),
        });
    }
    report.issuer = Some(state.iss);
    report.audience = Some(state.aud);
    Ok(report)
}
