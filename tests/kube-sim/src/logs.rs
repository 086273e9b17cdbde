//! Container logs: `GET …/pods/{name}/log` with `container`, `previous`, `tailLines` and
//! `limitBytes`, answering the log text a scenario set, as the kubelet would through the API
//! server (plain text; 400 for a previous container that never ran).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Response, header};
use serde_json::Value;

use crate::api::Body;
use crate::status::ApiError;

/// (namespace, pod, container, previous)
type LogKey = (String, String, String, bool);

/// The log text of each container, current and previous run.
#[derive(Default)]
pub struct Logs(Mutex<HashMap<LogKey, String>>);

impl Logs {
    /// Sets what a container logged: its current run, or (`previous`) the run before its
    /// last restart.
    pub fn set(&self, ns: &str, pod: &str, container: &str, previous: bool, text: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (ns.into(), pod.into(), container.into(), previous),
            text.into(),
        );
    }

    fn get(&self, key: &LogKey) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Answers a log request for `pod` (its stored JSON).
    pub(crate) fn respond(
        &self,
        ns: &str,
        pod: &Value,
        params: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let containers: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                pod["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .filter_map(|c| c["name"].as_str())
            .collect();
        let container = match params.get("container") {
            Some(c) if containers.contains(&c.as_str()) => c.clone(),
            Some(c) => {
                return Err(ApiError::bad_request(&format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            None if containers.len() == 1 => containers[0].to_string(),
            None => {
                return Err(ApiError::bad_request(&format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
        };
        let previous = matches!(
            params.get("previous").map(String::as_str),
            Some("true" | "1")
        );
        let key = (
            ns.to_string(),
            name.to_string(),
            container.clone(),
            previous,
        );
        let text = match self.get(&key) {
            Some(t) => t,
            None if previous => {
                return Err(ApiError::bad_request(&format!(
                    "previous terminated container \"{container}\" in pod \"{name}\" not found"
                )));
            }
            None => String::new(),
        };
        let number = |k: &str| -> Result<Option<usize>, ApiError> {
            params
                .get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| ApiError::bad_request(&format!("invalid {k}: {v:?}")))
                })
                .transpose()
        };
        let mut out = text.as_str();
        if let Some(n) = number("tailLines")? {
            // The last n lines: the start of the line after the (n+1)-th newline from the
            // end, not counting a final one.
            let body = out.strip_suffix('\n').unwrap_or(out);
            let cut = body
                .match_indices('\n')
                .rev()
                .nth(n.saturating_sub(1))
                .map_or(0, |(i, _)| i + 1);
            out = if n == 0 { "" } else { &out[cut..] };
        }
        let mut bytes = out.as_bytes();
        if let Some(m) = number("limitBytes")? {
            bytes = &bytes[..m.min(bytes.len())];
        }
        Ok(Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(crate::api::full(Bytes::copy_from_slice(bytes)))
            .expect("static response parts are valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use serde_json::json;

    async fn body(r: Response<Body>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn tail_lines_and_limit_bytes_cut_as_the_api_server_does() {
        let logs = Logs::default();
        logs.set("ns", "p", "app", true, "one\ntwo\nthree\n");
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}});
        let ask = |q: &[(&str, &str)]| {
            let params: HashMap<String, String> = q
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            logs.respond("ns", &pod, &params)
        };
        let prev = ("previous", "true");
        assert_eq!(body(ask(&[prev]).unwrap()).await, "one\ntwo\nthree\n");
        assert_eq!(
            body(ask(&[prev, ("tailLines", "2")]).unwrap()).await,
            "two\nthree\n"
        );
        assert_eq!(
            body(ask(&[prev, ("tailLines", "9")]).unwrap()).await,
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            body(ask(&[prev, ("tailLines", "2"), ("limitBytes", "5")]).unwrap()).await,
            "two\nt"
        );
        assert_eq!(
            body(ask(&[]).unwrap()).await,
            "",
            "the current run logged nothing"
        );
        let err = ask(&[prev, ("container", "nope")]).unwrap_err();
        assert_eq!(err.code, 400);
        logs.0.lock().unwrap().clear();
        assert_eq!(ask(&[prev]).unwrap_err().code, 400);
    }
}
