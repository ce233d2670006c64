//! Benchmark baseline L: SoftHSM's raw signing rate — a tight loop of C_Sign (CKM_ECDSA) on one
//! session in one thread, with the key `hwpass-issuer keygen` made.
//!
//!   SOFTHSM2_CONF=… HWPASS_PIN=… cargo run --release --example hsm_raw_sign -- URI COUNT [MECH]
//!
//! MECH is `ECDSA` (default: a 32-byte digest) or `ECDSA_SHA256` (a 512-byte message, about a
//! pass's signing input, hashed in the module). Prints signatures per second. (Uses cryptoki directly, on purpose: it measures the HSM, not
//! hwpass.)

use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use secrecy::SecretString;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let uri = hwpass::issuer::internal::Pkcs11Uri::parse(
        args.get(1).ok_or("usage: hsm_raw_sign URI COUNT")?,
    )?;
    let count: usize = args.get(2).map_or(Ok(20000), |c| c.parse())?;
    let (mechanism, data) = match args.get(3).map(String::as_str) {
        None | Some("ECDSA") => (Mechanism::Ecdsa, vec![0x5au8; 32]),
        Some("ECDSA_SHA256") => (Mechanism::EcdsaSha256, vec![0x5au8; 512]),
        Some(other) => return Err(format!("unknown mechanism {other}").into()),
    };
    let ctx = Pkcs11::new(&uri.module_path)?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| Some(i.label()) == uri.token.as_deref())
                .unwrap_or(false)
        })
        .ok_or("no such token")?;
    let session = ctx.open_ro_session(slot)?;
    session.login(
        UserType::User,
        Some(&SecretString::from(std::env::var("HWPASS_PIN")?)),
    )?;
    let label = uri.object.clone().ok_or("URI needs object=")?;
    let key = *session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.into_bytes()),
        ])?
        .first()
        .ok_or("no such key")?;
    let start = Instant::now();
    for _ in 0..count {
        session.sign(&mechanism, key, &data)?;
    }
    println!("{:.0}", count as f64 / start.elapsed().as_secs_f64());
    Ok(())
}
