//! What image sizing hears from the writer: the image references pods name and the images
//! nodes report, each reference once (again only with new pull secrets).

use super::*;

impl Writer {
    /// Passes what a pod or node says about images to image sizing, when it is on; a pod's
    /// references only the first time any pod names them, or the first time a namespace's
    /// pods name them with pull secrets (which may be what a lookup lacked).
    pub(super) fn forward_images(&mut self, s: crate::images::Sighting) {
        let Some(tx) = &self.sightings else { return };
        let s = match s {
            crate::images::Sighting::Pod {
                context,
                namespace,
                node,
                pull_secrets,
                mut refs,
            } => {
                let (seen, seen_secret) = (&mut self.seen_refs, &mut self.seen_secret_refs);
                refs.retain(|r| {
                    let new_ref = !seen.contains(r.as_str()) && seen.insert(r.clone());
                    let new_secret = !pull_secrets.is_empty()
                        && match seen_secret.get_mut(r.as_str()) {
                            Some(v) if v.iter().any(|(c, n)| *c == context && *n == namespace) => {
                                false
                            }
                            Some(v) => {
                                v.push((context.clone(), namespace.clone()));
                                true
                            }
                            None => {
                                seen_secret
                                    .insert(r.clone(), vec![(context.clone(), namespace.clone())]);
                                true
                            }
                        };
                    new_ref || new_secret
                });
                if refs.is_empty() {
                    return;
                }
                crate::images::Sighting::Pod {
                    context,
                    namespace,
                    node,
                    pull_secrets,
                    refs,
                }
            }
            other => other,
        };
        if tx.send(s).is_err() {
            self.sightings = None;
        }
    }

    /// After a rollback, whose batch may have held `images` rows: image sizing forgets every
    /// reference, so that the relist sends them again and their rows are written anew, from
    /// its memory of node reports and from the SQLite cache, at no registry request.
    pub(super) fn forget_images(&mut self) {
        if self.seen_refs.is_empty() {
            return;
        }
        let refs = self.seen_refs.drain().collect();
        self.seen_secret_refs.clear();
        self.forward_images(crate::images::Sighting::Unused { refs });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::fixture;
    use super::*;

    #[test]
    fn a_reference_goes_to_image_sizing_once_and_again_only_with_new_pull_secrets() {
        let mut f = fixture(StoreOptions::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        f.writer.sightings = Some(tx);
        let pod = |ns: &str, secrets: &[&str]| crate::images::Sighting::Pod {
            context: Arc::from("test"),
            namespace: ns.into(),
            node: None,
            pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
            refs: vec!["docker.io/library/nginx:1".into()],
        };
        let mut sent = || {
            let mut n = 0;
            while rx.try_recv().is_ok() {
                n += 1;
            }
            n
        };
        f.writer.forward_images(pod("default", &[]));
        assert_eq!(sent(), 1);
        f.writer.forward_images(pod("default", &[]));
        f.writer.forward_images(pod("other", &[]));
        assert_eq!(sent(), 0, "a known reference is not sent again");
        f.writer.forward_images(pod("shop", &["regcred"]));
        assert_eq!(
            sent(),
            1,
            "pull secrets from a new namespace may be what a lookup lacked"
        );
        f.writer.forward_images(pod("shop", &["regcred"]));
        assert_eq!(sent(), 0);
    }
}
