//! The tenants `serve` runs with, swapped for a new set when the tenants file changes
//! (`crate::reload`): a call authenticates against one set, old or new, never a mix.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Tenants, TokenHash};
use crate::reload::{FileReads, Reloadable};

/// The current tenants; cheap to clone, each clone sees every change.
#[derive(Debug, Clone)]
pub struct LiveTenants(watch::Receiver<Arc<Tenants>>);

impl LiveTenants {
    /// A set that never changes (no file to follow).
    pub fn fixed(tenants: Tenants) -> LiveTenants {
        let (_sender, receiver) = watch::channel(Arc::new(tenants));
        LiveTenants(receiver)
    }

    /// Follows what a [`crate::reload::Reloader`] of a [`TenantsFile`] applies.
    pub fn following(receiver: watch::Receiver<Arc<Tenants>>) -> LiveTenants {
        LiveTenants(receiver)
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<Tenants> {
        Arc::clone(&self.0.borrow())
    }

    /// Waits for the next change; `None` once no change can come any more.
    pub async fn changed(&mut self) -> Option<Arc<Tenants>> {
        self.0.changed().await.ok()?;
        Some(Arc::clone(&self.0.borrow_and_update()))
    }
}

/// The tenants file as a reloadable file: the file, the push secrets it names, and the rule that
/// no tenant's token may be the gateway's.
#[derive(Debug)]
pub struct TenantsFile {
    pub path: PathBuf,
    /// `PAYBRIDGE_GATEWAY_TOKEN_SHA256`, if set.
    pub gateway_token: Option<TokenHash>,
}

impl TenantsFile {
    /// Reads and checks the file and its secrets; the error is one line.
    pub fn check(&self, reads: &mut FileReads) -> Result<Tenants, String> {
        let tenants =
            Tenants::load_recording(&self.path, reads).map_err(|error| error.to_string())?;
        if self
            .gateway_token
            .is_some_and(|hash| tenants.uses_token_hash(&hash))
        {
            return Err(format!(
                "tenants file {}: a tenant's token_sha256 is the gateway's \
                 (PAYBRIDGE_GATEWAY_TOKEN_SHA256): the gateway's token must differ from every tenant's",
                self.path.display()
            ));
        }
        Ok(tenants)
    }
}

impl Reloadable for TenantsFile {
    type Value = Tenants;
    const FILE: &'static str = "tenants";

    fn load(&self, reads: &mut FileReads) -> Result<Tenants, String> {
        self.check(reads)
    }
}
