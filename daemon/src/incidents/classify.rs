//! The exit-code table: what a container's exit code means and how bad it is.

/// Type, severity and signal name of a container that exited with `code`. `oom` says
/// whether there is evidence of an OOM kill (reason OOMKilled, or an out-of-memory message
/// with a memory limit); it only matters for 137, which also arrives with reason Error
/// when something else sent SIGKILL.
pub fn exit_code(code: i32, oom: bool) -> (&'static str, &'static str, Option<String>) {
    let (typ, severity) = match code {
        0 => ("graceful", "low"),
        1 => ("error", "medium"),
        2 => ("misuse", "medium"),
        125 => ("runtime_error", "high"),
        126 => ("not_executable", "high"),
        127 => ("command_not_found", "high"),
        128 => ("invalid_exit_argument", "medium"),
        130 => ("interrupted", "low"),
        137 if oom => ("oom_killed", "high"),
        137 => ("killed", "high"),
        143 => ("terminated", "medium"),
        c if c > 128 => ("signal", "medium"),
        _ => ("exited", "medium"),
    };
    let signal = (code > 128).then(|| signal_name(code - 128));
    (typ, severity, signal)
}

/// The Linux name of signal `n` (x86 and arm numbering), or `signal N`.
pub fn signal_name(n: i32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(n - 1)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("signal {n}"), |s| (*s).to_string())
}

/// Whether a termination looks like an OOM kill: the kubelet said OOMKilled, or the
/// message says the process ran out of memory while the container had a memory limit.
pub fn is_oom(reason: Option<&str>, message: Option<&str>, memory_limit: Option<i64>) -> bool {
    if reason == Some("OOMKilled") {
        return true;
    }
    let says_oom = message.is_some_and(|m| {
        let m = m.to_ascii_lowercase();
        m.contains("oom") || m.contains("out of memory")
    });
    says_oom && memory_limit.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the exit-code table.
    #[test]
    fn every_row_of_the_exit_code_table() {
        let rows: &[(i32, bool, &str, &str, Option<&str>)] = &[
            (0, false, "graceful", "low", None),
            (1, false, "error", "medium", None),
            (2, false, "misuse", "medium", None),
            (125, false, "runtime_error", "high", None),
            (126, false, "not_executable", "high", None),
            (127, false, "command_not_found", "high", None),
            (128, false, "invalid_exit_argument", "medium", None),
            (130, false, "interrupted", "low", Some("SIGINT")),
            (137, true, "oom_killed", "high", Some("SIGKILL")),
            (137, false, "killed", "high", Some("SIGKILL")),
            (143, false, "terminated", "medium", Some("SIGTERM")),
            (139, false, "signal", "medium", Some("SIGSEGV")),
            (134, false, "signal", "medium", Some("SIGABRT")),
            (129, false, "signal", "medium", Some("SIGHUP")),
            (200, false, "signal", "medium", Some("signal 72")),
            (3, false, "exited", "medium", None),
            (124, false, "exited", "medium", None),
            (-1, false, "exited", "medium", None),
        ];
        for (code, oom, typ, sev, sig) in rows {
            let got = exit_code(*code, *oom);
            assert_eq!(
                (got.0, got.1, got.2.as_deref()),
                (*typ, *sev, *sig),
                "exit code {code} (oom evidence: {oom})"
            );
            let t = kq_schema::incidents::incident_type(got.0).expect("a documented type");
            assert_eq!(t.severity, got.1, "{typ} keeps its documented severity");
        }
    }

    #[test]
    fn exit_137_is_an_oom_kill_only_with_evidence() {
        assert!(is_oom(Some("OOMKilled"), None, None));
        assert!(!is_oom(Some("Error"), None, Some(256 << 20)));
        assert!(is_oom(
            Some("Error"),
            Some("Out of memory: Killed process 7"),
            Some(1)
        ));
        assert!(
            !is_oom(Some("Error"), Some("out of memory"), None),
            "no limit, no OOM claim"
        );
    }
}
