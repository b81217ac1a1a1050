//! Files the configuration names (`*_file` keys): every one is read once, while the
//! configuration is loaded, by [`read_bounded`] (a regular file, at most [`MAX_FILE_BYTES`],
//! UTF-8). The `*_file` settings of handlers and listeners are kept, read, in [`SettingFiles`]
//! beside their settings; a handler built later (also after a runtime change) takes the
//! content from there and never opens a file itself. Runtime changes cannot name a file (see
//! `listeners::changes`), so only the configuration file decides what is read.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{ConfigError, Secret, invalid};

/// The largest file a `*_file` key may name: a secret or a token is far smaller.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The content of the file at `path`: a regular file (not a directory, device, FIFO or
/// socket, so a read never blocks or goes on for ever) of at most [`MAX_FILE_BYTES`], in UTF-8.
pub fn read_bounded(path: &Path) -> io::Result<String> {
    let not_regular = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, device, FIFO or socket is not read)",
        )
    };
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Had the path been swapped for a FIFO since, opening it does not wait for a writer.
    #[cfg(target_os = "linux")]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {} KiB; it should hold one secret or token",
                MAX_FILE_BYTES / 1024
            ),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Whether a settings key names a file (`token_file`, `secret_file`, …).
pub fn is_file_key(key: &str) -> bool {
    key.ends_with("_file")
}

/// The `*_file` settings of one handler or listener, read when the configuration was loaded:
/// by key, the path the file gave and the file's content.
#[derive(Clone, Default, PartialEq)]
pub struct SettingFiles(BTreeMap<String, (PathBuf, Secret)>);

impl SettingFiles {
    /// Reads every file the top-level `*_file` keys of `settings` name; an error names the key
    /// (`prefix` followed by the settings key, e.g. `handlers.relay.token_file`).
    pub(super) fn read(
        settings: &serde_json::Map<String, serde_json::Value>,
        prefix: &str,
    ) -> Result<SettingFiles, ConfigError> {
        let mut files = BTreeMap::new();
        for (key, value) in settings.iter().filter(|(k, _)| is_file_key(k)) {
            let Some(path) = value.as_str().filter(|p| !p.trim().is_empty()) else {
                return Err(invalid(
                    format!("{prefix}{key}"),
                    "must be the path of a file",
                ));
            };
            let path = PathBuf::from(path);
            let text = read_bounded(&path).map_err(|source| ConfigError::Io {
                what: "file of setting",
                path: path.clone(),
                source,
            })?;
            files.insert(key.clone(), (path, Secret::new(text)));
        }
        Ok(SettingFiles(files))
    }

    /// The content of the file `path` that the settings key `key` names, as read when the
    /// configuration was loaded. Any other path (one a handler's settings name that the
    /// configuration file did not) is an error: files are not read after the start.
    pub fn content(&self, key: &str, path: &Path) -> Result<&Secret, String> {
        match self.0.get(key) {
            Some((read, text)) if read == path => Ok(text),
            _ => Err(format!(
                "`{}` was not read from the configuration file; a path is set only there \
                 (files are read once, at start)",
                path.display()
            )),
        }
    }
}

impl fmt::Debug for SettingFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, (path, _))| (k, path)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("dir");
        let small = dir.path().join("token");
        std::fs::write(&small, "abc\n").expect("write");
        assert_eq!(read_bounded(&small).expect("read"), "abc\n");

        let large = dir.path().join("large");
        std::fs::write(&large, vec![b'a'; MAX_FILE_BYTES as usize + 1]).expect("write");
        let error = read_bounded(&large).unwrap_err().to_string();
        assert!(error.contains("larger than 64 KiB"), "{error}");
        let exactly = dir.path().join("exactly");
        std::fs::write(&exactly, vec![b'a'; MAX_FILE_BYTES as usize]).expect("write");
        assert!(read_bounded(&exactly).is_ok());

        let error = read_bounded(dir.path()).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        let error = read_bounded(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a regular file"), "{error}");

        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        let error = read_bounded(&binary).unwrap_err().to_string();
        assert!(error.contains("not UTF-8"), "{error}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let started = std::time::Instant::now();
        let error = read_bounded(&fifo).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn setting_files_are_read_at_load_and_looked_up_by_key_and_path() {
        let dir = tempfile::tempdir().expect("dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "T0KEN\n").expect("write");
        let settings = serde_json::json!({"url": "https://x.example", "token_file": token});
        let settings = settings.as_object().cloned().unwrap_or_default();
        let files = SettingFiles::read(&settings, "handlers.relay.").expect("read");
        assert_eq!(
            files.content("token_file", &token).map(Secret::expose),
            Ok("T0KEN\n")
        );
        assert!(
            files
                .content("token_file", Path::new("/etc/passwd"))
                .is_err()
        );
        assert!(files.content("secret_file", &token).is_err());
        assert!(!format!("{files:?}").contains("T0KEN"));

        let missing = serde_json::json!({"token_file": dir.path().join("missing")});
        let error = SettingFiles::read(missing.as_object().expect("object"), "handlers.relay.")
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing"), "{error}");
        let not_a_path = serde_json::json!({"token_file": 3});
        let error = SettingFiles::read(
            not_a_path.as_object().expect("object"),
            "listeners.r.settings.",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("listeners.r.settings.token_file"), "{error}");
    }
}
