//! Reading manifests: the size of an image manifest, and the platform entry of a multi-arch
//! index. Docker's v2 schema and OCI's share the fields read here.

use oci_spec::image::{ImageIndex, ImageManifest};

/// The manifest media types kq accepts, most specific first. Asking for indexes too makes a
/// registry answer a multi-arch tag with its index rather than one platform it picks.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// What a manifest document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// One platform's image: its compressed size, layers plus config.
    Image { size_bytes: i64 },
    /// A multi-arch index: its platform entries.
    Index(Vec<Entry>),
}

/// One platform manifest of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub digest: String,
    /// `os/arch`, or `os/arch/variant`.
    pub platform: String,
}

/// Parses a manifest or an index.
pub fn parse(body: &[u8]) -> Result<Manifest, String> {
    if let Ok(m) = serde_json::from_slice::<ImageManifest>(body) {
        let size = m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>();
        return Ok(Manifest::Image {
            size_bytes: size as i64,
        });
    }
    match serde_json::from_slice::<ImageIndex>(body) {
        Ok(ix) => Ok(Manifest::Index(
            ix.manifests()
                .iter()
                .filter_map(|d| {
                    let p = d.platform().as_ref()?;
                    let mut platform = format!("{}/{}", p.os(), p.architecture());
                    if let Some(v) = p.variant() {
                        platform.push('/');
                        platform.push_str(v);
                    }
                    Some(Entry {
                        digest: d.digest().to_string(),
                        platform,
                    })
                })
                .collect(),
        )),
        Err(e) => Err(format!(
            "the registry sent a manifest kq cannot read (schema 1 or not JSON): {e}"
        )),
    }
}

/// The entry of an index for a node's `os/arch`: an exact match first, then one that only
/// adds a variant (`linux/arm64/v8` serves `linux/arm64`).
pub fn select<'a>(entries: &'a [Entry], platform: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.platform == platform).or_else(|| {
        entries.iter().find(|e| {
            e.platform
                .strip_prefix(platform)
                .is_some_and(|rest| rest.starts_with('/'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn an_image_manifest_sizes_as_layers_plus_config() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1500,"digest":"{D1}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":1000,"digest":"{D2}"}},
                      {{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":234,"digest":"{D2}"}}]}}"#
        );
        assert_eq!(
            parse(m.as_bytes()).unwrap(),
            Manifest::Image { size_bytes: 2734 }
        );
    }

    #[test]
    fn an_index_picks_the_nodes_platform() {
        let ix = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":500,"digest":"{D1}","platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":500,"digest":"{D2}","platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        let Manifest::Index(entries) = parse(ix.as_bytes()).unwrap() else {
            panic!("an index")
        };
        assert_eq!(select(&entries, "linux/amd64").unwrap().digest, D1);
        assert_eq!(select(&entries, "linux/arm64").unwrap().digest, D2);
        assert_eq!(select(&entries, "linux/arm64/v8").unwrap().digest, D2);
        assert!(select(&entries, "windows/amd64").is_none());
        assert!(parse(b"{\"schemaVersion\":1}").is_err());
    }
}
