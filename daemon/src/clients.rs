//! The API client of every connected context, registered by its supervisor when it
//! connects, for the parts that ask a cluster something beside the watches: image sizing
//! (pull secrets) and crash logs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Each connected context's client, by context name.
#[derive(Default)]
pub struct Clients(Mutex<HashMap<Arc<str>, kube::Client>>);

impl Clients {
    pub fn set(&self, context: &Arc<str>, client: kube::Client) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(context.clone(), client);
    }

    /// The context's client, when it has connected.
    pub fn get(&self, context: &str) -> Option<kube::Client> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(context)
            .cloned()
    }
}
