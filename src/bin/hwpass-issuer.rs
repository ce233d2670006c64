//! `hwpass-issuer`: the admin's tool. Thin: parse arguments, call the library, print.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

use hwpass::audit::AuditLog;
use hwpass::issuer::{self, exit, IssuerConfig, IssuerError, PinPrompt};
use hwpass::keys::KeyBackend as _;
use hwpass::pkcs11::Hsm;
use hwpass::pool::KeyPool;
use hwpass::token::Jwk;
use hwpass::util::{self, format_duration, format_time};

#[derive(Parser)]
#[command(
    name = "hwpass-issuer",
    version,
    about = "Sign hwpass access passes with a key inside a PKCS#11 HSM"
)]
struct Cli {
    /// Issuer config file (TOML; see hsm-config/).
    #[arg(
        long,
        global = true,
        env = "HWPASS_CONFIG",
        default_value = "/etc/hwpass/issuer.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the issuer key pair inside the HSM (never overwrites an existing key).
    Keygen {
        /// Create the key under this label instead of the config's object= (the next key of a
        /// rotation, in the same token); then list it in `[hsm] also_trusted`.
        #[arg(long)]
        object: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the trust bundle (JWKS) that desktops enrol with: the signing key, then the keys
    /// in `[hsm] also_trusted`.
    Jwks,
    /// Show the issuer key and how the HSM protects it (read back through PKCS#11).
    KeyInfo {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a request, apply the policy, sign the pass in the HSM, audit it, print it.
    Sign {
        /// Lifetime of the pass (e.g. 7d, 12h); overrides the request's, within policy.
        #[arg(long, value_parser = util::parse_duration)]
        valid_for: Option<i64>,
        /// Sign many requests: one per line in (stdin, or the file given), one line out per
        /// request (the pass, or an empty line if it was refused), refusals as JSON lines on
        /// stderr (or --report).
        #[arg(long)]
        batch: bool,
        /// Batch: signing threads, each with its own HSM session (default: the CPU count).
        #[arg(long, requires = "batch")]
        workers: Option<usize>,
        /// Batch: requests per audit-log fsync.
        #[arg(long, requires = "batch", default_value_t = 1024)]
        chunk: usize,
        /// Batch: write the refusals report (JSON lines) to this file instead of stderr.
        #[arg(long, requires = "batch")]
        report: Option<PathBuf>,
        /// The request string (a file of requests with --batch), or - (the default) for stdin.
        request: Option<String>,
    },
    /// Revoke a pass (by its id, from `audit list`) or a device key; desktops refuse it after
    /// their next `hwpass refresh`.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["pass", "device"]))]
    Revoke {
        /// The pass id (jti).
        #[arg(long)]
        pass: Option<String>,
        /// A device key thumbprint (`hwpass status`): every pass bound to it.
        #[arg(long)]
        device: Option<String>,
        /// Why (kept in the revocation register).
        #[arg(long)]
        reason: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign and print the current deny list (revocations and trust bundle keys) for desktops
    /// without network: `hwpass refresh --file`.
    Denylist {
        /// Write it to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Make a new admin token for `serve`: the token on stdout (give it to the admin, once),
    /// the config lines with its SHA-256 on stderr.
    AdminToken {
        /// The admin's name, as logs and the page show it.
        #[arg(long)]
        name: String,
    },
    /// Run the issuing service: web page and JSON API (see README "Issuing service").
    Serve {
        /// Listen here instead of `[serve] listen` (default 127.0.0.1:8080; port 0 picks one).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain; report the record count and head hash.
    Verify,
    /// List issued passes.
    List {
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
}

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

type Failure = (i32, String, Option<&'static str>);

fn fail(e: IssuerError) -> Failure {
    let hint = match &e {
        IssuerError::Config { .. } => Some("fix the config file (see hsm-config/softhsm.toml for a working example)"),
        IssuerError::Pin(_) => Some("set HWPASS_PIN or pin-source=file:/path in the key URI; the PIN is never taken from the command line"),
        IssuerError::Request(_) => Some("ask the person for a new request (`hwpass request`), pasted whole on one line"),
        IssuerError::Policy(_) => Some("sign with a shorter --valid-for, or change [policy] in the config"),
        IssuerError::Attest(hwpass::attest::AttestError::Missing) => {
            Some("the desktop must request from its TPM (hwpass enroll --backend tpm), or set [attestation] require = false")
        }
        IssuerError::Attest(_) => Some("the TPM evidence does not hold up: do not issue a pass for this device; see README \"Attestation\""),
        IssuerError::Key(_) | IssuerError::Internal(_) => None,
        IssuerError::Revocation(_) => Some("fix the revocation register's location or permissions (config `revocations`)"),
        IssuerError::NotFound(_) => Some("list issued passes with `hwpass-issuer audit list`"),
        IssuerError::Audit(_) => Some("no pass was printed; fix the audit log location or permissions and sign again"),
    };
    (e.exit_code(), e.to_string(), hint)
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
    if std::env::var_os(util::FAKE_NOW_ENV).is_some() {
        eprintln!(
            "hwpass-issuer: note: using the injected time from {}",
            util::FAKE_NOW_ENV
        );
    }
    util::now().map_err(|m| (exit::OTHER, m, None))
}

fn run(cli: Cli) -> Result<(), Failure> {
    let cfg = IssuerConfig::load(&cli.config).map_err(fail)?;
    match cli.cmd {
        Cmd::Keygen { object, json } => {
            let hsm = Hsm::open(&cfg.key_uri).map_err(|e| fail(e.into()))?;
            let hsm = match &object {
                Some(label) => hsm.with_object(label),
                None => hsm,
            };
            let pin = issuer::resolve_pin(&cfg.key_uri, &TerminalPrompt).map_err(fail)?;
            let key = hsm.generate(&pin).map_err(|e| fail(e.into()))?;
            let kid = Jwk::new(*key.verifying_key()).thumbprint();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"kid": kid, "uri": hsm.uri().to_string()})
                );
            } else {
                println!("created P-256 issuer key {} (kid {kid})", hsm.uri());
                println!("the private key is sensitive and not extractable; export the trust bundle with `hwpass-issuer jwks`");
                if object.is_some() {
                    println!("for a rotation: add this label to [hsm] also_trusted, publish the trust bundle, and switch [hsm] uri to it once desktops have refreshed (README \"Key rotation\")");
                }
            }
        }
        Cmd::Jwks => {
            let hsm = Hsm::open(&cfg.key_uri).map_err(|e| fail(e.into()))?;
            let bundle = issuer::trust_bundle(&cfg, &hsm).map_err(fail)?;
            for (i, (kid, _)) in bundle.keys.iter().enumerate() {
                let role = if i == 0 { "signing" } else { "also trusted" };
                eprintln!("kid {kid}: {role}");
            }
            let text = serde_json::to_string_pretty(&bundle.to_json()).unwrap_or_default();
            println!("{text}");
        }
        Cmd::KeyInfo { json } => {
            let hsm = Hsm::open(&cfg.key_uri).map_err(|e| fail(e.into()))?;
            let pin = issuer::resolve_pin(&cfg.key_uri, &TerminalPrompt).map_err(fail)?;
            let key = hsm.open_key(&pin).map_err(|e| fail(e.into()))?;
            let p = key.protection().map_err(|e| fail(e.into()))?;
            let value_readable = key
                .try_extract_private_value()
                .map_err(|e| fail(e.into()))?
                .is_some();
            let kid = Jwk::new(*key.verifying_key()).thumbprint();
            if json {
                let out = serde_json::json!({
                    "kid": kid,
                    "uri": cfg.key_uri.to_string(),
                    "token": p.token, "private": p.private, "sensitive": p.sensitive,
                    "extractable": p.extractable, "always_sensitive": p.always_sensitive,
                    "never_extractable": p.never_extractable, "sign": p.sign,
                    "decrypt": p.decrypt, "derive": p.derive,
                    "private_value_readable": value_readable,
                });
                println!("{out}");
            } else {
                println!("key   {} (kid {kid})", cfg.key_uri);
                println!("flags token={} private={} sensitive={} extractable={} always_sensitive={} never_extractable={}",
                    p.token, p.private, p.sensitive, p.extractable, p.always_sensitive, p.never_extractable);
                println!(
                    "usage sign={} decrypt={} derive={}",
                    p.sign, p.decrypt, p.derive
                );
                println!(
                    "private value readable through PKCS#11: {}",
                    if value_readable {
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
            let requests: Vec<String> = text
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            let hsm = Hsm::open(&cfg.key_uri).map_err(|e| fail(e.into()))?;
            let pin = issuer::resolve_pin(&cfg.key_uri, &TerminalPrompt).map_err(fail)?;
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1);
            // One session per worker, logged in once (a login covers every session).
            let keys = (0..workers)
                .map(|_| hsm.open_key(&pin))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.into()))?;
            drop(pin);
            let keys = KeyPool::new(keys);
            let mut report_out: Box<dyn std::io::Write + Send> = match &report {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .map_err(|e| (exit::OTHER, format!("{}: {e}", path.display()), None))?,
                ),
                None => Box::new(std::io::stderr()),
            };
            let log = AuditLog::new(&cfg.audit_log);
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let (mut line, mut issued, mut refused) = (0usize, 0usize, 0usize);
            let opts = issuer::BatchOptions {
                lifetime: valid_for,
                chunk,
                now,
            };
            issuer::issue_batch(&cfg, &requests, &opts, &keys, &log, |items| {
                for item in items {
                    line += 1;
                    match item {
                        issuer::BatchItem::Issued(pass) => {
                            issued += 1;
                            writeln!(out, "{pass}")
                        }
                        issuer::BatchItem::Failed(e) => {
                            refused += 1;
                            let rec = serde_json::json!({"line": line, "exit_code": e.exit_code(), "error": e.to_string()});
                            writeln!(report_out, "{rec}").and_then(|_| writeln!(out))
                        }
                    }
                    .map_err(|e| IssuerError::Internal(format!("cannot write the output: {e}")))?;
                }
                out.flush().map_err(|e| IssuerError::Internal(format!("cannot write the output: {e}")))
            })
            .map_err(fail)?;
            eprintln!("batch: {issued} passes issued, {refused} refused, {workers} workers");
        }
        Cmd::Sign {
            valid_for,
            batch: false,
            request,
            ..
        } => {
            let request = util::read_token_arg(request.as_deref())
                .map_err(|m| (exit::BAD_REQUEST, m, None))?;
            let now = now()?;
            let approved = issuer::approve(&cfg, &request, valid_for, now).map_err(fail)?;
            let hsm = Hsm::open(&cfg.key_uri).map_err(|e| fail(e.into()))?;
            let pin = issuer::resolve_pin(&cfg.key_uri, &TerminalPrompt).map_err(fail)?;
            let key = hsm.open_key(&pin).map_err(|e| fail(e.into()))?;
            drop(pin);
            let log = AuditLog::new(&cfg.audit_log);
            let passes =
                issuer::issue(std::slice::from_ref(&approved), &key, &log, now).map_err(fail)?;
            let c = &approved.claims;
            eprintln!(
                "signed a {} pass for {} ({}), valid until {} ({}); audit record {} written",
                c.hwb.kind.as_str(),
                c.sub,
                c.dev.as_deref().unwrap_or("unnamed device"),
                format_time(c.exp),
                format_duration(c.exp - c.nbf),
                c.jti
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
            if json {
                println!(
                    "{}",
                    serde_json::json!({"revoked": what, "seq": out.seq, "already": out.already})
                );
            } else if out.already {
                println!("{what} was already revoked (deny list #{})", out.seq);
            } else {
                println!("revoked {what}: deny list #{}; publish it (`hwpass-issuer denylist`, or GET /v1/denylist) and desktops refuse it after `hwpass refresh`", out.seq);
            }
        }
        Cmd::Denylist { output } => {
            let now = now()?;
            let hsm = Hsm::open(&cfg.key_uri).map_err(|e| fail(e.into()))?;
            let bundle = issuer::trust_bundle(&cfg, &hsm).map_err(fail)?;
            let pin = issuer::resolve_pin(&cfg.key_uri, &TerminalPrompt).map_err(fail)?;
            let key = hsm.open_key(&pin).map_err(|e| fail(e.into()))?;
            drop(pin);
            let (seq, list) = issuer::publish_denylist(&cfg, &bundle, &key, now).map_err(fail)?;
            eprintln!("deny list #{seq}");
            match output {
                Some(path) => {
                    hwpass::fsutil::write_atomic(&path, format!("{list}\n").as_bytes())
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
            let token = format!("hwpa_{}", hwpass::token::b64url(&raw));
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
            eprintln!("add to the issuer config (only the hash is stored; the token is shown once):\n\n[[serve.admins]]\nname = {}\ntoken_sha256 = \"{hash}\"\n", toml_string(&name));
            println!("{token}");
        }
        Cmd::Serve { listen } => {
            init_logging();
            let hsm = Hsm::open(&cfg.key_uri).map_err(|e| fail(e.into()))?;
            let pin = issuer::resolve_pin(&cfg.key_uri, &TerminalPrompt).map_err(fail)?;
            hwpass::serve::run(cfg, listen, &hsm, pin, |url| {
                // The one line scripts wait for: where to connect.
                println!("listening on {url}");
                let _ = std::io::stdout().flush();
            })
            .map_err(fail)?;
        }
        Cmd::Audit { cmd } => {
            let log = AuditLog::new(&cfg.audit_log);
            let (records, summary) = log.read().map_err(|e| fail(e.into()))?;
            match cmd {
                AuditCmd::Verify => {
                    println!(
                        "audit log {} verifies: {} records, head {}",
                        log.path().display(),
                        summary.records,
                        summary.head
                    );
                    if summary.torn_tail {
                        println!("note: the last line is an incomplete write (a crash before its fsync); its pass was never printed");
                    }
                }
                AuditCmd::List { json } => {
                    for r in records {
                        if json {
                            println!("{}", serde_json::to_string(&r).unwrap_or_default());
                        } else {
                            println!(
                                "{}  {:<24} {:<8} until {}  jti {}",
                                format_time(r.time),
                                r.sub,
                                r.kind.as_str(),
                                format_time(r.exp),
                                r.jti
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
