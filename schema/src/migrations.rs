//! Versioned DuckDB migrations. Each is applied once, in order, and recorded in `kq_meta`;
//! a database written by a newer kq is refused rather than guessed at.

use crate::catalog::Table;

/// One schema migration.
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    /// The SQL to run, built from the catalog as it stood for this version.
    pub sql: fn() -> String,
    /// Rows already stored lack what this migration adds (a column, or the `objects` row of
    /// a typed object), so the next list must rewrite them. A new view, or a table no stored
    /// row feeds, outdates nothing.
    pub outdates_rows: bool,
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 21;

/// Every migration, oldest first.
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "contexts, namespaces, nodes, pods and containers",
        sql: v1,
        outdates_rows: true,
    },
    Migration {
        version: 2,
        description: "workloads, services, config, events, change history and cluster identity",
        sql: v2,
        outdates_rows: true,
    },
    Migration {
        version: 3,
        description: "objects: every resource, built-in and custom, as JSON",
        sql: v3,
        outdates_rows: true,
    },
    Migration {
        version: 4,
        description: "pod_controllers: owner chains as a view",
        sql: v4,
        outdates_rows: false,
    },
    Migration {
        version: 5,
        description: "resources: per-context sync state of every resource",
        sql: v5,
        outdates_rows: true,
    },
    Migration {
        version: 6,
        description: "networking, storage and access-control tables",
        sql: v6,
        outdates_rows: true,
    },
    Migration {
        version: 7,
        description: "endpoints, autoscalers, disruption budgets and CRDs",
        sql: v7,
        outdates_rows: true,
    },
    Migration {
        version: 8,
        description: "incidents",
        sql: v8,
        outdates_rows: false,
    },
    Migration {
        version: 9,
        description: "contexts.config_error: a broken kubeconfig file, per context",
        sql: v9,
        outdates_rows: true,
    },
    Migration {
        version: 10,
        description: "status: per-context state, sync progress and last change, as a view",
        sql: v10,
        outdates_rows: false,
    },
    Migration {
        version: 11,
        description: "images: sizes of every image pods use, and containers.image_ref",
        sql: v11,
        outdates_rows: true,
    },
    Migration {
        version: 12,
        description: "registries: what kqd has asked each registry, and its problems",
        sql: v12,
        outdates_rows: false,
    },
    Migration {
        version: 13,
        description: "status: why writes fail, and a kqd row for notices about kqd itself",
        sql: v13,
        outdates_rows: false,
    },
    Migration {
        version: 14,
        description: "the PostgreSQL mirror: changes.seq, its outbox, and its row in status",
        sql: v14,
        outdates_rows: false,
    },
    Migration {
        version: 15,
        description: "field-level history: changes.diff and changes.spec_changed",
        sql: v15,
        outdates_rows: false,
    },
    Migration {
        version: 16,
        description: "incident_changes: the changes behind each incident, as a view",
        sql: v16,
        outdates_rows: false,
    },
    Migration {
        version: 17,
        description: "incidents.last_log: the crashed container's last log lines",
        sql: v17,
        outdates_rows: false,
    },
    Migration {
        version: 18,
        description: "kq_mirror_outbox.h: each entry's key hash, which the writer joins on",
        sql: v18,
        outdates_rows: false,
    },
    Migration {
        version: 19,
        description: "kq_mirror_outbox.children: whether an entry's child rows changed too",
        sql: v19,
        outdates_rows: false,
    },
    Migration {
        version: 20,
        description: "object_key: the key the writer finds an object's rows by, in every inventory table",
        sql: v20,
        outdates_rows: false,
    },
    Migration {
        version: 21,
        description: "a Secret's kubectl last-applied-configuration annotation hidden in stored rows",
        sql: v21,
        outdates_rows: false,
    },
];

/// Creates the named catalog tables. A migration names its tables so that later catalog
/// additions never change what an old migration did. A column added to an existing table
/// goes at the end of its catalog entry (rows are written in catalog order, and ALTER
/// appends) and gets its own migration (`ALTER TABLE … ADD COLUMN IF NOT EXISTS`), which is a
/// no-op on a database that an earlier migration created with the column already.
fn create_tables(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            create_table_sql(crate::catalog::table(n).expect("migrations name catalog tables"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tables v20 gives `object_key`: every inventory table and `containers` (whose key is
/// its pod's), named so that a table a later migration creates is not altered here.
const V20_KEYED: &[&str] = &[
    "namespaces",
    "nodes",
    "pods",
    "containers",
    "deployments",
    "replicasets",
    "statefulsets",
    "daemonsets",
    "jobs",
    "cronjobs",
    "services",
    "configmaps",
    "secrets",
    "events",
    "ingresses",
    "networkpolicies",
    "persistentvolumes",
    "persistentvolumeclaims",
    "storageclasses",
    "serviceaccounts",
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
    "endpoints",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "objects",
];

fn v21() -> String {
    // `kubectl apply` keeps the manifest it applied in this annotation, so a Secret's holds
    // its values. The writer now stores "(hidden)" in its place; rows stored before are
    // rewritten here rather than at the next list, which a context that is never reachable
    // again would never give. Their resourceVersions stay, so the mirror's comparison would
    // not see the change: each gets an outbox entry, which the mirror sends (and a kqd
    // without the mirror drops at start). The entries' key hashes are filled in by the
    // writer when it opens the file, as for v18.
    let annotation = "kubectl.kubernetes.io/last-applied-configuration";
    let hidden = format!("json_object('{annotation}', '(hidden)')");
    let owe = |tbl: &str, from: &str| {
        format!(
            "INSERT INTO kq_mirror_outbox (tbl, context, key, seq, dirty_at)
             SELECT '{tbl}', t.context, t.uid,
                    (SELECT coalesce(max(seq), 0) FROM kq_mirror_outbox) + row_number() OVER (), now()
             FROM {from}
               AND NOT EXISTS (SELECT 1 FROM kq_mirror_outbox o
                               WHERE o.tbl = '{tbl}' AND o.context = t.context AND o.key = t.uid);\n"
        )
    };
    let mut sql = owe(
        "secrets",
        &format!(
            "secrets t WHERE t.uid IS NOT NULL AND json_exists(t.annotations, '$.\"{annotation}\"')"
        ),
    );
    // A Secret watched only as an object (`kinds` without `secrets`).
    sql.push_str(&owe(
        "objects",
        &format!(
            "objects t WHERE t.uid IS NOT NULL AND t.api_group = '' AND t.kind = 'Secret'
               AND json_exists(t.object, '$.metadata.annotations.\"{annotation}\"')
               AND NOT EXISTS (SELECT 1 FROM secrets s WHERE s.context = t.context AND s.uid = t.uid)"
        ),
    ));
    sql + &format!(
        "UPDATE secrets SET annotations = json_merge_patch(annotations, {hidden})
         WHERE json_exists(annotations, '$.\"{annotation}\"');
         UPDATE objects SET object = json_merge_patch(object,
           json_object('metadata', json_object('annotations', {hidden})))
         WHERE api_group = '' AND kind = 'Secret'
           AND json_exists(object, '$.metadata.annotations.\"{annotation}\"');"
    )
}

fn v20() -> String {
    // Rows stored before get the key the writer would compute.
    let mut sql = String::new();
    for t in V20_KEYED {
        let uid = if *t == "containers" { "pod_uid" } else { "uid" };
        sql.push_str(&format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS object_key UBIGINT;\nUPDATE {t} SET object_key = {} WHERE object_key IS NULL;\n",
            crate::object_key_sql("context", uid),
        ));
    }
    sql
}

fn v19() -> String {
    // Entries recorded before keep NULL, which the mirror reads as "changed": it sends their
    // child rows, as it always did.
    "ALTER TABLE kq_mirror_outbox ADD COLUMN IF NOT EXISTS children BOOLEAN;".to_string()
}

fn v18() -> String {
    // Entries recorded before keep NULL until the writer, which computes the hash, fills
    // it in when it opens the file.
    "ALTER TABLE kq_mirror_outbox ADD COLUMN IF NOT EXISTS h HUGEINT;".to_string()
}

fn v17() -> String {
    // Incidents recorded before keep NULL: their logs were never fetched.
    "ALTER TABLE incidents ADD COLUMN IF NOT EXISTS last_log VARCHAR;".to_string()
}

fn v16() -> String {
    create_tables(&["incident_changes"])
}

fn v15() -> String {
    // Changes recorded before keep NULL: kq never knew what they changed.
    "ALTER TABLE changes ADD COLUMN IF NOT EXISTS diff JSON;
     ALTER TABLE changes ADD COLUMN IF NOT EXISTS spec_changed BOOLEAN;"
        .to_string()
}

fn v14() -> String {
    // Changes recorded before get numbers in the order they are stored; new ones continue
    // from the highest. The outbox names what the mirror still owes PostgreSQL: one row per
    // object, incident or whole table (`key` '*'), however often it changed.
    let mut sql = "ALTER TABLE changes ADD COLUMN IF NOT EXISTS seq BIGINT;
UPDATE changes SET seq = rowid + 1 WHERE seq IS NULL;
CREATE TABLE IF NOT EXISTS kq_mirror_outbox (tbl VARCHAR, context VARCHAR, key VARCHAR, seq BIGINT, dirty_at TIMESTAMPTZ);
"
    .to_string();
    sql.push_str(&create_tables(&["mirror", "status"]));
    sql
}

// The `status` view is created by the newest migration that changes it (v14): its
// definition is the catalog's current one, which reads tables older migrations do not have.
fn v13() -> String {
    String::new()
}

fn v12() -> String {
    create_tables(&["registries"])
}

fn v11() -> String {
    let mut sql =
        "ALTER TABLE containers ADD COLUMN IF NOT EXISTS image_ref VARCHAR;\n".to_string();
    sql.push_str(&create_tables(&[
        "images",
        "image_refs",
        "container_images",
    ]));
    sql
}

fn v10() -> String {
    String::new()
}

fn v9() -> String {
    "ALTER TABLE contexts ADD COLUMN IF NOT EXISTS config_error VARCHAR;".to_string()
}

fn v8() -> String {
    create_tables(&["incidents"])
}

fn v7() -> String {
    create_tables(&[
        "endpoints",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
        "crds",
    ])
}

fn v6() -> String {
    create_tables(&[
        "ingresses",
        "networkpolicies",
        "persistentvolumes",
        "persistentvolumeclaims",
        "storageclasses",
        "serviceaccounts",
        "roles",
        "clusterroles",
        "rolebindings",
        "clusterrolebindings",
    ])
}

fn v5() -> String {
    create_tables(&["resources"])
}

fn v4() -> String {
    create_tables(&["pod_controllers"])
}

fn v3() -> String {
    create_tables(&["objects"])
}

fn v2() -> String {
    let mut sql = create_tables(&[
        "deployments",
        "replicasets",
        "statefulsets",
        "daemonsets",
        "jobs",
        "cronjobs",
        "services",
        "configmaps",
        "secrets",
        "events",
        "changes",
    ]);
    sql.push_str("ALTER TABLE contexts ADD COLUMN IF NOT EXISTS cluster_id VARCHAR;\n");
    // Arithmetic on TIMESTAMPTZ (`now() - INTERVAL 1 HOUR`) lives in DuckDB's ICU extension,
    // which the bundled build cannot include; `ago(INTERVAL 1 HOUR)` does it in UTC instead.
    sql.push_str("CREATE OR REPLACE MACRO ago(i) AS (now()::TIMESTAMP - i)::TIMESTAMPTZ;\n");
    sql
}

fn v1() -> String {
    create_tables(&["contexts", "namespaces", "nodes", "pods", "containers"])
}

/// `CREATE TABLE` for a catalog table, with its descriptions as DuckDB comments so that
/// `duckdb_columns()` shows them too.
pub fn create_table_sql(t: &Table) -> String {
    if let Some(query) = t.view {
        return format!(
            "CREATE OR REPLACE VIEW {} AS {query};\nCOMMENT ON VIEW {} IS '{}';\n",
            t.name,
            t.name,
            t.description.replace('\'', "''")
        );
    }
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| match c.compression {
            Some(method) => format!(
                "  {} {} USING COMPRESSION {method}",
                quote(c.name),
                c.sql_type
            ),
            None => format!("  {} {}", quote(c.name), c.sql_type),
        })
        .collect();
    let mut sql = format!("CREATE TABLE {} (\n{}\n);\n", t.name, cols.join(",\n"));
    sql.push_str(&format!(
        "COMMENT ON TABLE {} IS '{}';\n",
        t.name,
        t.description.replace('\'', "''")
    ));
    for c in &t.columns {
        sql.push_str(&format!(
            "COMMENT ON COLUMN {}.{} IS '{}';\n",
            t.name,
            quote(c.name),
            c.description.replace('\'', "''")
        ));
    }
    sql
}

fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.last().unwrap().version, SCHEMA_VERSION);
    }

    #[test]
    fn migrations_create_every_catalog_table() {
        let sql: String = MIGRATIONS.iter().map(|m| (m.sql)()).collect();
        for t in crate::CATALOG.iter() {
            assert!(
                sql.contains(&format!("CREATE TABLE {} (", t.name))
                    || sql.contains(&format!("VIEW {} AS", t.name)),
                "no migration creates {}",
                t.name
            );
        }
    }

    #[test]
    fn v20_keys_exactly_the_tables_that_have_object_key() {
        let mut keyed: Vec<&str> = crate::CATALOG
            .iter()
            .filter(|t| t.view.is_none() && t.columns.iter().any(|c| c.name == "object_key"))
            .map(|t| t.name)
            .collect();
        let mut named = V20_KEYED.to_vec();
        keyed.sort();
        named.sort();
        assert_eq!(keyed, named);
    }

    #[test]
    fn every_table_has_unique_documented_columns() {
        for t in crate::CATALOG.iter() {
            let mut names: Vec<_> = t.columns.iter().map(|c| c.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(
                names.len(),
                t.columns.len(),
                "duplicate column in {}",
                t.name
            );
            assert!(t.columns.iter().all(|c| !c.description.is_empty()));
        }
    }
}
