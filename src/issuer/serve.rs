//! `hwpass-issuer serve`: the issuing service — a JSON API and a server-rendered web page over
//! the same sign flow as the CLI (verify request → policy → HSM → durable audit → pass).
//!
//! - tokio + axum; HTTPS through rustls when `[serve]` names a certificate and key.
//! - Every mutating endpoint needs an admin: a bearer token whose SHA-256 is in the config, or
//!   (when configured) a reverse proxy's user header, believed only from the proxy's addresses.
//!   The web page logs in with the same token and keeps a server-side session (cookie
//!   `hwpass_session`, HttpOnly, SameSite=Strict, Secure under TLS); its forms carry a CSRF
//!   token, an HMAC of the session id.
//! - HSM work runs on tokio's blocking pool, with keys from the same `KeyPool` type the
//!   batch signer uses; audit records are group-committed by one writer thread, and a pass
//!   leaves the server only after its record is fsynced.
//! - Logs (tracing) name requests, admins and pass ids, never tokens, PINs or request bodies.
//!
//! Files, each importing only those before it: `problem` (errors as the client sees them),
//! `committer` (the audit group commit), `service` (shared state and the sign flow), `auth`
//! (admins, proxy, sessions, CSRF), `api` (the JSON API), `page` (the web page), `startup`
//! (listening, TLS, routes, shutdown).

mod api;
mod auth;
mod committer;
mod page;
mod problem;
mod service;
mod startup;

pub use self::startup::run;
