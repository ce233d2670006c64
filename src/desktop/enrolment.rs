//! An opened enrolment: the device record, the device, and the sealed state, with the offline
//! verification of a pass for this device.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::device::{self, Device, DeviceOptions, DeviceRecord};
use super::error::DesktopError;
use super::state::{
    io_err, parse_state, read_limited, ClockMark, DesktopState, DEVICE_FILE, STATE_FILE,
};
use crate::core::claims::{BindingKind, PassClaims};
use crate::core::jwk::{Jwk, Jwks};
use crate::core::jws::{verify_pass, PassExpectations};
use crate::sys::write_atomic;

/// How far the wall clock may fall behind the recorded high-water mark before a check is
/// refused as a clock rollback, in seconds.
pub const ROLLBACK_TOLERANCE_SECS: i64 = 300;

/// An opened enrolment.
#[derive(Debug)]
pub(crate) struct Enrolment {
    pub(crate) dir: PathBuf,
    pub(crate) record: DeviceRecord,
    pub(crate) kind: BindingKind,
    pub(crate) jwk: Jwk,
    pub(crate) device: Box<dyn Device>,
}

impl Enrolment {
    pub(crate) fn open(dir: &Path, opts: &DeviceOptions) -> Result<Self, DesktopError> {
        let path = dir.join(DEVICE_FILE);
        if !path.exists() {
            return Err(DesktopError::NotEnrolled { record: path });
        }
        let damaged = |detail: String| DesktopError::Damaged {
            path: path.clone(),
            detail,
        };
        let bytes = read_limited(&path)?;
        let record: DeviceRecord =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        let jwk = Jwk::from_json(&record.jwk).map_err(|e| damaged(e.to_string()))?;
        let backend = device::backend(&record.backend)?;
        let device = backend.open(record.record().map_err(damaged)?, &jwk, opts)?;
        Ok(Self {
            dir: dir.into(),
            kind: backend.kind(),
            record,
            jwk,
            device,
        })
    }

    pub(crate) fn jkt(&self) -> String {
        self.jwk.thumbprint()
    }

    pub(crate) fn load_state(&self) -> Result<DesktopState, DesktopError> {
        let path = self.dir.join(STATE_FILE);
        if !path.exists() {
            return Err(DesktopError::Damaged {
                path,
                detail: "missing; the enrolment is incomplete".into(),
            });
        }
        let bytes = read_limited(&path)?;
        let plain = self.device.unseal(&bytes, &self.jkt()).map_err(|e| match e {
            DesktopError::Damaged { detail, .. } => DesktopError::Damaged { path: path.clone(), detail },
            DesktopError::Foreign(_) => DesktopError::Foreign(format!(
                "the sealed state {} cannot be opened with this device's key: it belongs to another machine or was altered",
                path.display()
            )),
            other => other,
        })?;
        parse_state(&plain).map_err(|_| DesktopError::Damaged {
            path,
            detail: "sealed content is not valid".into(),
        })
    }

    pub(crate) fn save_state(&self, state: &DesktopState) -> Result<(), DesktopError> {
        let path = self.dir.join(STATE_FILE);
        let plain = Zeroizing::new(
            serde_json::to_vec(state).map_err(|e| DesktopError::Input(e.to_string()))?,
        );
        let bytes = self.device.seal(&plain, &self.jkt())?;
        write_atomic(&path, &bytes).map_err(io_err(&path))
    }

    pub(crate) fn trust(&self, state: &DesktopState) -> Result<Jwks, DesktopError> {
        Ok(Jwks::from_json(&state.trust.to_string())?)
    }

    /// Verifies a pass for this device: signature and claims, binding, proof of possession.
    /// On success, advances the state's clock marks (the caller saves the state).
    pub(crate) fn verify(
        &self,
        state: &mut DesktopState,
        pass: &str,
        now: i64,
    ) -> Result<PassClaims, DesktopError> {
        if now < state.high_water - ROLLBACK_TOLERANCE_SECS {
            return Err(DesktopError::Rollback {
                now,
                high_water: state.high_water,
            });
        }
        let trust = self.trust(state)?;
        let expect = PassExpectations {
            trust: &trust,
            iss: &state.iss,
            aud: &state.aud,
        };
        let claims = verify_pass(pass, &expect, now)?;
        let device_jkt = self.jkt();
        if claims.cnf.jkt != device_jkt {
            return Err(DesktopError::OtherDevice {
                pass_jkt: claims.cnf.jkt,
                device_jkt,
            });
        }
        if claims.hwb.kind != self.kind {
            return Err(DesktopError::BindingMismatch {
                pass: claims.hwb.kind.as_str(),
                device: self.kind.as_str(),
            });
        }
        if state.revoked_passes.contains(&claims.jti) || state.revoked_devices.contains(&device_jkt)
        {
            return Err(DesktopError::Revoked {
                jti: claims.jti,
                seq: state.denylist_seq,
            });
        }
        // Proof of possession: the device signs a fresh challenge, checked against the key the
        // pass is bound to (whose thumbprint equals cnf.jkt, checked above).
        let tpm_clock = self.device.prove(&self.jwk)?;
        // The TPM's clock runs only while it is powered, so the wall clock must have advanced
        // at least as much since the last check (compared within one TPM reset epoch).
        if let (Some(mark), Some(clock)) = (state.tpm_clock, tpm_clock) {
            if mark.tpm.reset_count == clock.reset_count && clock.clock >= mark.tpm.clock {
                let tpm_elapsed = ((clock.clock - mark.tpm.clock) / 1000) as i64;
                let wall_elapsed = now - mark.wall;
                if wall_elapsed + ROLLBACK_TOLERANCE_SECS < tpm_elapsed {
                    return Err(DesktopError::RollbackTpm {
                        wall_elapsed,
                        tpm_elapsed,
                    });
                }
            }
        }
        state.high_water = state.high_water.max(now);
        if let Some(tpm) = tpm_clock {
            state.tpm_clock = Some(ClockMark { tpm, wall: now });
        }
        Ok(claims)
    }
}
