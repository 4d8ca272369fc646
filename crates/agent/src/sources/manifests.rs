//! The manifest-directory source: the cluster state is the directory's `*.yaml`, `*.yml` and
//! `*.json` files, read with the same loader as `flowgate trace -f`. The directory is watched; any
//! edit, addition or deletion reloads it. A reload that fails (a malformed file) is reported with
//! its file, document and field, and the last good state stays in force.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Source, SourceEvent};

/// Watches a directory of manifests.
#[derive(Debug, Clone)]
pub struct ManifestSource {
    dir: PathBuf,
    /// How long to wait for a burst of file events to settle before reloading.
    settle: Duration,
    /// Reload at least this often, in case a file-system event was missed.
    rescan: Duration,
}

impl ManifestSource {
    /// A source reading `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> ManifestSource {
        ManifestSource { dir: dir.into(), settle: Duration::from_millis(50), rescan: Duration::from_secs(60) }
    }

    fn load(&self) -> SourceEvent {
        match flowgate_cluster::load_paths(std::slice::from_ref(&self.dir)) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                SourceEvent::Snapshot(Box::new(loaded.state))
            }
            Err(e) => {
                tracing::error!(error = %e, "manifests not loaded; keeping the last good state");
                SourceEvent::Error(e.to_string())
            }
        }
    }
}

impl Source for ManifestSource {
    fn name(&self) -> &'static str {
        "manifests"
    }

    fn run(self: Box<Self>, tx: mpsc::Sender<SourceEvent>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (ntx, mut nrx) = mpsc::unbounded_channel::<()>();
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok() {
                    let _ = ntx.send(());
                }
            });
            let mut watcher = match watcher {
                Ok(w) => Some(w),
                Err(e) => {
                    let _ = tx.send(SourceEvent::Error(format!("{}: cannot watch: {e}", self.dir.display()))).await;
                    None
                }
            };
            if let Some(w) = watcher.as_mut() {
                if let Err(e) = w.watch(&self.dir, RecursiveMode::NonRecursive) {
                    let _ = tx.send(SourceEvent::Error(format!("{}: cannot watch: {e}", self.dir.display()))).await;
                }
            }
            loop {
                if tx.send(self.load()).await.is_err() {
                    return;
                }
                tokio::select! {
                    got = nrx.recv() => {
                        if got.is_none() {
                            // The watcher is gone: fall back to rescanning.
                            tokio::time::sleep(self.rescan).await;
                        }
                    }
                    _ = tokio::time::sleep(self.rescan) => {}
                }
                // Let a burst of events (an editor's write-rename-chmod) settle, then drain it.
                tokio::time::sleep(self.settle).await;
                while nrx.try_recv().is_ok() {}
            }
        })
    }
}
