//! The runtime's own log (`--log FILE --log-format json|text`): engines
//! read the last error from it (containerd's shim, podman's conmon) to
//! say why a container could not be made.

use std::io::Write;
use std::path::PathBuf;

/// The log's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `time="..." level=error msg="..."` (logrus's text, as runc writes).
    #[default]
    Text,
    /// One JSON object a line: `{"level":"error","msg":"...","time":"..."}`.
    Json,
}

/// Where the runtime logs, besides standard error.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// The file, if `--log` was given.
    pub file: Option<PathBuf>,
    /// Its format.
    pub format: Format,
}

impl Log {
    /// The line for `msg` at `level` in this log's format.
    pub fn line(&self, level: &str, msg: &str, now: std::time::Duration) -> String {
        let time = crate::state::rfc3339(now);
        match self.format {
            Format::Json => serde_json::json!({ "level": level, "msg": msg, "time": time }).to_string(),
            Format::Text => format!("time={time:?} level={level} msg={:?}", msg),
        }
    }

    /// Appends `msg` at `level` to the log file, if there is one. A log
    /// that cannot be written is said on standard error.
    pub fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.file else { return };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let line = self.line(level, msg, now) + "\n";
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = result {
            eprintln!("skiff-oci: cannot write the log {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_or_logrus_text() {
        let json = Log { file: None, format: Format::Json };
        let line = json.line("error", "no \"kvm\"", std::time::Duration::ZERO);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"level": "error", "msg": "no \"kvm\"", "time": "1970-01-01T00:00:00.000000000Z"})
        );
        let text = Log { file: None, format: Format::Text };
        assert_eq!(
            text.line("error", "no \"kvm\"", std::time::Duration::ZERO),
            r#"time="1970-01-01T00:00:00.000000000Z" level=error msg="no \"kvm\"""#
        );
    }
}
