//! The wider inventory end to end: typed tables with real column values, secrets without
//! their values, the change history, and cluster identity.

use std::time::Duration;

use kq_e2e::Env;
use kube_sim::scenario;
use serde_json::{Value, json};

fn create(c: &kube_sim::Cluster, api_version: &str, kind: &str, ns: &str, obj: Value) -> Value {
    let rt = c.store.resolve_kind(api_version, kind).unwrap();
    c.store.create(&rt, ns, obj).unwrap().value()
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_tables_hold_the_fields_people_filter_on() {
    let env = Env::start(1, 20).await;
    let c = env.fleet.clusters[0].clone();
    create(
        &c,
        "v1",
        "Namespace",
        "",
        json!({"metadata": {"name": "shop"}}),
    );
    create(
        &c,
        "apps/v1",
        "Deployment",
        "shop",
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "strategy": {"type": "Recreate"},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
            "status": {"replicas": 3, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 3, "observedGeneration": 1},
        }),
    );
    create(
        &c,
        "v1",
        "Service",
        "shop",
        json!({
            "metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
        }),
    );
    create(
        &c,
        "v1",
        "ConfigMap",
        "shop",
        json!({"metadata": {"name": "cfg"}, "data": {"a.conf": "12345", "b": "xy"}}),
    );
    create(
        &c,
        "batch/v1",
        "CronJob",
        "shop",
        json!({"metadata": {"name": "nightly"}, "spec": {"schedule": "0 3 * * *", "suspend": true,
        "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "j", "image": "busybox"}]}}}}}}),
    );
    create(
        &c,
        "batch/v1",
        "Job",
        "shop",
        json!({"metadata": {"name": "once"}, "spec": {"completions": 2, "backoffLimit": 1,
        "template": {"spec": {"containers": [{"name": "j", "image": "busybox"}], "restartPolicy": "Never"}}}, "status": {"active": 1}}),
    );
    scenario::fail_job(&c.store, "shop", "once", "BackoffLimitExceeded").unwrap();
    scenario::warning_event(
        &c.store,
        "shop",
        "Pod",
        "web-1",
        "BackOff",
        "Back-off restarting failed container",
    )
    .unwrap();
    let _kqd = env.kqd().await;
    env.wait_csv(
        "select name, desired, ready, available, updated, strategy, selector->'matchLabels'->>'app' as sel from deployments where namespace = 'shop'",
        "name,desired,ready,available,updated,strategy,sel\nweb,3,1,1,3,Recreate,web\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    env.wait_csv(
        "select type, cluster_ip, load_balancer_ingress->0->>'ip' as lb, ports->0->>'port' as port from services where namespace = 'shop'",
        "type,cluster_ip,lb,port\nLoadBalancer,10.96.0.10,203.0.113.7,80\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    env.wait_csv(
        "select keys::VARCHAR as keys, data_bytes from configmaps where namespace = 'shop'",
        "keys,data_bytes\n\"[\"\"a.conf\"\",\"\"b\"\"]\",7\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    env.wait_csv(
        "select schedule, suspend from cronjobs where name = 'nightly'",
        "schedule,suspend\n0 3 * * *,true\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    env.wait_csv(
        "select completions, backoff_limit, active, failed, conditions->0->>'reason' as why from jobs where name = 'once'",
        "completions,backoff_limit,active,failed,why\n2,1,0,2,BackoffLimitExceeded\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    env.wait_csv(
        "select type, reason, involved_kind, involved_name, reporting_component from events where reason = 'BackOff'",
        "type,reason,involved_kind,involved_name,reporting_component\nWarning,BackOff,Pod,web-1,kubelet\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // ReplicaSets say which Deployment owns them, and their counts match the simulator.
    let rs_rt = c.store.resolve_kind("apps/v1", "ReplicaSet").unwrap();
    let n_rs = c
        .store
        .list(&rs_rt, &Default::default(), None, None)
        .unwrap()
        .items
        .len();
    env.wait_csv(
        "select count(*) filter (owner_kind = 'Deployment') as owned, count(*) as n from replicasets",
        &format!("owned,n\n{n_rs},{n_rs}\n"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // The cluster is identified by its kube-system namespace.
    let ns_rt = c.store.resolve_kind("v1", "Namespace").unwrap();
    let kube_system = c.store.get(&ns_rt, "", "kube-system").unwrap().uid.clone();
    env.wait_csv(
        "select cluster_id from contexts",
        &format!("cluster_id\n{kube_system}\n"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_value_never_reaches_the_database_file() {
    let env = Env::start(1, 5).await;
    let c = env.fleet.clusters[0].clone();
    let marker = format!("s3cr3t-{}", std::process::id());
    let encoded = {
        use std::io::Write as _;
        let mut out = Vec::new();
        // base64 by hand keeps this test free of another dependency.
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for chunk in marker.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        out.flush().unwrap();
        String::from_utf8(out).unwrap()
    };
    create(
        &c,
        "v1",
        "Secret",
        "default",
        json!({"metadata": {"name": "db-password"}, "type": "Opaque",
        "data": {"password": encoded}, "stringData": {"token": marker}}),
    );
    let kqd = env.kqd().await;
    env.wait_csv(
        "select name, type, keys::VARCHAR as keys from secrets",
        "name,type,keys\ndb-password,Opaque,\"[\"\"password\"\",\"\"token\"\"]\"\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(kqd.terminate().success());
    let mut scanned = 0;
    for entry in std::fs::read_dir(&env.data_dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        scanned += bytes.len();
        for needle in [marker.as_bytes(), encoded.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a secret value is in the database files"
            );
        }
    }
    assert!(scanned > 0, "the database files were read");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_typed_objects_json_is_the_servers_own_less_its_managed_fields() {
    // k8s-openapi's Deployment knows neither `spec.rolloutBudget` nor a status member a
    // newer controller might write: the `objects` row keeps them, from the list and from
    // the watch alike, as the server sent them.
    let env = Env::start(1, 5).await;
    let c = env.fleet.clusters[0].clone();
    create(
        &c,
        "apps/v1",
        "Deployment",
        "default",
        json!({
            "metadata": {"name": "shop", "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"replicas": 2, "rolloutBudget": {"maxPerHour": 3},
                     "selector": {"matchLabels": {"app": "shop"}},
                     "template": {"metadata": {"labels": {"app": "shop"}},
                                  "spec": {"containers": [{"name": "shop", "image": "shop:1"}]}}},
        }),
    );
    let _kqd = env.kqd().await;
    let sql = "select object->>'apiVersion' as api, object->>'kind' as kind, \
               object->'spec'->'rolloutBudget'->>'maxPerHour' as budget, \
               object->'status'->>'rolloutPhase' as phase, \
               (object->'metadata'->'managedFields') is null as stripped \
               from objects where resource = 'deployments' and name = 'shop'";
    env.wait_csv(
        sql,
        "api,kind,budget,phase,stripped\napps/v1,Deployment,3,,true\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let rt = c.store.resolve_kind("apps/v1", "Deployment").unwrap();
    for (body, status) in [
        (
            &br#"{"spec":{"rolloutBudget":{"maxPerHour":5}}}"#[..],
            false,
        ),
        (&br#"{"status":{"rolloutPhase":"Steady"}}"#[..], true),
    ] {
        c.store
            .patch(
                &rt,
                "default",
                "shop",
                kube_sim::patch::PatchType::Merge,
                body,
                status,
            )
            .unwrap();
    }
    env.wait_csv(
        sql,
        "api,kind,budget,phase,stripped\napps/v1,Deployment,5,Steady,true\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_record_create_update_and_delete_in_order() {
    let env = Env::start(1, 5).await;
    let c = env.fleet.clusters[0].clone();
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    scenario::create_pod(&c.store, "default", "tracked", "nginx:1").unwrap();
    env.wait_csv(
        "select count(*) from pods where name = 'tracked'",
        "count_star()\n1\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    scenario::crash_container(&c.store, "default", "tracked", "main", 1, "Error", None).unwrap();
    env.wait_csv(
        "select restarts from pods where name = 'tracked'",
        "restarts\n1\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    scenario::delete(&c.store, "v1", "Pod", "default", "tracked").unwrap();
    env.wait_csv(
        "select kind, namespace, operation from changes where name = 'tracked' order by changed_at, operation = 'delete'",
        "kind,namespace,operation\npods,default,add\npods,default,modify\npods,default,delete\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // "What changed in the last hour" is one query.
    let out = env
        .csv("select count(*) > 0 as any from changes where changed_at > ago(interval 1 hour)")
        .await
        .unwrap();
    assert_eq!(out, "any\ntrue\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_created_at_runtime_gets_its_objects_into_objects_and_deleting_it_removes_them() {
    let env = Env::start(1, 5).await;
    let c = env.fleet.clusters[0].clone();
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    create(
        &c,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        json!({
            "metadata": {"name": "httproutes.gateway.networking.k8s.io"},
            "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                     "names": {"plural": "httproutes", "singular": "httproute", "kind": "HTTPRoute"},
                     "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]},
        }),
    );
    let started = std::time::Instant::now();
    create(
        &c,
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "default",
        json!({
            "metadata": {"name": "shop", "labels": {"team": "web"}, "managedFields": [{"manager": "kubectl"}]},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
        }),
    );
    env.wait_csv(
        "select api_group, version, kind, resource, namespace, name, labels->>'team' as team, object->'spec'->'rules'->0->'backendRefs'->0->>'name' as backend, (object->'metadata'->'managedFields') is null as stripped from objects where kind = 'HTTPRoute'",
        "api_group,version,kind,resource,namespace,name,team,backend,stripped\ngateway.networking.k8s.io,v1,HTTPRoute,httproutes,default,shop,web,web,true\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    eprintln!("custom object queryable after {:?}", started.elapsed());
    scenario::delete(
        &c.store,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        "httproutes.gateway.networking.k8s.io",
    )
    .unwrap();
    env.wait_csv(
        "select count(*) from objects where resource = 'httproutes'",
        "count_star()\n0\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Its status row goes with it.
    env.wait_csv(
        "select count(*) from resources where resource = 'httproutes'",
        "count_star()\n0\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pod_has_its_top_controller() {
    let env = Env::start(1, 40).await;
    let c = env.fleet.clusters[0].clone();
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    // The generator makes Deployment→ReplicaSet→Pod, StatefulSet→Pod and Job→Pod chains.
    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    let mut want = std::collections::BTreeMap::<String, usize>::new();
    for p in c
        .store
        .list(&rt, &Default::default(), None, None)
        .unwrap()
        .items
    {
        let kind = p.value()["metadata"]["ownerReferences"][0]["kind"]
            .as_str()
            .unwrap()
            .to_string();
        let top = if kind == "ReplicaSet" {
            "Deployment".to_string()
        } else {
            kind
        };
        *want.entry(top).or_default() += 1;
    }
    let mut expected = String::from("top_kind,n\n");
    for (k, n) in &want {
        expected.push_str(&format!("{k},{n}\n"));
    }
    env.wait_csv(
        "select top_kind, count(*) as n from pod_controllers group by 1 order by 1",
        &expected,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // The top name of a Deployment's pod is the Deployment's name. The chain above comes
    // from the ReplicaSets' owners; the Deployments are another watcher's, so wait for them.
    env.wait_csv(
        "select count(*) as n from pod_controllers pc join deployments d on d.context = pc.context and d.namespace = pc.namespace and d.name = pc.top_name where pc.top_kind = 'Deployment'",
        &format!("n\n{}\n", want["Deployment"]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_rbac_forbids_are_skipped_reported_and_not_retried_in_a_loop() {
    let env = Env::start(1, 10).await;
    let c = env.fleet.clusters[0].clone();
    c.faults.forbid("", "secrets");
    c.faults.forbid("", "serviceaccounts");
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    env.wait_csv(
        "select resource, state, error like '%forbidden%' as why from resources where state <> 'ready' order by 1",
        "resource,state,why\nsecrets,forbidden,true\nserviceaccounts,forbidden,true\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // One forbidden kind does not hold the context back, and the rest is synced and counted.
    env.wait_csv(
        "select state from contexts",
        "state\nready\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let out = env.csv("select object_count > 0 as counted, synced_at is not null as synced from resources where resource = 'pods'").await.unwrap();
    assert_eq!(out, "counted,synced\ntrue,true\n");
    // Skipped, not hammered: a handful of attempts at most, however long the test ran.
    let attempts = c
        .traffic
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/secrets") && r.status == 403)
        .count();
    assert!(
        (1..=3).contains(&attempts),
        "{attempts} requests for a forbidden resource"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn networking_storage_and_access_tables_are_filled() {
    let env = Env::start(1, 3).await;
    let c = env.fleet.clusters[0].clone();
    create(
        &c,
        "networking.k8s.io/v1",
        "Ingress",
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "shop.example.com"}], "tls": [{"hosts": ["shop.example.com"], "secretName": "tls"}]}}),
    );
    create(
        &c,
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "default",
        json!({"metadata": {"name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    create(
        &c,
        "storage.k8s.io/v1",
        "StorageClass",
        "",
        json!({"metadata": {"name": "fast",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "ebs.csi.aws.com", "reclaimPolicy": "Delete"}),
    );
    create(
        &c,
        "v1",
        "PersistentVolume",
        "",
        json!({"metadata": {"name": "pv-1"},
        "spec": {"capacity": {"storage": "10Gi"}, "storageClassName": "fast", "persistentVolumeReclaimPolicy": "Retain",
                 "accessModes": ["ReadWriteOnce"], "claimRef": {"namespace": "default", "name": "data"}},
        "status": {"phase": "Bound"}}),
    );
    create(
        &c,
        "v1",
        "PersistentVolumeClaim",
        "default",
        json!({"metadata": {"name": "data"},
        "spec": {"resources": {"requests": {"storage": "5Gi"}}, "storageClassName": "fast", "volumeName": "pv-1", "accessModes": ["ReadWriteOnce"]},
        "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}}}),
    );
    create(
        &c,
        "rbac.authorization.k8s.io/v1",
        "Role",
        "default",
        json!({"metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    );
    create(
        &c,
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "",
        json!({"metadata": {"name": "admins"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "ops", "apiGroup": "rbac.authorization.k8s.io"}]}),
    );
    let _kqd = env.kqd().await;
    let checks = [
        (
            "select class, hosts->>0 as host, tls_hosts->>0 as tls from ingresses",
            "class,host,tls\nnginx,shop.example.com,shop.example.com\n",
        ),
        (
            "select policy_types->>0 as t from networkpolicies",
            "t\nIngress\n",
        ),
        (
            "select provisioner, is_default from storageclasses",
            "provisioner,is_default\nebs.csi.aws.com,true\n",
        ),
        (
            "select capacity_bytes, reclaim_policy, phase, claim_name from persistentvolumes",
            "capacity_bytes,reclaim_policy,phase,claim_name\n10737418240,Retain,Bound,data\n",
        ),
        (
            "select requested_bytes, capacity_bytes, volume_name from persistentvolumeclaims",
            "requested_bytes,capacity_bytes,volume_name\n5368709120,10737418240,pv-1\n",
        ),
        (
            "select rules->0->'verbs'->>1 as verb from roles",
            "verb\nlist\n",
        ),
        (
            "select role_kind, role_name, subjects->0->>'name' as who from clusterrolebindings",
            "role_kind,role_name,who\nClusterRole,cluster-admin,ops\n",
        ),
        (
            "select count(*) as n from serviceaccounts where name = 'default'",
            "n\n4\n",
        ),
    ];
    env.wait_all(&checks, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_autoscalers_budgets_and_crds_are_filled() {
    let env = Env::start(1, 3).await;
    let c = env.fleet.clusters[0].clone();
    create(
        &c,
        "v1",
        "Endpoints",
        "default",
        json!({"metadata": {"name": "web"},
        "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "notReadyAddresses": [{"ip": "10.0.0.3"}], "ports": [{"port": 80}]}]}),
    );
    create(
        &c,
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 10},
        "status": {"currentReplicas": 3, "desiredReplicas": 4}}),
    );
    create(
        &c,
        "policy/v1",
        "PodDisruptionBudget",
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}},
        "status": {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1, "expectedPods": 3}}),
    );
    create(
        &c,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        json!({
        "metadata": {"name": "certificates.cert-manager.io"},
        "spec": {"group": "cert-manager.io", "scope": "Namespaced", "names": {"plural": "certificates", "kind": "Certificate"},
                 "versions": [{"name": "v1", "served": true, "storage": true}]}}),
    );
    let _kqd = env.kqd().await;
    let checks = [
        (
            "select ready_addresses, not_ready_addresses from endpoints where name = 'web'",
            "ready_addresses,not_ready_addresses\n2,1\n",
        ),
        (
            "select target_kind, target_name, min_replicas, max_replicas, current_replicas, desired_replicas from horizontalpodautoscalers",
            "target_kind,target_name,min_replicas,max_replicas,current_replicas,desired_replicas\nDeployment,web,2,10,3,4\n",
        ),
        (
            "select min_available, disruptions_allowed from poddisruptionbudgets",
            "min_available,disruptions_allowed\n50%,1\n",
        ),
        (
            "select api_group, kind, plural, scope, versions::VARCHAR as v, established from crds",
            "api_group,kind,plural,scope,v,established\ncert-manager.io,Certificate,certificates,Namespaced,\"[\"\"v1\"\"]\",true\n",
        ),
    ];
    env.wait_all(&checks, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn statefulsets_daemonsets_clusterroles_and_rolebindings_are_filled() {
    let env = Env::start(1, 3).await;
    let c = env.fleet.clusters[0].clone();
    create(
        &c,
        "apps/v1",
        "StatefulSet",
        "default",
        json!({"metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "updateStrategy": {"type": "OnDelete"},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres"}]}}},
        "status": {"replicas": 3, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 3, "observedGeneration": 1}}),
    );
    create(
        &c,
        "apps/v1",
        "DaemonSet",
        "default",
        json!({"metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "agent"}]}}},
        "status": {"desiredNumberScheduled": 4, "currentNumberScheduled": 4, "numberReady": 3, "numberAvailable": 3, "updatedNumberScheduled": 4, "numberMisscheduled": 0}}),
    );
    create(
        &c,
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "",
        json!({"metadata": {"name": "viewer"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]}),
    );
    create(
        &c,
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "default",
        json!({"metadata": {"name": "devs"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "viewer"},
        "subjects": [{"kind": "User", "name": "ana", "apiGroup": "rbac.authorization.k8s.io"}]}),
    );
    let _kqd = env.kqd().await;
    let checks = [
        (
            "select desired, current, ready, updated, strategy, generation, observed_generation from statefulsets where name = 'db'",
            "desired,current,ready,updated,strategy,generation,observed_generation\n3,3,2,3,OnDelete,1,1\n",
        ),
        (
            "select desired, current, ready, available, updated from daemonsets where name = 'agent'",
            "desired,current,ready,available,updated\n4,4,3,3,4\n",
        ),
        (
            "select rules->0->'resources'->>0 as res from clusterroles where name = 'viewer'",
            "res\ndeployments\n",
        ),
        (
            "select namespace, role_kind, role_name, subjects->0->>'name' as who from rolebindings where name = 'devs'",
            "namespace,role_kind,role_name,who\ndefault,ClusterRole,viewer,ana\n",
        ),
    ];
    env.wait_all(&checks, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_namespaces_pods_and_containers_hold_plain_numbers_and_states() {
    let env = Env::start(1, 3).await;
    let c = env.fleet.clusters[0].clone();
    scenario::create_pod(&c.store, "default", "probe", "nginx:1.27").unwrap();
    scenario::crash_container(
        &c.store,
        "default",
        "probe",
        "main",
        1,
        "Error",
        Some("boom"),
    )
    .unwrap();
    let _kqd = env.kqd().await;
    let checks = [
        (
            "select ready, cpu_capacity_m, memory_capacity_bytes, cpu_allocatable_m, pods_capacity, kubelet_version, os, arch, image_count > 0 as imgs from nodes where name = 'node-001'",
            "ready,cpu_capacity_m,memory_capacity_bytes,cpu_allocatable_m,pods_capacity,kubelet_version,os,arch,imgs\nTrue,4000,16454762496,3920,110,v1.33.0,linux,amd64,true\n",
        ),
        (
            "select phase, labels->>'kubernetes.io/metadata.name' as n from namespaces where name = 'default'",
            "phase,n\nActive,default\n",
        ),
        (
            "select phase, node, ready, restarts, containers from pods where name = 'probe'",
            "phase,node,ready,restarts,containers\nRunning,node-001,false,1,1\n",
        ),
        (
            "select kind, image, state, reason, restart_count, last_exit_code, last_reason, cpu_request_m, memory_request_bytes, memory_limit_bytes, cpu_limit_m from containers where pod = 'probe'",
            "kind,image,state,reason,restart_count,last_exit_code,last_reason,cpu_request_m,memory_request_bytes,memory_limit_bytes,cpu_limit_m\ncontainer,nginx:1.27,waiting,CrashLoopBackOff,1,1,Error,100,134217728,268435456,\n",
        ),
    ];
    env.wait_all(&checks, Duration::from_secs(30)).await;
}

/// A restart relists everything. Objects that did not change while kqd was down must not be
/// rewritten or recorded again, one that was deleted must go (recorded once), and the
/// per-resource counts must stay right.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_records_only_what_changed_while_down() {
    let env = Env::start(1, 20).await;
    let c = env.fleet.clusters[0].clone();
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let ready = "n\n1\n";
    let ready_sql = "select count(*) as n from contexts where state = 'ready'";
    env.wait_csv(ready_sql, ready, Duration::from_secs(30))
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let env = &env;
        async move { env.csv(sql).await.unwrap() }
    };
    let changes_before = count("select count(*) from changes").await;
    assert!(kqd.terminate().success());

    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    let pods = c.store.list(&rt, &Default::default(), None, None).unwrap();
    let victim = &pods.items[0];
    let victim = (victim.namespace.clone(), victim.name.clone());
    scenario::delete(&c.store, "v1", "Pod", &victim.0, &victim.1).unwrap();
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    env.wait_csv(ready_sql, ready, Duration::from_secs(30))
        .await
        .unwrap();

    let n: i64 = changes_before.lines().nth(1).unwrap().parse().unwrap();
    let last = env
        .csv("select kind, operation, name from changes order by changed_at desc limit 1")
        .await
        .unwrap();
    assert_eq!(
        last,
        format!("kind,operation,name\npods,delete,{}\n", victim.1),
        "the pod deleted while kqd was down is recorded"
    );
    let total = env.csv("select count(*) from changes").await.unwrap();
    assert_eq!(
        total,
        format!("count_star()\n{}\n", n + 1),
        "nothing else was recorded"
    );
    let pods = kq_e2e::sim_pod_uids(&c).len();
    env.wait_csv(
        "select object_count from resources where resource = 'pods'",
        &format!("object_count\n{pods}\n"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}
