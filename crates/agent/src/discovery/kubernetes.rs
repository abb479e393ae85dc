//! Pod metadata cache: the pods of this node from the API server, by UID.
//!
//! A watcher (list + watch, field selector `spec.nodeName=<node>`) keeps the
//! cache; a ReplicaSet's Deployment owner is looked up once per ReplicaSet.
//! Resource building only reads the cache (never waits on the network). A
//! process whose pod is not known yet gets cgroup-only attributes
//! (`k8s.pod.uid`, `container.id`), and its resource is rebuilt in the shared
//! map once the pod shows up. The API server being down, slow or refusing us
//! logs one rate-limited warning; spans and metrics keep flowing.

use super::Resources;
use crate::rate_limit::RateLimitedCount;
use autotel_model::{AttrValue, Resource};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// The fields of a core/v1 Pod we read. Not k8s-openapi's `Pod`: its
/// deserializer (every PodSpec field) is most of the binary growth.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub container_statuses: Option<Vec<ContainerStatus>>,
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

impl kube::Resource for Pod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `kubernetes.enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On when in-cluster configuration or KUBECONFIG is there.
    Auto,
    /// Must work: no usable cluster configuration is a configuration error.
    On,
    Off,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Mode::Auto),
            "true" | "on" | "yes" | "1" => Some(Mode::On),
            "false" | "off" | "no" | "0" => Some(Mode::Off),
            _ => None,
        }
    }
}

/// Attribute keys this module sets (replaced whenever a pod changes).
const KEYS: [&str; 9] = [
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.node.name",
    "k8s.container.name",
    "k8s.replicaset.name",
    "k8s.deployment.name",
    "k8s.daemonset.name",
    "k8s.statefulset.name",
    "k8s.job.name",
];

/// What the API server says about one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// Workload attributes from the owner chain, e.g.
    /// (`k8s.replicaset.name`, ..), (`k8s.deployment.name`, ..).
    pub owners: Vec<(&'static str, String)>,
    /// Container id (hex, runtime prefix removed) -> container name.
    pub containers: Vec<(String, String)>,
}

impl PodMeta {
    /// Resource attributes for a process of this pod in `container_id`.
    pub fn attributes(&self, container_id: Option<&str>) -> Vec<(String, AttrValue)> {
        let mut out: Vec<(String, AttrValue)> = vec![
            ("k8s.namespace.name".into(), self.namespace.clone().into()),
            ("k8s.pod.name".into(), self.name.clone().into()),
        ];
        if let Some(n) = &self.node {
            out.push(("k8s.node.name".into(), n.clone().into()));
        }
        if let Some(cid) = container_id {
            if let Some((_, name)) = self.containers.iter().find(|(id, _)| id == cid) {
                out.push(("k8s.container.name".into(), name.clone().into()));
            }
        }
        for (k, v) in &self.owners {
            out.push(((*k).into(), v.clone().into()));
        }
        out
    }
}

/// Pods of this node by UID (static pods also by their config hash, which
/// is what their cgroup path carries).
#[derive(Default)]
pub struct PodCache {
    pods: RwLock<HashMap<String, Arc<PodMeta>>>,
}

impl PodCache {
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// True when the entry changed.
    fn insert(&self, uids: &[String], meta: PodMeta) -> bool {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        let meta = Arc::new(meta);
        for uid in uids {
            if pods.get(uid).map(|m| m.as_ref()) != Some(meta.as_ref()) {
                pods.insert(uid.clone(), meta.clone());
                changed = true;
            }
        }
        changed
    }

    fn remove(&self, uids: &[String]) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        for uid in uids {
            pods.remove(uid);
        }
    }

    fn retain(&self, keep: &HashSet<String>) {
        self.pods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| keep.contains(uid));
    }

    pub fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Set once when Kubernetes metadata is on; resource building reads it.
static CACHE: OnceLock<Arc<PodCache>> = OnceLock::new();

fn attr_str<'a>(attrs: &'a [(String, AttrValue)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| match v {
            AttrValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
}

/// `attrs` with this module's keys replaced from `cache` for the pod named
/// by their `k8s.pod.uid`. None when nothing changes.
fn enriched(cache: &PodCache, attrs: &[(String, AttrValue)]) -> Option<Vec<(String, AttrValue)>> {
    let uid = attr_str(attrs, "k8s.pod.uid")?;
    let wanted = cache
        .get(uid)
        .map(|m| m.attributes(attr_str(attrs, "container.id")))
        .unwrap_or_default();
    let have: Vec<&(String, AttrValue)> = attrs
        .iter()
        .filter(|(k, _)| KEYS.contains(&k.as_str()))
        .collect();
    if have.len() == wanted.len() && have.iter().zip(&wanted).all(|(a, b)| *a == b) {
        return None;
    }
    let mut out: Vec<(String, AttrValue)> = attrs
        .iter()
        .filter(|(k, _)| !KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    // Right after k8s.pod.uid, so the k8s.* attributes stay together.
    let at = out
        .iter()
        .position(|(k, _)| k == "k8s.pod.uid")
        .map_or(out.len(), |i| i + 1);
    out.splice(at..at, wanted);
    Some(out)
}

/// Adds the API server's attributes to a resource being built (no-op when
/// Kubernetes metadata is off or the pod is not known yet).
pub fn enrich(attrs: &mut Vec<(String, AttrValue)>) {
    if let Some(cache) = CACHE.get() {
        if let Some(new) = enriched(cache, attrs) {
            *attrs = new;
        }
    }
}

/// Rebuilds the resources whose pod metadata changed (pod seen after its
/// processes, pod relabelled, owner found). Returns how many.
fn refresh(cache: &PodCache, resources: &Resources) -> usize {
    let updates: Vec<(u32, Arc<Resource>)> = resources
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(pid, r)| {
            enriched(cache, &r.attributes).map(|attributes| {
                (
                    *pid,
                    Arc::new(Resource {
                        service_name: r.service_name.clone(),
                        pid: r.pid,
                        attributes,
                    }),
                )
            })
        })
        .collect();
    let n = updates.len();
    if n > 0 {
        let mut map = resources.write().unwrap_or_else(|e| e.into_inner());
        for (pid, r) in updates {
            map.insert(pid, r);
        }
    }
    n
}

/// The controlling owner of an object (the one with `controller: true`).
fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<(&str, &str)> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.as_str(), r.name.as_str()))
}

/// Workload attributes from a pod's controller and, for a ReplicaSet, the
/// ReplicaSet's own controller.
pub fn owner_attributes(
    pod_owner: Option<(&str, &str)>,
    rs_owner: Option<(&str, &str)>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match pod_owner {
        Some(("ReplicaSet", rs)) => {
            out.push(("k8s.replicaset.name", rs.to_owned()));
            if let Some(("Deployment", d)) = rs_owner {
                out.push(("k8s.deployment.name", d.to_owned()));
            }
        }
        Some(("DaemonSet", n)) => out.push(("k8s.daemonset.name", n.to_owned())),
        Some(("StatefulSet", n)) => out.push(("k8s.statefulset.name", n.to_owned())),
        Some(("Job", n)) => out.push(("k8s.job.name", n.to_owned())),
        _ => {}
    }
    out
}

/// A Deployment's ReplicaSet is named `<deployment>-<pod-template-hash>`:
/// the Deployment name when the ReplicaSet cannot be read.
fn deployment_from_hash(rs: &str, pod: &Pod) -> Option<String> {
    let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
    rs.strip_suffix(hash.as_str())?
        .strip_suffix('-')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
}

/// The pod's metadata without the ReplicaSet lookup, the keys it is cached
/// under (UID, and the config hash of a static pod's mirror), and the
/// ReplicaSet to look up, if any.
pub fn pod_meta(pod: &Pod) -> Option<(Vec<String>, PodMeta, Option<String>)> {
    let md = &pod.metadata;
    let mut keys = vec![md.uid.clone()?];
    if let Some(hash) = md
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/config.mirror"))
    {
        keys.push(hash.to_ascii_lowercase());
    }
    let owner = controller(md.owner_references.as_ref());
    let rs = match owner {
        Some(("ReplicaSet", n)) => Some(n.to_owned()),
        _ => None,
    };
    let mut containers = Vec::new();
    if let Some(st) = &pod.status {
        for s in [
            st.container_statuses.as_ref(),
            st.init_container_statuses.as_ref(),
            st.ephemeral_container_statuses.as_ref(),
        ]
        .into_iter()
        .flatten()
        .flatten()
        {
            if let Some(id) = &s.container_id {
                // "containerd://<hex>", "cri-o://<hex>", "docker://<hex>".
                let hex = id.rsplit("://").next().unwrap_or(id);
                containers.push((hex.to_ascii_lowercase(), s.name.clone()));
            }
        }
    }
    let meta = PodMeta {
        namespace: md.namespace.clone().unwrap_or_default(),
        name: md.name.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        owners: owner_attributes(owner, None),
        containers,
    };
    Some((keys, meta, rs))
}

/// Usable cluster configuration for `mode`: Ok(None) when off (or `auto`
/// finds no cluster), Err for `true` without a usable configuration.
pub fn client_config(mode: Mode) -> Result<Option<kube::Config>, String> {
    if mode == Mode::Off {
        return Ok(None);
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists();
    let kubeconfig = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
    if mode == Mode::Auto && !in_cluster && !kubeconfig {
        tracing::debug!("kubernetes: no in-cluster configuration and no KUBECONFIG: metadata off");
        return Ok(None);
    }
    let rt = crate::export::runtime("the kubernetes configuration")
        .ok_or("kubernetes: cannot start a runtime")?;
    match rt.block_on(kube::Config::infer()) {
        Ok(c) => Ok(Some(c)),
        Err(e) if mode == Mode::On => Err(format!(
            "kubernetes.enabled is true (AUTOTEL_KUBERNETES) but no usable cluster configuration \
             was found: {e}. In a pod the service account (KUBERNETES_SERVICE_HOST and \
             /var/run/secrets/kubernetes.io/serviceaccount/token) is used, elsewhere KUBECONFIG \
             or ~/.kube/config; set kubernetes.enabled to auto or false to run without it"
        )),
        Err(e) => {
            tracing::warn!(
                "kubernetes: cluster configuration found but unusable ({e}): pod metadata off, \
                 resources keep the cgroup attributes (k8s.pod.uid, container.id)"
            );
            Ok(None)
        }
    }
}

/// Starts the pod watcher on its own thread; resources built from now on
/// consult its cache.
pub fn start(config: kube::Config, node: String, resources: Resources) -> std::io::Result<()> {
    let cache = CACHE.get_or_init(Default::default).clone();
    std::thread::Builder::new()
        .name("kubernetes".into())
        .spawn(move || {
            let Some(rt) = crate::export::runtime("kubernetes pod metadata (off)") else {
                return;
            };
            rt.block_on(watch(config, node, cache, resources));
        })?;
    Ok(())
}

/// Warnings about the API server: the first at once, then at most one per
/// interval (with how many were held back); one info when it works again.
struct Warn {
    limit: RateLimitedCount,
    failing: bool,
}

const WARN_EVERY: Duration = Duration::from_secs(300);

impl Warn {
    fn fail(&mut self, what: &str, node: &str) {
        self.failing = true;
        self.limit.add(1);
        let Some(n) = self.limit.due() else {
            return;
        };
        let held = n - 1;
        tracing::warn!(
            node,
            "kubernetes: API server: {what}; spans and metrics keep only the cgroup attributes \
             (k8s.pod.uid, container.id) until it answers (retrying; {held} similar errors \
             since the last warning)"
        );
    }

    fn ok(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("kubernetes: API server answers again");
        }
    }
}

/// One line for a client error: an API status is "HTTP 403 Forbidden: <message>"
/// (its Display would dump the whole Status structure).
fn client_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(st) => format!("HTTP {} {}: {}", st.code, st.reason, st.message),
        other => {
            // "client error (Connect): tcp connect error: Connection refused".
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

fn watch_error(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e) => format!("cannot list pods: {}", client_error(e)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            format!("cannot watch pods: {}", client_error(e))
        }
        watcher::Error::WatchError(st) => format!(
            "cannot watch pods: HTTP {} {}: {}",
            st.code, st.reason, st.message
        ),
        other => format!("cannot watch pods: {other}"),
    }
}

/// ReplicaSet -> Deployment, cached per ReplicaSet.
struct Owners {
    api_client: Client,
    /// (namespace, replicaset) -> its controller (kind, name).
    rs: HashMap<(String, String), Option<(String, String)>>,
}

const RS_CACHE_MAX: usize = 4096;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Owners {
    async fn replicaset_owner(
        &mut self,
        ns: &str,
        rs: &str,
        warn: &mut Warn,
        node: &str,
    ) -> Result<Option<(String, String)>, ()> {
        let key = (ns.to_owned(), rs.to_owned());
        if let Some(hit) = self.rs.get(&key) {
            return Ok(hit.clone());
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.api_client.clone(), ns);
        // Metadata only: the owner is all we need.
        let owner = match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(rs)).await {
            Ok(Ok(found)) => found.and_then(|r| {
                controller(r.metadata.owner_references.as_ref())
                    .map(|(k, n)| (k.to_owned(), n.to_owned()))
            }),
            Ok(Err(e)) => {
                warn.fail(
                    &format!("cannot get replicaset {ns}/{rs}: {}", client_error(&e)),
                    node,
                );
                return Err(());
            }
            Err(_) => {
                warn.fail(
                    &format!("getting replicaset {ns}/{rs} timed out after {LOOKUP_TIMEOUT:?}"),
                    node,
                );
                return Err(());
            }
        };
        if self.rs.len() >= RS_CACHE_MAX {
            self.rs.clear();
        }
        self.rs.insert(key, owner.clone());
        Ok(owner)
    }
}

/// Refresh period for resources built between a pod's arrival and their
/// insertion in the shared map.
const SWEEP: Duration = Duration::from_secs(5);
/// A pod list that has not completed by then is reported (an API server that
/// accepts connections but does not answer gives no error for minutes).
const LIST_WARN_AFTER: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn watch(config: kube::Config, node: String, cache: Arc<PodCache>, resources: Resources) {
    let mut warn = Warn {
        limit: RateLimitedCount::new(WARN_EVERY),
        failing: false,
    };
    // TCP connect and TLS handshake: kube's default is 30 s.
    let mut config = config;
    config.connect_timeout = Some(
        config
            .connect_timeout
            .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT)),
    );
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            warn.fail(&format!("cannot build a client: {e}"), &node);
            return;
        }
    };
    let mut owners = Owners {
        api_client: client.clone(),
        rs: HashMap::new(),
    };
    let pods: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(pods, wc).default_backoff().boxed();
    let mut listing: Option<HashSet<String>> = None;
    // Since when a complete pod list is awaited (None: in sync).
    let mut awaiting = Some(Instant::now());
    let mut synced_once = false;
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node = %node, "kubernetes: watching this node's pods for resource metadata");
    loop {
        let ev = tokio::select! {
            ev = stream.next() => match ev {
                Some(ev) => ev,
                None => return,
            },
            _ = sweep.tick() => {
                refresh(&cache, &resources);
                if awaiting.is_some_and(|t| t.elapsed() >= LIST_WARN_AFTER) {
                    warn.fail(
                        &format!("no complete pod list after {LIST_WARN_AFTER:?} (slow or hanging)"),
                        &node,
                    );
                    awaiting = Some(Instant::now());
                }
                continue;
            }
        };
        match ev {
            Err(e) => warn.fail(&watch_error(&e), &node),
            Ok(watcher::Event::Init) => {
                listing = Some(HashSet::new());
                awaiting.get_or_insert_with(Instant::now);
            }
            Ok(watcher::Event::InitApply(pod)) | Ok(watcher::Event::Apply(pod)) => {
                warn.ok();
                let Some((keys, mut meta, rs)) = pod_meta(&pod) else {
                    continue;
                };
                if let Some(rs) = rs {
                    match owners
                        .replicaset_owner(&meta.namespace, &rs, &mut warn, &node)
                        .await
                    {
                        Ok(owner) => {
                            meta.owners = owner_attributes(
                                Some(("ReplicaSet", &rs)),
                                owner.as_ref().map(|(k, n)| (k.as_str(), n.as_str())),
                            );
                        }
                        Err(()) => {
                            if let Some(d) = deployment_from_hash(&rs, &pod) {
                                meta.owners.push(("k8s.deployment.name", d));
                            }
                        }
                    }
                }
                if let Some(seen) = listing.as_mut() {
                    seen.extend(keys.iter().cloned());
                }
                if cache.insert(&keys, meta) {
                    let n = refresh(&cache, &resources);
                    tracing::debug!(pod = ?pod.metadata.name, resources = n, "kubernetes: pod metadata");
                }
            }
            Ok(watcher::Event::InitDone) => {
                warn.ok();
                awaiting = None;
                if let Some(seen) = listing.take() {
                    cache.retain(&seen);
                }
                if !synced_once {
                    synced_once = true;
                    tracing::info!(node = %node, pods = cache.len(), "kubernetes: pod metadata in sync");
                }
                refresh(&cache, &resources);
            }
            Ok(watcher::Event::Delete(pod)) => {
                // Resources already built keep their attributes: the
                // pod's processes are gone or going.
                if let Some((keys, _, _)) = pod_meta(&pod) {
                    cache.remove(&keys);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    const CID: &str = "3f6a1c0e9b2d4e5f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f";
    const UID: &str = "0f3c2a1e-5b6d-4c7e-9f80-1a2b3c4d5e6f";

    fn web_pod() -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": "web-7d4b9c8f6d-x2x9z", "namespace": "shop", "uid": UID,
                "labels": {"pod-template-hash": "7d4b9c8f6d"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "1"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6d",
                     "uid": "2", "controller": true}
                ]
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {"containerStatuses": [{
                "name": "app", "containerID": format!("containerd://{CID}"),
                "image": "i", "imageID": "", "ready": true, "restartCount": 0
            }]}
        }))
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("auto"), Some(Mode::Auto));
        assert_eq!(Mode::parse("TRUE"), Some(Mode::On));
        assert_eq!(Mode::parse("false"), Some(Mode::Off));
        assert_eq!(Mode::parse("maybe"), None);
        assert!(client_config(Mode::Off).unwrap().is_none());
    }

    #[test]
    fn owner_chains() {
        assert_eq!(
            owner_attributes(Some(("ReplicaSet", "web-1")), Some(("Deployment", "web"))),
            vec![
                ("k8s.replicaset.name", "web-1".to_owned()),
                ("k8s.deployment.name", "web".to_owned())
            ]
        );
        // A bare ReplicaSet (or one some other controller owns).
        assert_eq!(
            owner_attributes(Some(("ReplicaSet", "rs")), None),
            vec![("k8s.replicaset.name", "rs".to_owned())]
        );
        assert_eq!(
            owner_attributes(Some(("ReplicaSet", "rs")), Some(("Rollout", "r"))),
            vec![("k8s.replicaset.name", "rs".to_owned())]
        );
        for (kind, key) in [
            ("DaemonSet", "k8s.daemonset.name"),
            ("StatefulSet", "k8s.statefulset.name"),
            ("Job", "k8s.job.name"),
        ] {
            assert_eq!(
                owner_attributes(Some((kind, "x")), None),
                vec![(key, "x".to_owned())]
            );
        }
        assert!(owner_attributes(None, None).is_empty());
        assert!(owner_attributes(Some(("Node", "n")), None).is_empty());
    }

    #[test]
    fn pod_metadata_from_the_api_object() {
        let p = web_pod();
        let (keys, meta, rs) = pod_meta(&p).unwrap();
        assert_eq!(keys, vec![UID.to_owned()]);
        assert_eq!(rs.as_deref(), Some("web-7d4b9c8f6d"));
        assert_eq!(meta.namespace, "shop");
        assert_eq!(meta.name, "web-7d4b9c8f6d-x2x9z");
        assert_eq!(meta.node.as_deref(), Some("node-a"));
        assert_eq!(meta.containers, vec![(CID.to_owned(), "app".to_owned())]);
        assert_eq!(
            deployment_from_hash("web-7d4b9c8f6d", &p).as_deref(),
            Some("web")
        );
        assert_eq!(deployment_from_hash("other", &p), None);
        // A static pod's mirror is also found by its config hash.
        let mirror = pod(serde_json::json!({
            "metadata": {"name": "etcd-n", "namespace": "kube-system", "uid": UID,
                         "annotations": {"kubernetes.io/config.mirror": "ABCDEF0123"}},
        }));
        let (keys, meta, rs) = pod_meta(&mirror).unwrap();
        assert_eq!(keys, vec![UID.to_owned(), "abcdef0123".to_owned()]);
        assert!(meta.owners.is_empty() && rs.is_none());
    }

    #[test]
    fn resources_are_enriched_and_refreshed() {
        let cache = PodCache::default();
        let attrs: Vec<(String, AttrValue)> = vec![
            ("service.name".into(), "web".into()),
            ("container.id".into(), CID.into()),
            ("k8s.pod.uid".into(), UID.into()),
            ("process.pid".into(), AttrValue::Int(7)),
        ];
        // Pod not known yet: nothing to change.
        assert!(enriched(&cache, &attrs).is_none());
        let resources: Resources = Default::default();
        resources.write().unwrap().insert(
            7,
            Arc::new(Resource {
                service_name: "web".into(),
                pid: 7,
                attributes: attrs.clone(),
            }),
        );
        let (keys, mut meta, _) = pod_meta(&web_pod()).unwrap();
        meta.owners = owner_attributes(
            Some(("ReplicaSet", "web-7d4b9c8f6d")),
            Some(("Deployment", "web")),
        );
        assert!(cache.insert(&keys, meta.clone()));
        assert!(!cache.insert(&keys, meta));
        assert_eq!(refresh(&cache, &resources), 1);
        let r = resources.read().unwrap().get(&7).unwrap().clone();
        let get = |k: &str| attr_str(&r.attributes, k).map(str::to_owned);
        assert_eq!(get("k8s.namespace.name").as_deref(), Some("shop"));
        assert_eq!(get("k8s.pod.name").as_deref(), Some("web-7d4b9c8f6d-x2x9z"));
        assert_eq!(get("k8s.node.name").as_deref(), Some("node-a"));
        assert_eq!(get("k8s.container.name").as_deref(), Some("app"));
        assert_eq!(
            get("k8s.replicaset.name").as_deref(),
            Some("web-7d4b9c8f6d")
        );
        assert_eq!(get("k8s.deployment.name").as_deref(), Some("web"));
        assert_eq!(get("k8s.pod.uid").as_deref(), Some(UID));
        assert_eq!(get("container.id").as_deref(), Some(CID));
        assert_eq!(r.attributes.len(), attrs.len() + 6);
        // Up to date: a second pass changes nothing.
        assert_eq!(refresh(&cache, &resources), 0);
        // Processes outside pods are left alone.
        let plain = vec![("service.name".to_string(), AttrValue::from("x"))];
        assert!(enriched(&cache, &plain).is_none());
    }
}
