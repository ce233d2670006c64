//! An opened enrolment: the device record, the device, and the sealed state, with the offline
//! verification of a pass for this device.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::device::{self, Device, DeviceOptions, DeviceRecord};
use super::error::DesktopError;
use super::state::{io_err, parse_state, read_limited, DesktopState, DEVICE_FILE, STATE_FILE};
use crate::core::claims::{BindingKind, PassClaims};
use crate::core::jwk::{Jwk, Jwks};
use crate::core::jws::{verify_pass, PassExpectations};
use crate::sys::write_atomic;

/// An opened enrolment.
#[derive(Debug)]
pub(crate) struct Enrolment {
    pub(crate) dir: PathBuf,
    pub(crate) record: DeviceRecord,
    pub(crate) kind: BindingKind,
    pub(crate) jwk: Jwk,
    pub(crate) device: Box<dyn Device>,
    /// The device counter as last read or advanced in this process (`None`: no counter, or
    /// not read yet).
    pub(crate) counter: Cell<Option<u64>>,
}

impl Enrolment {
    pub(crate) fn new(
        dir: &Path,
        record: DeviceRecord,
        kind: BindingKind,
        jwk: Jwk,
        device: Box<dyn Device>,
    ) -> Self {
        Self {
            dir: dir.into(),
            record,
            kind,
            jwk,
            device,
            counter: Cell::new(None),
        }
    }

    /// Reads `device.json`: the record and the enrolled public key.
    pub(crate) fn read_record(dir: &Path) -> Result<(DeviceRecord, Jwk), DesktopError> {
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
        Ok((record, jwk))
    }

    pub(crate) fn open(dir: &Path, opts: &DeviceOptions) -> Result<Self, DesktopError> {
        let path = dir.join(DEVICE_FILE);
        let damaged = |detail: String| DesktopError::Damaged {
            path: path.clone(),
            detail,
        };
        let (record, jwk) = Self::read_record(dir)?;
        let backend = device::backend(&record.backend)?;
        let device = backend.open(record.record().map_err(damaged)?, &jwk, opts)?;
        Ok(Self {
            dir: dir.into(),
            kind: backend.kind(),
            record,
            jwk,
            device,
            counter: Cell::new(None),
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
        let state = parse_state(&plain).map_err(|_| DesktopError::Damaged {
            path: path.clone(),
            detail: "sealed content is not valid".into(),
        })?;
        self.check_version(&state, &path)?;
        Ok(state)
    }

    /// With a device counter: a state older than the counter is a copy put back (refused); one
    /// version ahead is a write that was cut short between the file and the counter (finished
    /// now, so the previous file can no longer pass).
    fn check_version(&self, state: &DesktopState, path: &Path) -> Result<(), DesktopError> {
        let Some(mut device) = self.device.counter()? else {
            return Ok(());
        };
        if state.n < device {
            return Err(DesktopError::StateRolledBack {
                state: state.n,
                device,
            });
        }
        if state.n > device.saturating_add(1) {
            return Err(DesktopError::Damaged {
                path: path.into(),
                detail: format!(
                    "its version {} is ahead of the TPM counter ({device}) by more than one write",
                    state.n
                ),
            });
        }
        if state.n > device {
            device = self.device.advance()?;
        }
        self.counter.set(Some(device));
        Ok(())
    }

    /// Writes the state as the next version. With a device counter: the file first, carrying
    /// the counter's next value, then one increment (one NV write) — a crash between the two
    /// leaves the file one ahead, which [`Self::load_state`] finishes; never behind.
    pub(crate) fn save_state(&self, state: &mut DesktopState) -> Result<(), DesktopError> {
        let counter = match self.counter.get() {
            Some(c) => Some(c),
            None => self.device.counter()?,
        };
        state.n = match counter {
            Some(c) => c.saturating_add(1),
            None => state.n.saturating_add(1),
        };
        let path = self.dir.join(STATE_FILE);
        let plain = Zeroizing::new(
            serde_json::to_vec(&*state).map_err(|e| DesktopError::Input(e.to_string()))?,
        );
        let bytes = self.device.seal(&plain, &self.jkt())?;
        write_atomic(&path, &bytes).map_err(io_err(&path))?;
        if counter.is_some() {
            let now = self.device.advance()?;
            if now != state.n {
                return Err(DesktopError::Damaged {
                    path,
                    detail: format!(
                        "the TPM counter moved to {now} while version {} was written",
                        state.n
                    ),
                });
            }
            self.counter.set(Some(now));
        }
        Ok(())
    }

    /// Whether writing the state costs the device nothing (no counter to advance).
    pub(crate) fn cheap_writes(&self) -> bool {
        self.counter.get().is_none()
    }

    pub(crate) fn trust(&self, state: &DesktopState) -> Result<Jwks, DesktopError> {
        Ok(Jwks::from_json(&state.trust.to_string())?)
    }

    /// Verifies a pass for this device: signature and claims, binding, revocation. Proof of
    /// possession and the time marks are the caller's (see `commands`).
    pub(crate) fn verify(
        &self,
        state: &DesktopState,
        pass: &str,
        now: i64,
    ) -> Result<PassClaims, DesktopError> {
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
        Ok(claims)
    }
}
