//! Image sizes against a real registry (Debian's docker-registry, behind a recording proxy):
//! sizes equal the pushed manifests' sums, multi-arch indexes resolve to the node's platform,
//! repeated lookups within the TTL cost zero requests and after it one HEAD and no GET, a 429's
//! Retry-After is obeyed, the request rate stays under its limit, and kqd sizes pod images
//! from node status without asking any registry.

use std::time::Duration;

use kq_daemon::images::{
    Cache, Credentials, ImageRef, Job, LookupOptions, Outcome, Registry as Client, RegistryOptions,
    SizedImage, resolve,
};
use kq_e2e::registry::{Fault, Gate, Pushed, Registry, Seen};
use kq_e2e::{Env, Kqd};
use kube_sim::scenario;

fn client(reg: &Registry, rate: f64) -> Client {
    Client::new(
        RegistryOptions {
            rate_per_sec: rate,
            insecure: vec![reg.host.clone()],
            backoff_base: Duration::from_millis(100),
            ..Default::default()
        },
        Credentials::default(),
    )
    .expect("a registry client")
}

fn job(reference: &str, platform: &str) -> Job {
    let image = ImageRef::parse(reference).expect("a valid reference");
    Job {
        reference: image.canonical(),
        image,
        platform: platform.to_string(),
        pull_secret: None,
    }
}

async fn sized(c: &Client, cache: &Cache, j: &Job, now: i64) -> SizedImage {
    match resolve(c, cache, &LookupOptions::default(), j, now).await {
        Outcome::Sized(s) => s,
        Outcome::Failed { error, .. } => panic!("{} not sized: {error}", j.reference),
    }
}

fn count(seen: &[Seen], method: &str) -> usize {
    seen.iter().filter(|s| s.method == method).count()
}

/// A single-platform image and a two-platform index.
struct Pushes {
    app: Pushed,
    amd: Pushed,
    arm: Pushed,
    index: String,
}

async fn push(reg: &Registry) -> Pushes {
    let app = reg
        .push_image("team/app", Some("v1"), &[1000, 2345], "linux", "amd64")
        .await;
    let amd = reg
        .push_image("team/multi", None, &[3000, 10], "linux", "amd64")
        .await;
    let arm = reg
        .push_image("team/multi", None, &[777], "linux", "arm64")
        .await;
    let index = reg
        .push_index(
            "team/multi",
            "v2",
            &[(&amd, "linux", "amd64"), (&arm, "linux", "arm64")],
        )
        .await;
    Pushes {
        app,
        amd,
        arm,
        index,
    }
}

/// An empty cache in a temporary directory, which lives as long as the guard.
fn fresh_cache() -> (tempfile::TempDir, Cache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("images.sqlite"));
    (dir, cache)
}

/// A registry holding `push`'s images, and an empty cache.
async fn pushed() -> (Registry, Pushes, tempfile::TempDir, Cache) {
    let reg = Registry::start().await;
    let p = push(&reg).await;
    let (dir, cache) = fresh_cache();
    (reg, p, dir, cache)
}

/// A 429 that says `Retry-After: secs`.
fn too_many(secs: u64) -> Fault {
    Fault {
        status: 429,
        retry_after: Some(secs),
    }
}

#[tokio::test]
async fn sizes_match_the_manifests_and_the_cache_saves_every_repeat_request() {
    let reg = Registry::start().await;
    let p = push(&reg).await;
    let h = reg.host.clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kq/images.sqlite");
    let cache = Cache::open(&path);
    let c = client(&reg, 50.0);
    let now = jiff::Timestamp::now().as_second();
    let jobs = [
        job(&format!("{h}/team/app:v1"), "linux/amd64"),
        job(&format!("{h}/team/app@{}", p.app.digest), "linux/amd64"),
        job(&format!("{h}/team/multi:v2"), "linux/amd64"),
        job(&format!("{h}/team/multi:v2"), "linux/arm64"),
    ];
    let want = [
        (&p.app.digest, p.app.size_bytes),
        (&p.app.digest, p.app.size_bytes),
        (&p.index, p.amd.size_bytes),
        (&p.index, p.arm.size_bytes),
    ];

    for (j, (digest, size)) in jobs.iter().zip(want) {
        let s = sized(&c, &cache, j, now).await;
        assert_eq!((&s.digest, s.size_bytes), (digest, size), "{}", j.reference);
        assert_eq!(s.platform, j.platform);
    }
    let first = reg.seen();
    assert_eq!(count(&first, "HEAD"), 2, "one HEAD per tag: {first:#?}");
    let gets: Vec<&str> = first
        .iter()
        .filter(|s| s.method == "GET")
        .map(|s| s.path.as_str())
        .collect();
    let mut distinct = gets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        gets.len(),
        distinct.len(),
        "no manifest is fetched twice: {gets:?}"
    );
    assert_eq!(
        gets.len(),
        4,
        "app, the index, and its two platform manifests: {gets:?}"
    );
    assert!(
        gets.iter().all(|g| g.contains("/manifests/sha256:")),
        "GETs go by digest: {gets:?}"
    );

    // Within the TTL, nothing reaches the registry.
    reg.clear();
    for (j, (digest, size)) in jobs.iter().zip(want) {
        let s = sized(&c, &cache, j, now + 3600).await;
        assert_eq!((&s.digest, s.size_bytes), (digest, size));
    }
    assert!(reg.seen().is_empty(), "second pass: {:#?}", reg.seen());

    // After the TTL each tag costs one HEAD, and no GET: the digests did not change.
    let later = now + 25 * 3600;
    for (j, (digest, size)) in jobs.iter().zip(want) {
        let s = sized(&c, &cache, j, later).await;
        assert_eq!((&s.digest, s.size_bytes), (digest, size));
    }
    let after = reg.seen();
    assert_eq!(count(&after, "HEAD"), 2, "{after:#?}");
    assert_eq!(count(&after, "GET"), 0, "{after:#?}");

    // The cache survives a restart: a new process (a fresh open) asks nothing either.
    drop(cache);
    let cache = Cache::open(&path);
    reg.clear();
    for (j, (_, size)) in jobs.iter().zip(want) {
        assert_eq!(sized(&c, &cache, j, later + 60).await.size_bytes, size);
    }
    assert!(reg.seen().is_empty(), "after reopening: {:#?}", reg.seen());
}

#[tokio::test]
async fn missing_images_fail_clearly_and_are_not_asked_again_for_a_while() {
    let reg = Registry::start().await;
    let h = reg.host.clone();
    let (_dir, cache) = fresh_cache();
    let c = client(&reg, 50.0);
    let j = job(&format!("{h}/team/missing:v0"), "linux/amd64");
    let now = jiff::Timestamp::now().as_second();
    let opts = LookupOptions::default();
    let Outcome::Failed {
        error, retry_at, ..
    } = resolve(&c, &cache, &opts, &j, now).await
    else {
        panic!("a missing image cannot be sized")
    };
    assert!(error.contains("not found"), "{error}");
    assert!(
        error.contains("team/missing"),
        "the error names the image: {error}"
    );
    assert_eq!(retry_at, now + opts.failure_ttl.as_secs() as i64);
    reg.clear();
    assert!(matches!(
        resolve(&c, &cache, &opts, &j, now + 60).await,
        Outcome::Failed { .. }
    ));
    assert!(
        reg.seen().is_empty(),
        "the failure is cached: {:#?}",
        reg.seen()
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_and_retried() {
    let (reg, p, _dir, cache) = pushed().await;
    let c = client(&reg, 50.0);
    reg.clear();
    let told = 1;
    reg.inject([too_many(told), too_many(told)]);
    let j = job(&format!("{}/team/app:v1", reg.host), "linux/amd64");
    let s = sized(&c, &cache, &j, jiff::Timestamp::now().as_second()).await;
    assert_eq!(s.size_bytes, p.app.size_bytes);
    let seen = reg.seen();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [429, 429, 200, 200], "{seen:#?}");
    for pair in seen[..3].windows(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= Duration::from_millis(told * 1000 - 20),
            "kq retried {waited:?} after a 429 that said Retry-After: {told}"
        );
    }
}

#[tokio::test]
async fn a_429_holds_every_request_to_that_host() {
    let (reg, p, _dir, cache) = pushed().await;
    // Two lookups at once, half a second apart by the rate limit; the first is told to
    // wait two seconds, and the second must wait with it.
    let c = client(&reg, 2.0);
    reg.clear();
    let told = 2;
    reg.inject([too_many(told)]);
    let now = jiff::Timestamp::now().as_second();
    let (a, b) = (
        job(&format!("{}/team/app:v1", reg.host), "linux/amd64"),
        job(&format!("{}/team/multi:v2", reg.host), "linux/amd64"),
    );
    let (sa, sb) = tokio::join!(sized(&c, &cache, &a, now), sized(&c, &cache, &b, now));
    assert_eq!(
        (sa.size_bytes, sb.size_bytes),
        (p.app.size_bytes, p.amd.size_bytes)
    );
    let seen = reg.seen();
    assert_eq!(seen[0].status, 429, "{seen:#?}");
    let (_, status) = c.statuses();
    assert_eq!(status.len(), 1, "{status:#?}");
    let st = &status[0];
    assert_eq!(
        (
            st.registry.as_str(),
            st.requests as usize,
            st.manifest_gets as usize
        ),
        (reg.host.as_str(), seen.len(), count(&seen, "GET"))
    );
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("429 Too Many Requests: waiting 2.0s")),
        "{st:#?}"
    );
    assert!(st.held_until >= st.last_error_at.map(|t| t + told as i64 - 1));
    for s in &seen[1..] {
        let after = s.at - seen[0].at;
        assert!(
            after >= Duration::from_millis(told * 1000 - 20),
            "{} {} went {after:?} after a 429 that said Retry-After: {told}",
            s.method,
            s.path
        );
    }
}

#[tokio::test]
async fn a_spent_pull_quota_stops_manifest_downloads_but_not_tag_lookups() {
    let (reg, p, _dir, cache) = pushed().await;
    let c = client(&reg, 50.0);
    let now = jiff::Timestamp::now().as_second();
    let app = job(&format!("{}/team/app:v1", reg.host), "linux/amd64");
    reg.pulls_left(Some("76;w=21600"));
    assert_eq!(
        sized(&c, &cache, &app, now).await.size_bytes,
        p.app.size_bytes
    );
    assert_eq!(c.statuses().1[0].pulls_remaining, Some(76));

    // No pull left: a new image's tag still resolves (HEADs are not pulls), but its
    // manifest is not downloaded until the window passes, and the error says why.
    reg.pulls_left(Some("0;w=60"));
    reg.clear();
    let multi = job(&format!("{}/team/multi:v2", reg.host), "linux/amd64");
    let Outcome::Failed {
        error, retry_at, ..
    } = resolve(&c, &cache, &LookupOptions::default(), &multi, now).await
    else {
        panic!("a manifest was downloaded with no pull left")
    };
    assert!(error.contains("pull quota"), "{error}");
    assert!(retry_at > now, "the lookup is tried again later");
    let methods: Vec<String> = reg.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["HEAD"]);
    let st = &c.statuses().1[0];
    assert_eq!(st.pulls_remaining, Some(0));
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("pull quota"))
    );
    assert!(st.held_until.is_some_and(|t| t >= now + 59), "{st:#?}");

    // An image whose digest is sized already costs no pull: once its tag expires it is
    // looked up again with a HEAD alone.
    reg.clear();
    let later = now + 25 * 3600;
    assert_eq!(
        sized(&c, &cache, &app, later).await.size_bytes,
        p.app.size_bytes
    );
    let methods: Vec<String> = reg.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["HEAD"]);
}

#[tokio::test]
async fn the_request_rate_never_exceeds_the_limit() {
    let reg = Registry::start().await;
    let tags = 6;
    for i in 0..tags {
        reg.push_image(
            "team/rated",
            Some(&format!("t{i}")),
            &[100 + i],
            "linux",
            "amd64",
        )
        .await;
    }
    reg.clear();
    let (_dir, cache) = fresh_cache();
    let limit = 4.0;
    let c = client(&reg, limit);
    let now = jiff::Timestamp::now().as_second();
    // Four lookups at a time, like kqd's workers, all to the same registry host.
    let jobs: Vec<Job> = (0..tags)
        .map(|i| job(&format!("{}/team/rated:t{i}", reg.host), "linux/amd64"))
        .collect();
    for chunk in jobs.chunks(4) {
        let runs = chunk.iter().map(|j| sized(&c, &cache, j, now));
        futures::future::join_all(runs).await;
    }
    let seen = reg.seen();
    assert_eq!(seen.len(), 2 * tags, "a HEAD and a GET per tag: {seen:#?}");
    let period = Duration::from_secs_f64(1.0 / limit);
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // A few milliseconds of slack for the loopback hop between kq and the proxy.
        assert!(
            gap + Duration::from_millis(15) >= period,
            "two requests {gap:?} apart at a limit of {limit}/s"
        );
    }
    let span = (seen.last().unwrap().at - seen[0].at).as_secs_f64();
    let rate = (seen.len() - 1) as f64 / span;
    assert!(
        rate <= limit * 1.02,
        "measured {rate:.2} requests/s at a limit of {limit}/s"
    );
}

/// Waits until `sql` prints `want`; on timeout, fails with kqd's log.
async fn expect_csv(env: &Env, kqd: &Kqd, sql: &str, want: &str, timeout: Duration) {
    env.wait_csv(sql, want, timeout)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", kqd.log()));
}

/// kqd, allowed to reach the test registry over plain HTTP, once `refs` of that registry's
/// references are in `image_refs`.
async fn kqd_sizing(env: &Env, h: &str, refs: usize) -> Kqd {
    let kqd = env.kqd_with(&[("KQ_INSECURE_REGISTRIES", h)]).await;
    expect_csv(
        env,
        &kqd,
        &format!("select count(*) from image_refs where ref like '{h}/%'"),
        &format!("count_star()\n{refs}\n"),
        Duration::from_secs(60),
    )
    .await;
    kqd
}

/// The test registry's references and the images they name, as csv.
async fn sized_rows(env: &Env, h: &str) -> String {
    env.csv(&format!(
        "select r.ref, i.image, i.size_bytes, i.source, i.platform, i.error is not null as failed
         from image_refs r join images i using (image) where r.ref like '{h}/%' order by r.ref"
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn kqd_sizes_every_pod_image_from_nodes_first_and_the_registry_second() {
    let env = Env::start(2, 12).await;
    let reg = Registry::start().await;
    let p = push(&reg).await;
    let cached = reg
        .push_image("team/cached", Some("v3"), &[4096], "linux", "amd64")
        .await;
    let h = reg.host.clone();
    let store = &env.fleet.clusters[0].store;
    // A node already holds team/cached:v3: its size must come from there, at no request.
    scenario::add_node_image(
        store,
        "node-001",
        &[
            &format!("{h}/team/cached@{}", cached.digest),
            &format!("{h}/team/cached:v3"),
        ],
        55_555,
    )
    .unwrap();
    let pods = [
        ("by-tag", format!("{h}/team/app:v1")),
        ("by-digest", format!("{h}/team/app@{}", p.app.digest)),
        ("multi", format!("{h}/team/multi:v2")),
        ("cached", format!("{h}/team/cached:v3")),
        ("missing", format!("{h}/team/missing:v0")),
    ];
    for (name, image) in &pods {
        scenario::create_pod(store, "default", name, image).unwrap();
    }
    // Init and ephemeral containers' images count too (these three are known already).
    let pod_rt = store.resolve_kind("v1", "Pod").unwrap();
    store
        .create(
            &pod_rt,
            "default",
            serde_json::json!({
                "metadata": {"name": "kinds"},
                "spec": {"nodeName": "node-002",
                         "initContainers": [{"name": "setup", "image": pods[2].1}],
                         "containers": [{"name": "main", "image": pods[0].1}],
                         "ephemeralContainers": [{"name": "debug", "image": pods[1].1}]},
                "status": {"phase": "Running"},
            }),
        )
        .unwrap();
    // The same tag in another cluster: still one lookup.
    scenario::create_pod(
        &env.fleet.clusters[1].store,
        "default",
        "by-tag",
        &pods[0].1,
    )
    .unwrap();
    reg.clear();
    let kqd = kqd_sizing(&env, &h, 5).await;
    let rows = sized_rows(&env, &h).await;
    let app_image = format!("{h}/team/app@{}", p.app.digest);
    let want = [
        format!(
            "{h}/team/app:v1,{app_image},{},registry,linux/amd64,false",
            p.app.size_bytes
        ),
        format!(
            "{h}/team/app@{},{app_image},{},registry,linux/amd64,false",
            p.app.digest, p.app.size_bytes
        ),
        format!(
            "{h}/team/cached:v3,{h}/team/cached@{},55555,node,linux/amd64,false",
            cached.digest
        ),
        format!("{h}/team/missing:v0,{h}/team/missing:v0,,,,true"),
        format!(
            "{h}/team/multi:v2,{h}/team/multi@{},{},registry,linux/amd64,false",
            p.index, p.amd.size_bytes
        ),
    ];
    let got: Vec<&str> = rows.lines().skip(1).collect();
    assert_eq!(got, want, "{}", kqd.log());
    let kinds = env
        .csv("select kind, size_bytes, source from container_images where pod = 'kinds' order by kind")
        .await
        .unwrap();
    assert_eq!(
        kinds,
        format!(
            "kind,size_bytes,source\ncontainer,{0},registry\nephemeral,{0},registry\ninit,{1},registry\n",
            p.app.size_bytes, p.amd.size_bytes
        )
    );
    // The tag and the digest of team/app are one image.
    let one = env
        .csv(&format!(
            "select count(*) from images where image like '{h}/team/app%'"
        ))
        .await
        .unwrap();
    assert_eq!(one.lines().nth(1), Some("1"));
    let seen = reg.seen();
    let heads = seen
        .iter()
        .filter(|s| s.method == "HEAD" && s.path == "/v2/team/app/manifests/v1")
        .count();
    assert_eq!(heads, 1, "one lookup for a tag two clusters use: {seen:#?}");
    assert!(
        seen.iter().all(|s| !s.path.contains("team/cached")),
        "a node-reported image reached the registry: {seen:#?}"
    );
    // `registries` counts what kqd asked, and only the test registry was asked: the images
    // of the simulator's pods (docker.io, ghcr.io, quay.io…) came from node status.
    env.wait_csv(
        "select registry, requests, manifest_gets from registries",
        &format!(
            "registry,requests,manifest_gets\n{h},{},{}\n",
            seen.len(),
            count(&seen, "GET")
        ),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{seen:#?}"));
    let error = env
        .csv(&format!(
            "select error from images where image = '{h}/team/missing:v0'"
        ))
        .await
        .unwrap();
    assert!(error.contains("not found"), "{error}");

    // Every image the simulator's pods run is reported by a node: all sized, none asked for.
    let unsized_ = env
        .csv(&format!(
            "select count(*) from container_images where image_ref not like '{h}/%' and (size_bytes is null or source <> 'node')"
        ))
        .await
        .unwrap();
    assert_eq!(unsized_.lines().nth(1), Some("0"), "{unsized_}");
    let generated = env
        .csv("select count(distinct image_ref) from containers where image_ref like 'docker.io/%'")
        .await
        .unwrap();
    assert_ne!(generated.lines().nth(1), Some("0"));

    // The README's query runs.
    let readme = include_str!("../../../README.md");
    let q = readme
        .split("```sql\n")
        .find(|b| b.contains("-- the biggest images per context"))
        .and_then(|b| b.split("```").next())
        .and_then(|b| b.split(';').next())
        .expect("the README shows the biggest images per context");
    let top = env.csv(q).await.unwrap();
    let n = env
        .csv(
            "select sum(n)::BIGINT, max(biggest) from (select least(5, count(distinct image)) as n, max(size_bytes) as biggest
             from container_images where size_bytes is not null group by context)",
        )
        .await
        .unwrap();
    let (n, biggest) = n.lines().nth(1).unwrap().split_once(',').unwrap();
    assert_eq!(
        top.lines().count() - 1,
        n.parse::<usize>().unwrap(),
        "{top}"
    );
    assert!(top.contains(&format!(",{biggest},")), "{top}");

    // A registry that answers 429 shows in `registries`, and kqd still sizes the image.
    let late = reg
        .push_image("team/late", Some("v1"), &[999], "linux", "amd64")
        .await;
    reg.inject([too_many(1)]);
    scenario::create_pod(store, "default", "late", &format!("{h}/team/late:v1")).unwrap();
    expect_csv(
        &env,
        &kqd,
        "select size_bytes from container_images where pod = 'late'",
        &format!("size_bytes\n{}\n", late.size_bytes),
        Duration::from_secs(30),
    )
    .await;
    expect_csv(&env, &kqd,
        "select last_status, last_error like '429 Too Many Requests%' as told, held_until > last_error_at as held
         from registries",
        "last_status,told,held\n200,true,true\n",
        Duration::from_secs(10),
    )
    .await;

    // The cache outlives kqd and its database: a new kqd on an empty inventory sizes the
    // same images without a single registry request.
    let sized_before = sized_rows(&env, &h).await;
    assert_eq!(sized_before.lines().count(), 1 + 6, "{sized_before}");
    kqd.terminate();
    std::fs::remove_dir_all(&env.data_dir).unwrap();
    reg.clear();
    let _kqd = kqd_sizing(&env, &h, 6).await;
    assert_eq!(sized_rows(&env, &h).await, sized_before);
    assert!(reg.seen().is_empty(), "after a restart: {:#?}", reg.seen());
}

#[tokio::test]
async fn a_shutdown_mid_lookup_leaves_nothing_half_written() {
    let env = Env::start(1, 2).await;
    let reg = Registry::start().await;
    let p = push(&reg).await;
    let h = reg.host.clone();
    let image = format!("{h}/team/app:v1");
    let store = &env.fleet.clusters[0].store;
    scenario::create_pod(store, "default", "waiting", &image).unwrap();
    // The registry tells kqd to come back in 30 s; kqd is stopped while it waits.
    reg.inject([too_many(30)]);
    let kqd = env
        .kqd_with(&[("KQ_INSECURE_REGISTRIES", h.as_str())])
        .await;
    expect_csv(
        &env,
        &kqd,
        "select last_status from registries",
        "last_status\n429\n",
        Duration::from_secs(30),
    )
    .await;
    let stopping = std::time::Instant::now();
    let status = kqd.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "kqd waited out the registry's Retry-After before stopping: {:?}",
        stopping.elapsed()
    );
    // The cache opens whole (nothing moved aside) and holds no answer for the abandoned
    // lookup, not even a partial one.
    let dir = env.dir.path().join(".cache/kq");
    let cache = Cache::open(&dir.join("images.sqlite"));
    let now = jiff::Timestamp::now().as_second();
    assert!(cache.tag(&image, now).is_none());
    assert!(cache.failure(&image, now).is_none());
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|f| !f.contains("unreadable")), "{files:?}");
    drop(cache);
    // The next kqd does the lookup in full.
    reg.clear();
    let _kqd = kqd_sizing(&env, &h, 1).await;
    assert_eq!(
        sized_rows(&env, &h).await,
        format!(
            "ref,image,size_bytes,source,platform,failed\n{image},{h}/team/app@{},{},registry,linux/amd64,false\n",
            p.app.digest, p.app.size_bytes
        )
    );
    let methods: Vec<String> = reg.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[tokio::test]
async fn anonymous_bearer_tokens_and_docker_config_credentials() {
    let reg = Registry::start().await;
    let p = push(&reg).await;
    let dir = tempfile::tempdir().unwrap();
    let now = jiff::Timestamp::now().as_second();
    let j = job(&format!("{}/team/app:v1", reg.host), "linux/amd64");

    // Docker Hub's flow: a 401 names a token realm, which hands out a token anonymously.
    reg.gate(Gate::Bearer);
    reg.clear();
    let cache = Cache::open(&dir.path().join("a.sqlite"));
    let s = sized(&client(&reg, 50.0), &cache, &j, now).await;
    assert_eq!(s.size_bytes, p.app.size_bytes);
    let seen = reg.seen();
    let flow: Vec<(String, u16, bool)> = seen
        .iter()
        .map(|s| {
            (
                format!("{} {}", s.method, s.path.split('?').next().unwrap()),
                s.status,
                s.authorization.as_deref() == Some("Bearer kq-test-token"),
            )
        })
        .collect();
    assert_eq!(
        flow,
        [
            ("HEAD /v2/team/app/manifests/v1".to_string(), 401, false),
            ("GET /token".to_string(), 200, false),
            ("HEAD /v2/team/app/manifests/v1".to_string(), 200, true),
            (
                format!("GET /v2/team/app/manifests/{}", p.app.digest),
                200,
                true
            ),
        ]
    );

    // A private registry: credentials from a docker config file, sent as Basic.
    reg.gate(Gate::Basic("robot".into(), "s3cret".into()));
    let config = format!(
        r#"{{"auths": {{"{}": {{"auth": "cm9ib3Q6czNjcmV0"}}}}}}"#,
        reg.host
    );
    let with_creds = Client::new(
        RegistryOptions {
            insecure: vec![reg.host.clone()],
            rate_per_sec: 50.0,
            ..Default::default()
        },
        Credentials::parse(config.as_bytes()).unwrap(),
    )
    .unwrap();
    let cache = Cache::open(&dir.path().join("b.sqlite"));
    assert_eq!(
        sized(&with_creds, &cache, &j, now).await.size_bytes,
        p.app.size_bytes
    );
    // Without them the answer is a clear, remembered refusal.
    let cache = Cache::open(&dir.path().join("c.sqlite"));
    let Outcome::Failed { error, .. } = resolve(
        &client(&reg, 50.0),
        &cache,
        &LookupOptions::default(),
        &j,
        now,
    )
    .await
    else {
        panic!("a private registry refuses anonymous lookups")
    };
    assert!(
        error.contains("unauthorized") && error.contains(&reg.host),
        "{error}"
    );
    assert!(!error.contains("s3cret"));
}

/// A registry that wants robot / s3cret, holding `team/private:v1`; its pushed manifest
/// and its full reference.
async fn private_registry() -> (Registry, Pushed, String) {
    let reg = Registry::start().await;
    let private = reg
        .push_image("team/private", Some("v1"), &[5000, 123], "linux", "amd64")
        .await;
    reg.gate(Gate::Basic("robot".into(), "s3cret".into()));
    let image = format!("{}/team/private:v1", reg.host);
    (reg, private, image)
}

/// A `regcred` pull secret for the registry at `h` (robot / s3cret), and a pod in
/// ImagePullBackOff that names it; returns the secret's base64 `.dockerconfigjson`.
fn private_pod(store: &kube_sim::store::Store, name: &str, image: &str, h: &str) -> String {
    use base64::Engine as _;
    let dockerconfig = base64::engine::general_purpose::STANDARD.encode(format!(
        r#"{{"auths": {{"{h}": {{"username": "robot", "password": "s3cret"}}}}}}"#
    ));
    let secret_rt = store.resolve_kind("v1", "Secret").unwrap();
    store
        .create(
            &secret_rt,
            "default",
            serde_json::json!({
                "metadata": {"name": "regcred"},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": dockerconfig},
            }),
        )
        .unwrap();
    let pod_rt = store.resolve_kind("v1", "Pod").unwrap();
    store
        .create(
            &pod_rt,
            "default",
            serde_json::json!({
                "metadata": {"name": name},
                "spec": {"nodeName": "node-001", "imagePullSecrets": [{"name": "regcred"}],
                         "containers": [{"name": "main", "image": image}]},
                "status": {"phase": "Pending", "containerStatuses": [{"name": "main", "image": image, "ready": false, "restartCount": 0,
                           "state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
            }),
        )
        .unwrap();
    dockerconfig
}

#[tokio::test]
async fn kqd_reads_a_pods_pull_secret_for_a_private_registry() {
    let env = Env::start(1, 4).await;
    let (reg, private, image) = private_registry().await;
    let h = reg.host.clone();
    let dockerconfig = private_pod(&env.fleet.clusters[0].store, "private", &image, &h);
    let kqd = env
        .kqd_with(&[("KQ_INSECURE_REGISTRIES", h.as_str())])
        .await;
    expect_csv(
        &env,
        &kqd,
        "select size_bytes, source from container_images where pod = 'private'",
        &format!("size_bytes,source\n{},registry\n", private.size_bytes),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        reg.seen().iter().any(|s| s.status == 200
            && s.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic "))),
        "{:#?}",
        reg.seen()
    );
    // The secret's value is in no log line (looked at before the probe below, whose own
    // SQL names it) and in no table.
    let log = kqd.log();
    let leaked: Vec<_> = log.lines().filter(|l| l.contains("s3cret")).collect();
    assert!(leaked.is_empty(), "{leaked:#?}");
    let dump = env
        .csv(&format!("select count(*) from objects where object::VARCHAR like '%s3cret%' or object::VARCHAR like '%{dockerconfig}%'"))
        .await
        .unwrap();
    assert_eq!(dump.lines().nth(1), Some("0"));
}

#[tokio::test]
async fn a_pull_secret_seen_later_elsewhere_sizes_an_image_refused_anonymously() {
    let env = Env::start(2, 4).await;
    let (reg, private, image) = private_registry().await;
    let h = reg.host.clone();
    // sim-1 runs the image with no pull secret (its nodes may have credentials of their
    // own): the anonymous lookup is refused, and the refusal is remembered.
    scenario::create_pod(&env.fleet.clusters[0].store, "default", "anon", &image).unwrap();
    let kqd = env
        .kqd_with(&[("KQ_INSECURE_REGISTRIES", h.as_str())])
        .await;
    expect_csv(
        &env,
        &kqd,
        &format!("select error like 'unauthorized%' as refused from images where name = '{image}'"),
        "refused\ntrue\n",
        Duration::from_secs(30),
    )
    .await;
    // A pod in sim-2 names a pull secret for it: kqd tries again at once, with it, and the
    // one image is sized for both pods.
    private_pod(&env.fleet.clusters[1].store, "private", &image, &h);
    env.wait_csv(
        &format!("select context, size_bytes, error from container_images where image_ref = '{image}' order by context"),
        &format!(
            "context,size_bytes,error\nsim-1,{0},\nsim-2,{0},\n",
            private.size_bytes
        ),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:#?}\n{}", reg.seen(), kqd.log()));
}
