//! `kqd install` and `kqd uninstall`: the systemd user units (the ones in `systemd/`,
//! with `ExecStart` pointing at the running binary) written to the user's unit directory,
//! then `systemctl --user daemon-reload` and `enable --now kqd.socket`. `--dry-run` prints
//! what would be written and run, and changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The units as the repository ships them.
const SERVICE: &str = include_str!("../../systemd/kqd.service");
const SOCKET: &str = include_str!("../../systemd/kqd.socket");
/// The ExecStart the shipped service names, replaced with the installed binary.
const SHIPPED_EXEC: &str = "ExecStart=%h/.local/bin/kqd";

/// What went wrong installing, naming the file or command.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot tell where this kqd binary is: {0}")]
    Exe(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {reason}")]
    Systemctl { command: String, reason: String },
}

/// Where and how to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The systemd user unit directory; default `$XDG_CONFIG_HOME/systemd/user`.
    pub unit_dir: PathBuf,
    /// Print, change nothing.
    pub dry_run: bool,
    /// Write the units but leave systemctl alone (no user manager, or a package build).
    pub no_enable: bool,
}

impl InstallOptions {
    /// The default unit directory: `$XDG_CONFIG_HOME/systemd/user`, else
    /// `~/.config/systemd/user`.
    pub fn default_unit_dir() -> PathBuf {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| kq_schema::paths::home().join(".config"));
        config.join("systemd/user")
    }
}

/// The service unit for a kqd binary at `exe`.
pub fn service_unit(exe: &Path) -> String {
    let exe = exe.display().to_string();
    // systemd splits ExecStart on whitespace unless the path is quoted.
    let exe = if exe.contains(char::is_whitespace) {
        format!("\"{exe}\"")
    } else {
        exe
    };
    SERVICE.replace(SHIPPED_EXEC, &format!("ExecStart={exe}"))
}

/// The socket unit.
pub fn socket_unit() -> &'static str {
    SOCKET
}

/// The running binary's absolute path, links resolved.
fn current_exe() -> Result<PathBuf, InstallError> {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(InstallError::Exe)
}

/// Installs the units; reports each step on `out`.
pub fn install(opts: &InstallOptions, out: &mut dyn Write) -> Result<(), InstallError> {
    let exe = current_exe()?;
    let files = [
        (opts.unit_dir.join("kqd.service"), service_unit(&exe)),
        (opts.unit_dir.join("kqd.socket"), socket_unit().to_string()),
    ];
    for (path, text) in &files {
        if opts.dry_run {
            let _ = writeln!(out, "would write {}:\n{text}", path.display());
            continue;
        }
        std::fs::create_dir_all(&opts.unit_dir)
            .and_then(|_| std::fs::write(path, text))
            .map_err(|source| InstallError::Write {
                path: path.clone(),
                source,
            })?;
        let _ = writeln!(out, "wrote {}", path.display());
    }
    systemctl(
        opts,
        &[&["daemon-reload"], &["enable", "--now", "kqd.socket"]],
        out,
    )?;
    if !opts.dry_run && !opts.no_enable {
        let _ = writeln!(
            out,
            "kqd starts on the first connection to its socket: try `kq status`"
        );
    }
    Ok(())
}

/// Stops and disables kqd, and removes the units.
pub fn uninstall(opts: &InstallOptions, out: &mut dyn Write) -> Result<(), InstallError> {
    systemctl(
        opts,
        &[&["disable", "--now", "kqd.socket", "kqd.service"]],
        out,
    )?;
    for name in ["kqd.service", "kqd.socket"] {
        let path = opts.unit_dir.join(name);
        if opts.dry_run {
            let _ = writeln!(out, "would remove {}", path.display());
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = writeln!(out, "removed {}", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(InstallError::Remove { path, source }),
        }
    }
    systemctl(opts, &[&["daemon-reload"]], out)
}

/// Runs (or, dry, prints) `systemctl --user` with each argument list in turn.
fn systemctl(
    opts: &InstallOptions,
    calls: &[&[&str]],
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    for args in calls {
        let command = format!("systemctl --user {}", args.join(" "));
        if opts.dry_run {
            let _ = writeln!(out, "would run {command}");
            continue;
        }
        if opts.no_enable {
            let _ = writeln!(out, "to finish: {command}");
            continue;
        }
        let result = Command::new("systemctl").arg("--user").args(*args).output();
        match result {
            Ok(o) if o.status.success() => {
                let _ = writeln!(out, "ran {command}");
            }
            Ok(o) => {
                return Err(InstallError::Systemctl {
                    command,
                    reason: String::from_utf8_lossy(&o.stderr).trim().to_string(),
                });
            }
            Err(e) => {
                return Err(InstallError::Systemctl {
                    command,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_runs_the_given_binary() {
        let unit = service_unit(Path::new("/opt/kq/bin/kqd"));
        assert!(unit.contains("\nExecStart=/opt/kq/bin/kqd\n"), "{unit}");
        assert!(!unit.contains("%h/.local/bin/kqd"));
        let spaced = service_unit(Path::new("/home/a b/kqd"));
        assert!(spaced.contains("ExecStart=\"/home/a b/kqd\""), "{spaced}");
    }

    #[test]
    fn a_dry_run_changes_nothing_and_says_what_it_would_do() {
        let dir = tempfile::tempdir().unwrap();
        let unit_dir = dir.path().join("units");
        let opts = InstallOptions {
            unit_dir: unit_dir.clone(),
            dry_run: true,
            no_enable: false,
        };
        let mut out = Vec::new();
        install(&opts, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!unit_dir.exists());
        assert!(
            out.contains("would run systemctl --user enable --now kqd.socket"),
            "{out}"
        );
        let exe = std::env::current_exe().unwrap().canonicalize().unwrap();
        assert!(
            out.contains(&format!("ExecStart={}", exe.display())),
            "{out}"
        );
    }

    #[test]
    fn install_then_uninstall_leaves_no_units() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InstallOptions {
            unit_dir: dir.path().join("units"),
            dry_run: false,
            no_enable: true,
        };
        install(&opts, &mut Vec::new()).unwrap();
        assert!(opts.unit_dir.join("kqd.service").exists());
        assert!(opts.unit_dir.join("kqd.socket").exists());
        uninstall(&opts, &mut Vec::new()).unwrap();
        assert!(!opts.unit_dir.join("kqd.service").exists());
        assert!(!opts.unit_dir.join("kqd.socket").exists());
    }
}
