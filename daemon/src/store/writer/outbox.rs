//! The writer's side of the mirror's outbox: what a transaction changed is recorded in it
//! before the transaction commits, and what PostgreSQL acknowledged leaves it.

use super::*;
use crate::store::outbox::{Owed, Read, key_hash};

/// Empties the outbox and the `mirror` row, when the mirror is off.
const DROP_OUTBOX: &str = "DELETE FROM main.kq_mirror_outbox; DELETE FROM main.mirror;";

/// What the current transaction owes the mirror, gathered as it runs.
#[derive(Default)]
pub(super) struct Outbox {
    /// The mirror is on: without it nothing is recorded and the outbox stays empty.
    pub(super) on: bool,
    /// Each entry, and whether the child rows of its object changed too: a modify that
    /// left a pod's containers as they were owes PostgreSQL only the pod's own rows.
    owed: HashMap<Owed, bool>,
    /// The last sequence number given to an entry.
    seq: i64,
    /// Told the last sequence number after each commit that recorded something, so that the
    /// mirror wakes.
    pub(super) committed: Option<tokio::sync::watch::Sender<i64>>,
    recorded: bool,
    /// Every table the transaction wrote, mirror or not, for commit followers (`.watch`).
    touched: BTreeSet<&'static str>,
    /// Told the tables of each commit that wrote any.
    pub(super) commits: Option<tokio::sync::broadcast::Sender<crate::store::Committed>>,
}

impl Outbox {
    /// Loads the last sequence number; without the mirror, empties what an earlier run
    /// left (turning the mirror on later compares every table anyway).
    pub(super) fn load(conn: &Connection, on: bool) -> Result<Outbox, StoreError> {
        if !on {
            conn.execute_batch(DROP_OUTBOX)?;
        }
        // Entries naming a table this kqd does not know (left by another version) could
        // never be sent or acknowledged; comparing every table at connect covers them.
        let known: Vec<String> = kq_schema::CATALOG
            .iter()
            .map(|t| format!("'{}'", t.name))
            .collect();
        conn.execute_batch(&format!(
            "DELETE FROM main.kq_mirror_outbox WHERE tbl NOT IN ({})",
            known.join(", ")
        ))?;
        hash_unhashed(conn)?;
        let seq: i64 = conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM main.kq_mirror_outbox",
            [],
            |r| r.get(0),
        )?;
        Ok(Outbox {
            on,
            seq,
            ..Default::default()
        })
    }

    /// An object's (or an incident's) rows changed; `children`: its child rows (a pod's
    /// containers) changed too, or went with it. Two changes of one object in a
    /// transaction owe what either owed.
    pub(super) fn row(
        &mut self,
        table: &'static str,
        context: &Arc<str>,
        key: &str,
        children: bool,
    ) {
        if self.on {
            let owed = Owed::Row {
                table,
                context: context.clone(),
                key: key.to_string(),
            };
            *self.owed.entry(owed).or_default() |= children;
        }
    }

    /// Objects of `table` changed (once per flush, not per object): their rows there, their
    /// `objects` and `changes` rows, and a pod's containers, for commit followers.
    pub(super) fn objects_written(&mut self, table: &'static str) {
        self.touched.extend([table, "objects", "changes"]);
        if table == "pods" {
            self.touched.insert("containers");
        }
    }

    /// Rows of a table changed in bulk, in one context or (`None`) anywhere.
    pub(super) fn part(&mut self, table: &'static str, context: Option<&str>) {
        self.touched.insert(table);
        if self.on {
            self.owed.insert(
                Owed::Part {
                    table,
                    context: context.map(Arc::from),
                },
                true,
            );
        }
    }

    /// Forgets what a rolled-back transaction gathered.
    pub(super) fn clear(&mut self) {
        self.owed.clear();
        self.touched.clear();
        self.recorded = false;
    }

    /// After a commit: tells commit followers which tables it wrote, and wakes the mirror
    /// when the transaction recorded something.
    pub(super) fn committed(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        if !touched.is_empty()
            && let Some(tx) = &self.commits
        {
            // No follower is fine: the send fails and nothing waits.
            let _ = tx.send(Arc::new(touched.into_iter().collect()));
        }
        if std::mem::take(&mut self.recorded)
            && let Some(tx) = &self.committed
        {
            tx.send_replace(self.seq);
        }
    }
}

/// Gives entries recorded before the outbox had `h` (schema version 17 and older) their
/// hash: once, when the writer opens the file, since only Rust computes it. One UPDATE
/// from a temporary table, which is atomic on its own.
fn hash_unhashed(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("SELECT DISTINCT tbl, context, key FROM main.kq_mirror_outbox WHERE h IS NULL")?;
    let unhashed: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    if unhashed.is_empty() {
        return Ok(());
    }
    conn.execute_batch(
        "CREATE OR REPLACE TEMP TABLE kq_rehash (tbl VARCHAR, context VARCHAR, key VARCHAR, h HUGEINT)",
    )?;
    {
        let mut app = conn.appender_to_catalog_and_db("kq_rehash", "temp", "main")?;
        for (table, context, key) in &unhashed {
            let h = Value::HugeInt(key_hash(table, context, key));
            app.append_row(duckdb::params![table, context, key, h])?;
        }
        app.flush()?;
    }
    conn.execute_batch(
        "UPDATE main.kq_mirror_outbox o SET h = r.h FROM temp.kq_rehash r
           WHERE o.h IS NULL AND o.tbl = r.tbl AND o.context = r.context AND o.key = r.key;
         DROP TABLE temp.kq_rehash;",
    )?;
    Ok(())
}

impl Writer {
    /// Records what the transaction owes the mirror (its gathered entries and the incidents
    /// the tracker wrote), each with a new sequence number. An entry already in the outbox
    /// gets the new number and keeps its first `dirty_at`, so the lag counts from the
    /// change PostgreSQL has waited for longest.
    pub(super) fn write_outbox(&mut self) -> Result<(), StoreError> {
        if !self.tracker.written().is_empty() {
            self.outbox.touched.insert("incidents");
        }
        if !self.outbox.on {
            return Ok(());
        }
        for row in self.tracker.written() {
            let context: Arc<str> = Arc::from(row.context.as_str());
            self.outbox.row("incidents", &context, &row.id, false);
        }
        if self.outbox.owed.is_empty() {
            return Ok(());
        }
        let now = now_micros();
        {
            let mut app = self.conn.appender_to_db("owed", "kq_stage")?;
            for (owed, children) in self.outbox.owed.drain() {
                self.outbox.seq += 1;
                let (table, context, key) = owed.columns();
                app.append_row(duckdb::params![
                    table,
                    context,
                    key,
                    self.outbox.seq,
                    Value::Timestamp(TimeUnit::Microsecond, now),
                    Value::HugeInt(owed.hash()),
                    children,
                ])?;
            }
            app.flush()?;
        }
        // An entry still owed keeps what it owed: its children changed in an earlier
        // transaction that PostgreSQL has not seen yet (NULL, from before the column,
        // counts as changed).
        self.conn.execute_batch(
            "UPDATE kq_stage.owed SET dirty_at = o.dirty_at,
                 children = owed.children OR coalesce(o.children, true)
               FROM main.kq_mirror_outbox o
               WHERE o.h = owed.h;
             DELETE FROM main.kq_mirror_outbox USING kq_stage.owed s
               WHERE kq_mirror_outbox.h = s.h;
             INSERT INTO main.kq_mirror_outbox SELECT * FROM kq_stage.owed;
             DELETE FROM kq_stage.owed;",
        )?;
        self.outbox.recorded = true;
        Ok(())
    }

    /// Turns the outbox on or off. Off, what it holds and the `mirror` row go: a mirror
    /// turned on later compares every table anyway.
    pub(super) fn mirror_on(&mut self, on: bool) -> Result<(), StoreError> {
        if !on {
            self.conn.execute_batch(DROP_OUTBOX)?;
        }
        self.outbox.on = on;
        Ok(())
    }

    /// PostgreSQL has these entries' rows: they leave the outbox, unless they changed
    /// again since the mirror read them (their sequence number moved on).
    pub(super) fn acknowledge(&mut self, read: &[Read]) -> Result<(), StoreError> {
        {
            let mut app = self.conn.appender_to_db("owed", "kq_stage")?;
            for r in read {
                let (table, context, key) = r.owed.columns();
                app.append_row(duckdb::params![
                    table,
                    context,
                    key,
                    r.seq,
                    Value::Null,
                    Value::HugeInt(r.owed.hash()),
                    Value::Null,
                ])?;
            }
            app.flush()?;
        }
        self.conn.execute_batch(
            "DELETE FROM main.kq_mirror_outbox USING kq_stage.owed s
               WHERE kq_mirror_outbox.h = s.h AND kq_mirror_outbox.seq = s.seq;
             DELETE FROM kq_stage.owed;",
        )?;
        Ok(())
    }

    /// Replaces the `mirror` row.
    pub(super) fn write_mirror_status(
        &mut self,
        s: &crate::store::MirrorStatus,
    ) -> Result<(), StoreError> {
        let ts = |t: Option<i64>| ts(t);
        let text = |t: &Option<String>| t.clone().map_or(Value::Null, Value::Text);
        let values = vec![
            Value::Text(s.state.to_string()),
            Value::Text(s.target.clone()),
            Value::Text(s.schema.clone()),
            Value::Text(s.instance.clone()),
            Value::Boolean(s.connected),
            Value::Double(s.lag_seconds),
            Value::BigInt(s.outbox),
            Value::BigInt(s.rows_mirrored),
            Value::Double(s.rows_per_s),
            ts(s.last_commit_at),
            ts(s.verified_at),
            Value::BigInt(s.mismatched),
            Value::BigInt(s.nul_replaced),
            Value::BigInt(s.set_aside),
            text(&s.last_error),
            ts(s.last_error_at),
            ts(Some(now_micros())),
        ];
        self.conn.execute("DELETE FROM main.mirror", [])?;
        let marks = vec!["?"; values.len()].join(", ");
        self.conn.execute(
            &format!("INSERT INTO main.mirror VALUES ({marks})"),
            params_from_iter(values.iter()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Fixture, count, fixture, pod, running};
    use super::*;
    use serde_json::json;

    fn owed(conn: &Connection) -> Vec<(String, String, String, i64)> {
        conn.prepare("SELECT tbl, context, key, seq FROM kq_mirror_outbox ORDER BY tbl, key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_outbox_holds_one_entry_per_object_however_often_it_changed() {
        let mut f = mirrored();
        f.writer.write_batch(vec![running("a")]);
        let first = owed(&f.other);
        let pod = first
            .iter()
            .find(|o| o.0 == "pods")
            .expect("the pod is owed");
        assert_eq!((pod.1.as_str(), pod.2.as_str()), ("test", "uid-a"));
        assert!(
            first
                .iter()
                .any(|o| o.0 == "resources" && o.1 == "*" && o.2 == "*"),
            "the resources table, which the writer empties at start, is owed whole: {first:?}"
        );
        // Changed ten more times: still one entry, with a newer number.
        for rv in 2..12 {
            f.writer.write_batch(vec![running_at("a", rv)]);
        }
        let later = owed(&f.other);
        let pods: Vec<_> = later.iter().filter(|o| o.0 == "pods").collect();
        assert_eq!(pods.len(), 1, "{later:?}");
        assert!(pods[0].3 > pod.3);

        // An acknowledgement of the old number leaves it; of the current one removes it.
        let read = |seq| Read {
            owed: Owed::Row {
                table: "pods",
                context: Arc::from("test"),
                key: "uid-a".into(),
            },
            seq,
            dirty_at: 0,
            children: true,
        };
        f.writer.acknowledge(&[read(pod.3)]).unwrap();
        assert_eq!(
            count(
                &f.other,
                "SELECT count(*) FROM kq_mirror_outbox WHERE tbl = 'pods'"
            ),
            1
        );
        f.writer.acknowledge(&[read(pods[0].3)]).unwrap();
        assert_eq!(
            count(
                &f.other,
                "SELECT count(*) FROM kq_mirror_outbox WHERE tbl = 'pods'"
            ),
            0
        );
    }

    #[test]
    fn entries_of_a_table_this_kqd_does_not_know_are_dropped_when_the_writer_opens() {
        let f = mirrored();
        // As a kqd before schema version 18 left them: without a hash.
        f.other
            .execute_batch(
                "INSERT INTO kq_mirror_outbox VALUES ('gone_table', 'test', 'u1', 7, now(), NULL, NULL),
                                                     ('pods', 'test', 'u2', 8, now(), NULL, NULL)",
            )
            .unwrap();
        let outbox = Outbox::load(&f.other, true).unwrap();
        assert_eq!(outbox.seq, 8);
        let left: Vec<String> = owed(&f.other).into_iter().map(|o| o.0).collect();
        assert!(left.contains(&"pods".to_string()), "{left:?}");
        assert!(!left.contains(&"gone_table".to_string()), "{left:?}");
    }

    #[test]
    fn an_entry_from_before_the_hash_gets_it_at_open_and_a_later_change_replaces_it() {
        let mut f = mirrored();
        f.writer.write_batch(vec![running("a")]);
        // Make the pod's entry look as an older kqd left it: no hash, an old first change.
        f.other
            .execute_batch(
                "UPDATE kq_mirror_outbox SET h = NULL, dirty_at = to_timestamp(1577836800)
                 WHERE tbl = 'pods'",
            )
            .unwrap();
        Outbox::load(&f.other, true).unwrap();
        let pod = Owed::Row {
            table: "pods",
            context: Arc::from("test"),
            key: "uid-a".into(),
        };
        let h: Option<i128> = f
            .other
            .query_row(
                "SELECT h FROM kq_mirror_outbox WHERE tbl = 'pods' AND key = 'uid-a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            h,
            Some(pod.hash()),
            "the entry got its hash when the writer opened"
        );

        // The pod changes again: its one entry gets the new number and keeps the old time.
        f.writer.write_batch(vec![running_at("a", 2)]);
        let pods: Vec<(i64, i64)> = f
            .other
            .prepare(
                "SELECT seq, epoch_us(dirty_at) FROM kq_mirror_outbox
                 WHERE tbl = 'pods' AND key = 'uid-a'",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(pods.len(), 1, "one entry per pod: {pods:?}");
        assert_eq!(
            pods[0].1, 1_577_836_800_000_000,
            "the first change's time stays"
        );
    }

    /// Whether the pod `name`'s one entry owes its containers too.
    fn owes_children(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT coalesce(children, true) FROM kq_mirror_outbox
              WHERE tbl = 'pods' AND key = ?",
            [format!("uid-{name}")],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// Acknowledges every entry the outbox holds, as the mirror does after its commit.
    fn acknowledge_all(f: &mut Fixture) {
        let read: Vec<Read> = owed(&f.other)
            .into_iter()
            .filter_map(|(t, c, k, seq)| {
                Some(Read {
                    owed: Owed::parse(&t, &c, &k)?,
                    seq,
                    dirty_at: 0,
                    children: true,
                })
            })
            .collect();
        f.writer.acknowledge(&read).unwrap();
        assert_eq!(count(&f.other, "SELECT count(*) FROM kq_mirror_outbox"), 0);
    }

    #[test]
    fn an_entry_owes_a_pods_containers_only_when_a_change_since_postgres_had_it_touched_them() {
        let mut f = mirrored();
        f.writer.write_batch(vec![running("a")]);
        assert!(
            owes_children(&f.other, "a"),
            "a new pod owes its containers"
        );
        acknowledge_all(&mut f);

        // A status message: the containers are as PostgreSQL has them.
        f.writer.write_batch(vec![running_at("a", 2)]);
        assert!(
            !owes_children(&f.other, "a"),
            "only the pod's rows are owed"
        );

        // The container restarts before the mirror sent the last change: the one entry now
        // owes both changes, the containers included.
        let restarted = |rv: u32| {
            at_version(
                pod(
                    "a",
                    json!({"phase": "Running", "containerStatuses": [{"name": "main",
                           "image": "nginx:1", "imageID": "", "ready": true, "restartCount": 1,
                           "state": {"running": {"startedAt": "2020-01-01T00:01:00Z"}}}]}),
                ),
                rv,
            )
        };
        f.writer.write_batch(vec![restarted(3)]);
        assert!(
            owes_children(&f.other, "a"),
            "the restart owes the containers"
        );
        // A later status-only change does not take that back.
        f.writer.write_batch(vec![restarted(4)]);
        assert!(
            owes_children(&f.other, "a"),
            "still owed until PostgreSQL has them"
        );
        acknowledge_all(&mut f);

        // In one transaction, a change that touched them and one that did not owe them.
        f.writer.write_batch(vec![restarted(5), running_at("a", 6)]);
        assert!(owes_children(&f.other, "a"));
        acknowledge_all(&mut f);
        f.writer
            .write_batch(vec![running_at("a", 7), running_at("a", 8)]);
        assert!(!owes_children(&f.other, "a"));
    }

    /// The running pod `name` at resource version `rv`.
    fn running_at(name: &str, rv: u32) -> Op {
        at_version(running(name), rv)
    }

    /// A pod's upsert at resource version `rv`.
    fn at_version(op: Op, rv: u32) -> Op {
        let Op::Upsert {
            kind,
            context,
            mut rows,
        } = op
        else {
            unreachable!("a pod is an upsert")
        };
        rows.row[objects::positions(kind).resource_version] = Value::Text(rv.to_string());
        Op::Upsert {
            kind,
            context,
            rows,
        }
    }

    fn mirrored() -> Fixture {
        fixture(StoreOptions {
            mirror: true,
            ..StoreOptions::default()
        })
    }

    #[test]
    fn a_rolled_back_batch_owes_nothing_and_without_the_mirror_nothing_is_recorded() {
        let mut f = mirrored();
        f.other
            .execute_batch("ALTER TABLE containers RENAME TO containers_away")
            .unwrap();
        f.writer.write_batch(vec![running("lost")]);
        assert!(
            owed(&f.other).iter().all(|o| o.0 != "pods"),
            "the rolled-back pod is not owed"
        );
        let mut off = fixture(StoreOptions::default());
        off.writer.write_batch(vec![running("a")]);
        assert_eq!(
            count(&off.other, "SELECT count(*) FROM kq_mirror_outbox"),
            0
        );
    }
}
