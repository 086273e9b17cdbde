//! Request routing and the REST handlers: discovery, list, get, watch, create, update,
//! patch, delete and deletecollection, with the real API server's paths and parameters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::faults::RequestRecord;
use crate::patch::PatchType;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::store::{self, Change, EventType, Filter};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// The Kubernetes version the simulator reports.
pub const SERVER_MINOR: &str = "33";

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    bytes_response(code, Bytes::from(v.to_string()))
}

fn bytes_response(code: u16, b: Bytes) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(b))
        .expect("static response parts are valid")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// Entry point for every request on one connection.
pub async fn handle(
    cluster: Arc<Cluster>,
    conn: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let params = parse_query(&query);
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let resp = respond(&cluster, req, &path, &params, watch).await;
    cluster.traffic.record_request(RequestRecord {
        seq: 0,
        conn,
        method,
        path,
        query,
        watch,
        status: resp.status().as_u16(),
        at: Instant::now(),
    });
    Ok(resp)
}

async fn respond(
    cluster: &Arc<Cluster>,
    req: Request<Incoming>,
    path: &str,
    params: &HashMap<String, String>,
    watch: bool,
) -> Response<Body> {
    if let Some(d) = cluster.faults.stall_for() {
        tokio::time::sleep(d).await;
    }
    if let Some(err) = cluster.faults.take_error() {
        let e = ApiError::new(
            err.code,
            reason_for(err.code),
            format!("injected error {}", err.code),
        );
        let mut resp = error_response(&e);
        if let Some(s) = err.retry_after {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                s.to_string().parse().expect("digits are a valid header"),
            );
        }
        return resp;
    }
    let public = matches!(path, "/version" | "/healthz" | "/livez" | "/readyz");
    if !public && !cluster.authorized(req.headers().get(header::AUTHORIZATION)) {
        return error_response(&ApiError::unauthorized());
    }
    match route(cluster, req, path, params, watch).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        429 => "TooManyRequests",
        401 => "Unauthorized",
        403 => "Forbidden",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

async fn route(
    cluster: &Arc<Cluster>,
    req: Request<Incoming>,
    path: &str,
    params: &HashMap<String, String>,
    watch: bool,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let store = &cluster.store;
    match segs.as_slice() {
        ["version"] => Ok(json_response(200, &version())),
        ["healthz"] | ["livez"] | ["readyz"] => Ok(bytes_response(200, Bytes::from_static(b"ok"))),
        ["api"] => Ok(json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": cluster.addr.to_string()}]}),
        )),
        ["apis"] => Ok(json_response(200, &group_list(&store.resource_types()))),
        ["api", "v1"] => resource_list(store, "", "v1"),
        ["apis", g] => {
            let list = group_list(&store.resource_types());
            list["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == *g))
                .map(|x| {
                    let mut x = x.clone();
                    x["kind"] = json!("APIGroup");
                    x["apiVersion"] = json!("v1");
                    json_response(200, &x)
                })
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                })
        }
        ["apis", g, v] => resource_list(store, g, v),
        ["api", "v1", rest @ ..] => {
            resource_request(cluster, req, "", "v1", rest, params, watch).await
        }
        ["apis", g, v, rest @ ..] => {
            resource_request(cluster, req, g, v, rest, params, watch).await
        }
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": SERVER_MINOR,
        "gitVersion": format!("v1.{SERVER_MINOR}.0-kube-sim"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = store::group_versions(types)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(
    store: &store::Store,
    group: &str,
    version: &str,
) -> Result<Response<Body>, ApiError> {
    let by_gv = store::by_group_version(&store.resource_types());
    let types = by_gv
        .get(&(group.to_string(), version.to_string()))
        .ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })?;
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = types.iter().flat_map(|t| t.discovery_entries()).collect();
    Ok(json_response(
        200,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

/// The part of a resource path after the group/version.
struct ResourcePath<'a> {
    namespace: Option<&'a str>,
    plural: &'a str,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

/// Splits a resource path. `namespaces/x` is the namespace itself; `namespaces/x/pods` is
/// a collection in it.
fn split_resource_path<'a>(rest: &[&'a str]) -> Option<ResourcePath<'a>> {
    let (namespace, tail) = match rest {
        ["namespaces", ns, plural, ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(*ns), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, tail) = tail.split_first()?;
    Some(ResourcePath {
        namespace,
        plural,
        name: tail.first().copied(),
        subresource: tail.get(1).copied(),
    })
}

async fn resource_request(
    cluster: &Arc<Cluster>,
    req: Request<Incoming>,
    group: &str,
    version: &str,
    rest: &[&str],
    params: &HashMap<String, String>,
    watch: bool,
) -> Result<Response<Body>, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let ResourcePath {
        namespace: ns,
        plural,
        name,
        subresource: sub,
    } = split_resource_path(rest).ok_or_else(not_found)?;
    let store = &cluster.store;
    let rt = store
        .resolve(group, version, plural)
        .ok_or_else(not_found)?;
    if ns.is_some() && !rt.namespaced {
        return Err(not_found());
    }
    if cluster.faults.is_forbidden(group, plural) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{plural}{} is forbidden: User \"kube-sim\" cannot list resource \"{plural}\" in API group \"{group}\" at the cluster scope",
                if group.is_empty() {
                    String::new()
                } else {
                    format!(".{group}")
                }
            ),
        ));
    }
    if group.is_empty() && plural == "pods" && sub == Some("log") {
        if req.method() != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        if cluster.faults.is_forbidden("", "pods/log") {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "pods \"{}\" is forbidden: User \"kube-sim\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"{}\"",
                    name.unwrap_or_default(),
                    ns.unwrap_or_default()
                ),
            ));
        }
        let pod = store.get(&rt, ns.unwrap_or_default(), name.ok_or_else(not_found)?)?;
        return cluster
            .logs
            .respond(ns.unwrap_or_default(), &pod.value(), params);
    }
    let status_sub = match sub {
        None => false,
        Some("status") if rt.has_status => true,
        Some(_) => return Err(not_found()),
    };
    let ns_str = ns.unwrap_or_default();
    let method = req.method().clone();
    match (method, name) {
        (Method::GET, None) => {
            let filter = filter_from(ns, params)?;
            if watch {
                watch_response(cluster, &rt, filter, params)
            } else {
                let limit = params.get("limit").and_then(|l| l.parse().ok());
                let page = store.list(
                    &rt,
                    &filter,
                    limit,
                    params
                        .get("continue")
                        .map(String::as_str)
                        .filter(|c| !c.is_empty()),
                )?;
                Ok(bytes_response(200, list_body(&rt, &page)))
            }
        }
        (Method::GET, Some(n)) => Ok(bytes_response(200, store.get(&rt, ns_str, n)?.json.clone())),
        (Method::POST, None) => {
            let body = read_json(req).await?;
            let ns = if rt.namespaced {
                ns.map(str::to_string)
                    .or_else(|| body["metadata"]["namespace"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "default".to_string())
            } else {
                String::new()
            };
            let obj = store.create(&rt, &ns, body)?;
            Ok(bytes_response(201, obj.json.clone()))
        }
        (Method::PUT, Some(n)) => {
            let body = read_json(req).await?;
            Ok(bytes_response(
                200,
                store.update(&rt, ns_str, n, body, status_sub)?.json.clone(),
            ))
        }
        (Method::PATCH, Some(n)) => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let kind = PatchType::from_content_type(&ct).ok_or_else(|| {
                ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"))
            })?;
            let body = read_body(req).await?;
            Ok(bytes_response(
                200,
                store
                    .patch(&rt, ns_str, n, kind, &body, status_sub)?
                    .json
                    .clone(),
            ))
        }
        (Method::DELETE, Some(n)) => Ok(bytes_response(
            200,
            store.delete(&rt, ns_str, n)?.json.clone(),
        )),
        (Method::DELETE, None) => {
            let filter = filter_from(ns, params)?;
            store.delete_collection(&rt, &filter)?;
            Ok(json_response(200, &status::success()))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn filter_from(ns: Option<&str>, params: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request(&format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(
        params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request(&e))?;
    Ok(Filter {
        namespace: ns.map(str::to_string),
        labels,
        fields,
    })
}

fn list_body(rt: &ResourceType, page: &store::ListPage) -> Bytes {
    let mut md = json!({"resourceVersion": page.rv.to_string()});
    if let Some(c) = &page.continue_token {
        md["continue"] = json!(c);
    }
    if let Some(n) = page.remaining {
        md["remainingItemCount"] = json!(n);
    }
    let head = format!(
        r#"{{"kind":"{}List","apiVersion":"{}","metadata":{},"items":["#,
        rt.kind,
        rt.api_version(),
        md
    );
    let size = head.len() + page.items.iter().map(|i| i.json.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(head.as_bytes());
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item.json);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    req.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(&format!("reading the request body: {e}")))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let b = read_body(req).await?;
    serde_json::from_slice(&b)
        .map_err(|e| ApiError::bad_request(&format!("the request body is not valid JSON: {e}")))
}

fn event_line(kind: &str, obj: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(obj.len() + 32);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"","object":"#);
    out.extend_from_slice(obj);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// How one change looks to a watch with a filter: an object that stops matching a selector
/// is DELETED for it, one that starts matching is ADDED, as on the real server.
fn event_for(change: &Change, filter: &Filter) -> Option<&'static str> {
    let now = change.obj.matches(filter);
    let before = change.prev.as_ref().is_some_and(|p| p.matches(filter));
    match change.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => (now || before).then_some("DELETED"),
        EventType::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }
}

type Tx = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

async fn send(tx: &Tx, b: Bytes) -> bool {
    tx.send(Ok(Frame::data(b))).await.is_ok()
}

fn watch_response(
    cluster: &Arc<Cluster>,
    rt: &ResourceType,
    filter: Filter,
    params: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let from = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(&format!("invalid resource version {v:?}")))?,
        ),
    };
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
    let start = cluster.store.watch(rt, &filter, from);
    let cluster = cluster.clone();
    let rt = rt.clone();
    tokio::spawn(async move {
        let start = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = send(
                    &tx,
                    event_line("ERROR", e.to_status().to_string().as_bytes()),
                )
                .await;
                return;
            }
        };
        stream_watch(cluster, rt, filter, start, bookmarks, timeout, tx).await;
    });
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static response parts are valid"))
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn stream_watch(
    cluster: Arc<Cluster>,
    rt: ResourceType,
    filter: Filter,
    start: store::WatchStart,
    bookmarks: bool,
    timeout: Duration,
    tx: Tx,
) {
    let store::WatchStart {
        initial,
        backlog,
        mut rx,
        start_rv,
    } = start;
    let key = rt.key();
    let mut last_rv = start_rv;
    for obj in &initial {
        if !send(&tx, event_line("ADDED", &obj.json)).await {
            return;
        }
    }
    let mut replayed_to = 0;
    for c in &backlog {
        replayed_to = c.rv;
        if let Some(kind) = event_for(c, &filter)
            && !send(&tx, event_line(kind, &c.obj.json)).await
        {
            return;
        }
    }
    let mut drops = cluster.faults.drop_watches.subscribe();
    let mut gones = cluster.faults.gone_watches.subscribe();
    let mut offline = cluster.faults.offline.subscribe();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(cluster.options.bookmark_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(c) => {
                    last_rv = last_rv.max(c.rv);
                    if c.key != key || c.rv <= replayed_to {
                        continue;
                    }
                    if let Some(kind) = event_for(&c, &filter)
                        && !send(&tx, event_line(kind, &c.obj.json)).await
                    {
                        return;
                    }
                }
                // A watcher too slow to keep up is closed, and resumes from its last
                // resource version, as the real watch cache does.
                Err(_) => return,
            },
            _ = ticker.tick(), if bookmarks => {
                let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}});
                if !send(&tx, event_line("BOOKMARK", bm.to_string().as_bytes())).await {
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = drops.changed() => {
                let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "watch dropped by fault injection"))).await;
                return;
            }
            _ = gones.changed() => {
                let e = ApiError::gone(&format!("too old resource version: {last_rv}"));
                let _ = send(&tx, event_line("ERROR", e.to_status().to_string().as_bytes())).await;
                return;
            }
            _ = offline.changed() => {
                let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "cluster went offline"))).await;
                return;
            }
        }
    }
}

/// Decodes a URL query string into a map, last value winning.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
