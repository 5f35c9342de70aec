//! Makes a self-signed certificate for localhost (and 127.0.0.1, ::1) the
//! first time the service is built; the service bakes it into its image.

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (cert_path, key_path) = (out.join("cert.pem"), out.join("key.pem"));
    if !cert_path.exists() || !key_path.exists() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let params = rcgen::CertificateParams::new(names).expect("valid names");
        let key = rcgen::KeyPair::generate().expect("key generation");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
