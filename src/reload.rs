//! Files `serve` picks up again while it runs: the tenants file (and the push secrets it names),
//! and the TLS certificate, key and client CA of the gRPC port. Kubernetes updates a mounted
//! Secret by swapping a symlink, and cert-manager renews certificates every few weeks; neither
//! should need a restart.
//!
//! A [`Reloader`] polls: every interval it reads the files again (they are small) and compares a
//! hash of everything it read with the last one. Only a change is parsed into a new value, which
//! replaces the old one in one step (a `watch` channel: every reader sees the old set or the new
//! one, never a mix). A file that does not check out leaves the old value in place; it is logged
//! once per distinct content, with what is wrong, and counted in
//! `paybridge_config_reloads_total{file, result="rejected"}`, and
//! `paybridge_config_file_rejected{file}` stays 1 until a good file replaces it. Health is not
//! touched: the process keeps serving with what it had.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::metrics::{FileLabels, METRICS, ReloadLabels};

/// Everything one load read, hashed: each file's path and its bytes (or the kind of error that
/// kept it from being read), in the order read.
#[derive(Debug, Default)]
pub struct FileReads(Sha256);

/// What a [`FileReads`] saw: equal when the same files held the same bytes.
pub type Fingerprint = [u8; 32];

impl FileReads {
    pub fn new() -> FileReads {
        FileReads::default()
    }

    /// Reads `path`, recording what was read.
    pub fn read(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        let read = std::fs::read(path);
        let name = path.as_os_str().as_encoded_bytes();
        self.0.update((name.len() as u64).to_be_bytes());
        self.0.update(name);
        match &read {
            Ok(bytes) => {
                self.0.update([1]);
                self.0.update((bytes.len() as u64).to_be_bytes());
                self.0.update(bytes);
            }
            Err(error) => {
                self.0.update([0]);
                self.0.update(format!("{:?}", error.kind()).as_bytes());
            }
        }
        read
    }

    /// Reads `path` as UTF-8 text, recording what was read.
    pub fn read_to_string(&mut self, path: &Path) -> std::io::Result<String> {
        let bytes = self.read(path)?;
        String::from_utf8(bytes)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
    }

    pub fn finish(self) -> Fingerprint {
        self.0.finalize().into()
    }
}

/// Something made from files, that can be made again when they change.
pub trait Reloadable: Send + 'static {
    type Value: Send + Sync + 'static;
    /// The `file` label of the metrics and the logs (`tenants`, `tls`).
    const FILE: &'static str;
    /// Reads the files through `reads` and makes the value; the error is one line saying what is
    /// wrong (which file, which line), never a secret.
    fn load(&self, reads: &mut FileReads) -> Result<Self::Value, String>;
}

/// What readers hold: the latest value that checked out.
pub type Current<T> = watch::Receiver<Arc<T>>;

/// What one check of the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The same bytes as last time (a good or a refused file alike).
    Unchanged,
    /// A changed file, checked and applied.
    Applied,
    /// A changed file that does not check out; the previous value stays.
    Rejected(String),
}

/// Keeps a value made from files up to date; readers hold the `watch::Receiver` it hands out.
#[derive(Debug)]
pub struct Reloader<L: Reloadable> {
    loader: L,
    sender: watch::Sender<Arc<L::Value>>,
    seen: Fingerprint,
}

impl<L: Reloadable> Reloader<L>
where
    L: std::fmt::Debug,
{
    /// Loads the value once: a file that does not check out at start stops start-up.
    pub fn start(loader: L) -> Result<(Reloader<L>, Current<L::Value>), String> {
        let mut reads = FileReads::new();
        let value = loader.load(&mut reads)?;
        let (sender, receiver) = watch::channel(Arc::new(value));
        Ok((
            Reloader {
                loader,
                sender,
                seen: reads.finish(),
            },
            receiver,
        ))
    }

    /// Reads the files again and applies them if they changed and check out.
    pub fn check(&mut self) -> Reload {
        let mut reads = FileReads::new();
        let loaded = self.loader.load(&mut reads);
        let fingerprint = reads.finish();
        if fingerprint == self.seen {
            return Reload::Unchanged;
        }
        self.seen = fingerprint;
        let labels = |result| ReloadLabels {
            file: L::FILE,
            result,
        };
        let rejected = METRICS
            .config_file_rejected
            .get_or_create(&FileLabels { file: L::FILE });
        match loaded {
            Ok(value) => {
                self.sender.send_replace(Arc::new(value));
                METRICS
                    .config_reloads
                    .get_or_create(&labels("applied"))
                    .inc();
                rejected.set(0);
                tracing::info!(file = L::FILE, "changed file applied");
                Reload::Applied
            }
            Err(error) => {
                METRICS
                    .config_reloads
                    .get_or_create(&labels("rejected"))
                    .inc();
                rejected.set(1);
                tracing::warn!(
                    file = L::FILE,
                    %error,
                    "changed file refused: keeping the previous one"
                );
                Reload::Rejected(error)
            }
        }
    }

    /// Checks every `interval` until the task is aborted (or every reader is gone). The files
    /// are read off the async threads.
    pub async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if self.sender.is_closed() {
                return;
            }
            match tokio::task::spawn_blocking(move || {
                self.check();
                self
            })
            .await
            {
                Ok(me) => self = me,
                Err(error) => {
                    tracing::error!(file = L::FILE, %error, "reloading stopped");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Number(std::path::PathBuf);

    impl Reloadable for Number {
        type Value = u32;
        const FILE: &'static str = "test-number";
        fn load(&self, reads: &mut FileReads) -> Result<u32, String> {
            let text = reads
                .read_to_string(&self.0)
                .map_err(|e| format!("cannot read: {e}"))?;
            text.trim().parse().map_err(|e| format!("bad number: {e}"))
        }
    }

    #[test]
    fn a_change_applies_a_bad_file_keeps_the_old_value_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let (mut reloader, current) = Reloader::start(Number(path.clone())).unwrap();
        assert_eq!(**current.borrow(), 1);
        assert_eq!(reloader.check(), Reload::Unchanged);

        std::fs::write(&path, "2").unwrap();
        assert_eq!(reloader.check(), Reload::Applied);
        assert_eq!(**current.borrow(), 2);

        std::fs::write(&path, "two").unwrap();
        assert!(matches!(reloader.check(), Reload::Rejected(e) if e.starts_with("bad number")));
        assert_eq!(**current.borrow(), 2, "the old value stays");
        assert_eq!(reloader.check(), Reload::Unchanged, "reported once");

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(reloader.check(), Reload::Rejected(e) if e.starts_with("cannot read")));
        assert_eq!(**current.borrow(), 2);

        std::fs::write(&path, "3").unwrap();
        assert_eq!(reloader.check(), Reload::Applied);
        assert_eq!(**current.borrow(), 3);
    }

    #[test]
    fn a_bad_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "x").unwrap();
        assert!(Reloader::start(Number(path)).is_err());
    }
}
