//! The writer's index of what the database holds: per context, a hash of every stored
//! object's uid with its resourceVersion and resource.
//!
//! It is what keeps the writer's cost proportional to the batch rather than to the
//! inventory: a new object is appended without searching for an old row, a relisted object
//! whose resourceVersion did not change is skipped without touching the database, and the
//! object counts per resource are kept up to date without scanning. A digest of a pod's
//! container rows lets a modify that left them alone skip rewriting them. It holds about
//! 45 bytes per object and no object data; for Secrets, also their per-key value digests
//! ([`SecretDigests`]), which exist only here.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use duckdb::Connection;

use super::StoreError;
use crate::diff::SecretDigests;
use crate::rows::Kind;

/// A resource version that matches nothing: rows loaded after a schema migration are
/// rewritten by the next list even when the object did not change, so that new columns
/// get filled.
const UNKNOWN: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    version: u64,
    resource: u32,
    /// A digest of what the object's diff compares (`diff::shape`); 0 until known.
    shape: u64,
    /// A digest of the object's child rows (a pod's containers); 0 until known.
    children: u64,
}

/// How an upserted object relates to what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// No row has this uid: append.
    New,
    /// The stored row has this resourceVersion: nothing to do.
    Same,
    /// The stored row is older: replace it.
    Changed,
}

/// A resource (API group, plural) with its current object count, as the writer reports it.
pub type ResourceCount = (Arc<str>, String, String, i64);

#[derive(Debug, Default)]
pub struct Index {
    contexts: HashMap<Arc<str>, HashMap<u64, Entry>>,
    /// Interned resources: id → (group, resource), and back.
    resources: Vec<(String, String)>,
    ids: HashMap<String, HashMap<String, u32>>,
    counts: HashMap<(Arc<str>, u32), i64>,
    /// Counts changed since the last [`Index::take_changed`].
    changed: HashSet<(Arc<str>, u32)>,
    /// Per context and uid digest, a stored Secret's value digests, as last seen by this
    /// process (a restart forgets them; the first list sees every Secret again).
    secrets: HashMap<Arc<str>, HashMap<u64, SecretDigests>>,
}

/// A stable 64-bit digest (SipHash with fixed keys). Two uids of one context colliding is
/// about as likely as a cosmic-ray bit flip; the cost would be a wrong add/modify label.
fn digest(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// resourceVersions are etcd revisions in practice, opaque strings by contract.
fn version(rv: Option<&str>) -> u64 {
    match rv {
        Some(v) => v.parse::<u64>().unwrap_or_else(|_| digest(v)),
        None => 0,
    }
}

impl Index {
    /// Reads the identities of every stored object. With `trust_versions` false (the schema
    /// was just migrated), every stored row counts as outdated.
    pub fn load(conn: &Connection, trust_versions: bool) -> Result<Index, StoreError> {
        let mut index = Index::default();
        let add = |index: &mut Index, ctx: String, uid: String, rv: Option<String>, res: u32| {
            let ctx: Arc<str> = match index.contexts.get_key_value(ctx.as_str()) {
                Some((k, _)) => k.clone(),
                None => ctx.into(),
            };
            let v = if trust_versions {
                version(rv.as_deref())
            } else {
                UNKNOWN
            };
            index.contexts.entry(ctx).or_default().insert(
                digest(&uid),
                Entry {
                    version: v,
                    resource: res,
                    shape: 0,
                    children: 0,
                },
            );
        };
        // `objects` has a row for every object; the typed tables are read too, so that a row
        // without its `objects` row is still known and replaced rather than duplicated.
        let mut stmt = conn.prepare(
            "SELECT context, uid, resource_version, api_group, resource FROM main.objects",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (g, res): (String, String) = (r.get(3)?, r.get(4)?);
            let id = index.resource_id(&g, &res);
            add(&mut index, r.get(0)?, r.get(1)?, r.get(2)?, id);
        }
        for kind in Kind::TYPED {
            let gvk = kind.gvk();
            let id = index.resource_id(&gvk.group, &gvk.resource);
            let mut stmt = conn.prepare(&format!(
                "SELECT context, uid, resource_version FROM main.{}",
                kind.table()
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                add(&mut index, r.get(0)?, r.get(1)?, r.get(2)?, id);
            }
        }
        let mut counts: HashMap<(Arc<str>, u32), i64> = HashMap::new();
        for (ctx, entries) in &index.contexts {
            for e in entries.values() {
                *counts.entry((ctx.clone(), e.resource)).or_default() += 1;
            }
        }
        index.counts = counts;
        Ok(index)
    }

    /// The id of a resource, interned on first use.
    pub fn resource_id(&mut self, group: &str, resource: &str) -> u32 {
        if let Some(id) = self.ids.get(group).and_then(|m| m.get(resource)) {
            return *id;
        }
        let id = self.resources.len() as u32;
        self.resources
            .push((group.to_string(), resource.to_string()));
        self.ids
            .entry(group.to_string())
            .or_default()
            .insert(resource.to_string(), id);
        id
    }

    fn bump(&mut self, ctx: &Arc<str>, res: u32, by: i64) {
        *self.counts.entry((ctx.clone(), res)).or_default() += by;
        self.changed.insert((ctx.clone(), res));
    }

    /// Records an upserted object and says what the database must do with it. `shape` (one
    /// the watcher took) is kept when the object is new or unchanged; a changed object's
    /// shape is swapped by its diff ([`Index::swap_shape`]).
    pub fn upsert(
        &mut self,
        ctx: &Arc<str>,
        uid: &str,
        rv: Option<&str>,
        res: u32,
        shape: Option<u64>,
    ) -> Seen {
        let map = self.contexts.entry(ctx.clone()).or_default();
        let key = digest(uid);
        let old = map.get(&key).copied();
        let mut entry = Entry {
            version: version(rv),
            resource: res,
            shape: shape.unwrap_or(0),
            // The stored child rows stay what they were until the writer swaps their digest.
            children: old.map_or(0, |o| o.children),
        };
        let seen = match old {
            None => Seen::New,
            Some(o) if o.version == entry.version && o.resource == res => Seen::Same,
            Some(_) => Seen::Changed,
        };
        if let Some(o) = old
            && (shape.is_none() || seen == Seen::Changed)
        {
            entry.shape = o.shape;
        }
        map.insert(key, entry);
        match old {
            None => self.bump(ctx, res, 1),
            Some(o) if o.resource != res => {
                self.bump(ctx, o.resource, -1);
                self.bump(ctx, res, 1);
            }
            Some(_) => {}
        }
        seen
    }

    /// Records the shape of an object's new state and returns the one before (0: unknown,
    /// as after a restart): equal shapes mean its diff is empty, without reading the state
    /// it replaces.
    pub fn swap_shape(&mut self, ctx: &str, uid: &str, shape: u64) -> u64 {
        self.contexts
            .get_mut(ctx)
            .and_then(|m| m.get_mut(&digest(uid)))
            .map_or(0, |e| std::mem::replace(&mut e.shape, shape))
    }

    /// Records the digest of an object's child rows and returns the one before (0: not
    /// known), so that a modify that left them as they were does not rewrite them.
    pub fn swap_children(&mut self, ctx: &str, uid: &str, children: u64) -> u64 {
        self.contexts
            .get_mut(ctx)
            .and_then(|m| m.get_mut(&digest(uid)))
            .map_or(0, |e| std::mem::replace(&mut e.children, children))
    }

    /// Records a Secret's value digests and returns the ones before (None: not seen by this
    /// process).
    pub fn swap_secret(
        &mut self,
        ctx: &Arc<str>,
        uid: &str,
        digests: SecretDigests,
    ) -> Option<SecretDigests> {
        self.secrets
            .entry(ctx.clone())
            .or_default()
            .insert(digest(uid), digests)
    }

    /// Takes over the Secret digests of the index this one replaces (rebuilt from the
    /// database after a rollback), for the objects still stored.
    pub fn adopt_secrets(&mut self, old: Index) {
        self.secrets = old.secrets;
        let contexts: Vec<Arc<str>> = self.secrets.keys().cloned().collect();
        for ctx in contexts {
            self.prune_secrets(&ctx);
        }
    }

    /// Drops the Secret digests of objects no longer stored in `ctx`.
    fn prune_secrets(&mut self, ctx: &str) {
        let (Some(s), map) = (self.secrets.get_mut(ctx), self.contexts.get(ctx)) else {
            return;
        };
        s.retain(|uid, _| map.is_some_and(|m| m.contains_key(uid)));
    }

    /// Forgets a deleted object; false when it was not stored.
    pub fn remove(&mut self, ctx: &Arc<str>, uid: &str) -> bool {
        if let Some(s) = self.secrets.get_mut(ctx) {
            s.remove(&digest(uid));
        }
        let Some(old) = self
            .contexts
            .get_mut(ctx)
            .and_then(|m| m.remove(&digest(uid)))
        else {
            return false;
        };
        self.bump(ctx, old.resource, -1);
        true
    }

    /// After a relist of one resource: forgets its objects whose uid was not listed and
    /// says how many there were (zero means the database needs no sweep).
    pub fn sweep(&mut self, ctx: &Arc<str>, res: u32, keep: &[String]) -> usize {
        let keep: HashSet<u64> = keep.iter().map(|u| digest(u)).collect();
        let Some(map) = self.contexts.get_mut(ctx) else {
            return 0;
        };
        let before = map.len();
        map.retain(|uid, e| e.resource != res || keep.contains(uid));
        let gone = before - map.len();
        if gone > 0 {
            self.bump(ctx, res, -(gone as i64));
            self.prune_secrets(ctx);
        }
        gone
    }

    /// Forgets every object of one resource of a context.
    pub fn remove_resource(&mut self, ctx: &Arc<str>, res: u32) {
        if let Some(map) = self.contexts.get_mut(ctx) {
            map.retain(|_, e| e.resource != res);
        }
        self.prune_secrets(ctx);
        self.counts.remove(&(ctx.clone(), res));
        self.changed.remove(&(ctx.clone(), res));
    }

    /// Forgets a context.
    pub fn remove_context(&mut self, ctx: &str) {
        self.contexts.remove(ctx);
        self.secrets.remove(ctx);
        self.counts.retain(|(c, _), _| &**c != ctx);
        self.changed.retain(|(c, _)| &**c != ctx);
    }

    /// Whether an object is stored.
    pub fn contains(&self, ctx: &str, uid: &str) -> bool {
        self.contexts
            .get(ctx)
            .is_some_and(|m| m.contains_key(&digest(uid)))
    }

    /// Objects stored for a context, over all resources.
    pub fn total(&self, ctx: &str) -> i64 {
        self.contexts.get(ctx).map_or(0, |m| m.len() as i64)
    }

    /// Objects stored, over all contexts.
    pub fn len(&self) -> usize {
        self.contexts.values().map(HashMap::len).sum()
    }

    /// The resources whose counts changed since the last call, with their counts.
    pub fn take_changed(&mut self) -> Vec<ResourceCount> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(ctx, res)| {
                let n = self.counts.get(&(ctx.clone(), res)).copied().unwrap_or(0);
                let (g, r) = &self.resources[res as usize];
                (ctx, g.clone(), r.clone(), n)
            })
            .collect()
    }

    /// The current count of one resource of a context.
    pub fn count(&mut self, ctx: &str, group: &str, resource: &str) -> i64 {
        let Some(id) = self.ids.get(group).and_then(|m| m.get(resource)) else {
            return 0;
        };
        self.counts
            .iter()
            .find(|((c, r), _)| &**c == ctx && r == id)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_are_classified_and_counted() {
        let mut ix = Index::default();
        let ctx: Arc<str> = "a".into();
        let pods = ix.resource_id("", "pods");
        assert_eq!(ix.upsert(&ctx, "u1", Some("5"), pods, None), Seen::New);
        assert_eq!(ix.upsert(&ctx, "u1", Some("5"), pods, None), Seen::Same);
        assert_eq!(ix.upsert(&ctx, "u1", Some("6"), pods, None), Seen::Changed);
        assert_eq!(ix.upsert(&ctx, "u2", Some("7"), pods, None), Seen::New);
        assert_eq!(ix.total("a"), 2);
        assert!(ix.remove(&ctx, "u2"));
        assert!(!ix.remove(&ctx, "u2"), "a second delete finds nothing");
        assert_eq!(ix.count("a", "", "pods"), 1);
    }

    #[test]
    fn a_sweep_forgets_only_unlisted_objects_of_its_resource() {
        let mut ix = Index::default();
        let ctx: Arc<str> = "a".into();
        let pods = ix.resource_id("", "pods");
        let nodes = ix.resource_id("", "nodes");
        for u in ["p1", "p2", "p3"] {
            ix.upsert(&ctx, u, Some("1"), pods, None);
        }
        ix.upsert(&ctx, "n1", Some("1"), nodes, None);
        ix.take_changed();
        assert_eq!(ix.sweep(&ctx, pods, &["p1".into(), "p3".into()]), 1);
        assert_eq!(ix.sweep(&ctx, pods, &["p1".into(), "p3".into()]), 0);
        assert_eq!(ix.count("a", "", "pods"), 2);
        assert_eq!(
            ix.count("a", "", "nodes"),
            1,
            "other resources are untouched"
        );
        let changed = ix.take_changed();
        assert_eq!(changed.len(), 1);
        assert_eq!((changed[0].2.as_str(), changed[0].3), ("pods", 2));
    }

    #[test]
    fn secret_digests_go_with_their_objects() {
        let d = |v: &[u8]| SecretDigests::of([("k", v)].into_iter());
        let mut ix = Index::default();
        let ctx: Arc<str> = "a".into();
        let secrets = ix.resource_id("", "secrets");
        for u in ["s1", "s2"] {
            ix.upsert(&ctx, u, Some("1"), secrets, None);
            assert_eq!(ix.swap_secret(&ctx, u, d(b"1")), None);
        }
        assert_eq!(ix.swap_secret(&ctx, "s1", d(b"2")), Some(d(b"1")));
        assert_eq!(ix.sweep(&ctx, secrets, &["s1".into()]), 1);
        assert_eq!(ix.swap_secret(&ctx, "s2", d(b"3")), None, "swept");
        ix.remove(&ctx, "s2");
        let mut rebuilt = Index::default();
        rebuilt.upsert(&ctx, "s1", Some("1"), secrets, None);
        rebuilt.adopt_secrets(ix);
        assert_eq!(rebuilt.swap_secret(&ctx, "s1", d(b"4")), Some(d(b"2")));
    }
}
