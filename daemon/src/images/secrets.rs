//! Pull secrets: the registry credentials a pod names in `imagePullSecrets`, read from its
//! cluster when a lookup needs them and dropped right after. kq never stores them.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::auth::{Basic, Credentials};
use crate::clients::Clients;

impl Clients {
    /// Credentials for `registry` from the first of a pod's pull secrets that has some.
    pub async fn credentials(
        &self,
        context: &str,
        namespace: &str,
        names: &[String],
        registry: &str,
    ) -> Option<Basic> {
        let client = self.get(context)?;
        let api: Api<Secret> = Api::namespaced(client, namespace);
        for name in names {
            let secret = match api.get_opt(name).await {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    // Reading secrets is often forbidden; the lookup goes on without.
                    tracing::debug!(context, namespace, secret = %name, error = %crate::describe(&e), "cannot read a pull secret");
                    continue;
                }
            };
            let Some(data) = secret.data else { continue };
            let creds = if let Some(v) = data.get(".dockerconfigjson") {
                Credentials::parse(&v.0)
            } else if let Some(v) = data.get(".dockercfg") {
                // The legacy format is the `auths` map on its own.
                let mut wrapped = b"{\"auths\":".to_vec();
                wrapped.extend_from_slice(&v.0);
                wrapped.push(b'}');
                Credentials::parse(&wrapped)
            } else {
                continue;
            };
            if let Some(b) = creds.ok().and_then(|c| c.get(registry).cloned()) {
                return Some(b);
            }
        }
        None
    }
}
