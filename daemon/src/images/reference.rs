//! Image references in one canonical spelling, so that `nginx`, `library/nginx:latest` and
//! `docker.io/library/nginx:latest` are one image, and every registry request knows its host.

use std::sync::LazyLock;

use regex::Regex;

/// The reference grammar of distribution/reference (`regexp.go`), which the container
/// runtimes use: an optional registry host, lowercase path components, an optional tag and
/// an optional digest. Its classes are ASCII, as Go's `\w` is. oci-spec's copy of it has a
/// Unicode `\w` repeated 128 times for the tag: its automaton and each thread's search
/// cache held about 20 MB for as long as kqd ran (measured with jemalloc's heap profile
/// during a 10 × 10k sync), and it accepted tags the runtimes refuse.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    const DOMAIN_COMPONENT: &str = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    const PATH_COMPONENT: &str = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let domain = format!(r"{DOMAIN_COMPONENT}(?:\.{DOMAIN_COMPONENT})*(?::[0-9]+)?");
    let name = format!("(?:{domain}/)?{PATH_COMPONENT}(?:/{PATH_COMPONENT})*");
    let tag = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    Regex::new(&format!("^({name})(?::({tag}))?(?:@({digest}))?$"))
        .expect("the reference grammar compiles")
});

/// The longest repository name the distribution spec allows.
const NAME_MAX: usize = 255;

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
        let invalid = |why: &str| format!("invalid image reference {image:?}: {why}");
        let image = image.trim();
        if image.is_empty() {
            return Err(invalid("it is empty"));
        }
        let caps = REFERENCE
            .captures(image)
            .ok_or_else(|| invalid("it does not match the reference grammar"))?;
        let (registry, repository) = split_registry(&caps[1]);
        // The grammar lets the first component be a host; a host-less one with capitals is
        // a repository, which runtimes refuse with InvalidImageName.
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase"));
        }
        if repository.len() > NAME_MAX {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        let digest = caps.get(3).map(|m| m.as_str().to_string());
        if let Some(d) = &digest {
            let (algorithm, hex) = d.split_once(':').unwrap_or_default();
            let want = match algorithm {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => {
                    return Err(invalid(
                        "its digest algorithm is not sha256, sha384 or sha512",
                    ));
                }
            };
            if hex.len() != want {
                return Err(invalid("its digest has the wrong length"));
            }
        }
        let tag = match (caps.get(2), &digest) {
            (Some(t), _) => Some(t.as_str().to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
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

/// Splits a name into its registry and repository as distribution's `normalize.go` does:
/// the first component is a registry when it looks like a host (a dot, a port, or
/// `localhost`); otherwise the registry is Docker Hub, whose one-component names live under
/// `library/`.
fn split_registry(name: &str) -> (String, String) {
    let (registry, repository) = match name.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => (host, rest),
        _ => ("docker.io", name),
    };
    let registry = if registry == "index.docker.io" {
        "docker.io"
    } else {
        registry
    };
    if registry == "docker.io" && !repository.contains('/') {
        (registry.to_string(), format!("library/{repository}"))
    } else {
        (registry.to_string(), repository.to_string())
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

    #[test]
    fn the_grammar_is_the_runtimes_ascii_one() {
        // Hosts may have capitals and ports; repositories, tags and digests are checked.
        assert_eq!(
            canonical("Registry.Example.com:5000/team/app:v1.2_rc-3").unwrap(),
            "Registry.Example.com:5000/team/app:v1.2_rc-3"
        );
        assert_eq!(canonical("a.b/c__d/e-f.g:x").unwrap(), "a.b/c__d/e-f.g:x");
        // Go's \w is ASCII: the kubelet refuses a tag with other letters.
        assert_eq!(canonical("nginx:tägs"), None);
        assert!(canonical(&format!("nginx:{}", "t".repeat(128))).is_some());
        assert_eq!(canonical(&format!("nginx:{}", "t".repeat(129))), None);
        assert_eq!(canonical("nginx:.tag"), None);
        assert_eq!(canonical("nginx@sha256:abc"), None);
        assert_eq!(canonical(&format!("nginx@md5:{}", &D[7..])), None);
        assert_eq!(canonical("-nginx"), None);
        assert_eq!(canonical("nginx/"), None);
        assert_eq!(canonical(&format!("a/{}", "b".repeat(254))), None);
    }
}
