//! Time that cannot be wound back, and an honest clock error that does not strand anyone.
//!
//! Two lower bounds on "now", both kept in the sealed state:
//! - the **high-water mark**: the latest wall time recorded (by install, refresh, a check that
//!   saw a pass expire, and valid checks at most every [`MARK_EVERY_SECS`]);
//! - with a TPM, the **clock mark**: the TPM `Clock` and the wall time when the state was last
//!   written. `Clock` counts the milliseconds the TPM has been powered and persists across
//!   reboots, so the wall time must have advanced at least as much as `Clock` has since — less
//!   [`TPM_RATE_SLACK_PERCENT`] (a TPM's oscillator is only loosely specified) and
//!   [`ROLLBACK_TOLERANCE_SECS`] (after an unclean shutdown `Clock` resumes from its last saved
//!   value, which only makes the bound lower, never higher).
//!
//! A wall clock below either bound is a rollback (exit 7). Nothing lowers a bound except a pass
//! that answers a request made at the current state (see `StateMark`): its signed `iat` is
//! trusted time, and no pass requested before the state last changed qualifies.

use super::error::DesktopError;
use super::state::{ClockMark, DesktopState};
use crate::core::tpm_wire::TpmClock;

/// How far the wall clock may fall behind a bound before a check is refused, in seconds.
pub const ROLLBACK_TOLERANCE_SECS: i64 = 300;
/// How much faster than real time a TPM's `Clock` may run, in percent of the elapsed time.
pub const TPM_RATE_SLACK_PERCENT: i64 = 10;
/// A valid check writes the state (one NV write with a TPM) only when the recorded mark is at
/// least this old, in seconds.
pub const MARK_EVERY_SECS: i64 = 3600;

/// Refuses `now` if it is below what this desktop has already seen.
pub(crate) fn check(
    state: &DesktopState,
    now: i64,
    tpm: Option<&TpmClock>,
) -> Result<(), DesktopError> {
    if now.saturating_add(ROLLBACK_TOLERANCE_SECS) < state.high_water {
        return Err(DesktopError::Rollback {
            now,
            high_water: state.high_water,
        });
    }
    if let (Some(mark), Some(tpm)) = (state.clock_mark, tpm) {
        let elapsed = tpm_elapsed(mark, tpm);
        let floor = mark.wall.saturating_add(elapsed);
        let slack = ROLLBACK_TOLERANCE_SECS.saturating_add(elapsed / 100 * TPM_RATE_SLACK_PERCENT);
        if now.saturating_add(slack) < floor {
            return Err(DesktopError::RollbackTpm {
                now,
                since: mark.wall,
                tpm_elapsed: elapsed,
            });
        }
    }
    Ok(())
}

/// Seconds the TPM `Clock` has advanced since `mark` (0 if it went back: a cleared TPM, or
/// one that resumed from an older saved value).
fn tpm_elapsed(mark: ClockMark, tpm: &TpmClock) -> i64 {
    i64::try_from(tpm.clock.saturating_sub(mark.clock) / 1000).unwrap_or(i64::MAX)
}

/// Records `now` as seen (the mark only rises) and the TPM clock with it.
pub(crate) fn record(state: &mut DesktopState, now: i64, tpm: Option<&TpmClock>) {
    state.high_water = state.high_water.max(now);
    if let Some(tpm) = tpm {
        state.clock_mark = Some(ClockMark {
            clock: tpm.clock,
            wall: now,
        });
    }
}

/// Resets the marks to `trusted`, a time an issuer signed for this very state (recovery from a
/// clock that ran ahead).
pub(crate) fn reset(state: &mut DesktopState, trusted: i64, tpm: Option<&TpmClock>) {
    state.high_water = trusted;
    state.clock_mark = tpm.map(|t| ClockMark {
        clock: t.clock,
        wall: trusted,
    });
}

/// Whether a valid check should write the state: the mark is old enough (or writing costs the
/// device nothing).
pub(crate) fn due(state: &DesktopState, now: i64, cheap: bool) -> bool {
    cheap || now >= state.high_water.saturating_add(MARK_EVERY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(high_water: i64, mark: Option<(u64, i64)>) -> DesktopState {
        let mut s = DesktopState::new(serde_json::json!({}), "i".into(), "a".into(), high_water);
        s.clock_mark = mark.map(|(clock, wall)| ClockMark { clock, wall });
        s
    }

    fn tpm(clock: u64) -> TpmClock {
        TpmClock {
            clock,
            reset_count: 0,
            restart_count: 0,
        }
    }

    #[test]
    fn the_high_water_mark_refuses_a_clock_turned_back() {
        let s = state(10_000, None);
        assert!(check(&s, 10_000 - 300, None).is_ok());
        assert!(matches!(
            check(&s, 10_000 - 301, None),
            Err(DesktopError::Rollback { .. })
        ));
    }

    #[test]
    fn the_tpm_clock_is_a_lower_bound_across_reboots() {
        // Written at wall 1 000 000 with Clock 5 000 s; Clock now 5 000 s + 1 day.
        let s = state(1_000_000, Some((5_000_000, 1_000_000)));
        let day = 86_400;
        let now_tpm = tpm(5_000_000 + day as u64 * 1000);
        assert!(check(&s, 1_000_000 + day, Some(&now_tpm)).is_ok());
        // 10 % + 5 min slack: 1 day counted allows the wall clock to show 21.6 h + 5 min.
        assert!(check(&s, 1_000_000 + day - 8_640 - 300, Some(&now_tpm)).is_ok());
        let back = check(&s, 1_000_000 + day - 8_640 - 301, Some(&now_tpm));
        assert!(
            matches!(back, Err(DesktopError::RollbackTpm { .. })),
            "{back:?}"
        );
        // A TPM clock that went back (cleared, or resumed from an older save) proves nothing.
        assert!(check(&s, 1_000_000, Some(&tpm(1_000))).is_ok());
    }

    #[test]
    fn marks_only_rise_except_by_reset_and_writes_are_budgeted() {
        let mut s = state(5_000, None);
        record(&mut s, 4_000, Some(&tpm(9)));
        assert_eq!(s.high_water, 5_000);
        assert_eq!(
            s.clock_mark,
            Some(ClockMark {
                clock: 9,
                wall: 4_000
            })
        );
        reset(&mut s, 4_500, None);
        assert_eq!((s.high_water, s.clock_mark), (4_500, None));
        assert!(!due(&s, 4_500 + 3_599, false));
        assert!(due(&s, 4_500 + 3_600, false));
        assert!(due(&s, 0, true));
    }
}
