//! Where kqd and kq meet by default: the socket and the data directory, per the XDG rules.

use std::path::PathBuf;

fn uid() -> u32 {
    // std has no getuid; the owner of /proc/self is the real uid of this process.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

/// `$XDG_RUNTIME_DIR/kq/kq.sock`; without XDG_RUNTIME_DIR (no systemd login session),
/// `/tmp/kq-$UID/kq.sock`, in a directory kqd creates with mode 0700.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("kq").join("kq.sock"),
        None => PathBuf::from(format!("/tmp/kq-{}", uid())).join("kq.sock"),
    }
}

/// `$XDG_STATE_HOME/kq`, else `~/.local/state/kq`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("kq");
    }
    home().join(".local/state/kq")
}

/// `$XDG_CONFIG_HOME/kq/config.toml`, else `~/.config/kq/config.toml`.
pub fn default_config_file() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("kq/config.toml");
    }
    home().join(".config/kq/config.toml")
}

/// The user's home directory.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
