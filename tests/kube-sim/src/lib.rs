//! kube-sim: a Kubernetes API simulator that speaks the real wire protocol (discovery,
//! list/watch with resource versions, create/update/patch/delete, Status errors) over
//! HTTPS with bearer tokens, plus a generator of realistic objects, scripted scenarios and
//! fault injection. kq's end-to-end tests, benchmarks and demo stand on it.

pub mod api;
pub mod cluster;
pub mod faults;
pub mod fleet;
pub mod generate;
pub mod logs;
pub mod patch;
pub mod resources;
pub mod scenario;
pub mod selectors;
pub mod status;
pub mod store;
pub mod tls;

pub use cluster::{Cluster, ClusterOptions};
pub use fleet::{Fleet, FleetOptions};
pub use generate::GenSpec;
