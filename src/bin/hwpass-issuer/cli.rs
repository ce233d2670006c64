//! The command line of `hwpass-issuer`: the clap definition, nothing else.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use hwpass::parse_duration;

#[derive(Parser)]
#[command(
    name = "hwpass-issuer",
    version = env!("HWPASS_VERSION"),
    about = "Sign hwpass access passes with a key inside a PKCS#11 HSM"
)]
pub struct Cli {
    /// Issuer config file (TOML; see hsm-config/).
    #[arg(
        long,
        global = true,
        env = "HWPASS_CONFIG",
        default_value = "/etc/hwpass/issuer.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Set up an issuer: a commented config (--config) and, with SoftHSM (the default), a
    /// token, the key and the trust bundle. On a terminal it asks (Enter takes the default in
    /// brackets); with --yes, or without a terminal, flags and defaults decide. Never
    /// overwrites anything.
    Init {
        /// `iss` of every pass (default: this machine's host name).
        #[arg(long)]
        issuer: Option<String>,
        /// `aud` of every pass: what your desktop application expects.
        #[arg(long)]
        audience: Option<String>,
        /// Where the audit log, the revocation register and the SoftHSM token live.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The key of an HSM set up already (an RFC 7512 pkcs11: URI) instead of a new
        /// SoftHSM token; then make the key with `keygen`.
        #[arg(long, value_name = "URI")]
        key_uri: Option<String>,
        /// The SoftHSM2 PKCS#11 module.
        #[arg(long, value_name = "PATH", conflicts_with = "key_uri")]
        softhsm_module: Option<PathBuf>,
        /// The account the service runs as: it gets the state and the PIN file, and reads the
        /// config through its group (default: `hwpass`, when it exists and init runs as root).
        #[arg(long)]
        user: Option<String>,
        /// Ask nothing.
        #[arg(long, short)]
        yes: bool,
        /// Print the config init would write, and write nothing.
        #[arg(long, hide = true)]
        print_config: bool,
    },
    /// Create the issuer key pair inside the HSM (never overwrites an existing key).
    Keygen {
        /// Create the key under this label instead of the config's object= (the next key of a
        /// rotation, in the same token); then list it in `[key] also_trusted`.
        #[arg(long)]
        object: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the trust bundle (JWKS) that desktops enrol with: the signing key, then the keys
    /// in `[key] also_trusted`.
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
        #[arg(long, value_parser = parse_duration)]
        valid_for: Option<i64>,
        /// Sign many requests: one per line in (stdin, or the file given), one line out per
        /// request (the pass, or an empty line if it was refused), refusals as JSON lines on
        /// stderr (or --report).
        #[arg(long)]
        batch: bool,
        /// Batch: signing threads, each with its own HSM session (default: the CPU count).
        /// Requests are verified on one thread per CPU whatever this says.
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
        /// The pass id (jti). Ids are base64url and may start with `-`.
        #[arg(long, allow_hyphen_values = true)]
        pass: Option<String>,
        /// A device key thumbprint (`hwpass status`): every pass bound to it.
        #[arg(long, allow_hyphen_values = true)]
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
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish (e.g.
    /// `source <(hwpass-issuer completion bash)`; the packages install them).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff) of this command and each subcommand into a directory.
    #[command(hide = true)]
    Manpages {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
    /// Check the config file (TOML, keys, values, paths), that the key opens (needs the PIN)
    /// and that the audit log can be written; print the values in force.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// The PostgreSQL store (`[store] postgres`): its schema, and importing a file store.
    Db {
        #[command(subcommand)]
        cmd: DbCmd,
    },
}

#[derive(Subcommand)]
pub enum DbCmd {
    /// Create or upgrade the database schema (needs a role that may create tables). Replicas
    /// never change the schema themselves: run this before starting them, and after upgrading
    /// hwpass-issuer.
    Migrate {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import a file store — the audit log with its checkpoint, and the revocation register —
    /// into the new (empty) database, after verifying the whole log. Nothing is imported if
    /// anything does not verify.
    Import {
        /// The audit log file (default: the config's `audit_log`).
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
        /// The register file (default: the config's `revocations`, or `revocations.json` beside
        /// the audit log).
        #[arg(long, value_name = "FILE")]
        revocations: Option<PathBuf>,
        /// Check the log's checkpoint with the keys of this trust bundle instead of the HSM's.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Check the config and print the values in force (defaults filled in, paths resolved
    /// against the config's folder); exit 0 when everything holds.
    Check {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check every record: the hash chain, that the records up to the last signed checkpoint
    /// reproduce its Merkle root, and its signature by a trusted issuer key (no PIN needed).
    Verify {
        /// Also check that the log extends this checkpoint, saved elsewhere earlier (`audit
        /// checkpoint > FILE`): catches records cut off together with a rolled-back checkpoint.
        #[arg(long, value_name = "FILE")]
        against: Vec<PathBuf>,
        /// Check signatures with the keys of this trust bundle (the JWKS desktops enrol with)
        /// instead of reading them from the HSM: to verify on another machine, or with the
        /// HSM unavailable.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// Verify this audit log file (and its .checkpoint beside it: an `audit export`)
        /// instead of the store the config names.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the log up to its last checkpoint as a file log (JSON lines and its .checkpoint
    /// file), which `audit verify --log FILE --trust JWKS` checks offline, on any machine.
    Export {
        /// The file to write (it must not exist).
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        /// Check signatures with the keys of this trust bundle instead of the HSM's.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List issued passes and revocations.
    List {
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Print the last signed checkpoint (C2SP signed note), to keep a copy elsewhere.
    Checkpoint {
        /// Print the verifier keys for C2SP tools instead (`<name>+<key id>+<key>`).
        #[arg(long)]
        vkey: bool,
    },
    /// Check every record, then sign a checkpoint covering the whole log: once for a log
    /// written before checkpoints, or after reviewing records the last checkpoint does not
    /// cover. Needs the HSM.
    Seal,
}
