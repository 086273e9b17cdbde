//! kqd: watches every kubeconfig context into one DuckDB file and serves it read-only over
//! Arrow Flight SQL on a Unix socket. See ARCHITECTURE.md for how the parts fit.

pub mod clients;
pub mod config;
pub mod diff;
pub mod discover;
pub mod fleet;
pub mod flight;
pub mod images;
pub mod incidents;
pub mod install;
pub mod kubeconfig;
pub mod mirror;
pub mod notify;
pub mod private;
pub mod quantity;
pub mod query;
pub mod reload;
pub mod resource_watch;
pub mod rows;
pub mod socket;
pub mod store;
pub mod watch;

mod daemon;

pub use config::{Config, ConfigSource};
pub use daemon::{check_config, run};

/// An error and its causes on one line, as logs and the `contexts` table show them.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}
