//! The README's table reference, rendered from the catalog so the two cannot drift apart.

use crate::catalog::CATALOG;

/// Markers around the generated block in README.md.
pub const BEGIN: &str = "<!-- tables:begin (generated from schema/src/catalog.rs; KQ_BLESS=1 cargo test -p kq-schema rewrites it) -->";
pub const END: &str = "<!-- tables:end -->";

/// The table reference as Markdown.
pub fn markdown() -> String {
    let mut out = String::new();
    for t in CATALOG.iter() {
        out.push_str(&format!(
            "\n### `{}`\n\n{}\n\n| column | type | description |\n|---|---|---|\n",
            t.name, t.description
        ));
        for c in &t.columns {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                c.name,
                c.sql_type,
                c.description.replace('|', "\\|")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_table_reference_matches_the_catalog() {
        // Read at run time: a test binary built in another checkout sharing the target
        // directory would otherwise read that checkout's README.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        let path = format!("{dir}/../README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md is at the repository root");
        let start = readme
            .find(BEGIN)
            .expect("README has the tables:begin marker")
            + BEGIN.len();
        let end = readme.find(END).expect("README has the tables:end marker");
        let want = format!("\n{}\n", markdown().trim());
        if readme[start..end] != want {
            if std::env::var_os("KQ_BLESS").is_some() {
                let fixed = format!("{}{}{}", &readme[..start], want, &readme[end..]);
                std::fs::write(path, fixed).expect("README.md is writable");
                return;
            }
            panic!(
                "README.md's table reference is out of date; run KQ_BLESS=1 cargo test -p kq-schema"
            );
        }
    }
}
