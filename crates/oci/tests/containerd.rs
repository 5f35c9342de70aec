//! Skiff images under containerd with skiff-oci as the runc shim's
//! binary: the test starts a containerd of its own (its root, state and
//! socket under /tmp/skiff-oci, no CRI), imports the images `skiff
//! package` writes with `ctr image import`, runs them with `ctr run
//! --runc-binary`, and stops containerd and removes everything after. The
//! runtime handler docs/containers.md gives for Kubernetes (the runc shim
//! with `BinaryName`) is checked as containerd reads it (`containerd
//! config dump`); running it needs the CRI and a kubelet, which are not
//! here.
//!
//! Needs root, `/dev/kvm` and containerd with ctr (`scripts/setup`).

mod common;

use common::{Ran, package, require, run, runtime, scratch};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A containerd of the test's own.
struct Containerd {
    dir: PathBuf,
    daemon: Child,
}

impl Containerd {
    fn start(name: &str) -> Containerd {
        require(&["containerd", "ctr", "containerd-shim-runc-v2"]);
        let dir = scratch(name);
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/sock\"\n[ttrpc]\n  address = \"{d}/sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.ctr(&["version"]).status != 0 {
            assert!(Instant::now() < deadline, "containerd did not start: {}", c.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Ran {
        run(Command::new("ctr").arg("--address").arg(self.dir.join("sock")).args(args), Duration::from_secs(60))
    }

    fn import(&self, archive: &Path) {
        let r = self.ctr(&["image", "import", archive.to_str().unwrap()]);
        assert_eq!(r.status, 0, "ctr image import: {r:?}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn ctr_imports_and_runs_hello_and_returns_the_guests_status() {
    let c = Containerd::start("containerd");
    c.import(&package("examples/hello", "skiff-test/hello", &c.dir));
    c.import(&package("tests/guests/probe", "skiff-test/probe", &c.dir));
    let images = c.ctr(&["image", "ls", "-q"]);
    assert!(images.stdout.contains("localhost/skiff-test/hello:latest"), "{images:?}");

    let ctr_run = |id: &str, image: &str, args: &[&str]| {
        let mut a = vec!["run", "--rm", "--runc-binary", runtime(), image, id];
        a.extend_from_slice(args);
        c.ctr(&a)
    };
    // `ctr run` replaces the whole command: the entrypoint comes first.
    let r = ctr_run("hello", "localhost/skiff-test/hello:latest", &["/skiff/image", "x", "y"]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stdout.contains("Hello from Skiff!"), "{r:?}");
    assert!(r.stdout.contains(r#"command line: ["x", "y"]"#), "{r:?}");
    let r = ctr_run("three", "localhost/skiff-test/probe:latest", &["/skiff/image", "exit", "3"]);
    assert_eq!(r.status, 3, "{r:?}");
    // The shim reads the runtime's JSON log: the reason reaches ctr.
    let r = ctr_run("shell", "localhost/skiff-test/hello:latest", &["/bin/sh"]);
    assert_ne!(r.status, 0, "{r:?}");
    assert!(r.stderr.contains("/bin/sh is not in the container's root file system"), "{r:?}");
    let left = c.ctr(&["containers", "ls", "-q"]);
    assert_eq!(left.stdout.trim(), "", "containers left behind: {left:?}");
}

#[test]
fn the_documented_runtime_handler_is_a_configuration_containerd_reads() {
    require(&["containerd"]);
    // The containerd configuration docs/containers.md gives for
    // Kubernetes: the ```toml block naming the `skiff` runtime handler.
    let docs = std::fs::read_to_string(common::workspace().join("docs/containers.md")).unwrap();
    let block = docs
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("runtimes.skiff"))
        .expect("docs/containers.md has the runtime handler's configuration");
    let dir = scratch("containerd-handler");
    std::fs::write(dir.join("config.toml"), block).unwrap();
    let r = run(
        Command::new("containerd").arg("--config").arg(dir.join("config.toml")).args(["config", "dump"]),
        Duration::from_secs(20),
    );
    assert_eq!(r.status, 0, "{r:?}");
    // The handler uses the runc shim, whose options name skiff-oci.
    let handler = r.stdout.split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.skiff]").nth(1);
    let handler = handler.unwrap_or_else(|| panic!("no skiff runtime handler in containerd's view: {r:?}"));
    let handler = handler.split("\n\n    [").next().unwrap();
    assert!(handler.contains("runtime_type = \"io.containerd.runc.v2\""), "{handler}");
    assert!(handler.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.skiff.options]"), "{handler}");
    assert!(handler.contains("BinaryName = \"/usr/local/bin/skiff-oci\""), "{handler}");
    assert!(handler.contains("pod_annotations = [\"org.skiff.*\"]"), "{handler}");
    let _ = std::fs::remove_dir_all(dir);
}
