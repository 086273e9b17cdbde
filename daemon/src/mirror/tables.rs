//! Which tables the mirror keeps in PostgreSQL, how each is keyed there, and the DDL that
//! kq-schema's catalog gives for it.

use std::sync::LazyLock;

use kq_schema::Table;

use crate::rows::Kind;

/// How a table's rows travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Rows owed one key at a time: an object's rows (`unit` is `uid`, or `pod_uid` for a
    /// pod's containers) or an incident's (`id`). `versioned`: the rows carry the object's
    /// `resource_version`, so comparing (key, version) pairs finds what differs.
    Keyed { unit: &'static str, versioned: bool },
    /// A small table (contexts, resources, images…) sent whole when it changed.
    Whole,
    /// `changes`: append-only, followed by `seq`.
    Changes,
}

/// One mirrored table.
#[derive(Debug)]
pub struct Mirrored {
    pub table: &'static Table,
    pub shape: Shape,
    /// Its primary key in PostgreSQL, after `instance`.
    pub key: &'static [&'static str],
    /// It has contexts but no `cluster_id` of its own: the mirror adds the column.
    pub adds_cluster_id: bool,
}

impl Mirrored {
    pub fn name(&self) -> &'static str {
        self.table.name
    }

    /// Whether it has a `context` column (every table but the image and registry ones).
    pub fn has_context(&self) -> bool {
        self.column("context").is_some()
    }

    /// A keyed table's unit column (`uid`, `pod_uid`, `id`) and its position in the
    /// catalog's column order.
    pub fn unit(&self) -> Option<(&'static str, usize)> {
        let Shape::Keyed { unit, .. } = self.shape else {
            return None;
        };
        Some((unit, self.position(unit)?))
    }

    /// Where a column is in the catalog's column order (the order DuckDB's batches have).
    pub fn position(&self, name: &str) -> Option<usize> {
        self.table.columns.iter().position(|c| c.name == name)
    }

    pub fn column(&self, name: &str) -> Option<&'static kq_schema::Column> {
        self.table.columns.iter().find(|c| c.name == name)
    }

    /// The rows carry their object's resourceVersion.
    pub fn versioned(&self) -> bool {
        matches!(
            self.shape,
            Shape::Keyed {
                versioned: true,
                ..
            }
        )
    }

    /// The columns staged for PostgreSQL, in order: the added `cluster_id`, then the
    /// catalog's.
    pub fn staged_columns(&self) -> Vec<(&'static str, &'static str)> {
        let mut v = Vec::with_capacity(self.table.columns.len() + 1);
        if self.adds_cluster_id {
            v.push(("cluster_id", "VARCHAR"));
        }
        v.extend(self.table.columns.iter().map(|c| (c.name, c.sql_type)));
        v
    }

    /// The tables an owed row of this table reaches: its own, its children's, and (for a
    /// typed kind) its `objects` row when those are mirrored.
    pub fn targets(&'static self, objects: bool) -> Vec<&'static Mirrored> {
        let mut v = vec![self];
        if let Some(kind) = Kind::ALL.iter().find(|k| k.table() == self.name()) {
            if let Some((child, _)) = kind.child() {
                v.extend(get(child));
            }
            if *kind != Kind::Objects && objects {
                v.extend(get("objects"));
            }
        }
        if self.name() == "objects" && !objects {
            v.clear();
        }
        v
    }

    /// Children are sent with their parent and compared through it.
    pub fn is_child(&self) -> bool {
        Kind::ALL
            .iter()
            .any(|k| k.child().is_some_and(|(c, _)| c == self.name()))
    }
}

/// Every mirrored table, in catalog order.
pub fn all() -> &'static [Mirrored] {
    static ALL: LazyLock<Vec<Mirrored>> = LazyLock::new(|| {
        kq_schema::CATALOG
            .iter()
            .filter(|t| t.view.is_none() && t.name != "mirror")
            .map(|t| {
                let (shape, key): (Shape, &'static [&'static str]) = match t.name {
                    "contexts" => (Shape::Whole, &["name"]),
                    "resources" => (Shape::Whole, &["context", "api_group", "resource"]),
                    "images" => (Shape::Whole, &["image"]),
                    "image_refs" => (Shape::Whole, &["ref"]),
                    "registries" => (Shape::Whole, &["registry"]),
                    "changes" => (Shape::Changes, &["seq"]),
                    "incidents" => (
                        Shape::Keyed {
                            unit: "id",
                            versioned: false,
                        },
                        &["id"],
                    ),
                    "containers" => (
                        Shape::Keyed {
                            unit: "pod_uid",
                            versioned: false,
                        },
                        &["context", "pod_uid", "kind", "name"],
                    ),
                    // One object may be served under two resources (events and
                    // events.k8s.io): the resource is part of its key.
                    "objects" => (
                        Shape::Keyed {
                            unit: "uid",
                            versioned: true,
                        },
                        &["context", "api_group", "resource", "uid"],
                    ),
                    name => {
                        let has = |c: &str| t.columns.iter().any(|x| x.name == c);
                        assert!(
                            has("context") && has("uid") && has("resource_version"),
                            "{name}: the mirror does not know how to key this table"
                        );
                        (
                            Shape::Keyed {
                                unit: "uid",
                                versioned: true,
                            },
                            &["context", "uid"],
                        )
                    }
                };
                let has = |c: &str| t.columns.iter().any(|x| x.name == c);
                // The columns kq keeps to itself stay in DuckDB (`Column::mirrored`). The
                // copy lives as long as the process, like the catalog it is taken from.
                let table: &'static Table = if t.columns.iter().all(|c| c.mirrored) {
                    t
                } else {
                    Box::leak(Box::new(Table {
                        columns: t.columns.iter().copied().filter(|c| c.mirrored).collect(),
                        ..t.clone()
                    }))
                };
                Mirrored {
                    table,
                    shape,
                    key,
                    adds_cluster_id: has("context") && !has("cluster_id"),
                }
            })
            .collect()
    });
    &ALL
}

pub fn get(name: &str) -> Option<&'static Mirrored> {
    all().iter().find(|m| m.name() == name)
}

/// PostgreSQL's type for a catalog type.
pub fn pg_type(sql_type: &str) -> &'static str {
    match sql_type {
        "VARCHAR" => "text",
        "JSON" => "jsonb",
        "INTEGER" => "integer",
        "BIGINT" => "bigint",
        "TIMESTAMPTZ" => "timestamptz",
        "BOOLEAN" => "boolean",
        "DOUBLE" => "double precision",
        other => panic!("no PostgreSQL type for the catalog type {other}"),
    }
}

/// An identifier, quoted for PostgreSQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal for PostgreSQL (standard_conforming_strings, the default since 9.1).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The DDL that brings one table up to date: created when missing, every catalog column
/// added when missing (so a newer kqd only ever adds), comments from the catalog, and for
/// object tables a `<table>_current` view with each object once even when several kqd
/// instances watch its cluster.
pub fn ddl(m: &Mirrored, schema: &str) -> String {
    let s = ident(schema);
    let t = format!("{s}.{}", ident(m.name()));
    let mut cols = vec!["instance text NOT NULL".to_string()];
    if m.adds_cluster_id {
        cols.push("cluster_id text".into());
    }
    for c in &m.table.columns {
        let not_null = if m.key.contains(&c.name) {
            " NOT NULL"
        } else {
            ""
        };
        cols.push(format!(
            "{} {}{not_null}",
            ident(c.name),
            pg_type(c.sql_type)
        ));
    }
    cols.push("mirrored_at timestamptz NOT NULL DEFAULT now()".into());
    let key: Vec<String> = std::iter::once("instance".to_string())
        .chain(m.key.iter().map(|k| ident(k)))
        .collect();
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n  {},\n  PRIMARY KEY ({})\n);\n",
        cols.join(",\n  "),
        key.join(", ")
    );
    for c in &m.table.columns {
        sql.push_str(&format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} {};\n",
            ident(c.name),
            pg_type(c.sql_type)
        ));
    }
    sql.push_str(&format!(
        "COMMENT ON TABLE {t} IS {};\n",
        literal(&format!(
            "{} Mirrored by kqd: instance is the kqd that wrote the row.",
            m.table.description
        ))
    ));
    for c in &m.table.columns {
        sql.push_str(&format!(
            "COMMENT ON COLUMN {t}.{} IS {};\n",
            ident(c.name),
            literal(c.description)
        ));
    }
    sql.push_str(&format!(
        "COMMENT ON COLUMN {t}.instance IS 'The kqd instance that mirrored the row (mirror_instances).';\n"
    ));
    if m.adds_cluster_id {
        sql.push_str(&format!(
            "COMMENT ON COLUMN {t}.cluster_id IS 'The context''s cluster_id (its kube-system namespace uid): the same cluster under any context or instance.';\n"
        ));
    }
    // The mirror deletes an owed object's rows by (instance, context, unit); where the
    // primary key does not start so (`objects` has the resource before the uid), an index
    // does.
    if let Shape::Keyed { unit, .. } = m.shape
        && m.has_context()
        && m.key.get(..2) != Some(&["context", unit][..])
        && unit != "id"
    {
        sql.push_str(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (instance, context, {});\n",
            ident(&format!("{}_by_{unit}", m.name())),
            ident(unit)
        ));
    }
    if let Shape::Keyed { unit, .. } = m.shape
        && m.has_context()
        && unit != "id"
    {
        // The same cluster seen by several instances (or contexts) is one cluster: each
        // object once, as the most recently mirrored copy has it.
        let same: Vec<String> =
            std::iter::once("coalesce(cluster_id, instance || '/' || context)".to_string())
                .chain(m.key.iter().filter(|k| **k != "context").map(|k| ident(k)))
                .collect();
        let same = same.join(", ");
        sql.push_str(&format!(
            "CREATE OR REPLACE VIEW {s}.{} AS SELECT DISTINCT ON ({same}) * FROM {t} ORDER BY {same}, mirrored_at DESC;\n",
            ident(&format!("{}_current", m.name()))
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_table_is_mirrored_with_a_key_it_has() {
        assert!(get("mirror").is_none(), "the mirror's own row stays local");
        for t in kq_schema::CATALOG
            .iter()
            .filter(|t| t.view.is_none() && t.name != "mirror")
        {
            let m = get(t.name).unwrap_or_else(|| panic!("{} is not mirrored", t.name));
            for k in m.key {
                assert!(m.column(k).is_some(), "{}: no key column {k}", t.name);
            }
            if let Shape::Keyed { unit, .. } = m.shape {
                assert!(m.column(unit).is_some());
            }
            // Every column the mirror sends has a PostgreSQL type; the others stay behind.
            for c in &t.columns {
                if c.mirrored {
                    pg_type(c.sql_type);
                }
                assert_eq!(
                    m.column(c.name).is_some(),
                    c.mirrored,
                    "{}.{}",
                    t.name,
                    c.name
                );
            }
        }
        assert_eq!(
            get("pods")
                .unwrap()
                .targets(true)
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>(),
            ["pods", "containers", "objects"]
        );
        assert!(get("objects").unwrap().targets(false).is_empty());
    }
}
