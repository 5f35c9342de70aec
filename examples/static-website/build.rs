//! Bakes `site/` into the image, and makes the demo's self-signed
//! certificate (for `localhost`, 127.0.0.1 and ::1), used when no
//! certificate is given at boot.

fn main() {
    if let Err(e) = skiff_kv::build::bake_for_build_script("site", "site.kv") {
        panic!("cannot bake site/: {e}");
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cert_path = out.join("demo-cert.pem");
    let key_path = out.join("demo-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()])
            .expect("valid names");
        params.distinguished_name.push(rcgen::DnType::CommonName, "Skiff static-website demo");
        let key = rcgen::KeyPair::generate().expect("key generation");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        std::fs::write(&cert_path, cert.pem()).expect("write the demo certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the demo key");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
