//! The current routing table, swapped whole, and how current it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::discovery::TableStatus;
use crate::table::{SpecError, Table, TablePatch, TableSpec};

/// How long a swap waits for the requests that still read the old table
/// (they hold it only until their response head) before leaving its freeing
/// to them.
const RETIRE_WAIT: Duration = Duration::from_millis(200);

/// The current routing table, swapped whole. Readers never block; every swap
/// bumps a version that watchers (bind-mode listeners, tests) can await.
pub struct Tables {
    current: ArcSwap<Table>,
    version: watch::Sender<u64>,
    /// When the tables began; `updated` counts from it.
    created: Instant,
    /// When the table last changed, in nanoseconds since `created`.
    updated: AtomicU64,
    /// Whether the table is current (with the controller as its source).
    status: watch::Sender<TableStatus>,
    /// How many updates from the table's source (an edit of the registry
    /// file) were rejected; the table stayed as it was each time.
    rejected: watch::Sender<u64>,
}

impl Tables {
    pub fn new(table: Table) -> Self {
        let (version, _) = watch::channel(table.version());
        Tables {
            current: ArcSwap::from_pointee(table),
            version,
            created: Instant::now(),
            updated: AtomicU64::new(0),
            status: watch::channel(TableStatus::default()).0,
            rejected: watch::channel(0).0,
        }
    }

    /// How long ago the table last changed.
    pub fn age(&self) -> Duration {
        let updated = Duration::from_nanos(self.updated.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(updated)
    }

    /// Swaps `table` in, and frees the one it replaces here, on the
    /// caller's thread (a blocking one: freeing a table of 100 000 services
    /// takes tens of milliseconds), once the requests still reading it
    /// have let it go; if one holds it past [`RETIRE_WAIT`], whoever lets
    /// it go last frees it.
    fn store(&self, table: Table) {
        let version = table.version();
        let old = self.current.swap(Arc::new(table));
        let since = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.updated.store(since, Ordering::Relaxed);
        self.version.send_replace(version);
        let waiting = Instant::now();
        while Arc::strong_count(&old) > 1 && waiting.elapsed() < RETIRE_WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(old);
    }

    /// The table now. Holding it does not block a swap.
    pub fn load(&self) -> Arc<Table> {
        self.current.load_full()
    }

    /// Builds the next table from `spec`, reusing warm connection pools, and
    /// swaps it in. On error the current table stays. It may take a while
    /// and block (see [`Tables::store`]): call it off the serving path.
    pub fn apply(&self, spec: &TableSpec) -> Result<u64, SpecError> {
        let old = self.load();
        let version = old.version() + 1;
        self.store(Table::build(spec, version, Some(&old))?);
        Ok(version)
    }

    /// Applies a patch from the controller (which never fails: invalid
    /// entries are skipped) and returns the new version. Off the serving
    /// path, as [`Tables::apply`].
    pub fn patch(&self, patch: &TablePatch) -> u64 {
        let old = self.load();
        let version = old.version() + 1;
        self.store(old.patch(patch, version));
        version
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Whether the table is current, as its source last said.
    pub fn status(&self) -> TableStatus {
        self.status.borrow().clone()
    }

    /// The status, to watch.
    pub fn watch_status(&self) -> watch::Receiver<TableStatus> {
        self.status.subscribe()
    }

    /// The source says how current the table is.
    pub fn update_status(&self, f: impl FnOnce(&mut TableStatus)) {
        self.status.send_modify(f);
    }

    /// Counts an update that was rejected (and so not applied).
    pub fn reject_update(&self) {
        self.rejected.send_modify(|n| *n += 1);
    }

    /// The count of rejected updates, to watch.
    pub fn rejected_updates(&self) -> watch::Receiver<u64> {
        self.rejected.subscribe()
    }
}
