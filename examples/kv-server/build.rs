//! Makes the demo's self-signed certificate (for `localhost`, 127.0.0.1
//! and ::1), used when no certificate is given at boot. It is valid from a
//! day before the build for a year, and kept across builds while it has at
//! least 30 days left. `SOURCE_DATE_EPOCH` stands for the build time when
//! set.

use std::time::{SystemTime, UNIX_EPOCH};

const DAY: i64 = 24 * 60 * 60;
const VALID_DAYS: i64 = 365;
const RENEW_DAYS: i64 = 30;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let now = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse::<i64>().expect("SOURCE_DATE_EPOCH is seconds since 1970"),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs() as i64,
    };
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cert_path = out.join("demo-cert.pem");
    let key_path = out.join("demo-key.pem");
    let end_path = out.join("demo-cert.not-after");
    let kept = std::fs::read_to_string(&end_path)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .is_some_and(|end| end > now + RENEW_DAYS * DAY && cert_path.exists() && key_path.exists());
    if kept {
        return;
    }
    let not_after = now + VALID_DAYS * DAY;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()])
        .expect("valid names");
    params.distinguished_name.push(rcgen::DnType::CommonName, "Skiff kv-server demo");
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now - DAY).expect("a valid time");
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("a valid time");
    let key = rcgen::KeyPair::generate().expect("key generation");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    std::fs::write(&cert_path, cert.pem()).expect("write the demo certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write the demo key");
    std::fs::write(&end_path, not_after.to_string()).expect("write the demo certificate's end");
}
