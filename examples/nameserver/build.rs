//! Compiles every master file under `zones/` (or the directory named by
//! `NAMESERVER_ZONES`) into the image: a file named `ORIGIN.zone` holds
//! the zone `ORIGIN.` (`example.com.zone` is `example.com.`). A zone that
//! does not compile fails the build with its file and line.

use skiff_dns::build::{ZoneFile, compile_for_build_script};

fn main() {
    println!("cargo:rerun-if-env-changed=NAMESERVER_ZONES");
    let dir = std::env::var("NAMESERVER_ZONES").unwrap_or_else(|_| "zones".into());
    println!("cargo:rerun-if-changed={dir}");
    let mut zones = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => fail(&format!("cannot read the zone directory {dir}: {e}")),
    };
    for entry in entries {
        let path = match entry {
            Ok(e) => e.path(),
            Err(e) => fail(&format!("cannot read the zone directory {dir}: {e}")),
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(origin) = name.strip_suffix(".zone") else { continue };
        if origin.is_empty() {
            fail(&format!("{}: name the file after its zone (example.com.zone)", path.display()));
        }
        zones.push(ZoneFile::new(format!("{origin}."), path));
    }
    if zones.is_empty() {
        fail(&format!("{dir} holds no ORIGIN.zone file: there is nothing to serve"));
    }
    // One order for every build, whatever the directory's.
    zones.sort_by(|a, b| a.path.cmp(&b.path));
    if let Err(e) = compile_for_build_script(&zones, "zones.dns") {
        fail(&e.to_string());
    }
}

/// Fails the build with one line that says why.
fn fail(why: &str) -> ! {
    eprintln!("error: {why}");
    std::process::exit(1);
}
