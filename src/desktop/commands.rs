//! The desktop commands: enroll, request, install, refresh, check, status. Each is a library
//! call; `hwpass` is a thin front end over them.

use std::path::Path;

use super::device::{self, Backend, BackendChoice, DeviceOptions, DeviceRecord, BACKENDS};
use super::enrolment::Enrolment;
use super::error::DesktopError;
use super::state::{io_err, DesktopState, DEVICE_FILE};
use super::verdict::{EnrollReport, PassSummary, RefreshReport, StatusReport, Verdict};
use crate::core::b64::b64url;
use crate::core::claims::{EvidenceClaims, PassClaims, RequestClaims};
use crate::core::delivery::Delivery;
use crate::core::denylist;
use crate::core::error::TokenError;
use crate::core::jwk::{Jwk, Jwks, TrustParams};
use crate::core::jws::{decode, sign_request};
use crate::core::time::format_time;
use crate::core::tpm_wire::{device_key_public, qualifying_data};
use crate::sys::{create_private_dir, write_atomic};

/// Enrols: creates the device key and the sealed state holding the trust bundle.
pub fn enroll(
    dir: &Path,
    trust_text: &str,
    choice: BackendChoice,
    force: bool,
    opts: &DeviceOptions,
    now: i64,
) -> Result<EnrollReport, DesktopError> {
    let trust = Jwks::from_json(trust_text)?;
    let params = trust.hwpass.clone().ok_or_else(|| {
        DesktopError::Input(
            "the trust bundle lacks the hwpass issuer parameters; export it with `hwpass-issuer jwks`".into(),
        )
    })?;
    if dir.join(DEVICE_FILE).exists() && !force {
        return Err(DesktopError::AlreadyEnrolled { dir: dir.into() });
    }
    create_private_dir(dir).map_err(io_err(dir))?;
    let (backend, notice) = choose_backend(&choice, opts)?;
    let (device, backend_record) = backend.create(opts)?;
    let jwk = Jwk::new(*device.key().verifying_key());
    let record = DeviceRecord::new(backend.name(), &jwk, now, backend_record);
    let enrolment = Enrolment {
        dir: dir.into(),
        record,
        kind: backend.kind(),
        jwk,
        device,
    };
    let state = DesktopState {
        v: 1,
        trust: trust.to_json(),
        iss: params.iss,
        aud: params.aud,
        pass: None,
        high_water: now,
        tpm_clock: None,
        denylist_seq: 0,
        revoked_passes: Vec::new(),
        revoked_devices: Vec::new(),
    };
    // The state first, then the record: an interrupted enrolment leaves no device.json, so it
    // reads as "not enrolled" rather than as an enrolment without state.
    enrolment.save_state(&state)?;
    let path = dir.join(DEVICE_FILE);
    let bytes = serde_json::to_vec_pretty(&enrolment.record)
        .map_err(|e| DesktopError::Input(e.to_string()))?;
    write_atomic(&path, &bytes).map_err(io_err(&path))?;
    Ok(EnrollReport {
        kind: enrolment.kind,
        jkt: enrolment.jkt(),
        notice,
    })
}

/// The backend `choice` names; for `auto`, the strongest that answers, with a notice when that
/// is not the strongest this build has.
fn choose_backend(
    choice: &BackendChoice,
    opts: &DeviceOptions,
) -> Result<(&'static dyn Backend, Option<String>), DesktopError> {
    match choice {
        BackendChoice::Named(name) => Ok((device::backend(name)?, None)),
        BackendChoice::Auto => {
            let mut why = None;
            for backend in BACKENDS {
                match backend.probe(opts) {
                    Ok(()) => {
                        let notice = why.map(|(name, e): (&str, DesktopError)| {
                            let strongest = if name == "tpm" { "no TPM answered" } else { "no stronger device answered" };
                            format!("{strongest} ({e}): using the weaker {} key instead (see README, \"Threat model\")", backend.name())
                        });
                        return Ok((*backend, notice));
                    }
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

/// Makes a request: signed by the device key, carrying its public key.
pub fn request(
    dir: &Path,
    opts: &DeviceOptions,
    subject: &str,
    ttl: Option<i64>,
    dev: Option<String>,
    now: i64,
) -> Result<String, DesktopError> {
    if subject.trim().is_empty() || subject.len() > 256 {
        return Err(DesktopError::Input(
            "the subject must be 1 to 256 characters".into(),
        ));
    }
    let e = Enrolment::open(dir, opts)?;
    let att = e
        .device
        .evidence(&qualifying_data(&e.jkt()))?
        .map(|ev| EvidenceClaims {
            ekc: ev.ek_cert.as_deref().map(b64url),
            ekp: ev.ek_public.as_deref().map(b64url),
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
    };
    Ok(sign_request(&claims, e.device.key())?)
}

/// Verifies a pass against the trust bundle and this device, then stores it sealed.
pub fn install(
    dir: &Path,
    opts: &DeviceOptions,
    pass: &str,
    now: i64,
) -> Result<Verdict, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    // A pass delivered sealed to this TPM: ActivateCredential releases the key that opens it.
    let opened;
    let pass = match Delivery::parse(pass) {
        Some(delivery) => {
            let delivery = delivery.map_err(|err| DesktopError::Input(err.to_string()))?;
            let credential = e
                .device
                .activate(&delivery.id_object, &delivery.encrypted_secret)?;
            opened = delivery
                .open(&credential)
                .map_err(|err| DesktopError::Foreign(err.to_string()))?;
            opened.as_str()
        }
        None => pass,
    };
    let claims = e.verify(&mut state, pass, now)?;
    state.pass = Some(pass.into());
    e.save_state(&state)?;
    Ok(Verdict::valid(&claims, now))
}

/// Installs a signed deny list: verified against the issuer keys trusted now, for this
/// desktop's issuer and audience, and only if its sequence number is higher than the installed
/// one (the same number is "already up to date"; a lower one is refused). Replaces the trusted
/// keys with the list's (key rotation) and the revocations with its.
pub fn refresh(
    dir: &Path,
    opts: &DeviceOptions,
    text: &str,
    now: i64,
) -> Result<RefreshReport, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    let trust = e.trust(&state)?;
    let params = TrustParams {
        iss: state.iss.clone(),
        aud: state.aud.clone(),
    };
    let list = denylist::verify(text, &trust, &params, now)?;
    let previous_seq = state.denylist_seq;
    if list.seq < previous_seq {
        return Err(DesktopError::StaleDenyList {
            offered: list.seq,
            installed: previous_seq,
        });
    }
    let updated = list.seq > previous_seq;
    let trust = if updated { list.trust()? } else { trust };
    if updated {
        state.trust = trust.to_json();
        state.denylist_seq = list.seq;
        state.revoked_passes = list.passes.iter().map(|p| p.jti.clone()).collect();
        state.revoked_devices = list.devices.clone();
        e.save_state(&state)?;
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

/// Checks the installed pass offline, with a fresh proof of possession. Never panics; every
/// failure is a verdict with its exit code.
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
    let claims = e.verify(&mut state, &pass, now)?;
    e.save_state(&state)?;
    Ok(Verdict::valid(&claims, now))
}

/// Shows the enrolment and the installed pass.
pub fn status(dir: &Path, opts: &DeviceOptions) -> Result<StatusReport, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let state = e.load_state()?;
    let trust = e.trust(&state)?;
    let pass = match &state.pass {
        Some(p) => {
            let d = decode(p)?;
            let c: PassClaims =
                serde_json::from_value(d.payload()?).map_err(|err| TokenError::Json {
                    part: "claims",
                    detail: err.to_string(),
                })?;
            Some(PassSummary {
                subject: c.sub,
                expires_at: c.exp,
                expires: format_time(c.exp),
                jti: c.jti,
                token: p.clone(),
            })
        }
        None => None,
    };
    Ok(StatusReport {
        state_dir: dir.into(),
        binding: e.kind,
        device_key: e.jkt(),
        enrolled_at: e.record.created,
        issuer: state.iss,
        audience: state.aud,
        trusted_keys: trust.keys.iter().map(|(k, _)| k.clone()).collect(),
        denylist_seq: state.denylist_seq,
        pass,
    })
}
