//! `hwpass`: the desktop tool. Thin: parse arguments ([`cli`]), call the library, print;
//! every hint a person reads is in [`error`].

mod cli;
mod error;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser as _;

use hwpass::desktop::{self, exit, BackendChoice, DesktopError, DeviceOptions, Verdict};
use hwpass::os::{self as util, FAKE_NOW_ENV};
use hwpass::{format_duration, format_time, BindingKind, DENYLIST_TYP, PASS_TYP, REQUEST_TYP};

use cli::{Cli, Cmd};
use error::{advised, report};

fn main() -> ExitCode {
    // libtss2 logs expected failures (a probe finding no SRK) as ERROR lines on stderr; hwpass
    // reports TPM problems itself. TSS2_LOG set by the person wins.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    let cli = Cli::parse();
    let code = run(cli);
    ExitCode::from(code as u8)
}

fn state_dir(cli: &Option<PathBuf>) -> PathBuf {
    if let Some(d) = cli {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hwpass");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/hwpass")
}

fn now() -> Result<i64, i32> {
    if std::env::var_os(FAKE_NOW_ENV).is_some() {
        eprintln!(
            "hwpass: note: using the injected time from {}",
            FAKE_NOW_ENV
        );
    }
    util::now().map_err(|m| {
        eprintln!("hwpass: error: {m}");
        exit::OTHER
    })
}

fn print_verdict(v: Verdict, json: bool) -> i32 {
    let v = advised(v);
    if json {
        println!("{}", serde_json::to_string(&v).unwrap_or_default());
    } else if v.is_valid() {
        println!("{}", v.message);
    } else {
        eprintln!("hwpass: {}: {}", v.status, v.message);
        if let Some(h) = &v.hint {
            eprintln!("hint: {h}");
        }
    }
    v.exit_code
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn run(cli: Cli) -> i32 {
    let dir = state_dir(&cli.state_dir);
    let opts = DeviceOptions {
        tcti: cli.tcti.clone(),
        machine_id_file: std::env::var_os(desktop::MACHINE_ID_ENV).map(PathBuf::from),
    };
    let now = match &cli.cmd {
        Cmd::Inspect { .. } | Cmd::Status { .. } => Ok(0),
        _ => now(),
    };
    let now = match now {
        Ok(n) => n,
        Err(code) => return code,
    };
    match cli.cmd {
        Cmd::Enroll {
            backend,
            trust,
            force,
            json,
        } => {
            let text = match std::fs::read_to_string(&trust) {
                Ok(t) => t,
                Err(e) => {
                    return report(&DesktopError::Input(format!(
                        "cannot read the trust bundle {}: {e}",
                        trust.display()
                    )))
                }
            };
            let choice = match backend.as_str() {
                "auto" => BackendChoice::Auto,
                name => BackendChoice::Named(name.into()),
            };
            match desktop::enroll(&dir, &text, choice, force, &opts, now) {
                Ok(r) => {
                    if let Some(n) = &r.notice {
                        eprintln!("hwpass: notice: {n}");
                    }
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        println!(
                            "enrolled {} with a {} device key (thumbprint {})",
                            dir.display(),
                            r.kind.as_str(),
                            r.jkt
                        );
                        if r.kind == BindingKind::Software {
                            println!("note: a software key is the weaker binding: anyone who can copy this user's files and the machine identity can copy it");
                        }
                    }
                    0
                }
                Err(e) => report(&e),
            }
        }
        Cmd::Request {
            subject,
            valid_for,
            device_name,
        } => {
            let dev = device_name.or_else(hostname);
            match desktop::request(&dir, &opts, &subject, valid_for, dev, now) {
                Ok(r) => {
                    println!("{r}");
                    0
                }
                Err(e) => report(&e),
            }
        }
        Cmd::Install { pass, json } => {
            let pass = match util::read_token_arg(pass.as_deref()) {
                Ok(p) => p,
                Err(m) => return report(&DesktopError::Input(m)),
            };
            match desktop::install(&dir, &opts, &pass, now) {
                Ok(v) => {
                    if !json {
                        println!("installed: {}", v.message);
                        return 0;
                    }
                    print_verdict(v, true)
                }
                Err(e) => {
                    if json {
                        print_verdict(Verdict::from_error(&e), true)
                    } else {
                        report(&e)
                    }
                }
            }
        }
        Cmd::Check { json } => print_verdict(desktop::check(&dir, &opts, now), json),
        Cmd::Refresh {
            server,
            file,
            ca,
            json,
        } => {
            let text = match (&server, &file) {
                (Some(url), _) => desktop::fetch_denylist(url, ca.as_deref()),
                (None, Some(f)) if f == "-" => {
                    util::read_stdin(hwpass::MAX_DENYLIST_LEN + 2).map_err(DesktopError::Input)
                }
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| DesktopError::Input(format!("cannot read {f}: {e}"))),
                (None, None) => Err(DesktopError::Input("give --server or --file".into())),
            };
            match text.and_then(|t| desktop::refresh(&dir, &opts, &t, now)) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else if r.updated {
                        println!(
                            "installed deny list #{} (was #{}): {} revoked passes, {} revoked devices; trusted keys {}",
                            r.seq,
                            r.previous_seq,
                            r.revoked_passes,
                            r.revoked_devices,
                            r.trusted_keys.join(", ")
                        );
                    } else {
                        println!("already up to date (deny list #{})", r.seq);
                    }
                    if r.installed_pass_revoked {
                        eprintln!("hwpass: the installed pass is revoked: `hwpass check` refuses it (exit 8)");
                    }
                    0
                }
                Err(e) => report(&e),
            }
        }
        Cmd::Status { json } => match desktop::status(&dir, &opts) {
            Ok(s) => {
                if json {
                    println!("{}", serde_json::to_string(&s).unwrap_or_default());
                } else {
                    println!("state directory  {}", s.state_dir.display());
                    println!("device key       {} ({})", s.device_key, s.binding.as_str());
                    println!("enrolled         {}", format_time(s.enrolled_at));
                    println!("issuer           {} (audience {})", s.issuer, s.audience);
                    println!("trusted keys     {}", s.trusted_keys.join(", "));
                    match s.denylist_seq {
                        0 => println!("deny list        none yet (`hwpass refresh`)"),
                        n => println!("deny list        #{n}"),
                    }
                    match &s.pass {
                        Some(p) => println!(
                            "pass             for {} until {} (jti {})",
                            p.subject, p.expires, p.jti
                        ),
                        None => println!("pass             none installed"),
                    }
                    println!(
                        "run `hwpass check` to verify the pass and prove possession of the key"
                    );
                }
                0
            }
            Err(e) => report(&e),
        },
        Cmd::Inspect { token, json } => inspect(token.as_deref(), json),
    }
}

fn inspect(arg: Option<&str>, json: bool) -> i32 {
    let text = match util::read_token_arg(arg) {
        Ok(t) => t,
        Err(m) => return report(&DesktopError::Input(m)),
    };
    let d = match hwpass::decode_limited(&text, hwpass::MAX_DENYLIST_LEN) {
        Ok(d) => d,
        Err(e) => return report(&DesktopError::Token(e)),
    };
    let payload = match d.payload() {
        Ok(p) => p,
        Err(e) => return report(&DesktopError::Token(e)),
    };
    let kind = match d.typ() {
        PASS_TYP => "access pass",
        REQUEST_TYP => "pass request",
        DENYLIST_TYP => "deny list",
        _ => "unknown token type",
    };
    if json {
        let out = serde_json::json!({
            "kind": kind,
            "header": d.header_json(),
            "payload": payload,
            "signature_verified": false,
        });
        println!("{out}");
        return 0;
    }
    println!(
        "{kind} ({} bytes) — decoded only: inspect trusts nothing and verifies no signature",
        text.len()
    );
    println!("header:  {}", d.header_json());
    println!(
        "payload: {}",
        serde_json::to_string_pretty(&payload).unwrap_or_default()
    );
    for field in ["iat", "nbf", "exp"] {
        if let Some(t) = payload.get(field).and_then(|v| v.as_i64()) {
            println!("{field}: {}", format_time(t));
        }
    }
    if let Some(ttl) = payload.get("ttl").and_then(|v| v.as_i64()) {
        println!("requested lifetime: {}", format_duration(ttl));
    }
    0
}
