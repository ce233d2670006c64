//! The issuer's signing policy: pure, no files and no clock.

use serde::Deserialize;

use crate::core::claims::{Attestation, BindingKind, RequestClaims};
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
    /// A person signed in asked for a pass naming someone else.
    #[error("this request is for '{requested}', but you signed in as '{identity}': a pass is only ever for the person who signed in; make a request for yourself (hwpass request --subject '{identity}')")]
    NotYours {
        /// The request's `sub`.
        requested: String,
        /// The signed-in person's verified identity.
        identity: String,
    },
    /// The person is in none of the groups `[[policy.group]]` lists.
    #[error("{}", no_group(needed))]
    NoGroup {
        /// The groups whose members may get passes.
        needed: Vec<String>,
    },
    /// The person's group is listed with `allowed = false`.
    #[error("members of the group '{group}' may not get passes from this issuer")]
    GroupNotAllowed {
        /// The group.
        group: String,
    },
    /// The person's group does not allow software-bound passes.
    #[error("your group '{group}' may get TPM-bound passes only: enrol this desktop with its TPM (hwpass enroll --backend tpm) and make a new request")]
    GroupNoSoftware {
        /// The group.
        group: String,
    },
    /// The person's group requires verified TPM attestation.
    #[error("your group '{group}' needs a TPM-attested request (the TPM's endorsement certificate verified by this issuer); this request carries no verified attestation")]
    GroupNeedsAttestation {
        /// The group.
        group: String,
    },
    /// The lifetime asked for exceeds the person's group maximum.
    #[error("requested lifetime {} exceeds the {} your group '{group}' may get", format_duration(*requested), format_duration(*max))]
    GroupLifetimeTooLong {
        /// Seconds asked for.
        requested: i64,
        /// The group's maximum.
        max: i64,
        /// The group.
        group: String,
    },
    /// The person reached their group's passes per day.
    #[error("you have had {per_day} passes in the last 24 hours, the most your group '{group}' may get; the next is possible from {}", format_time(*next))]
    RateLimited {
        /// The group.
        group: String,
        /// Passes per day the group allows.
        per_day: u32,
        /// When the oldest pass in the window leaves it.
        next: i64,
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

fn no_group(needed: &[String]) -> String {
    if needed.is_empty() {
        return "this issuer gives passes to no group of its sign-in provider; ask its administrators".into();
    }
    let list = needed
        .iter()
        .map(|g| format!("'{g}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "you are in none of the groups that may get passes here; ask to be added to one of: {list}"
    )
}

/// `[[policy.group]]` as written: what members of one sign-in provider group may get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name as the provider's groups claim carries it.
    pub name: String,
    /// Whether members may get passes at all (`false` shuts a group out; listed before a
    /// broader group, it wins for its members).
    #[serde(default = "yes")]
    pub allowed: bool,
    /// Longest lifetime, within `[policy] max_lifetime` (default: that).
    #[serde(default)]
    pub max_lifetime: Option<String>,
    /// Software-bound passes allowed (default: `[policy] allow_software`; never more).
    #[serde(default)]
    pub software: Option<bool>,
    /// A verified TPM attestation is required (default: no).
    #[serde(default)]
    pub attestation: bool,
    /// Passes a member may get in any 24 hours (default: no limit).
    #[serde(default)]
    pub passes_per_day: Option<u32>,
}

fn yes() -> bool {
    true
}

/// What members of one group may get, in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRule {
    /// The group's name.
    pub name: String,
    /// Whether members may get passes at all.
    pub allowed: bool,
    /// Longest lifetime of any pass for a member.
    pub max_lifetime: i64,
    /// Software-bound passes allowed.
    pub software: bool,
    /// A verified TPM attestation is required.
    pub attestation: bool,
    /// Passes in any 24 hours.
    pub passes_per_day: Option<u32>,
}

/// The window `passes_per_day` counts over.
pub const RATE_WINDOW: i64 = 86_400;

impl GroupRule {
    /// Refuses what the group may not get, before the lifetime is decided: a software
    /// binding where only TPM passes are allowed.
    pub fn check_kind(&self, kind: BindingKind) -> Result<(), PolicyError> {
        match kind {
            BindingKind::Software if !self.software => Err(PolicyError::GroupNoSoftware {
                group: self.name.clone(),
            }),
            BindingKind::Software if self.attestation => Err(PolicyError::GroupNeedsAttestation {
                group: self.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses a pass without verified attestation when the group requires one.
    pub fn check_attestation(&self, att: Attestation) -> Result<(), PolicyError> {
        if self.attestation && att == Attestation::None {
            return Err(PolicyError::GroupNeedsAttestation {
                group: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Refuses one more pass when the member had `passes_per_day` in the window before
    /// `now`; `recent` are the times of their passes (any order).
    pub fn check_rate(&self, recent: &[i64], now: i64) -> Result<(), PolicyError> {
        let Some(per_day) = self.passes_per_day else {
            return Ok(());
        };
        let from = now.saturating_sub(RATE_WINDOW);
        let mut inside: Vec<i64> = recent.iter().copied().filter(|&t| t > from).collect();
        if inside.len() < per_day as usize {
            return Ok(());
        }
        inside.sort_unstable();
        // The oldest pass that keeps the count at the limit leaves the window first.
        let oldest = inside[inside.len() - per_day as usize];
        Err(PolicyError::RateLimited {
            group: self.name.clone(),
            per_day,
            next: oldest.saturating_add(RATE_WINDOW),
        })
    }

    /// Passes left in the window before `now`; none when unlimited.
    pub fn left(&self, recent: &[i64], now: i64) -> Option<u32> {
        let from = now.saturating_sub(RATE_WINDOW);
        let used = recent.iter().filter(|&&t| t > from).count();
        self.passes_per_day
            .map(|n| n.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)))
    }
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
    /// `[[policy.group]]`: what people signed in through the OpenID provider may get, by
    /// group, the first listed group a person is in deciding.
    #[serde(default)]
    pub group: Vec<GroupConfig>,
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
    /// Rules for people signed in through the OpenID provider, in config order.
    pub groups: Vec<GroupRule>,
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
            groups: Vec::new(),
        };
        if p.default_lifetime > p.max_lifetime {
            return Err("policy default_lifetime is longer than max_lifetime".into());
        }
        if p.software_max_lifetime > p.max_lifetime {
            return Err("policy software_max_lifetime is longer than max_lifetime".into());
        }
        let mut p = p;
        for g in &self.group {
            let name = g.name.trim();
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err("[[policy.group]] name must be 1 to 256 printable characters".into());
            }
            if p.groups.iter().any(|r| r.name == name) {
                return Err(format!("[[policy.group]] '{name}' is listed twice"));
            }
            let max_lifetime = match &g.max_lifetime {
                Some(d) => parse_duration(d)
                    .map_err(|e| format!("[[policy.group]] '{name}' max_lifetime: {e}"))?,
                None => p.max_lifetime,
            };
            if max_lifetime > p.max_lifetime {
                return Err(format!(
                    "[[policy.group]] '{name}' max_lifetime is longer than [policy] max_lifetime"
                ));
            }
            if g.software == Some(true) && !p.allow_software {
                return Err(format!(
                    "[[policy.group]] '{name}' allows software passes, but [policy] allow_software is false"
                ));
            }
            if g.passes_per_day == Some(0) {
                return Err(format!(
                    "[[policy.group]] '{name}' passes_per_day must be at least 1 (use allowed = false to shut a group out)"
                ));
            }
            p.groups.push(GroupRule {
                name: name.to_string(),
                allowed: g.allowed,
                max_lifetime,
                software: g.software.unwrap_or(p.allow_software),
                attestation: g.attestation,
                passes_per_day: g.passes_per_day,
            });
        }
        Ok(p)
    }
}

impl Policy {
    /// The rule for a person in `groups`: the first `[[policy.group]]` they are in. People in
    /// none are refused with the groups that would do; a group listed `allowed = false` shuts
    /// its members out.
    pub fn group_for(&self, groups: &[String]) -> Result<&GroupRule, PolicyError> {
        match self.groups.iter().find(|g| groups.contains(&g.name)) {
            Some(g) if g.allowed => Ok(g),
            Some(g) => Err(PolicyError::GroupNotAllowed {
                group: g.name.clone(),
            }),
            None => Err(PolicyError::NoGroup {
                needed: self
                    .groups
                    .iter()
                    .filter(|g| g.allowed)
                    .map(|g| g.name.clone())
                    .collect(),
            }),
        }
    }

    /// [`Policy::decide`] for a member of `group`: its kind rule first, then the lifetime
    /// within the group's maximum as well as the binding's (the default is shortened to fit;
    /// an explicit ask above it is refused).
    pub fn decide_for(
        &self,
        req: &RequestClaims,
        lifetime: Option<i64>,
        now: i64,
        group: &GroupRule,
    ) -> Result<Validity, PolicyError> {
        group.check_kind(req.kind)?;
        match self.decide_within(req, lifetime, now, Some(group.max_lifetime)) {
            Err(PolicyError::LifetimeTooLong { requested, max, .. })
                if max == group.max_lifetime =>
            {
                Err(PolicyError::GroupLifetimeTooLong {
                    requested,
                    max,
                    group: group.name.clone(),
                })
            }
            other => other,
        }
    }

    /// The longest pass `kind` may get, within `cap`.
    pub fn max_for(&self, kind: BindingKind, cap: Option<i64>) -> i64 {
        let max = match kind {
            BindingKind::Tpm => self.max_lifetime,
            BindingKind::Software => self.software_max_lifetime,
        };
        cap.map_or(max, |c| max.min(c))
    }

    /// Decides a request's validity window. `lifetime` is the admin's `--valid-for`, which
    /// takes precedence over the request's own `ttl`. An explicit ask above the maximum is
    /// refused, never silently shortened; the default is capped at the kind's maximum.
    pub fn decide(
        &self,
        req: &RequestClaims,
        lifetime: Option<i64>,
        now: i64,
    ) -> Result<Validity, PolicyError> {
        self.decide_within(req, lifetime, now, None)
    }

    fn decide_within(
        &self,
        req: &RequestClaims,
        lifetime: Option<i64>,
        now: i64,
        cap: Option<i64>,
    ) -> Result<Validity, PolicyError> {
        if req.kind == BindingKind::Software && !self.allow_software {
            return Err(PolicyError::SoftwareNotAllowed);
        }
        let max = self.max_for(req.kind, cap);
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
            group: vec![],
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

    fn group(name: &str, toml_rest: &str) -> GroupConfig {
        toml::from_str(&format!("name = \"{name}\"\n{toml_rest}")).unwrap()
    }

    fn with_groups(groups: Vec<GroupConfig>) -> Result<Policy, String> {
        PolicyConfig {
            group: groups,
            ..PolicyConfig {
                default_lifetime: "7d".into(),
                max_lifetime: "14d".into(),
                allow_software: true,
                software_max_lifetime: Some("2d".into()),
                max_request_age: None,
                group: vec![],
            }
        }
        .resolve()
    }

    #[test]
    fn the_first_listed_group_decides_and_outsiders_are_told_which_they_need() {
        let p = with_groups(vec![
            group("contractors", "allowed = false"),
            group("hwpass-users", "max_lifetime = \"1d\"\npasses_per_day = 2"),
            group("engineering", "software = false\nattestation = true"),
        ])
        .unwrap();
        let g = |names: &[&str]| {
            p.group_for(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map(|r| r.name.clone())
        };
        assert_eq!(g(&["staff", "hwpass-users"]), Ok("hwpass-users".into()));
        assert_eq!(
            g(&["engineering", "hwpass-users"]),
            Ok("hwpass-users".into())
        );
        assert_eq!(
            g(&["contractors", "hwpass-users"]),
            Err(PolicyError::GroupNotAllowed {
                group: "contractors".into()
            })
        );
        let none = g(&["staff"]).unwrap_err();
        assert_eq!(
            none.to_string(),
            "you are in none of the groups that may get passes here; ask to be added to one of: 'hwpass-users', 'engineering'"
        );
        assert!(matches!(g(&[]), Err(PolicyError::NoGroup { .. })));
    }

    #[test]
    fn a_group_bounds_lifetime_binding_and_attestation() {
        let p = with_groups(vec![
            group("users", "max_lifetime = \"1d\""),
            group("strict", "software = false\nattestation = true"),
        ])
        .unwrap();
        let users = &p.groups[0];
        let strict = &p.groups[1];
        // The default (7d) is shortened to the group's day; an explicit 2d is refused.
        let tpm = req(BindingKind::Tpm, None);
        assert_eq!(
            p.decide_for(&tpm, None, NOW, users).unwrap().exp,
            NOW + 86400
        );
        assert_eq!(
            p.decide_for(&tpm, Some(2 * 86400), NOW, users),
            Err(PolicyError::GroupLifetimeTooLong {
                requested: 2 * 86400,
                max: 86400,
                group: "users".into()
            })
        );
        // The software maximum (2d) still applies under a longer group maximum.
        assert_eq!(
            p.decide_for(&req(BindingKind::Software, None), None, NOW, strict),
            Err(PolicyError::GroupNoSoftware {
                group: "strict".into()
            })
        );
        assert_eq!(
            strict.check_attestation(Attestation::None),
            Err(PolicyError::GroupNeedsAttestation {
                group: "strict".into()
            })
        );
        assert_eq!(strict.check_attestation(Attestation::EkCert), Ok(()));
        assert_eq!(users.check_attestation(Attestation::None), Ok(()));
        assert_eq!(
            p.max_for(BindingKind::Software, Some(users.max_lifetime)),
            86400
        );
    }

    #[test]
    fn passes_per_day_count_a_sliding_day_and_say_when_the_next_is_possible() {
        let p = with_groups(vec![group("users", "passes_per_day = 2")]).unwrap();
        let g = &p.groups[0];
        assert_eq!(g.check_rate(&[], NOW), Ok(()));
        assert_eq!(g.left(&[NOW - 10], NOW), Some(1));
        assert_eq!(
            g.check_rate(&[NOW - 10, NOW - RATE_WINDOW], NOW),
            Ok(()),
            "a day old is out"
        );
        assert_eq!(
            g.check_rate(&[NOW - 100, NOW - 5_000, NOW - 10], NOW),
            Err(PolicyError::RateLimited {
                group: "users".into(),
                per_day: 2,
                next: NOW - 100 + RATE_WINDOW
            })
        );
        let unlimited = with_groups(vec![group("all", "")]).unwrap();
        assert_eq!(unlimited.groups[0].check_rate(&[NOW; 100], NOW), Ok(()));
        assert_eq!(unlimited.groups[0].left(&[NOW], NOW), None);
    }

    #[test]
    fn groups_cannot_exceed_the_policy() {
        for (g, why) in [
            (group("a", "max_lifetime = \"30d\""), "longer than"),
            (group("a", "passes_per_day = 0"), "at least 1"),
            (group("", ""), "printable"),
        ] {
            let e = with_groups(vec![g]).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let e = with_groups(vec![group("a", ""), group("a", "")]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let mut c = PolicyConfig {
            default_lifetime: "1d".into(),
            max_lifetime: "1d".into(),
            allow_software: false,
            software_max_lifetime: None,
            max_request_age: None,
            group: vec![group("a", "software = true")],
        };
        assert!(c.resolve().unwrap_err().contains("allow_software"));
        c.group = vec![group("a", "")];
        assert!(
            !c.resolve().unwrap().groups[0].software,
            "inherits allow_software"
        );
    }

    #[test]
    fn inconsistent_config_refused() {
        let c = PolicyConfig {
            default_lifetime: "30d".into(),
            max_lifetime: "14d".into(),
            allow_software: true,
            software_max_lifetime: None,
            max_request_age: None,
            group: vec![],
        };
        assert!(c.resolve().is_err());
    }
}
