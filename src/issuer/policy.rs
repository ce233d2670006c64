//! The issuer's signing policy: pure, no files and no clock.

use serde::Deserialize;

use crate::core::claims::{BindingKind, RequestClaims};
use crate::core::time::{format_duration, format_time, in_range, parse_duration, MAX_TIME};

/// Why the policy refused a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// Software-bound requests are not accepted.
    #[error("this issuer does not accept software-bound requests; enrol the desktop with a TPM (hwpass enroll --backend tpm)")]
    SoftwareNotAllowed,
    /// The requested lifetime exceeds the maximum for the binding kind.
    #[error("requested lifetime {} exceeds the maximum of {} for {} passes", format_duration(*requested), format_duration(*max), kind.as_str())]
    LifetimeTooLong {
        /// Seconds asked for.
        requested: i64,
        /// Seconds allowed.
        max: i64,
        /// Binding kind of the request.
        kind: BindingKind,
    },
    /// The request was made too long ago.
    #[error("the request is {} old, older than the {} this issuer accepts; make a new request", format_duration(*age), format_duration(*max))]
    RequestTooOld {
        /// Its age in seconds.
        age: i64,
        /// The maximum in seconds.
        max: i64,
    },
    /// The lifetime asked for is not at least one second.
    #[error("requested lifetime {} is not positive", format_duration(*requested))]
    LifetimeNotPositive {
        /// Seconds asked for.
        requested: i64,
    },
    /// The issuer's clock is outside the time stamps passes can carry.
    #[error("the issuer's clock reads {}, outside 1970…9999; fix the clock", format_time(*now))]
    ClockOutOfRange {
        /// The time read.
        now: i64,
    },
    /// The pass would expire after the last time stamp passes can carry.
    #[error("a pass signed at {} for {} would expire after 9999-12-31", format_time(*now), format_duration(*lifetime))]
    EndsTooLate {
        /// The time of signing.
        now: i64,
        /// Seconds of validity.
        lifetime: i64,
    },
}

/// Policy as written in the config file (`[policy]`), with human durations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Lifetime when the request asks for none, e.g. "7d".
    pub default_lifetime: String,
    /// Longest lifetime for TPM-bound passes.
    pub max_lifetime: String,
    /// Whether software-bound requests are accepted at all.
    pub allow_software: bool,
    /// Longest lifetime for software-bound passes (shorter: the weaker binding).
    pub software_max_lifetime: Option<String>,
    /// How old a request may be when it is signed.
    #[serde(default)]
    pub max_request_age: Option<String>,
}

/// The policy in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime when none is asked for.
    pub default_lifetime: i64,
    /// Maximum lifetime of TPM-bound passes.
    pub max_lifetime: i64,
    /// Whether software-bound requests are accepted.
    pub allow_software: bool,
    /// Maximum lifetime of software-bound passes.
    pub software_max_lifetime: i64,
    /// Maximum age of a request.
    pub max_request_age: i64,
}

/// When a pass is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires.
    pub exp: i64,
}

impl PolicyConfig {
    /// Converts durations to seconds and checks the policy makes sense.
    pub fn resolve(&self) -> Result<Policy, String> {
        let p = Policy {
            default_lifetime: parse_duration(&self.default_lifetime)?,
            max_lifetime: parse_duration(&self.max_lifetime)?,
            allow_software: self.allow_software,
            software_max_lifetime: match &self.software_max_lifetime {
                Some(d) => parse_duration(d)?,
                None => parse_duration(&self.max_lifetime)?,
            },
            max_request_age: match &self.max_request_age {
                Some(d) => parse_duration(d)?,
                None => 7 * 86400,
            },
        };
        if p.default_lifetime > p.max_lifetime {
            return Err("policy default_lifetime is longer than max_lifetime".into());
        }
        if p.software_max_lifetime > p.max_lifetime {
            return Err("policy software_max_lifetime is longer than max_lifetime".into());
        }
        Ok(p)
    }
}

impl Policy {
    /// Decides a request's validity window. `lifetime` is the admin's `--valid-for`, which
    /// takes precedence over the request's own `ttl`. An explicit ask above the maximum is
    /// refused, never silently shortened; the default is capped at the kind's maximum.
    pub fn decide(
        &self,
        req: &RequestClaims,
        lifetime: Option<i64>,
        now: i64,
    ) -> Result<Validity, PolicyError> {
        let max = match req.kind {
            BindingKind::Software if !self.allow_software => {
                return Err(PolicyError::SoftwareNotAllowed)
            }
            BindingKind::Software => self.software_max_lifetime,
            BindingKind::Tpm => self.max_lifetime,
        };
        if !in_range(now) {
            return Err(PolicyError::ClockOutOfRange { now });
        }
        // Both are within 1970…9999 (the request's `iat` by core's check), so neither the
        // age nor the expiry below can overflow; checked all the same.
        let age = now
            .checked_sub(req.iat)
            .ok_or(PolicyError::ClockOutOfRange { now })?;
        if age > self.max_request_age {
            return Err(PolicyError::RequestTooOld {
                age,
                max: self.max_request_age,
            });
        }
        let lifetime = match lifetime.or(req.ttl) {
            Some(asked) if asked > max => {
                return Err(PolicyError::LifetimeTooLong {
                    requested: asked,
                    max,
                    kind: req.kind,
                })
            }
            Some(asked) if asked < 1 => {
                return Err(PolicyError::LifetimeNotPositive { requested: asked })
            }
            Some(asked) => asked,
            None => self.default_lifetime.min(max),
        };
        let exp = now
            .checked_add(lifetime)
            .filter(|exp| *exp <= MAX_TIME)
            .ok_or(PolicyError::EndsTooLate { now, lifetime })?;
        Ok(Validity {
            iat: now,
            nbf: now,
            exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn policy(allow_software: bool) -> Policy {
        PolicyConfig {
            default_lifetime: "7d".into(),
            max_lifetime: "14d".into(),
            allow_software,
            software_max_lifetime: Some("2d".into()),
            max_request_age: None,
        }
        .resolve()
        .unwrap()
    }

    fn req(kind: BindingKind, ttl: Option<i64>) -> RequestClaims {
        RequestClaims {
            sub: "a".into(),
            iat: NOW,
            kind,
            ttl,
            dev: None,
            att: None,
            stm: None,
        }
    }

    #[test]
    fn lifetimes() {
        let p = policy(true);
        assert_eq!(
            p.decide(&req(BindingKind::Tpm, None), None, NOW)
                .unwrap()
                .exp,
            NOW + 7 * 86400
        );
        assert_eq!(
            p.decide(&req(BindingKind::Software, None), None, NOW)
                .unwrap()
                .exp,
            NOW + 2 * 86400
        );
        assert_eq!(
            p.decide(&req(BindingKind::Tpm, Some(3600)), None, NOW)
                .unwrap()
                .exp,
            NOW + 3600
        );
        assert_eq!(
            p.decide(&req(BindingKind::Tpm, Some(3600)), Some(60), NOW)
                .unwrap()
                .exp,
            NOW + 60
        );
        assert_eq!(
            p.decide(&req(BindingKind::Tpm, Some(15 * 86400)), None, NOW),
            Err(PolicyError::LifetimeTooLong {
                requested: 15 * 86400,
                max: 14 * 86400,
                kind: BindingKind::Tpm
            })
        );
        assert!(matches!(
            p.decide(&req(BindingKind::Software, None), Some(3 * 86400), NOW),
            Err(PolicyError::LifetimeTooLong { .. })
        ));
    }

    #[test]
    fn software_and_age() {
        assert_eq!(
            policy(false).decide(&req(BindingKind::Software, None), None, NOW),
            Err(PolicyError::SoftwareNotAllowed)
        );
        let old = RequestClaims {
            iat: NOW - 8 * 86400,
            ..req(BindingKind::Tpm, None)
        };
        assert!(matches!(
            policy(true).decide(&old, None, NOW),
            Err(PolicyError::RequestTooOld { .. })
        ));
    }

    #[test]
    fn time_arithmetic_is_checked_at_every_edge() {
        let p = policy(true);
        let at = |now: i64, lifetime: Option<i64>| {
            let r = RequestClaims {
                iat: now.clamp(0, MAX_TIME),
                ..req(BindingKind::Tpm, None)
            };
            p.decide(&r, lifetime, now)
        };
        assert_eq!(
            at(i64::MAX, None),
            Err(PolicyError::ClockOutOfRange { now: i64::MAX })
        );
        assert_eq!(
            at(i64::MIN, None),
            Err(PolicyError::ClockOutOfRange { now: i64::MIN })
        );
        assert_eq!(
            at(MAX_TIME - 60, None),
            Err(PolicyError::EndsTooLate {
                now: MAX_TIME - 60,
                lifetime: 7 * 86400
            })
        );
        assert_eq!(at(MAX_TIME - 60, Some(60)).unwrap().exp, MAX_TIME);
        for bad in [0, -3600, i64::MIN] {
            assert_eq!(
                at(NOW, Some(bad)),
                Err(PolicyError::LifetimeNotPositive { requested: bad })
            );
        }
        // A request from the far past is simply too old.
        let old = RequestClaims {
            iat: 0,
            ..req(BindingKind::Tpm, None)
        };
        assert!(matches!(
            p.decide(&old, None, NOW),
            Err(PolicyError::RequestTooOld { .. })
        ));
    }

    #[test]
    fn inconsistent_config_refused() {
        let c = PolicyConfig {
            default_lifetime: "30d".into(),
            max_lifetime: "14d".into(),
            allow_software: true,
            software_max_lifetime: None,
            max_request_age: None,
        };
        assert!(c.resolve().is_err());
    }
}
