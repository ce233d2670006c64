//! `hwpass-issuer`: the admin's tool. Thin: parse arguments ([`cli`]), call the library,
//! print; every hint a person reads is in [`error`].

/// jemalloc for the whole process on Linux: its exported `malloc` also serves the PKCS#11
/// module and OpenSSL, which allocate on every signature (Cargo.toml says why).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cli;
mod error;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use secrecy::SecretString;

use std::borrow::Cow;

use hwpass::issuer::{self, exit, AuditEntry, IssuerConfig, IssuerError, KeyPool, PinPrompt};
use hwpass::os::{self as util, FAKE_NOW_ENV};
use hwpass::{check_text, format_duration, format_time, Jwk, Signer, TextProblem};

use cli::{AuditCmd, Cli, Cmd, ConfigCmd, DbCmd};
use error::{fail, Failure};

struct TerminalPrompt;

impl PinPrompt for TerminalPrompt {
    fn pin(&self, prompt: &str) -> Result<SecretString, String> {
        rpassword::prompt_password(prompt)
            .map(SecretString::from)
            .map_err(|_| {
                format!(
                    "no HSM PIN: no terminal to ask on; set {} or pin-source in the key URI",
                    issuer::PIN_ENV
                )
            })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Completion { shell } => return completion(*shell),
        Cmd::Manpages { dir } => return manpages(dir),
        Cmd::Init { .. } => {
            return match init(&cli) {
                Ok(()) => ExitCode::SUCCESS,
                Err((code, msg, hint)) => {
                    eprintln!("hwpass-issuer: error: {msg}");
                    if let Some(h) = hint {
                        eprintln!("hint: {h}");
                    }
                    ExitCode::from(code as u8)
                }
            }
        }
        _ => {}
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg, hint)) => {
            eprintln!("hwpass-issuer: error: {msg}");
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            ExitCode::from(code as u8)
        }
    }
}

/// Asks `question` on the terminal; Enter takes `default`.
fn ask(question: &str, default: &str) -> Result<String, Failure> {
    eprint!("{question} [{default}]: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| (exit::OTHER, format!("cannot read the answer: {e}"), None))?;
    let answer = answer.trim();
    Ok(if answer.is_empty() {
        default.to_string()
    } else {
        answer.to_string()
    })
}

/// This machine's host name, for the default issuer name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hwpass-issuer".into())
}

/// `init`: defaults, flags, answers; then the library does the work; then the next three
/// commands.
fn init(cli: &Cli) -> Result<(), Failure> {
    let Cmd::Init {
        issuer,
        audience,
        state_dir,
        key_uri,
        softhsm_module,
        user,
        yes,
        print_config,
    } = &cli.cmd
    else {
        return Ok(());
    };
    let interactive = !yes && !print_config && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut issuer = issuer.clone().unwrap_or_else(host_name);
    let mut audience = audience.clone().unwrap_or_else(|| "hwpass-desktop".into());
    let mut state_dir = state_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/var/lib/hwpass"));
    let mut key_uri = key_uri.clone();
    if interactive {
        eprintln!(
            "hwpass-issuer init: a config in {} (Enter takes the default in brackets)",
            cli.config.display()
        );
        issuer = ask("issuer name (iss of every pass)", &issuer)?;
        audience = ask(
            "audience (aud: what your desktop application expects)",
            &audience,
        )?;
        state_dir = ask(
            "state directory (audit log, revocations, SoftHSM token)",
            &state_dir.display().to_string(),
        )?
        .into();
        if key_uri.is_none() && softhsm_module.is_none() {
            let key = ask(
                "issuer key: `softhsm` for a new SoftHSM token, or the pkcs11: URI of your HSM's key",
                "softhsm",
            )?;
            if key != "softhsm" {
                key_uri = Some(key);
            }
        }
    }
    let owner = match user {
        Some(name) => Some(issuer::Account::lookup(name).ok_or((
            exit::OTHER,
            format!("there is no account {name:?} on this machine"),
            Some(
                "create it (the package does: adduser --system hwpass) or name another with --user",
            ),
        ))?),
        None if rustix::process::geteuid().is_root() => issuer::Account::lookup("hwpass"),
        None => None,
    };
    let opts = issuer::InitOptions {
        config: cli.config.clone(),
        state_dir,
        issuer,
        audience,
        key: match key_uri {
            Some(uri) => issuer::InitKey::Uri(uri),
            None => issuer::InitKey::SoftHsm {
                module: softhsm_module
                    .clone()
                    .unwrap_or_else(|| issuer::SOFTHSM_MODULE.into()),
            },
        },
        owner,
    };
    if *print_config {
        print!("{}", opts.config_text());
        return Ok(());
    }
    let report = issuer::init(&opts).map_err(|e| match e {
        issuer::InitError::Issuer(e) => fail(e),
        e @ issuer::InitError::Exists(_) => (exit::OTHER, e.to_string(), None),
        other => (
            exit::OTHER,
            other.to_string(),
            Some("nothing that was there was overwritten; remove what init made (in the config's folder and the state directory) before running it again"),
        ),
    })?;
    println!("wrote the config {}", report.config.display());
    if let Some(dir) = &report.token_dir {
        println!("made the SoftHSM token \"hwpass\" in {}", dir.display());
    }
    if let Some(pin) = &report.pin_file {
        println!(
            "wrote its user PIN to {} (mode 0600; the config names it)",
            pin.display()
        );
    }
    if let (Some(kid), Some(bundle)) = (&report.kid, &report.trust_bundle) {
        println!(
            "made the issuer key (kid {kid}) and wrote the trust bundle {}",
            bundle.display()
        );
    }
    let config_arg = if cli.config == std::path::Path::new("/etc/hwpass/issuer.toml") {
        String::new()
    } else {
        format!(" --config {}", cli.config.display())
    };
    let as_owner = match &opts.owner {
        Some(a) => format!("sudo -u {} ", a.name),
        None => String::new(),
    };
    let sudo = if opts.owner.is_some() { "sudo " } else { "" };
    println!(
        "
next:"
    );
    match &report.trust_bundle {
        Some(bundle) => println!(
            "  hwpass enroll --trust issuer.jwks              # on each desktop, with {} copied there",
            bundle.display()
        ),
        None => println!(
            "  {as_owner}hwpass-issuer{config_arg} keygen            # make the key in your HSM, then `jwks > issuer.jwks` for desktops"
        ),
    }
    println!(
        "  {as_owner}hwpass-issuer{config_arg} sign < request.txt   # sign the request a desktop made (hwpass request)"
    );
    println!(
        "  {sudo}hwpass-issuer{config_arg} admin-token --name admin   # for the web service: add its lines to the config, then systemctl enable --now hwpass-issuer"
    );
    Ok(())
}

/// `completion SHELL`: the script on stdout. Needs no config.
fn completion(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Into a buffer first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "hwpass-issuer", &mut script);
    if shell == clap_complete::Shell::Bash {
        // clap_complete 4.6 spells a hyphenated binary's state `hwpass__issuer__subcmd__sign`
        // in its loop but `hwpass__subcmd__issuer__subcmd__sign` in its case arms, so nothing
        // after a subcommand completed (clap-rs/clap#6421); spell the arms as the loop does.
        script = String::from_utf8_lossy(&script)
            .replace("hwpass__subcmd__issuer", "hwpass__issuer")
            .into_bytes();
    }
    if std::io::Write::write_all(&mut std::io::stdout(), &script).is_err() {
        return ExitCode::from(exit::OTHER as u8);
    }
    ExitCode::SUCCESS
}

/// `manpages DIR` (hidden; ci/package): `hwpass-issuer.1` and one page per subcommand.
fn manpages(dir: &std::path::Path) -> ExitCode {
    let made = std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir));
    match made {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hwpass-issuer: error: {}: {e}", dir.display());
            ExitCode::from(exit::OTHER as u8)
        }
    }
}

/// Structured logs on stderr; `HWPASS_LOG` filters (default `info`), `HWPASS_LOG_FORMAT=json`
/// for one JSON object per line.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HWPASS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if std::env::var("HWPASS_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn toml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn now() -> Result<i64, Failure> {
    if std::env::var_os(FAKE_NOW_ENV).is_some() {
        eprintln!(
            "hwpass-issuer: note: using the injected time from {}",
            FAKE_NOW_ENV
        );
    }
    util::now().map_err(|m| (exit::OTHER, m, None))
}

/// Whether `c` must not reach a terminal as it is: what core's text check forbids in `sub` and
/// `dev` (control, bidirectional and invisible characters).
fn unprintable(c: char) -> bool {
    // After a visible character, so that whitespace controls (CR, LF, NEL) are not taken for
    // an empty text.
    let mut buf = [0u8; 5];
    buf[0] = b'x';
    let len = 1 + c.encode_utf8(&mut buf[1..]).len();
    matches!(
        std::str::from_utf8(&buf[..len]).map(|s| check_text(s, 2)),
        Ok(Err(TextProblem::Forbidden { .. }))
    )
}

/// Text from a record or request, safe to print: anything [`unprintable`] shown as `\u{…}`.
/// New records hold only text that passed core's checks; old logs may not.
fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if unprintable(c) {
                    format!("\\u{{{:x}}}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// JSON text safe to print: serde_json leaves DEL, C1 controls, bidirectional and invisible
/// characters as they are; they can only occur inside strings, where `\uXXXX` means the same.
/// "  by alice@corp (group hwpass-users, via https://idp)" for an audit line; nothing when the
/// record names no one.
fn asked_by(r: &issuer::AuditRecord) -> String {
    let Some(by) = &r.by else {
        return String::new();
    };
    let mut out = format!("  by {}", shown(by));
    match (&r.group, &r.idp) {
        (Some(g), Some(idp)) => out.push_str(&format!(" (group {}, via {})", shown(g), shown(idp))),
        (None, Some(idp)) => out.push_str(&format!(" (via {})", shown(idp))),
        (Some(g), None) => out.push_str(&format!(" (group {})", shown(g))),
        (None, None) => {}
    }
    out
}

fn shown_json(json: String) -> String {
    if !json.chars().any(unprintable) {
        return json;
    }
    json.chars()
        .map(|c| {
            if unprintable(c) {
                format!("\\u{:04x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Standard base64, as checkpoints write root hashes.
fn b64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A key manager error as the person sees it.
fn key_fail(e: issuer::KeyError) -> Failure {
    fail(e.into())
}

fn run(cli: Cli) -> Result<(), Failure> {
    // A long-running service holds the PIN (and reads the proxy secret with the config): no
    // core dump may carry them, and no other process of this user may read its memory.
    let hardened = match cli.cmd {
        Cmd::Serve { .. } => Some(issuer::hold_sighup().and_then(|()| issuer::harden_process().map_err(|e| e.to_string())).map_err(|e| {
            (
                exit::OTHER,
                format!("cannot prepare the process (SIGHUP held, core dumps off: PR_SET_DUMPABLE, RLIMIT_CORE): {e}"),
                None,
            )
        })?),
        _ => None,
    };
    let cfg = IssuerConfig::load(&cli.config).map_err(fail)?;
    for notice in &cfg.notices {
        eprintln!("hwpass-issuer: note: {notice}");
    }
    match cli.cmd {
        Cmd::Keygen { object, json } => {
            let manager = match &object {
                Some(label) => cfg.key.with_label(label),
                None => cfg.key.clone(),
            };
            manager.unlock(&TerminalPrompt).map_err(key_fail)?;
            let key = manager.create().map_err(key_fail)?;
            let kid = Jwk::new(*key.verifying_key()).thumbprint();
            let uri = manager.display_uri();
            // Which template the module accepted (the flags were read back and checked).
            let facts = key.describe().map_err(key_fail)?;
            let template = facts
                .quirks
                .iter()
                .find(|(n, _)| *n == "template")
                .map(|(_, v)| v.clone());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"kid": kid, "uri": uri, "template": template})
                );
            } else {
                println!("created P-256 issuer key {uri} (kid {kid})");
                if let Some(t) = &template {
                    println!("key template: {t}");
                }
                println!("the private key is sensitive and not extractable; export the trust bundle with `hwpass-issuer jwks`");
                if object.is_some() {
                    println!("for a rotation: add this label to [key] also_trusted, publish the trust bundle, and switch [key] uri to it once desktops have refreshed (README \"Key rotation\")");
                }
            }
        }
        Cmd::Jwks => {
            let bundle = issuer::trust_bundle(&cfg).map_err(fail)?;
            for (i, (kid, _)) in bundle.keys.iter().enumerate() {
                let role = if i == 0 { "signing" } else { "also trusted" };
                eprintln!("kid {kid}: {role}");
            }
            let text = serde_json::to_string_pretty(&bundle.to_json()).unwrap_or_default();
            println!("{text}");
        }
        Cmd::KeyInfo { json } => {
            cfg.key.unlock(&TerminalPrompt).map_err(key_fail)?;
            let key = cfg.key.open().map_err(key_fail)?;
            let facts = key.describe().map_err(key_fail)?;
            let kid = Jwk::new(*key.verifying_key()).thumbprint();
            let uri = cfg.key.display_uri();
            if json {
                let mut out = serde_json::Map::new();
                out.insert("kid".into(), kid.into());
                out.insert("uri".into(), uri.into());
                for (name, value) in facts.protection.iter().chain(&facts.usage) {
                    out.insert((*name).into(), (*value).into());
                }
                out.insert(
                    "private_value_readable".into(),
                    facts.private_value_readable.into(),
                );
                let pairs = |list: &[(&str, String)]| {
                    serde_json::Value::Object(
                        list.iter()
                            .map(|(n, v)| ((*n).to_string(), v.clone().into()))
                            .collect(),
                    )
                };
                out.insert("module".into(), pairs(&facts.store));
                out.insert("quirks".into(), pairs(&facts.quirks));
                println!("{}", serde_json::Value::Object(out));
            } else {
                let flags = |list: &[(&str, bool)]| {
                    list.iter()
                        .map(|(n, v)| format!("{n}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                println!("key   {uri} (kid {kid})");
                println!("flags {}", flags(&facts.protection));
                println!("usage {}", flags(&facts.usage));
                let value = |name: &str| {
                    facts
                        .store
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or("", |(_, v)| v.as_str())
                };
                println!(
                    "module {} {} (library {}, Cryptoki {})",
                    value("manufacturer"),
                    value("library"),
                    value("library_version"),
                    value("cryptoki_version")
                );
                println!(
                    "token  {:?}: {} {} (serial {}, firmware {})",
                    value("token_label"),
                    value("token_manufacturer"),
                    value("token_model"),
                    value("token_serial"),
                    value("firmware_version")
                );
                for (name, what) in &facts.quirks {
                    println!("quirk  {name}: {what}");
                }
                println!(
                    "private value readable through PKCS#11: {}",
                    if facts.private_value_readable {
                        "YES — this key is not protected"
                    } else {
                        "no"
                    }
                );
            }
        }
        Cmd::Sign {
            valid_for,
            batch: true,
            workers,
            chunk,
            report,
            request,
        } => {
            let now = now()?;
            let text = match request.as_deref() {
                Some(path) if path != "-" => std::fs::read_to_string(path)
                    .map_err(|e| (exit::OTHER, format!("cannot read {path}: {e}"), None))?,
                _ => {
                    let mut buf = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf).map_err(
                        |e| {
                            (
                                exit::OTHER,
                                format!("cannot read standard input: {e}"),
                                None,
                            )
                        },
                    )?;
                    buf
                }
            };
            // One line out per line in: blank lines are kept (an empty line out), and every
            // refusal names its true line number.
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            let numbered: Vec<usize> = (0..lines.len()).filter(|&i| !lines[i].is_empty()).collect();
            let requests: Vec<String> = numbered.iter().map(|&i| lines[i].to_string()).collect();
            cfg.key.unlock(&TerminalPrompt).map_err(key_fail)?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let workers = workers.unwrap_or(cores).max(1);
            // One session per worker, logged in once (a login covers every session).
            let keys = (0..workers)
                .map(|_| cfg.key.open())
                .collect::<Result<Vec<_>, _>>()
                .map_err(key_fail)?;
            let keys = KeyPool::new(keys);
            // One more session: the audit writer's, which signs the checkpoints.
            let audit_key = cfg.key.open().map_err(key_fail)?;
            let audit_signer: &(dyn Signer + Sync) = &*audit_key;
            let trust = issuer::audit_trust(&cfg).map_err(fail)?;
            let notary = issuer::Notary::new(&trust, audit_signer);
            let mut report_out: Box<dyn std::io::Write + Send> = match &report {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .map_err(|e| (exit::OTHER, format!("{}: {e}", path.display()), None))?,
                ),
                None => Box::new(std::io::stderr()),
            };
            let log = cfg.audit_store();
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let (mut next, mut done, mut issued, mut refused) = (0usize, 0usize, 0usize, 0usize);
            // A progress bar only for a person watching: on a terminal, never into a pipe or log.
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some(requests.len() as u64),
                    indicatif::ProgressDrawTarget::stderr(),
                );
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} requests signed ({per_sec}, {eta} left)",
                ) {
                    bar.set_style(style);
                }
                bar.tick();
                bar
            });
            let write_err =
                |e: std::io::Error| IssuerError::Internal(format!("cannot write the output: {e}"));
            let opts = issuer::BatchOptions {
                lifetime: valid_for,
                chunk,
                now,
                verifiers: cores,
            };
            issuer::issue_batch(&cfg, &requests, &opts, &keys, &*log, &notary, |items| {
                for item in items {
                    // Blank input lines before this request: an empty line each.
                    let line = numbered[done];
                    done += 1;
                    while next < line {
                        writeln!(out).map_err(write_err)?;
                        next += 1;
                    }
                    next += 1;
                    match item {
                        issuer::BatchItem::Issued(pass) => {
                            issued += 1;
                            writeln!(out, "{pass}")
                        }
                        issuer::BatchItem::Failed(e) => {
                            refused += 1;
                            let rec = serde_json::json!({"line": line + 1, "exit_code": e.exit_code(), "error": e.to_string()});
                            if let Some(bar) = &progress {
                                bar.suspend(|| writeln!(report_out, "{rec}"))
                            } else {
                                writeln!(report_out, "{rec}")
                            }
                            .and_then(|_| writeln!(out))
                        }
                    }
                    .map_err(write_err)?;
                }
                if let Some(bar) = &progress {
                    bar.set_position(done as u64);
                }
                out.flush().map_err(write_err)
            })
            .map_err(fail)?;
            // Blank lines after the last request.
            for _ in next..lines.len() {
                writeln!(out)
                    .map_err(|e| (exit::OTHER, format!("cannot write the output: {e}"), None))?;
            }
            out.flush()
                .map_err(|e| (exit::OTHER, format!("cannot write the output: {e}"), None))?;
            if let Some(bar) = progress {
                bar.finish_and_clear();
            }
            eprintln!("batch: {issued} passes issued, {refused} refused, {workers} workers");
            if refused > 0 {
                return Err((
                    exit::POLICY,
                    format!("{refused} of {} requests were refused; their lines are empty and the report names each one", requests.len()),
                    Some("the other requests were signed and audited: hand out their passes; fix or refuse the refused ones"),
                ));
            }
        }
        Cmd::Sign {
            valid_for,
            batch: false,
            request,
            ..
        } => {
            let request =
                util::read_document(request.as_deref(), hwpass::MAX_TOKEN_LEN * 4, "request")
                    .map_err(|m| (exit::BAD_REQUEST, m, None))?;
            let now = now()?;
            let approved = issuer::approve(&cfg, &request, valid_for, now).map_err(fail)?;
            if let Some(ahead) = approved.clock_ahead {
                eprintln!(
                    "hwpass-issuer: note: the requesting computer's clock was {} ahead once (it had recorded {}); tell the person to keep it right — installing this pass resets its time",
                    format_duration(ahead),
                    format_time(approved.claims.stm.map_or(0, |m| m.hw))
                );
            }
            cfg.key.unlock(&TerminalPrompt).map_err(key_fail)?;
            let key = cfg.key.open().map_err(key_fail)?;
            let trust = issuer::audit_trust(&cfg).map_err(fail)?;
            let signer: &(dyn Signer + Sync) = &*key;
            let notary = issuer::Notary::new(&trust, signer);
            let log = cfg.audit_store();
            let passes = issuer::issue(std::slice::from_ref(&approved), &*key, &*log, &notary, now)
                .map_err(fail)?;
            let c = &approved.claims;
            eprintln!(
                "signed a {} pass for {} ({}), valid until {} ({}); audit record {} written",
                c.hwb.kind.as_str(),
                shown(&c.sub),
                shown(c.dev.as_deref().unwrap_or("unnamed device")),
                format_time(c.exp),
                format_duration(c.exp.saturating_sub(c.nbf)),
                shown(&c.jti)
            );
            let mut out = std::io::stdout().lock();
            for p in passes {
                writeln!(out, "{p}")
                    .map_err(|e| (exit::OTHER, format!("cannot print the pass: {e}"), None))?;
            }
        }
        Cmd::Revoke {
            pass,
            device,
            reason,
            json,
        } => {
            let now = now()?;
            let by = format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            );
            // The register alone revokes; the HSM only signs the audit record's checkpoint, so a
            // missing PIN or HSM leaves the revocation in force, reported below.
            let unlocked = cfg.key.unlock(&TerminalPrompt);
            let (out, what) = match (&pass, &device) {
                (Some(jti), _) => (
                    issuer::revoke_pass(&cfg, jti, &by, reason, now).map_err(fail)?,
                    format!("pass {jti}"),
                ),
                (None, Some(jkt)) => (
                    issuer::revoke_device(&cfg, jkt, &by, reason, now).map_err(fail)?,
                    format!("device key {jkt}"),
                ),
                (None, None) => unreachable!("clap requires one of --pass and --device"),
            };
            let audit_error = match (&unlocked, &out.audit_error) {
                (_, None) => None,
                (Err(e), Some(_)) => Some(e.to_string()),
                (Ok(()), Some(e)) => Some(e.clone()),
            };
            if let Some(e) = &audit_error {
                eprintln!("hwpass-issuer: warning: the revocation is in force, but its audit record could not be written: {e}");
                eprintln!("hint: {}", error::REVOKED_UNAUDITED);
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"revoked": what, "seq": out.seq, "already": out.already, "audit_error": audit_error})
                );
            } else if out.already {
                println!("{what} was already revoked (deny list #{})", out.seq);
            } else {
                println!("revoked {what}: deny list #{}; publish it (`hwpass-issuer denylist`, or GET /v1/denylist) and desktops refuse it after `hwpass refresh`", out.seq);
            }
        }
        Cmd::Denylist { output } => {
            let now = now()?;
            let bundle = issuer::trust_bundle(&cfg).map_err(fail)?;
            cfg.key.unlock(&TerminalPrompt).map_err(key_fail)?;
            let key = cfg.key.open().map_err(key_fail)?;
            let (seq, list) = issuer::publish_denylist(&cfg, &bundle, &*key, now).map_err(fail)?;
            eprintln!("deny list #{seq}");
            match output {
                Some(path) => {
                    util::write_atomic(&path, format!("{list}\n").as_bytes())
                        .map_err(|e| (exit::OTHER, format!("{}: {e}", path.display()), None))?;
                    eprintln!("wrote the signed deny list to {}", path.display());
                }
                None => println!("{list}"),
            }
        }
        Cmd::AdminToken { name } => {
            let mut raw = [0u8; 32];
            getrandom::getrandom(&mut raw)
                .map_err(|e| (exit::OTHER, format!("no randomness: {e}"), None))?;
            let token = format!("hwpa_{}", hwpass::b64url(&raw));
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
            eprintln!("add to the issuer config (only the hash is stored; the token is shown once):\n\n[[serve.admins]]\nname = {}\ntoken_sha256 = \"{hash}\"\n", toml_string(&name));
            println!("{token}");
        }
        Cmd::Serve { listen } => {
            init_logging();
            if let Some(h) = hardened {
                if h.not_dumpable && h.no_core_limit {
                    tracing::info!("core dumps disabled (PR_SET_DUMPABLE 0, RLIMIT_CORE 0)");
                } else {
                    tracing::warn!(?h, "core dumps could not be disabled fully");
                }
            }
            // The PIN is read once; a variable it came from is removed from the environment
            // as it is read. Which one that was is what disappeared.
            let before: Vec<std::ffi::OsString> = std::env::vars_os().map(|(k, _)| k).collect();
            cfg.key.unlock(&TerminalPrompt).map_err(key_fail)?;
            for name in before.iter().filter(|k| std::env::var_os(k).is_none()) {
                tracing::warn!(
                    variable = %name.to_string_lossy(),
                    "the HSM PIN came from the environment: it is removed from this process's environment, but /proc/PID/environ keeps the block the process started with; give the service pin-source=file:/path (mode 0600) in the key URI instead"
                );
            }
            issuer::serve(cfg, listen, |url| {
                // The one line scripts wait for: where to connect.
                println!("listening on {url}");
                let _ = std::io::stdout().flush();
            })
            .map_err(fail)?;
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { json },
        } => config_check(&cfg, json)?,
        Cmd::Audit { cmd } => audit(&cfg, cmd)?,
        Cmd::Db { cmd } => db(&cfg, cmd)?,
        // Answered in main() without a config.
        Cmd::Completion { .. } | Cmd::Manpages { .. } | Cmd::Init { .. } => {}
    }
    Ok(())
}

/// The checkpoints' trust: the keys of a trust bundle file, or the HSM's public keys.
fn audit_trust_from(
    cfg: &IssuerConfig,
    bundle: Option<&std::path::Path>,
) -> Result<issuer::AuditTrust, Failure> {
    match bundle {
        None => issuer::audit_trust(cfg).map_err(fail),
        Some(path) => {
            let bad = |e: String| (exit::OTHER, format!("{}: {e}", path.display()), None);
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let bundle = hwpass::Jwks::from_json(&text).map_err(|e| bad(e.to_string()))?;
            let keys = bundle.keys.iter().map(|(_, k)| *k.verifying_key());
            issuer::AuditTrust::new(&cfg.audit_origin, keys)
                .map_err(|e| fail(issuer::AuditError::from(e).into()))
        }
    }
}

/// `hwpass-issuer db …`.
fn db(cfg: &IssuerConfig, cmd: DbCmd) -> Result<(), Failure> {
    let Some(store) = cfg.postgres() else {
        return Err((
            exit::OTHER,
            "the config names no database: `db` commands work on the PostgreSQL store".into(),
            Some(error::NO_DATABASE),
        ));
    };
    let db_fail = |e: issuer::DbError| fail(issuer::AuditError::from(e).into());
    match cmd {
        DbCmd::Migrate { json } => {
            let m = store.migrate().map_err(db_fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"database": store.at(), "from": m.from, "to": m.to})
                );
            } else if m.from == m.to {
                println!(
                    "PostgreSQL {}: the schema is at version {} already",
                    store.at(),
                    m.to
                );
            } else {
                println!(
                    "PostgreSQL {}: schema migrated from version {} to {}",
                    store.at(),
                    m.from,
                    m.to
                );
            }
        }
        DbCmd::Import {
            audit_log,
            revocations,
            trust,
            json,
        } => {
            let files = match &cfg.storage {
                issuer::Storage::Postgres { files, .. } => files.clone(),
                _ => None,
            };
            let log_path = audit_log
                .or_else(|| files.as_ref().map(|(l, _)| l.clone()))
                .ok_or((
                    exit::OTHER,
                    "no audit log to import: give --audit-log FILE (or keep audit_log in the config)".to_string(),
                    None,
                ))?;
            let register_path = revocations
                .or_else(|| files.as_ref().map(|(_, r)| r.clone()))
                .unwrap_or_else(|| log_path.with_file_name("revocations.json"));
            let trust = audit_trust_from(cfg, trust.as_deref())?;
            let log = issuer::FileAuditLog::new(&log_path);
            let contents = issuer::AuditStore::load(&log).map_err(|e| fail(e.into()))?;
            let register =
                issuer::RevocationStore::load(&issuer::FileRegister::new(&register_path))
                    .map_err(|e| fail(e.into()))?;
            let done = store
                .import(&contents, &register, &trust)
                .map_err(|e| fail(e.into()))?;
            if json {
                let mut v = serde_json::to_value(&done).unwrap_or_default();
                v["database"] = store.at().into();
                println!("{v}");
            } else {
                println!(
                    "imported {} audit records (verified; the checkpoint covers all {}) and {} revoked passes, {} revoked device keys (deny list #{}) from {} into PostgreSQL {}",
                    done.records,
                    done.checkpoint,
                    done.passes,
                    done.devices,
                    done.seq,
                    log_path.display(),
                    store.at()
                );
                println!("keep the files as they are (read-only) as the record of the import; the replicas now use the database");
            }
        }
    }
    Ok(())
}

/// `hwpass-issuer config check`: everything loading checks (done before this is called),
/// then what only using the config shows: the key opens, the audit log takes an append, the
/// attestation and TLS settings can work. Prints the values in force.
fn config_check(cfg: &IssuerConfig, json: bool) -> Result<(), Failure> {
    let mut problems: Vec<Failure> = cfg
        .problems()
        .into_iter()
        .map(|p| (exit::OTHER, p, None))
        .collect();
    if let Err(e) = cfg.audit_store().writable() {
        problems.push(fail(e.into()));
    }
    let kid = match cfg
        .key
        .unlock(&TerminalPrompt)
        .and_then(|()| cfg.key.open())
    {
        Ok(key) => Some(Jwk::new(*key.verifying_key()).thumbprint()),
        Err(e) => {
            problems.push(key_fail(e));
            None
        }
    };
    if kid.is_some() {
        // The keys desktops are told to trust ([key] also_trusted) must be there too.
        if let Err(e) = issuer::trust_bundle(cfg) {
            problems.push(fail(e));
        }
    }
    let mut effective = cfg.effective();
    effective["key"]["kid"] = kid.clone().into();
    if json {
        let listed: Vec<serde_json::Value> = problems
            .iter()
            .map(|(code, msg, hint)| serde_json::json!({"exit_code": code, "error": msg, "hint": hint}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"ok": problems.is_empty(), "problems": listed, "effective": effective})
        );
    } else {
        let e = &effective;
        let s = |v: &serde_json::Value| match v {
            serde_json::Value::String(t) => t.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!("config        {}", s(&e["config"]));
        println!("issuer        {}", s(&e["issuer"]));
        println!("audience      {}", s(&e["audience"]));
        println!(
            "key           {} (kid {})",
            s(&e["key"]["uri"]),
            kid.as_deref().unwrap_or("-: does not open")
        );
        println!("also trusted  {}", s(&e["key"]["also_trusted"]));
        if e["store"] == "files" {
            println!(
                "audit log     {} (origin {})",
                s(&e["audit_log"]),
                s(&e["audit"]["origin"])
            );
            println!("revocations   {}", s(&e["revocations"]));
        } else {
            println!(
                "store         {} (audit log origin {})",
                s(&e["store"]),
                s(&e["audit"]["origin"])
            );
        }
        let p = &e["policy"];
        println!(
            "policy        default {}, max {}, software {} (max {}), requests up to {} old",
            s(&p["default_lifetime"]),
            s(&p["max_lifetime"]),
            if p["allow_software"] == true {
                "allowed"
            } else {
                "refused"
            },
            s(&p["software_max_lifetime"]),
            s(&p["max_request_age"])
        );
        let groups = p["group"].as_array().cloned().unwrap_or_default();
        if groups.is_empty() && !e["oidc"].is_null() {
            println!("groups        - (nobody gets a pass by signing in)");
        }
        for g in &groups {
            println!(
                "group         {}: {}, max {}, software {}, attestation {}, {} per day",
                s(&g["name"]),
                if g["allowed"] == true {
                    "allowed"
                } else {
                    "shut out"
                },
                s(&g["max_lifetime"]),
                if g["software"] == true {
                    "allowed"
                } else {
                    "refused"
                },
                if g["attestation"] == true {
                    "required"
                } else {
                    "optional"
                },
                match &g["passes_per_day"] {
                    serde_json::Value::Null => "unlimited".to_string(),
                    n => s(n),
                }
            );
        }
        let a = &e["attestation"];
        println!(
            "attestation   {}; roots {}; intermediates {}; {} allow-listed EKs",
            if a["require"] == true {
                "required"
            } else {
                "optional"
            },
            s(&a["ek_roots"]),
            s(&a["ek_intermediates"]),
            s(&a["ek_allowlist_entries"])
        );
        let v = &e["serve"];
        println!(
            "serve         {} {}, admins {}, proxy {}",
            if v["tls"].is_null() { "http" } else { "https" },
            s(&v["listen"]),
            s(&v["admins"]),
            s(&v["proxy"])
        );
        let o = &e["oidc"];
        if o.is_null() {
            println!("oidc          - (no company sign-in)");
        } else {
            println!(
                "oidc          {} as client {} (secret in {}), back to {}",
                s(&o["issuer"]),
                s(&o["client_id"]),
                s(&o["client_secret_file"]),
                s(&o["redirect_url"])
            );
            println!(
                "              identity claim {}, groups claim {}, scopes {}, desktop client {}, admin groups {}, CA {}, timeout {}",
                s(&o["identity_claim"]),
                s(&o["groups_claim"]),
                s(&o["scopes"]),
                s(&o["desktop_client_id"]),
                s(&o["admin_groups"]),
                if o["ca_file"].is_null() {
                    "the system's".to_string()
                } else {
                    s(&o["ca_file"])
                },
                s(&o["timeout"])
            );
        }
        if problems.is_empty() {
            println!("ok: the config holds, the key opens and the audit log can be written");
        }
    }
    let Some(first) = problems.first().cloned() else {
        return Ok(());
    };
    for (_, msg, hint) in &problems[1..] {
        eprintln!("hwpass-issuer: error: {msg}");
        if let Some(h) = hint {
            eprintln!("hint: {h}");
        }
    }
    Err(first)
}

/// `hwpass-issuer audit …`.
fn audit(cfg: &IssuerConfig, cmd: AuditCmd) -> Result<(), Failure> {
    let log = cfg.audit_store();
    let audit_fail = |e: issuer::AuditError| fail(e.into());
    match cmd {
        AuditCmd::Verify {
            against,
            trust,
            log: file,
            json,
        } => {
            let trust = audit_trust_from(cfg, trust.as_deref())?;
            let log: std::sync::Arc<dyn issuer::AuditStore> = match file {
                Some(path) => std::sync::Arc::new(issuer::FileAuditLog::new(path)),
                None => log,
            };
            let saved = against
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .map_err(|e| (exit::OTHER, format!("{}: {e}", p.display()), None))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let v = log.verify(&trust, &saved).map_err(audit_fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "log": log.describe(),
                        "records": v.records,
                        "head": v.head,
                        "checkpoint": v.checkpoint.as_ref().map(|c| serde_json::json!({
                            "size": c.size, "root": b64_std(&c.root), "time": c.time, "origin": c.origin,
                        })),
                        "pending": v.pending,
                        "uncovered": v.uncovered,
                        "against": v.against.iter().map(|c| c.size).collect::<Vec<_>>(),
                    })
                );
                return Ok(());
            }
            println!(
                "{} verifies: {} records, head {}",
                log.describe(),
                v.records,
                v.head
            );
            match &v.checkpoint {
                Some(c) => println!(
                    "checkpoint: {} records, root {}, of {}, signed by a trusted issuer key for {}",
                    c.size,
                    b64_std(&c.root),
                    format_time(c.time),
                    c.origin
                ),
                None if v.pending == 0 => println!("checkpoint: none yet (an empty log)"),
                None => println!("checkpoint: none finished yet"),
            }
            if v.uncovered > 0 {
                println!("note: {} record(s) after it await the next checkpoint (replicas append them; the checkpoint leader covers them within [store] checkpoint_interval)", v.uncovered);
            }
            if v.pending > 0 || v.torn_tail {
                println!("note: {} record(s) after it were written by an append that did not finish (a crash); its signed checkpoint covers them, and the next append completes it", v.pending);
            }
            for (c, path) in v.against.iter().zip(&against) {
                println!(
                    "the log extends the saved checkpoint {} ({} records of {})",
                    path.display(),
                    c.size,
                    format_time(c.time)
                );
            }
        }
        AuditCmd::Export {
            output,
            trust,
            json,
        } => {
            let trust = audit_trust_from(cfg, trust.as_deref())?;
            let contents = log.load().map_err(audit_fail)?;
            let done = issuer::export_log(&contents, &trust, &output).map_err(audit_fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"output": output, "records": done.records, "left_out": done.left_out})
                );
            } else {
                println!(
                    "wrote {} records and their checkpoint to {} (and {}.checkpoint); check it anywhere with `hwpass-issuer audit verify --log {} --trust issuer.jwks`",
                    done.records,
                    output.display(),
                    output.display(),
                    output.display()
                );
                if done.left_out > 0 {
                    println!("note: {} newer record(s) are not covered by a checkpoint yet and were left out; export again later to include them", done.left_out);
                }
            }
        }
        AuditCmd::List { json } => {
            let contents = log.load().map_err(audit_fail)?;
            for e in contents.entries {
                if json {
                    println!(
                        "{}",
                        shown_json(serde_json::to_string(&e).unwrap_or_default())
                    );
                    continue;
                }
                match e {
                    AuditEntry::Issued(r) => println!(
                        "{}  {:<24} {:<8} until {}  jti {}{}{}",
                        format_time(r.time),
                        shown(&r.sub),
                        r.kind.as_str(),
                        format_time(r.exp),
                        shown(&r.jti),
                        asked_by(&r),
                        r.tpm
                            .as_ref()
                            .map(|t| format!(
                                "  TPM {} {} (firmware {})",
                                shown(&t.manufacturer),
                                shown(&t.model),
                                shown(&t.version)
                            ))
                            .unwrap_or_default()
                    ),
                    AuditEntry::Revoked(r) => println!(
                        "{}  revoked {} {} (deny list #{}) by {}{}",
                        format_time(r.time),
                        match r.target {
                            issuer::RevokedKind::Pass => "pass",
                            issuer::RevokedKind::Device => "device key",
                            _ => "?",
                        },
                        shown(&r.id),
                        r.seq,
                        shown(&r.by),
                        r.reason
                            .as_deref()
                            .map(|why| format!(": {}", shown(why)))
                            .unwrap_or_default()
                    ),
                    _ => {}
                }
            }
        }
        AuditCmd::Checkpoint { vkey } => {
            let trust = issuer::audit_trust(cfg).map_err(fail)?;
            if vkey {
                for k in trust.verifier_keys() {
                    println!("{k}");
                }
                return Ok(());
            }
            let contents = log.load().map_err(audit_fail)?;
            let note = contents.checkpoint.ok_or((
                exit::AUDIT,
                "the audit log has no checkpoint yet".to_string(),
                None,
            ))?;
            trust.open(&note).map_err(|e| audit_fail(e.into()))?;
            print!("{note}");
        }
        AuditCmd::Seal => {
            cfg.key.unlock(&TerminalPrompt).map_err(key_fail)?;
            let key = cfg.key.open().map_err(key_fail)?;
            let trust = issuer::audit_trust(cfg).map_err(fail)?;
            let signer: &(dyn Signer + Sync) = &*key;
            let v = log
                .seal(&issuer::Notary::new(&trust, signer))
                .map_err(audit_fail)?;
            match v.checkpoint {
                Some(c) => println!(
                    "{}: a checkpoint now covers all {} records (root {})",
                    log.describe(),
                    c.size,
                    b64_std(&c.root)
                ),
                None => println!("{}: nothing to cover", log.describe()),
            }
        }
    }
    Ok(())
}
