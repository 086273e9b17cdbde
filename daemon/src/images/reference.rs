//! Image references in one canonical spelling, so that `nginx`, `library/nginx:latest` and
//! `docker.io/library/nginx:latest` are one image, and every registry request knows its host.

use oci_spec::distribution::Reference;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry as people write it: `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference the way the container runtime does: Docker Hub is the default
    /// registry, `library/` its default namespace and `latest` the default tag.
    pub fn parse(image: &str) -> Result<ImageRef, String> {
        let r: Reference = image
            .trim()
            .parse()
            .map_err(|e| format!("invalid image reference {image:?}: {e}"))?;
        // The distribution spec allows only lowercase repository names and runtimes refuse
        // others with InvalidImageName, which oci-spec's grammar does not check.
        if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "invalid image reference {image:?}: repository names must be lowercase"
            ));
        }
        Ok(ImageRef {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        })
    }

    /// The canonical reference: `registry/repository:tag`, or `…@digest` when the reference
    /// names a digest (a digest reference is kept as it is written, tag included).
    pub fn canonical(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The image this reference names once its digest is known: `registry/repository@digest`.
    pub fn identity(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    /// Whether this reference carries a tag and no digest, so naming it needs a lookup.
    pub fn is_tag(&self) -> bool {
        self.digest.is_none()
    }

    /// The host that serves the registry's API: Docker Hub's is not `docker.io`.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// What the manifest is asked for by: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// The host that serves a registry's API, for a registry named as people write it.
pub fn api_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// The canonical form of an image as written in a pod spec, or None when it is not a valid
/// reference (the kubelet will report InvalidImageName for it).
///
/// Every pod event asks this for each of its containers, and a fleet uses few distinct
/// images, so each thread remembers recent answers instead of running the reference
/// grammar's regex again.
pub fn canonical(image: &str) -> Option<String> {
    const REMEMBERED: usize = 4096;
    thread_local! {
        static MEMO: std::cell::RefCell<std::collections::HashMap<String, Option<String>>> =
            Default::default();
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        if let Some(known) = memo.get(image) {
            return known.clone();
        }
        let answer = ImageRef::parse(image).ok().map(|r| r.canonical());
        if memo.len() >= REMEMBERED {
            memo.clear();
        }
        memo.insert(image.to_string(), answer.clone());
        answer
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_get_their_registry_namespace_and_tag() {
        assert_eq!(
            canonical("nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            canonical("nginx:1.27").unwrap(),
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(
            canonical("bitnami/kafka:3.8").unwrap(),
            "docker.io/bitnami/kafka:3.8"
        );
        assert_eq!(
            canonical("index.docker.io/library/nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            canonical("ghcr.io/acme/api:v2").unwrap(),
            "ghcr.io/acme/api:v2"
        );
        assert_eq!(
            canonical("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
    }

    #[test]
    fn digest_references_are_kept_as_written() {
        assert_eq!(
            canonical(&format!("nginx@{D}")).unwrap(),
            format!("docker.io/library/nginx@{D}")
        );
        assert_eq!(
            canonical(&format!("nginx:1.27@{D}")).unwrap(),
            format!("docker.io/library/nginx:1.27@{D}")
        );
        let r = ImageRef::parse(&format!("nginx:1.27@{D}")).unwrap();
        assert!(!r.is_tag());
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.identity(D), format!("docker.io/library/nginx@{D}"));
    }

    #[test]
    fn hosts_and_bad_references() {
        assert_eq!(
            ImageRef::parse("nginx").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(
            ImageRef::parse("127.0.0.1:5000/a/b:c").unwrap().api_host(),
            "127.0.0.1:5000"
        );
        assert_eq!(canonical("UPPER/case"), None);
        assert_eq!(canonical(""), None);
    }
}
