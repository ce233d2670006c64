//! `hwpass`: the desktop tool. Thin: parse arguments ([`cli`]), call the library, print;
//! every hint a person reads is in [`error`].

mod cli;
mod error;
mod signin;

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
    match &cli.cmd {
        Cmd::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "hwpass", &mut script);
            if std::io::Write::write_all(&mut std::io::stdout(), &script).is_err() {
                return ExitCode::from(exit::OTHER as u8);
            }
            return ExitCode::SUCCESS;
        }
        Cmd::Manpages { dir } => {
            let made = std::fs::create_dir_all(dir).and_then(|()| {
                clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir)
            });
            if let Err(e) = made {
                eprintln!("hwpass: error: {}: {e}", dir.display());
                return ExitCode::from(exit::OTHER as u8);
            }
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let code = run(cli);
    ExitCode::from(code as u8)
}

fn state_dir(cli: &Option<PathBuf>) -> PathBuf {
    cli.clone()
        .or_else(desktop::default_state_dir)
        .unwrap_or_else(|| PathBuf::from(".hwpass"))
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
        if let Some(w) = &v.warning {
            eprintln!("hwpass: warning: {w}");
        }
    } else {
        eprintln!("hwpass: {}: {}", v.status, v.message);
        if let Some(h) = &v.hint {
            eprintln!("hint: {h}");
        }
    }
    v.exit_code
}

/// Reads a document the person gave (see [`util::read_document`]).
fn read_document(arg: Option<&str>, limit: usize, what: &str) -> Result<String, DesktopError> {
    util::read_document(arg, limit, what).map_err(DesktopError::Input)
}

fn run(cli: Cli) -> i32 {
    let dir = state_dir(&cli.state_dir);
    let opts = DeviceOptions {
        tcti: cli.tcti.clone(),
        machine_id_file: std::env::var_os(desktop::MACHINE_ID_ENV).map(PathBuf::from),
    };
    let now = match &cli.cmd {
        Cmd::Inspect { .. } | Cmd::Completion { .. } | Cmd::Manpages { .. } => Ok(0),
        _ => now(),
    };
    let now = match now {
        Ok(n) => n,
        Err(code) => return code,
    };
    let doc_limit = hwpass::MAX_DENYLIST_LEN * 2;
    match cli.cmd {
        Cmd::Enroll {
            backend,
            trust,
            force,
            json,
        } => {
            let text = match read_document(trust.to_str(), doc_limit, "trust bundle") {
                Ok(t) => t,
                Err(e) => return report(&e),
            };
            let choice = match backend.as_str() {
                "auto" => BackendChoice::Auto,
                name => BackendChoice::Named(name.into()),
            };
            match desktop::enroll(&dir, &text, choice, force, &opts, now) {
                Ok(r) => {
                    for w in &r.warnings {
                        eprintln!("hwpass: warning: {w}");
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
            server,
            ca,
            json,
        } => {
            let dev = device_name.or_else(desktop::host_name);
            if let Some(server) = server {
                // Remembered for later `hwpass refresh` runs, from any directory.
                let ca = ca.map(|p| std::path::absolute(&p).unwrap_or(p));
                let req = desktop::OnlineRequest {
                    server: &server,
                    ca: ca.as_deref(),
                    subject: subject.as_deref(),
                    ttl: valid_for,
                    dev,
                };
                return request_online(&dir, &opts, &req, now, json);
            }
            // clap: --subject is required unless --server is given.
            let subject = subject.unwrap_or_default();
            match desktop::request(&dir, &opts, &subject, valid_for, dev, now) {
                Ok(r) => {
                    println!("{r}");
                    0
                }
                Err(e) => report(&e),
            }
        }
        Cmd::Install { pass, json } => {
            let result = read_document(pass.as_deref(), doc_limit, "pass")
                .and_then(|text| desktop::install(&dir, &opts, &text, now));
            match result {
                Ok(v) => {
                    if !json {
                        print_installed(&v);
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
            // A bare `refresh` uses the server (and CA) the last `--server` refresh used.
            let (server, ca) = match (server, &file) {
                (Some(s), _) => (Some(s), ca),
                (None, Some(_)) => (None, None),
                (None, None) => match desktop::remembered_server(&dir, &opts) {
                    Ok(Some((s, remembered_ca))) => (Some(s), ca.or(remembered_ca)),
                    Ok(None) => {
                        return report(&DesktopError::Input(
                            "no server to refresh from yet: give --server URL once (it is remembered) or --file FILE".into(),
                        ))
                    }
                    Err(e) => return report(&e),
                },
            };
            let text = match (&server, &file) {
                (Some(url), _) => desktop::fetch_denylist(url, ca.as_deref()),
                (None, f) => read_document(f.as_deref(), doc_limit, "deny list"),
            };
            let remember = server.as_deref().map(|s| (s, ca.as_deref()));
            match text.and_then(|t| desktop::refresh(&dir, &opts, &t, remember, now)) {
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
        Cmd::Status { json } => match desktop::status(&dir, &opts, now) {
            Ok(s) => {
                if json {
                    println!("{}", serde_json::to_string(&s).unwrap_or_default());
                } else {
                    print_status(&s);
                }
                0
            }
            Err(e) => report(&e),
        },
        Cmd::Inspect { token, json } => inspect(token.as_deref(), json),
        // Answered in main() before any state is touched.
        Cmd::Completion { .. } | Cmd::Manpages { .. } => 0,
    }
}

/// What `install` prints for a pass it installed.
fn print_installed(v: &Verdict) {
    println!("installed: {}", v.message);
    if let Some(w) = &v.warning {
        eprintln!("hwpass: warning: {w}");
    }
}

/// `request --server`: sign in, get the pass, install it (printing what `install` prints).
fn request_online(
    dir: &std::path::Path,
    opts: &DeviceOptions,
    req: &desktop::OnlineRequest<'_>,
    started: i64,
    json: bool,
) -> i32 {
    if let Err(e) = signin::catch_ctrl_c(json) {
        eprintln!("hwpass: error: {e}");
        return exit::OTHER;
    }
    // Sign-in takes minutes: the request and the install read the clock when they happen.
    let clock = || util::now().unwrap_or(started);
    let result = desktop::request_online(dir, opts, req, &clock, &signin::Terminal::new());
    let interrupted = signin::finish();
    match result {
        Ok(r) => {
            if let Some(ahead) = r.clock_ahead_seconds {
                eprintln!(
                    "hwpass: note: the service says this computer's clock was {} ahead at some point; check that it is right now",
                    format_duration(ahead)
                );
            }
            if interrupted == signin::Interrupted::DuringInstall {
                eprintln!(
                    "hwpass: note: Ctrl-C came while the pass was being stored; it is installed"
                );
            }
            if json {
                let mut r = r;
                r.verdict = advised(r.verdict);
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print_installed(&r.verdict);
                if r.sealed_to_tpm {
                    eprintln!(
                        "hwpass: the pass came sealed to this computer's TPM, which opened it"
                    );
                }
                eprintln!(
                    "hwpass: `hwpass refresh` now fetches revocations and new issuer keys from {}",
                    r.server
                );
            }
            0
        }
        // Ctrl-C came while the device was busy and the flow failed before it took effect: the
        // failure is told, the exit is Ctrl-C's.
        Err(e) if interrupted == signin::Interrupted::Before => {
            report(&e);
            signin::tell_cancelled(None, json);
            signin::CANCELLED
        }
        Err(e) if json => {
            // The verdict's fields, and for a failure online its kind (`OnlineReason`).
            let v = advised(Verdict::from_error(&e));
            let mut out = serde_json::to_value(&v).unwrap_or_default();
            if let (DesktopError::Online(o), Some(fields)) = (&e, out.as_object_mut()) {
                fields.insert("failure".into(), o.reason().as_str().into());
            }
            println!("{out}");
            v.exit_code
        }
        Err(e) => report(&e),
    }
}

fn print_status(s: &desktop::StatusReport) {
    println!("state directory  {}", s.state_dir.display());
    println!(
        "device key       {} ({}, {} backend)",
        s.device_key,
        s.binding.as_str(),
        s.backend
    );
    println!("enrolled         {}", format_time(s.enrolled_at));
    if let Some(e) = &s.device_error {
        println!("device           unreachable: {e}");
        println!("                 the pass and the issuer's lists are sealed to the device; run `hwpass status` again once it answers");
        return;
    }
    if let (Some(iss), Some(aud)) = (&s.issuer, &s.audience) {
        println!("issuer           {iss} (audience {aud})");
    }
    println!("trusted keys     {}", s.trusted_keys.join(", "));
    match s.denylist_seq {
        Some(0) | None => println!("deny list        none yet (`hwpass refresh`)"),
        Some(n) => println!("deny list        #{n}"),
    }
    if let Some(server) = &s.server {
        println!("refresh server   {server}");
    }
    match s.rollback_protected {
        Some(true) => println!("rollback         an older copy of the sealed state is refused (TPM NV counter)"),
        Some(false) => println!("rollback         not detected for the sealed state (no device counter; README \"Desktop guarantees\")"),
        None => {}
    }
    match &s.pass {
        Some(p) => println!(
            "pass             {} — for {} until {} (jti {})",
            p.state.as_str(),
            p.subject,
            p.expires,
            p.jti
        ),
        None => println!("pass             none installed"),
    }
    println!("run `hwpass check` to verify the pass and prove possession of the key");
}

fn inspect(arg: Option<&str>, json: bool) -> i32 {
    let text = match read_document(arg, hwpass::MAX_DENYLIST_LEN * 2, "token") {
        Ok(t) => hwpass::clean_paste(&t),
        Err(e) => return report(&e),
    };
    if let Some(delivery) = hwpass::Delivery::parse(&text) {
        return inspect_delivery(&text, delivery, json);
    }
    let kind = hwpass::identify(&text);
    if matches!(
        kind,
        hwpass::DocKind::TrustBundle | hwpass::DocKind::IssuerConfig
    ) {
        println!(
            "{} — not a token; inspect decodes passes, requests, deny lists and sealed passes",
            kind.describe()
        );
        return 0;
    }
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

/// A pass sealed to a TPM: its parts can be shown; the pass inside only the TPM can open.
fn inspect_delivery(
    text: &str,
    delivery: Result<hwpass::Delivery, hwpass::DeliveryError>,
    json: bool,
) -> i32 {
    let d = match delivery {
        Ok(d) => d,
        Err(e) => return report(&DesktopError::DeliveryDamaged(e)),
    };
    if json {
        let out = serde_json::json!({
            "kind": "sealed pass",
            "credential_bytes": d.id_object.len(),
            "encrypted_seed_bytes": d.encrypted_secret.len(),
            "ciphertext_bytes": d.ciphertext_len(),
            "signature_verified": false,
        });
        println!("{out}");
        return 0;
    }
    println!(
        "a pass sealed to a TPM ({} bytes): only the TPM that made the request can open it (TPM2_ActivateCredential); install it there with `hwpass install`",
        text.len()
    );
    println!(
        "credential {} bytes, encrypted seed {} bytes, sealed pass {} bytes",
        d.id_object.len(),
        d.encrypted_secret.len(),
        d.ciphertext_len()
    );
    0
}
