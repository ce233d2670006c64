//! The terminal side of `hwpass request --server`: the sign-in address, code and QR code, the
//! countdown, and Ctrl-C. Everything here goes to stderr (stdout is for what `install` prints,
//! or `--json`).
//!
//! Ctrl-C stops at once while nothing is being written and the device is not in use (talking
//! to the service and the provider, waiting for the person): "cancelled; nothing was changed",
//! exit 130. While the device is in use it takes effect when the device is done, still before
//! anything is sent or written. Once the pass is being installed it waits for the install: a
//! write stopped between the TPM's counter and the state file would leave a state the counter
//! refuses.

use std::cell::Cell;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hwpass::desktop::{SignInCode, SignInPrompt, SignedIn, Stage};
use hwpass::format_duration;

/// The exit code of a process stopped by Ctrl-C (128 + SIGINT).
pub const CANCELLED: i32 = 130;

/// Non-terminal output gets a countdown line this often.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// A terminal's countdown is redrawn this often.
const TICK: Duration = Duration::from_millis(250);

/// Where the flow is, as the Ctrl-C handler (its own thread) sees it.
struct Flow {
    stage: Option<Stage>,
    /// Ctrl-C came while the device was busy.
    interrupted: bool,
    /// The flow is over (the pass installed, or a failure being reported).
    done: bool,
    /// A countdown is drawn on the current terminal line.
    line_open: bool,
    /// `--json`: a cancellation is also told on stdout.
    json: bool,
}

static FLOW: Mutex<Flow> = Mutex::new(Flow {
    stage: None,
    interrupted: false,
    done: false,
    line_open: false,
    json: false,
});

fn flow() -> std::sync::MutexGuard<'static, Flow> {
    FLOW.lock().unwrap_or_else(|p| p.into_inner())
}

/// Installs the Ctrl-C handler; `json`: a cancellation is also printed as JSON on stdout.
pub fn catch_ctrl_c(json: bool) -> Result<(), String> {
    flow().json = json;
    ctrlc::set_handler(on_ctrl_c).map_err(|e| format!("cannot catch Ctrl-C: {e}"))
}

fn on_ctrl_c() {
    let mut f = flow();
    if f.done {
        return;
    }
    match f.stage {
        Some(s) if s.device_busy() => {
            if !f.interrupted {
                close_line(&mut f);
                let when = if s == Stage::Installing {
                    "once the pass is stored (stopping now could damage the sealed state)"
                } else {
                    "as soon as the device is done"
                };
                eprintln!("hwpass: stopping {when}");
            }
            f.interrupted = true;
        }
        stage => cancel(&mut f, stage),
    }
}

/// Stops the process: nothing was written on this desktop.
fn cancel(f: &mut Flow, stage: Option<Stage>) -> ! {
    close_line(f);
    tell_cancelled(stage, f.json);
    std::process::exit(CANCELLED)
}

/// Says that the flow was cancelled at `stage` (on stderr; with `json`, on stdout too).
pub fn tell_cancelled(stage: Option<Stage>, json: bool) {
    let message = if stage == Some(Stage::Sending) {
        "cancelled; nothing was changed on this desktop (the request had reached the service, which may have signed a pass: its audit log has it, and it counts toward your passes for today)"
    } else {
        "cancelled; nothing was changed"
    };
    eprintln!("hwpass: {message}");
    if json {
        let out = serde_json::json!({
            "status": "cancelled",
            "exit_code": CANCELLED,
            "message": message,
        });
        println!("{out}");
    }
}

/// Ends the countdown line, so the next message starts on a line of its own.
fn close_line(f: &mut Flow) {
    if f.line_open {
        eprintln!();
        f.line_open = false;
    }
}

/// How Ctrl-C touched a flow that is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// It did not come.
    No,
    /// It came while the pass was being stored, which went on to its end.
    DuringInstall,
    /// It came while the device was in use, and the flow then failed before it could take
    /// effect: nothing was written.
    Before,
}

/// The flow is over: Ctrl-C no longer cancels.
pub fn finish() -> Interrupted {
    let mut f = flow();
    f.done = true;
    close_line(&mut f);
    match (f.interrupted, f.stage) {
        (false, _) => Interrupted::No,
        (true, Some(Stage::Installing)) => Interrupted::DuringInstall,
        (true, _) => Interrupted::Before,
    }
}

/// The sign-in prompt on stderr.
pub struct Terminal {
    tty: bool,
    /// When the code expires.
    expires: Cell<Option<Instant>>,
    /// When the last countdown line was printed (not a terminal).
    last_line: Cell<Option<Instant>>,
}

impl Terminal {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            expires: Cell::new(None),
            last_line: Cell::new(None),
        }
    }

    fn left(&self) -> Duration {
        self.expires.get().map_or(Duration::ZERO, |e| {
            e.saturating_duration_since(Instant::now())
        })
    }

    /// The countdown: redrawn in place on a terminal, a line now and then otherwise.
    fn countdown(&self) {
        let left = remaining(self.left());
        if self.tty {
            let mut f = flow();
            eprint!(
                "\r\x1b[2Kwaiting for you to sign in: the code expires in {left} (Ctrl-C cancels)"
            );
            let _ = std::io::stderr().flush();
            f.line_open = true;
        } else if self
            .last_line
            .get()
            .is_none_or(|t| t.elapsed() >= LINE_EVERY)
        {
            eprintln!("hwpass: waiting for sign-in; the code expires in {left}");
            self.last_line.set(Some(Instant::now()));
        }
    }
}

impl SignInPrompt for Terminal {
    fn stage(&self, stage: Stage) {
        let mut f = flow();
        // Ctrl-C during a device stage takes effect at its end, before anything is sent or
        // written (the install is the last stage: it is never cut short).
        if f.interrupted && f.stage.is_some_and(|s| s != Stage::Installing) {
            let was = f.stage;
            cancel(&mut f, was);
        }
        f.stage = Some(stage);
    }

    fn show(&self, code: &SignInCode) {
        self.expires
            .set(Instant::now().checked_add(code.expires_in));
        let qr_target = code
            .verification_uri_complete
            .as_deref()
            .unwrap_or(&code.verification_uri);
        let mut out = format!(
            "hwpass: sign in with your company account to get a pass for this computer:\n  open  {}\n  code  {}\n",
            printable(&code.verification_uri),
            printable(&code.user_code)
        );
        if let Some(qr) = qr(qr_target) {
            let what = if code.verification_uri_complete.is_some() {
                "or scan this with a phone (it opens the page with the code filled in):"
            } else {
                "or scan this with a phone to open the page:"
            };
            out.push_str(&format!("  {what}\n{qr}\n"));
        }
        let mut f = flow();
        close_line(&mut f);
        eprint!("{out}");
        drop(f);
        self.countdown();
    }

    fn sleep(&self, d: Duration) {
        let Some(until) = Instant::now().checked_add(d) else {
            return;
        };
        loop {
            self.countdown();
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep(TICK.min(until - now));
        }
    }

    fn signed_in(&self, who: &SignedIn) {
        let mut f = flow();
        close_line(&mut f);
        let group = who
            .group
            .as_deref()
            .map(|g| format!(" (group {})", printable(g)))
            .unwrap_or_default();
        eprintln!(
            "hwpass: signed in as {}{group}; asking the service for a pass",
            printable(&who.identity)
        );
    }
}

/// Text from the provider or the service, for the terminal: control characters (escape
/// sequences that could redraw the screen or reach the clipboard) shown as `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Time left on the code, rounded up: `4m 05s`, `42s` (a code just shown for 5 minutes says
/// `5m 00s`, not `4m`).
fn remaining(left: Duration) -> String {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format_duration(secs.try_into().unwrap_or(i64::MAX)),
    }
}

/// `text` as a QR code of Unicode half blocks (two rows a line), light modules drawn, for a
/// dark terminal (phone cameras read the inverse too).
fn qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code =
        qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_countdown_rounds_up_and_shows_seconds_below_an_hour() {
        assert_eq!(remaining(Duration::from_millis(299_990)), "5m 00s");
        assert_eq!(remaining(Duration::from_secs(245)), "4m 05s");
        assert_eq!(remaining(Duration::from_millis(2_100)), "3s");
        assert_eq!(remaining(Duration::ZERO), "0s");
        assert_eq!(remaining(Duration::from_secs(3 * 3600 + 60)), "3h 1m");
    }
}
