//! The incident tracker: turns the signals of observed objects into `incidents` rows, one
//! per problem, and ends them.
//!
//! It remembers, per context and object, the newest incident of every problem (open ones
//! whole, ended ones by their last occurrence marker), loaded from the table at start. So a
//! relist or a restart that shows an already recorded termination adds nothing, a new
//! termination of an open problem raises `occurrences`, and only a new problem adds a row.
//! Signals with a grace period (image pulls, Pending pods) wait here until they fall due;
//! healthy pods wait here until they have stayed healthy long enough to end their incidents.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use duckdb::Connection;
use duckdb::types::{TimeUnit, Value};

use super::StoreError;
use crate::incidents::{Grace, IncidentOptions, Observed, Signal, Subject};
use crate::rows::Row;

/// One `incidents` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentRow {
    pub id: String,
    pub context: String,
    pub cluster_id: Option<String>,
    pub namespace: Option<String>,
    pub object_kind: String,
    pub object_name: String,
    pub object_uid: String,
    pub controller: Option<String>,
    pub container: Option<String>,
    pub node: Option<String>,
    pub typ: String,
    pub severity: String,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub message: Option<String>,
    pub restart_count: Option<i32>,
    pub cpu_request_m: Option<i64>,
    pub cpu_limit_m: Option<i64>,
    pub memory_request_bytes: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub occurrences: i32,
    pub resolved_at: Option<i64>,
    pub problem: String,
    pub last_marker: Option<String>,
    pub reported_count: i64,
    /// The exited container's last log lines, once fetched.
    pub last_log: Option<String>,
}

fn text(v: &Option<String>) -> Value {
    v.clone().map_or(Value::Null, Value::Text)
}

fn ts(v: i64) -> Value {
    Value::Timestamp(TimeUnit::Microsecond, v)
}

impl IncidentRow {
    /// The row's values in the catalog's column order.
    pub fn values(&self) -> Row {
        vec![
            Value::Text(self.id.clone()),
            Value::Text(self.context.clone()),
            text(&self.cluster_id),
            text(&self.namespace),
            Value::Text(self.object_kind.clone()),
            Value::Text(self.object_name.clone()),
            Value::Text(self.object_uid.clone()),
            text(&self.controller),
            text(&self.container),
            text(&self.node),
            Value::Text(self.typ.clone()),
            Value::Text(self.severity.clone()),
            text(&self.reason),
            self.exit_code.map_or(Value::Null, Value::Int),
            text(&self.signal),
            text(&self.message),
            self.restart_count.map_or(Value::Null, Value::Int),
            self.cpu_request_m.map_or(Value::Null, Value::BigInt),
            self.cpu_limit_m.map_or(Value::Null, Value::BigInt),
            self.memory_request_bytes.map_or(Value::Null, Value::BigInt),
            self.memory_limit_bytes.map_or(Value::Null, Value::BigInt),
            ts(self.first_seen),
            ts(self.last_seen),
            Value::Int(self.occurrences),
            self.resolved_at.map_or(Value::Null, ts),
            Value::Text(self.problem.clone()),
            text(&self.last_marker),
            Value::BigInt(self.reported_count),
            text(&self.last_log),
        ]
    }
}

/// The newest incident of one problem of one object.
#[derive(Debug, Clone)]
struct Known {
    row: IncidentRow,
}

impl Known {
    fn open(&self) -> bool {
        self.row.resolved_at.is_none()
    }
}

/// (context, object uid)
type SubjectKey = (Arc<str>, String);

#[derive(Debug)]
pub struct Tracker {
    opts: IncidentOptions,
    /// Per object, the newest incident of each problem.
    known: HashMap<SubjectKey, HashMap<String, Known>>,
    /// Signals waiting out their grace period: when they fall due.
    deferred: HashMap<SubjectKey, HashMap<String, (Subject, Signal, i64)>>,
    /// Pods with open incidents that are healthy, since when.
    healthy: HashMap<SubjectKey, i64>,
    /// Rows written in the current transaction, for followers once it commits.
    written: Vec<IncidentRow>,
}

fn micros_of(v: Value) -> Option<i64> {
    match v {
        Value::Timestamp(_, t) => Some(t),
        _ => None,
    }
}

impl Tracker {
    /// Loads the newest incident of every problem from the table.
    pub fn load(conn: &Connection, opts: IncidentOptions) -> Result<Tracker, StoreError> {
        let mut t = Tracker {
            opts,
            known: HashMap::new(),
            deferred: HashMap::new(),
            healthy: HashMap::new(),
            written: Vec::new(),
        };
        let mut stmt = conn.prepare("SELECT * FROM main.incidents ORDER BY first_seen")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row = IncidentRow {
                id: r.get("id")?,
                context: r.get("context")?,
                cluster_id: r.get("cluster_id")?,
                namespace: r.get("namespace")?,
                object_kind: r.get("object_kind")?,
                object_name: r.get("object_name")?,
                object_uid: r.get("object_uid")?,
                controller: r.get("controller")?,
                container: r.get("container")?,
                node: r.get("node")?,
                typ: r.get("type")?,
                severity: r.get("severity")?,
                reason: r.get("reason")?,
                exit_code: r.get("exit_code")?,
                signal: r.get("signal")?,
                message: r.get("message")?,
                restart_count: r.get("restart_count")?,
                cpu_request_m: r.get("cpu_request_m")?,
                cpu_limit_m: r.get("cpu_limit_m")?,
                memory_request_bytes: r.get("memory_request_bytes")?,
                memory_limit_bytes: r.get("memory_limit_bytes")?,
                first_seen: micros_of(r.get("first_seen")?).unwrap_or_default(),
                last_seen: micros_of(r.get("last_seen")?).unwrap_or_default(),
                occurrences: r.get("occurrences")?,
                resolved_at: micros_of(r.get("resolved_at")?),
                problem: r.get("problem")?,
                last_marker: r.get("last_marker")?,
                reported_count: r.get("reported_count")?,
                last_log: r.get("last_log")?,
            };
            let key = (Arc::from(row.context.as_str()), row.object_uid.clone());
            t.known
                .entry(key)
                .or_default()
                .insert(row.problem.clone(), Known { row });
        }
        Ok(t)
    }

    /// Rows written in the current transaction, so far.
    pub fn written(&self) -> &[IncidentRow] {
        &self.written
    }

    /// Rows written since the last call (the writer publishes them after commit).
    pub fn take_written(&mut self) -> Vec<IncidentRow> {
        std::mem::take(&mut self.written)
    }

    /// Applies what the watch saw of one object.
    pub fn observe(
        &mut self,
        conn: &Connection,
        ctx: &Arc<str>,
        cluster_id: Option<&str>,
        obs: &Observed,
        now: i64,
    ) -> Result<(), StoreError> {
        let skey: SubjectKey = (ctx.clone(), obs.subject.uid.clone());
        for s in &obs.signals {
            let open = self
                .known
                .get(&skey)
                .and_then(|m| m.get(&s.key))
                .is_some_and(Known::open);
            let due = match s.grace {
                Grace::None => now,
                Grace::ImagePull => self
                    .deferred
                    .get(&skey)
                    .and_then(|m| m.get(&s.key))
                    .map_or(now + self.opts.image_pull_grace.as_micros() as i64, |d| d.2),
                Grace::Pending { since } => since + self.opts.pending_timeout.as_micros() as i64,
            };
            if due > now && !open {
                self.deferred
                    .entry(skey.clone())
                    .or_default()
                    .insert(s.key.clone(), (obs.subject.clone(), s.clone(), due));
                continue;
            }
            if let Some(m) = self.deferred.get_mut(&skey) {
                m.remove(&s.key);
            }
            self.record(conn, ctx, cluster_id, &obs.subject, s, now)?;
        }
        if !obs.complete {
            return Ok(());
        }
        // The object shows everything wrong with it now: deferred signals it no longer
        // shows never become incidents, and problems it no longer shows may end.
        if let Some(m) = self.deferred.get_mut(&skey) {
            m.retain(|k, _| obs.signals.iter().any(|s| &s.key == k));
            if m.is_empty() {
                self.deferred.remove(&skey);
            }
        }
        if obs.subject.kind == "Pod" {
            // Pods end their incidents by staying healthy (see `tick`).
            match obs.healthy_since {
                Some(since) if self.has_open(&skey) => {
                    self.healthy.insert(skey, since);
                }
                _ => {
                    self.healthy.remove(&skey);
                }
            }
        } else {
            // A node condition back to normal, a job no longer failed: ended at once.
            let gone: Vec<String> = self
                .known
                .get(&skey)
                .into_iter()
                .flatten()
                .filter(|(k, known)| known.open() && !obs.signals.iter().any(|s| &s.key == *k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                self.resolve(conn, &skey, &k, now)?;
            }
        }
        Ok(())
    }

    fn has_open(&self, skey: &SubjectKey) -> bool {
        self.known
            .get(skey)
            .is_some_and(|m| m.values().any(Known::open))
    }

    /// The object is gone (deleted, or replaced by its controller): its incidents end.
    pub fn gone(
        &mut self,
        conn: &Connection,
        ctx: &Arc<str>,
        uid: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let skey: SubjectKey = (ctx.clone(), uid.to_string());
        self.deferred.remove(&skey);
        self.healthy.remove(&skey);
        self.resolve_all(conn, &skey, now)
    }

    /// Objects the tracker follows in `ctx` whose uid `exists` no longer knows: gone.
    pub fn sweep(
        &mut self,
        conn: &Connection,
        ctx: &Arc<str>,
        exists: impl Fn(&str) -> bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let gone: Vec<String> = self
            .known
            .iter()
            .filter(|((c, uid), m)| c == ctx && m.values().any(Known::open) && !exists(uid))
            .map(|((_, uid), _)| uid.clone())
            .chain(
                self.deferred
                    .keys()
                    .filter(|(c, uid)| c == ctx && !exists(uid))
                    .map(|(_, uid)| uid.clone()),
            )
            .collect();
        for uid in gone {
            self.gone(conn, ctx, &uid, now)?;
        }
        Ok(())
    }

    /// A context left the kubeconfig: its open incidents end and nothing more is tracked.
    pub fn remove_context(
        &mut self,
        conn: &Connection,
        ctx: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let subjects: Vec<SubjectKey> = self
            .known
            .keys()
            .filter(|(c, _)| &**c == ctx)
            .cloned()
            .collect();
        for skey in subjects {
            self.resolve_all(conn, &skey, now)?;
            self.known.remove(&skey);
        }
        self.deferred.retain(|(c, _), _| &**c != ctx);
        self.healthy.retain(|(c, _), _| &**c != ctx);
        Ok(())
    }

    /// Whether any timer is pending (the writer then wakes periodically).
    pub fn waiting(&self) -> bool {
        !self.deferred.is_empty() || !self.healthy.is_empty()
    }

    /// Whether `tick` has anything to do at `now`.
    pub fn due(&self, now: i64) -> bool {
        let healthy_after = self.opts.healthy_after.as_micros() as i64;
        self.deferred
            .values()
            .flat_map(|m| m.values())
            .any(|d| d.2 <= now)
            || self
                .healthy
                .values()
                .any(|since| since + healthy_after <= now)
    }

    /// Time-driven work: deferred signals that fell due become incidents, and pods that
    /// stayed healthy long enough end theirs.
    pub fn tick(
        &mut self,
        conn: &Connection,
        cluster_ids: &HashMap<String, Option<String>>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut due = Vec::new();
        for (skey, m) in &mut self.deferred {
            let ready: Vec<String> = m
                .iter()
                .filter(|(_, d)| d.2 <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in ready {
                if let Some((subject, signal, _)) = m.remove(&k) {
                    due.push((skey.clone(), subject, signal));
                }
            }
        }
        self.deferred.retain(|_, m| !m.is_empty());
        for ((ctx, _), subject, signal) in due {
            let cluster_id = cluster_ids.get(&*ctx).cloned().flatten();
            self.record(conn, &ctx, cluster_id.as_deref(), &subject, &signal, now)?;
        }
        let healthy_after = self.opts.healthy_after.as_micros() as i64;
        let recovered: Vec<SubjectKey> = self
            .healthy
            .iter()
            .filter(|(_, since)| **since + healthy_after <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for skey in recovered {
            self.healthy.remove(&skey);
            self.resolve_all(conn, &skey, now)?;
        }
        Ok(())
    }

    fn resolve_all(
        &mut self,
        conn: &Connection,
        skey: &SubjectKey,
        now: i64,
    ) -> Result<(), StoreError> {
        let open: Vec<String> = self
            .known
            .get(skey)
            .into_iter()
            .flatten()
            .filter(|(_, k)| k.open())
            .map(|(k, _)| k.clone())
            .collect();
        for k in open {
            self.resolve(conn, skey, &k, now)?;
        }
        Ok(())
    }

    fn resolve(
        &mut self,
        conn: &Connection,
        skey: &SubjectKey,
        problem: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let Some(known) = self.known.get_mut(skey).and_then(|m| m.get_mut(problem)) else {
            return Ok(());
        };
        known.row.resolved_at = Some(now);
        let row = known.row.clone();
        tracing::info!(context = %row.context, kind = %row.object_kind, name = %row.object_name, r#type = %row.typ, "incident ended");
        self.write(conn, row)
    }

    /// Records one signal that is due: a new incident, another occurrence of an open one,
    /// or nothing when this occurrence is already recorded.
    fn record(
        &mut self,
        conn: &Connection,
        ctx: &Arc<str>,
        cluster_id: Option<&str>,
        subject: &Subject,
        s: &Signal,
        now: i64,
    ) -> Result<(), StoreError> {
        let skey: SubjectKey = (ctx.clone(), subject.uid.clone());
        let at = s.at.unwrap_or(now);
        if let Some(known) = self.known.get_mut(&skey).and_then(|m| m.get_mut(&s.key)) {
            let same = s.marker.is_some() && s.marker == known.row.last_marker;
            if known.open() {
                // A waiting state carries no marker: while it lasts it is the same problem.
                if same || s.marker.is_none() {
                    return Ok(());
                }
                let row = &mut known.row;
                let more = if s.count > row.reported_count {
                    s.count - row.reported_count
                } else {
                    1
                };
                row.occurrences += i32::try_from(more).unwrap_or(i32::MAX);
                row.last_seen = at.max(row.last_seen);
                row.reported_count = s.count;
                row.last_marker = s.marker.clone();
                row.restart_count = s.restart_count;
                row.exit_code = s.exit_code;
                row.signal = s.signal.clone();
                row.reason = s.reason.clone();
                row.message = s.message.clone();
                let row = row.clone();
                return self.write(conn, row);
            }
            if same {
                return Ok(());
            }
        }
        let mut h = DefaultHasher::new();
        (
            &**ctx,
            &subject.uid,
            &s.key,
            s.marker.as_deref().unwrap_or(""),
            at,
        )
            .hash(&mut h);
        let controller = if subject.kind == "Pod" {
            controller_of(conn, ctx, &subject.uid)?
        } else {
            None
        };
        let row = IncidentRow {
            id: format!("{:016x}", h.finish()),
            context: ctx.to_string(),
            cluster_id: cluster_id.map(str::to_string),
            namespace: subject.namespace.clone(),
            object_kind: subject.kind.clone(),
            object_name: subject.name.clone(),
            object_uid: subject.uid.clone(),
            controller,
            container: s.container.clone(),
            node: subject.node.clone(),
            typ: s.typ.to_string(),
            severity: s.severity.to_string(),
            reason: s.reason.clone(),
            exit_code: s.exit_code,
            signal: s.signal.clone(),
            message: s.message.clone(),
            restart_count: s.restart_count,
            cpu_request_m: s.resources.cpu_request_m,
            cpu_limit_m: s.resources.cpu_limit_m,
            memory_request_bytes: s.resources.memory_request_bytes,
            memory_limit_bytes: s.resources.memory_limit_bytes,
            first_seen: at,
            last_seen: at,
            occurrences: 1,
            resolved_at: None,
            problem: s.key.clone(),
            last_marker: s.marker.clone(),
            reported_count: s.count,
            last_log: None,
        };
        tracing::info!(context = %row.context, kind = %row.object_kind, name = %row.object_name, r#type = %row.typ, severity = %row.severity, "incident");
        self.known
            .entry(skey)
            .or_default()
            .insert(s.key.clone(), Known { row: row.clone() });
        self.write(conn, row)
    }

    /// Keeps the log tail fetched for an incident's occurrence `marker`. Nothing happens when
    /// the incident is gone or a newer occurrence replaced that one (its own fetch follows).
    pub fn set_last_log(
        &mut self,
        conn: &Connection,
        ctx: &str,
        id: &str,
        marker: &str,
        log: String,
    ) -> Result<bool, StoreError> {
        let Some(known) = self
            .known
            .iter_mut()
            .filter(|((c, _), _)| &**c == ctx)
            .flat_map(|(_, m)| m.values_mut())
            .find(|k| k.row.id == id)
        else {
            return Ok(false);
        };
        if known.row.last_marker.as_deref() != Some(marker) {
            return Ok(false);
        }
        known.row.last_log = Some(log);
        let row = known.row.clone();
        self.write(conn, row)?;
        Ok(true)
    }

    /// Writes a row, replacing the one with its id.
    fn write(&mut self, conn: &Connection, row: IncidentRow) -> Result<(), StoreError> {
        conn.execute("DELETE FROM main.incidents WHERE id = ?", [&row.id])?;
        let values = row.values();
        let marks = vec!["?"; values.len()].join(", ");
        conn.execute(
            &format!("INSERT INTO main.incidents VALUES ({marks})"),
            duckdb::params_from_iter(values.iter()),
        )?;
        self.written.push(row);
        Ok(())
    }
}

/// A pod's top controller as Kind/name, from the owner chains already stored.
fn controller_of(conn: &Connection, ctx: &str, uid: &str) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT top_kind || '/' || top_name FROM pod_controllers WHERE context = ? AND pod_uid = ? AND top_kind IS NOT NULL",
    )?;
    let mut rows = stmt.query([ctx, uid])?;
    Ok(match rows.next()? {
        Some(r) => r.get(0)?,
        None => None,
    })
}
