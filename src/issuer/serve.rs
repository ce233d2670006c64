//! `hwpass-issuer serve`: the issuing service — a JSON API and a server-rendered web page over
//! the same sign flow as the CLI (verify request → policy → HSM → durable audit → pass).
//!
//! - tokio + axum; HTTPS through rustls when `[serve]` names a certificate and key.
//! - Every mutating endpoint needs an admin: a bearer token whose SHA-256 is in the config, or
//!   (when configured) a reverse proxy's user header, believed only with the proxy's shared
//!   secret or from its own (non-loopback) addresses. The web page logs in with the same token;
//!   only signed-in admins get a server-side session (cookie `hwpass_session`, HttpOnly,
//!   SameSite=Strict; `__Host-` and Secure under TLS or behind a TLS proxy), bounded per user.
//!   Forms carry a CSRF token: an HMAC of the session id, or before sign-in of a random nonce
//!   kept in a cookie (a signed double-submit token), so anonymous visitors cost no state.
//! - Slow and greedy clients are cut off: header-read, body and idle timeouts, caps on
//!   connections (in all and per peer) and on requests in progress per peer (`limits`).
//! - HSM work runs on tokio's blocking pool, with keys from the same `KeyPool` type the
//!   batch signer uses; audit records are group-committed by one writer thread, and a pass
//!   leaves the server only after its record is fsynced.
//! - Logs (tracing) name requests, admins and pass ids, never tokens, PINs or request bodies.
//!
//! Files, each importing only those before it: `metrics` (the Prometheus registry, filled
//! where things happen), `form` (the strict form-body parser), `problem` (errors as the client
//! sees them), `committer` (the audit group commit), `service` (shared state and the sign
//! flow), `auth` (admins, proxy, sessions, CSRF), `api` (the JSON API), `page` (the web
//! page), `limits` (connection and request caps, timeouts), `ops` (`/healthz`, `/readyz`,
//! `/metrics`, SIGHUP reload), `startup` (listening, TLS, routes, process hardening,
//! shutdown).

mod api;
mod auth;
mod committer;
mod form;
mod limits;
mod metrics;
mod ops;
mod page;
mod problem;
mod service;
mod signin;
mod startup;

pub use self::form::{encode_form, parse_form, Fields, FormError};
pub use self::startup::{harden_process, hold_sighup, run, Hardened};
