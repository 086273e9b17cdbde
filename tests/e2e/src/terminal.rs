//! A real terminal for the shell tests: `kq` runs in a tmux session of a fixed size, keys
//! are sent as a person types them, and assertions read the screen tmux renders.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A tmux server of its own (so tests never share one) running one program.
pub struct Terminal {
    server: String,
    /// Prompts seen so far, to tell a new prompt from the one before a command.
    prompts: usize,
}

impl Terminal {
    /// Starts `program` with `args` in a `width` × `height` terminal, with `env` set.
    pub fn start(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        width: u16,
        height: u16,
    ) -> Terminal {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let server = format!(
            "kq-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &server, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.arg("--").arg(program).args(args);
        let out = cmd.output().expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Terminal { server, prompts: 0 }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.server])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Types `text` literally. A `;` is sent by its code, since tmux would read an
    /// argument ending in one as a command separator.
    pub fn type_text(&self, text: &str) {
        for (k, part) in text.split(';').enumerate() {
            if k > 0 {
                self.tmux(&["send-keys", "-t", "0", "-H", "3b"]);
            }
            if !part.is_empty() {
                self.tmux(&["send-keys", "-t", "0", "-l", part]);
            }
        }
    }

    /// Presses a key by its tmux name: `Enter`, `Tab`, `C-c`, `C-d`.
    pub fn press(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "0", key]);
    }

    /// Types a line and presses Enter.
    pub fn line(&self, text: &str) {
        self.type_text(text);
        self.press("Enter");
    }

    /// Everything the terminal has shown, its scrollback included, wrapped lines joined
    /// (so a line wider than the terminal shows as one long line), trailing blanks trimmed.
    pub fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "0"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_string()
    }

    /// Waits until the screen satisfies `cond`, and returns it; panics with the screen
    /// after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if cond(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the next prompt, with nothing typed after it, and returns the screen.
    pub async fn wait_prompt(&mut self) -> String {
        let want = self.prompts + 1;
        let s = self
            .wait_for("the next prompt", Duration::from_secs(20), |s| {
                s.lines().filter(|l| l.starts_with("kq>")).count() >= want
                    && s.lines().last().is_some_and(|l| l == "kq>")
            })
            .await;
        self.prompts = s.lines().filter(|l| l.starts_with("kq>")).count();
        s
    }

    /// Types a line, presses Enter, and waits for the prompt after its output; returns
    /// what it printed (the lines after the input line, the new prompt left out).
    pub async fn run(&mut self, text: &str) -> String {
        self.line(text);
        let s = self.wait_prompt().await;
        let lines: Vec<&str> = s.lines().collect();
        let input = lines
            .iter()
            .rposition(|l| l.starts_with("kq> "))
            .expect("the input line is on the screen");
        lines[input + 1..lines.len() - 1].join("\n")
    }

    /// Whether the program still runs.
    pub fn alive(&self) -> bool {
        let out = self.tmux(&["list-panes", "-t", "0", "-F", "#{pane_dead}"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0"
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}
