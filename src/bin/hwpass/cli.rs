//! The command line of `hwpass`: the clap definition, nothing else.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};

use hwpass::desktop::backend_names;
use hwpass::parse_duration;

/// `auto` and every registered device backend.
fn backend_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(std::iter::once("auto").chain(backend_names()))
}

#[derive(Parser)]
#[command(
    name = "hwpass",
    version = env!("HWPASS_VERSION"),
    about = "Request, install and check hardware-bound offline access passes"
)]
pub struct Cli {
    /// Where this desktop's key and pass live.
    #[arg(long, global = true, env = "HWPASS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// TPM connection (TCTI), e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.
    #[arg(long, global = true)]
    pub tcti: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create this desktop's device key and store the issuer's trust bundle.
    Enroll {
        /// Where the device key lives: auto (the strongest that answers) or a backend's name.
        #[arg(long, default_value = "auto", value_parser = backend_parser())]
        backend: String,
        /// The trust bundle from `hwpass-issuer jwks`.
        #[arg(long)]
        trust: PathBuf,
        /// Replace an existing enrolment (its key and pass are lost).
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a pass request (one line) to send to the issuer; or, with --server, get the pass
    /// online.
    ///
    /// The main path is offline: paste the request on the issuing service's page or send it
    /// to your admin, then `hwpass install` the pass you get back. No connection between this
    /// computer and the service is needed.
    ///
    /// When this computer can reach the service, `--server URL` does it all: hwpass shows a
    /// web address, a code and a QR code; sign in there with your company account on any
    /// browser (a phone will do) before the countdown ends, and the pass for the identity you
    /// signed in as is installed here, and the server remembered for `hwpass refresh`. Ctrl-C
    /// cancels and changes nothing.
    Request {
        /// Who the pass is for, e.g. alice@corp. With --server: whoever signs in; if given, a
        /// sign-in as anyone else is refused.
        #[arg(long, required_unless_present = "server")]
        subject: Option<String>,
        /// Lifetime to ask for (e.g. 7d); the issuer's policy decides.
        #[arg(long, visible_alias = "lifetime", value_parser = parse_duration)]
        valid_for: Option<i64>,
        /// Name of this device shown to the admin (default: the host name).
        #[arg(long)]
        device_name: Option<String>,
        /// Get the pass online from this issuing service (https://…) by signing in with your
        /// company account (OAuth 2.0 device authorization grant), and install it.
        #[arg(long)]
        server: Option<String>,
        /// With --server: trust only these CA certificates (PEM) for the service; the sign-in
        /// provider is trusted with them and the web PKI roots.
        #[arg(long, requires = "server")]
        ca: Option<PathBuf>,
        /// With --server: print the result as JSON on stdout (the installed pass's verdict,
        /// who signed in, or why no pass was installed).
        #[arg(long, requires = "server")]
        json: bool,
    },
    /// Verify a pass and store it sealed to this device.
    Install {
        /// The pass (pasted as it came: wrapped, quoted or mail-quoted is fine), a file holding
        /// it, or - (the default) to read it from stdin.
        pass: Option<String>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the installed pass offline, proving possession of the device key.
    Check {
        /// Print a machine-readable verdict.
        #[arg(long)]
        json: bool,
    },
    /// Install a newer signed deny list and trust bundle from the issuing service, or from a
    /// file brought over by hand (`hwpass-issuer denylist`).
    #[command(group = clap::ArgGroup::new("source").args(["server", "file"]))]
    Refresh {
        /// The issuing service, e.g. https://passes.corp.example (GET /v1/denylist); remembered,
        /// so a later bare `hwpass refresh` uses it again.
        #[arg(long)]
        server: Option<String>,
        /// A deny list file, or - for stdin.
        #[arg(long)]
        file: Option<String>,
        /// HTTPS: trust only these CA certificates (PEM) instead of the system's.
        #[arg(long, requires = "server")]
        ca: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the enrolment and the installed pass.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish (e.g.
    /// `source <(hwpass completion bash)`; the packages install them).
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
    /// Decode and explain any hwpass token without trusting it.
    Inspect {
        /// The token (a pass, request, deny list or sealed pass; a file holding it), or - to
        /// read it from stdin.
        token: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}
