//! Sealed chunks and aggregate blocks on disk, in a fjall database of the tsdb's own.
//!
//! **Durability lives in the Raft log** (DESIGN §2). This database is separate from the
//! log's, and the replica writes it only when it checkpoints, so between checkpoints
//! sealed chunks wait in the head, where queries read them. A [`Batch`] is written in
//! two steps:
//!
//! 1. the chunks and blocks are *ingested*: sorted, and written by fjall straight into
//!    new tables of each tier's keyspace (fsynced), never through fjall's journal. Before
//!    this, every chunk was written twice, into the journal and later into a table, and
//!    fjall 3 keeps a journal until it reaches 64 MB: at the compression benchmark's
//!    volume the journal was as large as all the tables together;
//! 2. the partition registry (and any metadata) is committed as an ordinary batch through
//!    the journal, which [`Store::sync`] makes durable before the checkpoint file that
//!    relies on it is written.
//!
//! A crash between the steps leaves tables whose partitions are not registered: reads do
//! not see them, and replaying the log from the last checkpoint ingests the same keys
//! with the same bytes again (apply is deterministic), which then get registered.
//! Retention drops them with their partition either way.
//!
//! **Time partitions.** Each tier is split into partitions aligned on the epoch grid
//! ([`super::tier::Tier::partition_start`]). All partitions of a tier share one keyspace
//! (named `raw` or `s{step_ms}`, after what it holds, so data stays readable when tiers
//! are reconfigured) and keys lead with the partition:
//!
//! - key (24 bytes): partition end, series id, first timestamp of the value; each 8 bytes
//!   big-endian, timestamps with the sign bit flipped so keys sort by signed time. Keys
//!   therefore sort by partition, then series, then time;
//! - value: [`VALUE_FORMAT`], LEB128 `max_t - min_t`, LEB128 sample or window count, then
//!   the payload: a chunk of the chunk codec (raw tier) or an aggregate block
//!   ([`super::aggregate::encode_block`]).
//!
//! A registry of the partitions that hold data (`layout` keyspace, written in the same
//! batch as the data) tells reads where to look and retention what to drop.
//!
//! **Why not one keyspace per partition**, which would make a drop a file deletion:
//! measured with fjall 3.1.13, every keyspace created or deleted rewrites fjall's internal
//! metadata tree into a new table, and the replaced tables stay on disk until the
//! database is reopened: 47 MB after 3 simulated days of 15-minute partitions, about
//! 9 GB after 40, growing with the square of the number of partitions ever created.
//!
//! **Retention** ([`Store::drop_before`]) drops whole partitions, those ending at or
//! before the cut, never part of one:
//! 1. the cut is recorded and the partitions leave the registry, in one batch: from then
//!    on they are gone for reads and later writes into them are skipped and counted
//!    (a late write must not bring a dropped partition back). This is the logical state,
//!    identical on every replica whatever the files look like;
//! 2. every table whose keys all lie in dropped partitions is removed from the tree
//!    without being rewritten (lsm-tree's `drop_range`). Keys lead with the partition and
//!    data arrives in time order, so at volume (each checkpoint ingests tables of its own,
//!    compaction merges them into tables of up to 64 MiB) a partition's data sits in
//!    tables of its own, apart from about one table per level at each boundary. fjall
//!    unlinks the files at its next version cleanup, which the drop forces with a flush;
//! 3. what remains of dropped partitions inside tables that also hold live data is
//!    removed by a compaction filter whenever fjall compacts those tables.
//!
//! Steps 2 and 3 use fjall API that fjall 3 marks hidden (`Keyspace::tree`,
//! `AbstractTree::drop_range`, `rotate_memtable`, `major_compact`): Cargo.lock pins
//! fjall 3.1.13, and the tests cover each use.
//!
//! **A chunk never spans two partitions**: one that crosses a boundary is split at write
//! time (decoded and each part re-encoded). The head can avoid the cost by cutting its
//! chunks at partition boundaries. Splitting keeps retention exact and lets a read scan
//! a partition from its start without looking into the one before.
//!
//! Writing a key again replaces it, so re-sealing the same chunk or block after a restart
//! (replay rebuilds them with the same first timestamp) is idempotent. Reads merge chunks
//! that overlap in time (an out-of-order chunk) and keep one sample per timestamp.
//!
//! **Compression**: chunk payloads are already bit-packed (see the chunk codec); fjall's
//! block compression is configurable ([`Compression`], see [`StoreConfig::new`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use fjall::config::CompressionPolicy;
use fjall::{
    AbstractTree, CompressionType, Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch,
    PersistMode,
};

use super::aggregate::{self, Aggregate, AggregateError, SealedBlock};
use super::bits::{get_varint, put_varint};
use super::chunk::{self, ChunkError};
use super::tier::{Needs, TierChoice, TierError, Tiers, align_down};

/// First byte of every stored value (DESIGN §3.7).
pub const VALUE_FORMAT: u8 = 1;

/// Version of the keyspace layout described in the module documentation.
pub const LAYOUT_FORMAT: u8 = 1;

/// Longest metadata key.
pub const MAX_META_KEY: usize = 1024;

const META_KEYSPACE: &str = "meta";
const LAYOUT_KEYSPACE: &str = "layout";
const LAYOUT_FORMAT_KEY: &[u8] = b"format";
const KEY_LEN: usize = 24;
/// Sorts before every data key; see [`Store::drop_tables`].
const HOUSEKEEPING_KEY: [u8; 1] = [0];
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// fjall's block compression for the store's keyspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
}

/// Settings of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub tiers: Tiers,
    /// fjall block cache.
    pub cache_bytes: u64,
    pub compression: Compression,
    /// Most samples (or windows) one read may return; a read over more is refused before
    /// anything is decoded. Prometheus's `query.max-samples` default.
    pub max_samples_per_read: u64,
}

impl StoreConfig {
    /// Defaults for the given tiers: 32 MiB cache, LZ4, 50 M samples per read.
    ///
    /// LZ4 because a block holds more than bit-packed chunk payloads: 24-byte keys that
    /// repeat the partition and series, value headers, aggregate blocks whose columns
    /// restart per block, and chunks of constant series that repeat across series.
    /// Measured on [`super::mix`]'s realistic mix (2,000 series, 960 k samples, flushed
    /// and compacted): raw tables 1.79 bytes/sample without compression, 0.76 with LZ4
    /// (the chunk payloads alone are 1.58); 5-minute windows 16.4 bytes each without,
    /// 9.2 with.
    pub fn new(tiers: Tiers) -> Self {
        StoreConfig {
            tiers,
            cache_bytes: 32 * 1024 * 1024,
            compression: Compression::Lz4,
            max_samples_per_read: 50_000_000,
        }
    }
}

/// A sealed raw chunk as the head hands it over. `min_t` and `max_t` must bound the
/// chunk's samples (the store trusts them for placement and reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef<'a> {
    pub series_id: u64,
    pub min_t: i64,
    pub max_t: i64,
    pub bytes: &'a [u8],
}

/// A stored value as read back: a raw chunk or an encoded aggregate block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub min_t: i64,
    pub max_t: i64,
    /// Samples (raw) or windows (aggregate).
    pub count: u64,
    pub bytes: Vec<u8>,
}

/// What a committed batch wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Values written (a chunk split at a partition boundary counts once per part).
    pub values: usize,
    /// Parts skipped because their partition is older than the tier's last cut.
    pub expired: usize,
    /// Key and value bytes handed to fjall.
    pub bytes: u64,
}

/// What [`Store::drop_before`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroppedStats {
    /// Partitions that left the registry.
    pub partitions: usize,
    /// Bytes of the tables removed whole. Remnants inside tables shared with live data
    /// go at the next compaction of those tables.
    pub table_bytes: u64,
}

/// One partition of a tier that holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Bytes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUsage {
    /// Every file under the store's directory (allocated bytes): tables, journals,
    /// fjall's own metadata, and removed tables fjall has not unlinked yet.
    pub total: u64,
    /// Tables of the tier, metadata and layout keyspaces.
    pub tables: u64,
    /// Tables per tier.
    pub per_tier: Vec<u64>,
}

/// Samples a selector gets, from the one tier that answers it.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    Raw(Vec<(i64, f64)>),
    Aggregates(Vec<Aggregate>),
}

/// The answer of [`Store::select`]: which tier answered, and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub tier: TierChoice,
    pub samples: Samples,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tsdb database: {0}")]
    Db(#[from] fjall::Error),
    #[error("tsdb directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tsdb tier configuration: {0}")]
    Tiers(#[from] TierError),
    #[error("tier {tier} is not configured (there are {count} tiers)")]
    UnknownTier { tier: u8, count: usize },
    #[error("tier {tier} ({name}) holds {holds}, not {wanted}")]
    WrongTierKind {
        tier: u8,
        name: String,
        holds: &'static str,
        wanted: &'static str,
    },
    #[error("invalid chunk for series {series}: {detail}")]
    InvalidChunk { series: u64, detail: String },
    #[error("corrupt value in tier {tier}, partition {partition}, series {series}: {detail}")]
    Corrupt {
        tier: String,
        partition: String,
        series: u64,
        detail: String,
    },
    #[error("tsdb layout version {found} is not understood by this binary (it reads {known})")]
    UnsupportedLayout { found: String, known: u8 },
    #[error("a read over {found} samples is refused (limit {limit})")]
    ReadTooLarge { found: u64, limit: u64 },
    #[error("metadata key must be 1 to {MAX_META_KEY} bytes, got {0}")]
    MetaKey(usize),
    #[error(
        "a retention cut dropped partition ending at {partition_end} of tier {tier} while a batch writing into it was open; the batch was not committed"
    )]
    CutDuringBatch { tier: String, partition_end: i64 },
    #[error("internal lock poisoned by a panic in another thread")]
    Poisoned,
}

/// Per tier: partition end → span.
type Registry = Vec<BTreeMap<i64, i64>>;

/// The on-disk half of the tsdb. Cheap to share (`&self` everywhere; fjall is
/// thread-safe, the registry sits behind a lock).
pub struct Store {
    dir: PathBuf,
    db: Database,
    meta: Keyspace,
    layout: Keyspace,
    tiers: Tiers,
    /// Keyspace name per tier (`raw`, `s300000`, ...).
    kinds: Vec<String>,
    /// Keyspace per tier.
    data: Vec<Keyspace>,
    max_samples_per_read: u64,
    registry: RwLock<Registry>,
    /// Per tier: partitions ending at or before this are dropped. Shared with the
    /// compaction filter.
    cuts: Arc<Vec<AtomicI64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens or creates the store in `dir`.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let tiers = config.tiers;
        let kinds: Vec<String> = tiers
            .iter()
            .map(|(_, t)| match t.step_ms() {
                None => "raw".to_owned(),
                Some(step) => format!("s{step}"),
            })
            .collect();
        let cuts: Arc<Vec<AtomicI64>> =
            Arc::new(kinds.iter().map(|_| AtomicI64::new(i64::MIN)).collect());
        let filter_kinds = kinds.clone();
        let filter_cuts = Arc::clone(&cuts);
        let db = Database::builder(&dir)
            .cache_size(config.cache_bytes)
            // fjall's smallest journal budget: a journal rotates at 64 MB and, once the
            // sealed ones reach this, the memtables that pin them are flushed. The data
            // is in tables anyway; this keeps the write-ahead tail from taking 512 MiB.
            .max_journaling_size(JOURNAL_BYTES)
            .with_compaction_filter_factories(Arc::new(move |name: &str| {
                let tier = filter_kinds.iter().position(|k| k == name)?;
                Some(Arc::new(ExpiredFilterFactory {
                    cuts: Arc::clone(&filter_cuts),
                    tier,
                }) as Arc<dyn Factory>)
            }))
            .open()?;
        let opts = keyspace_options(config.compression);
        let layout = db.keyspace(LAYOUT_KEYSPACE, || opts.clone())?;
        match layout.get(LAYOUT_FORMAT_KEY)? {
            None => layout.insert(LAYOUT_FORMAT_KEY, [LAYOUT_FORMAT])?,
            Some(v) if *v == [LAYOUT_FORMAT] => {}
            Some(v) => {
                return Err(StoreError::UnsupportedLayout {
                    found: format!("{:?}", &*v),
                    known: LAYOUT_FORMAT,
                });
            }
        }
        let meta = db.keyspace(META_KEYSPACE, || opts.clone())?;
        for name in db.list_keyspace_names() {
            let name: &str = &name;
            if name != META_KEYSPACE && name != LAYOUT_KEYSPACE && !kinds.iter().any(|k| k == name)
            {
                tracing::warn!(
                    keyspace = name,
                    "tsdb keyspace matches no configured tier; left untouched (its disk stays in use)"
                );
            }
        }
        let mut data = Vec::with_capacity(kinds.len());
        let mut registry: Registry = Vec::with_capacity(kinds.len());
        for (index, kind) in kinds.iter().enumerate() {
            data.push(db.keyspace(kind, || opts.clone())?);
            let corrupt = |detail: String| StoreError::Corrupt {
                tier: kind.clone(),
                partition: LAYOUT_KEYSPACE.to_owned(),
                series: 0,
                detail,
            };
            if let Some(v) = layout.get(cut_key(kind))? {
                let cut = <[u8; 8]>::try_from(&*v)
                    .map(i64::from_be_bytes)
                    .map_err(|_| corrupt(format!("retention cut record of {} bytes", v.len())))?;
                cuts[index].store(cut, Ordering::Release);
            }
            let mut parts = BTreeMap::new();
            for kv in layout.prefix(registry_prefix(kind)) {
                let (key, value) = kv.into_inner()?;
                let end = key
                    .len()
                    .checked_sub(8)
                    .and_then(|at| key.get(at..))
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(unflip);
                let span = <[u8; 8]>::try_from(&*value).ok().map(i64::from_be_bytes);
                match (end, span) {
                    (Some(end), Some(span)) if span > 0 => {
                        parts.insert(end, span);
                    }
                    _ => return Err(corrupt("partition registry record".into())),
                }
            }
            registry.push(parts);
        }
        let store = Store {
            dir,
            db,
            meta,
            layout,
            tiers,
            kinds,
            data,
            max_samples_per_read: config.max_samples_per_read,
            registry: RwLock::new(registry),
            cuts,
        };
        // Idempotent: removes tables a crash kept after their cut was recorded.
        for index in 0..store.data.len() {
            store.drop_tables(index)?;
        }
        Ok(store)
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Starts a batch of chunks, aggregate blocks and metadata (see the module doc for
    /// how it is written).
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            batch: self.db.batch(),
            values: vec![Vec::new(); self.data.len()],
            stats: WriteStats::default(),
            touched: BTreeMap::new(),
        }
    }

    /// Writes sealed raw chunks in one batch.
    pub fn write_chunks(&self, chunks: &[ChunkRef<'_>]) -> Result<WriteStats, StoreError> {
        let mut batch = self.batch();
        for c in chunks {
            batch.chunk(c)?;
        }
        batch.commit()
    }

    /// Makes every committed batch durable (one fsync of the journal).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    pub fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_meta_key(key)?;
        self.meta.insert(key, value)?;
        Ok(())
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_meta_key(key)?;
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn delete_meta(&self, key: &[u8]) -> Result<(), StoreError> {
        check_meta_key(key)?;
        self.meta.remove(key)?;
        Ok(())
    }

    /// Drops every partition of `tier` that ends at or before `before_ms`: whole
    /// partitions only, never part of one (see the module documentation for how the
    /// disk is given back). A cut at or below an earlier one changes nothing.
    pub fn drop_before(&self, tier: u8, before_ms: i64) -> Result<DroppedStats, StoreError> {
        let index = self.tier_index(tier)?;
        let kind = &self.kinds[index];
        let mut stats = DroppedStats::default();
        {
            let mut registry = self.write_registry()?;
            if before_ms <= self.cut(index) {
                return Ok(stats);
            }
            let doomed: Vec<i64> = registry[index]
                .range(..=before_ms)
                .map(|(&e, _)| e)
                .collect();
            let mut batch = self.db.batch();
            batch.insert(&self.layout, cut_key(kind), before_ms.to_be_bytes());
            for end in &doomed {
                batch.remove(&self.layout, registry_key(kind, *end));
            }
            batch.commit()?;
            for end in &doomed {
                registry[index].remove(end);
            }
            self.cuts[index].store(before_ms, Ordering::Release);
            stats.partitions = doomed.len();
        }
        // With no partition newly dropped, no table can have become removable.
        if stats.partitions > 0 {
            stats.table_bytes = self.drop_tables(index)?;
        }
        tracing::debug!(
            tier,
            before_ms,
            partitions = stats.partitions,
            table_bytes = stats.table_bytes,
            "retention cut"
        );
        Ok(stats)
    }

    /// The tier's partitions that hold data, oldest first.
    pub fn partitions(&self, tier: u8) -> Result<Vec<PartitionInfo>, StoreError> {
        let index = self.tier_index(tier)?;
        Ok(self.read_registry()?[index]
            .iter()
            .map(|(&end, &span)| PartitionInfo {
                start_ms: end.saturating_sub(span),
                end_ms: end,
            })
            .collect())
    }

    /// Bytes every file under the store's directory takes (what `/metrics` reports).
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        dir_bytes(&self.dir)
    }

    /// Bytes on disk, in total and per tier.
    pub fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        let per_tier: Vec<u64> = self.data.iter().map(Keyspace::disk_space).collect();
        let tables =
            per_tier.iter().sum::<u64>() + self.meta.disk_space() + self.layout.disk_space();
        Ok(DiskUsage {
            total: self.disk_bytes()?,
            tables,
            per_tier,
        })
    }

    /// Flushes every memtable to tables and compacts each keyspace into one table
    /// (dropping what retention cut), waiting for both. Normal operation leaves this to
    /// fjall's background workers; it exists so that disk use can be measured in a
    /// deterministic state (tests, benchmarks, an operator's "compact now").
    pub fn flush_and_compact(&self) -> Result<(), StoreError> {
        let mut all: Vec<&Keyspace> = vec![&self.meta, &self.layout];
        all.extend(self.data.iter());
        for ks in &all {
            ks.rotate_memtable_and_wait()?;
        }
        for ks in &all {
            ks.major_compact()?;
        }
        Ok(())
    }

    /// Stored values of one series in `tier` that overlap `[mint, maxt]`, oldest first.
    pub fn read_chunks(
        &self,
        tier: u8,
        series_id: u64,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        let index = self.tier_index(tier)?;
        Ok(self
            .read_values(index, series_id, mint, maxt)?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Raw samples of one series in `[mint, maxt]`, ascending, one per timestamp.
    pub fn read_raw(
        &self,
        series_id: u64,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        self.expect_kind(0, true)?;
        let chunks = self.read_values(0, series_id, mint, maxt)?;
        let mut out = Vec::with_capacity(chunks.iter().map(|c| c.1.count as usize).sum());
        for ((end, span), c) in &chunks {
            let samples = chunk::decode(&c.bytes).map_err(|e: ChunkError| {
                let detail = format!("chunk at {}: {e}", c.min_t);
                self.corrupt(0, *end, *span, series_id, detail)
            })?;
            out.extend(samples.into_iter().filter(|s| (mint..=maxt).contains(&s.0)));
        }
        if !out.is_sorted_by(|a, b| a.0 < b.0) {
            out.sort_by_key(|s| s.0);
            out.dedup_by_key(|s| s.0);
        }
        Ok(out)
    }

    /// Aggregate windows of one series in `tier` whose start is in `[mint, maxt]`.
    pub fn read_aggregates(
        &self,
        tier: u8,
        series_id: u64,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let index = self.expect_kind(tier, false)?;
        let chunks = self.read_values(index, series_id, mint, maxt)?;
        let mut out: Vec<Aggregate> = Vec::new();
        for ((end, span), c) in &chunks {
            let windows = aggregate::decode_block(&c.bytes).map_err(|e: AggregateError| {
                let detail = format!("block at {}: {e}", c.min_t);
                self.corrupt(index, *end, *span, series_id, detail)
            })?;
            out.extend(
                windows
                    .into_iter()
                    .filter(|w| (mint..=maxt).contains(&w.start_ms)),
            );
        }
        if !out.is_sorted_by(|a, b| a.start_ms < b.start_ms) {
            out.sort_by_key(|w| w.start_ms);
            out.dedup_by_key(|w| w.start_ms);
        }
        Ok(out)
    }

    /// Reads `[mint, maxt]` of one series from the single tier [`Tiers::tier_for`] picks,
    /// and says which one it was.
    pub fn select(
        &self,
        series_id: u64,
        mint: i64,
        maxt: i64,
        now_ms: i64,
        needs: Needs,
    ) -> Result<Selection, StoreError> {
        let choice = self.tiers.tier_for(mint, now_ms, needs);
        let samples = match choice.step_ms {
            None => Samples::Raw(self.read_raw(series_id, mint, maxt)?),
            Some(_) => {
                Samples::Aggregates(self.read_aggregates(choice.tier, series_id, mint, maxt)?)
            }
        };
        Ok(Selection {
            tier: choice,
            samples,
        })
    }

    /// Values overlapping `[mint, maxt]`, oldest first, each with its partition
    /// (end, span) so a decoding error can name it.
    #[allow(clippy::type_complexity)]
    fn read_values(
        &self,
        index: usize,
        series_id: u64,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<((i64, i64), StoredChunk)>, StoreError> {
        if mint > maxt {
            return Ok(Vec::new());
        }
        let overlapping: Vec<(i64, i64)> = self.read_registry()?[index]
            .range(mint.saturating_add(1)..)
            .filter(|(end, span)| end.saturating_sub(**span) <= maxt)
            .map(|(&end, &span)| (end, span))
            .collect();
        let ks = &self.data[index];
        let mut out = Vec::new();
        let mut total = 0u64;
        for (end, span) in overlapping {
            let corrupt = |detail: String| self.corrupt(index, end, span, series_id, detail);
            let lo = data_key(end, series_id, end.saturating_sub(span));
            let hi = data_key(end, series_id, maxt);
            for kv in ks.range(lo..=hi) {
                let (key, value) = kv.into_inner()?;
                let min_t = parse_data_key(&key)
                    .filter(|k| k.0 == end && k.1 == series_id)
                    .map(|k| k.2)
                    .ok_or_else(|| corrupt(format!("key of {} bytes out of place", key.len())))?;
                let (max_t, count, payload) =
                    parse_value(min_t, &value).map_err(|d| corrupt(format!("at {min_t}: {d}")))?;
                if max_t < mint {
                    continue;
                }
                total = total.saturating_add(count);
                if total > self.max_samples_per_read {
                    return Err(StoreError::ReadTooLarge {
                        found: total,
                        limit: self.max_samples_per_read,
                    });
                }
                let chunk = StoredChunk {
                    min_t,
                    max_t,
                    count,
                    bytes: payload.to_vec(),
                };
                out.push(((end, span), chunk));
            }
        }
        if !out.is_sorted_by_key(|c| c.1.min_t) {
            out.sort_by_key(|c| c.1.min_t);
        }
        Ok(out)
    }

    /// Removes, whole, every table of the tier whose keys all lie in partitions at or
    /// before the tier's cut, and asks fjall to unlink files it no longer needs.
    /// Returns the bytes of the removed tables.
    fn drop_tables(&self, index: usize) -> Result<u64, StoreError> {
        let cut = self.cut(index);
        if cut == i64::MIN {
            return Ok(0);
        }
        let ks = &self.data[index];
        let before = ks.disk_space();
        let dropped = match cut.checked_add(1) {
            // Keys of partitions ending at or before the cut sort below this prefix.
            Some(next) => ks.tree.drop_range(..flip(next).to_vec()),
            None => ks.tree.drop_range::<Vec<u8>, _>(..),
        };
        dropped.map_err(fjall::Error::from)?;
        let removed = before.saturating_sub(ks.disk_space());
        if removed > 0 {
            // fjall unlinks removed tables at its next version cleanup, which a flush
            // runs. Data only ever arrives by ingestion, so the keyspace's memtable is
            // empty and would never be flushed: a one-byte key (no data key is that
            // short, so reads and the compaction filter never see it) gives the flush
            // something to write, and the next cut drops its tiny table whole.
            ks.insert(HOUSEKEEPING_KEY, [])?;
            ks.rotate_memtable_and_wait()?;
        }
        Ok(removed)
    }

    fn tier_index(&self, tier: u8) -> Result<usize, StoreError> {
        let index = usize::from(tier);
        if index < self.tiers.len() {
            Ok(index)
        } else {
            Err(StoreError::UnknownTier {
                tier,
                count: self.tiers.len(),
            })
        }
    }

    /// Checks that `tier` is raw (or an aggregate tier), returning its index.
    fn expect_kind(&self, tier: u8, raw: bool) -> Result<usize, StoreError> {
        let index = self.tier_index(tier)?;
        let is_raw = self.tiers.get(tier).is_some_and(|t| t.is_raw());
        if is_raw == raw {
            return Ok(index);
        }
        let kind = |raw| if raw { "raw samples" } else { "aggregates" };
        Err(StoreError::WrongTierKind {
            tier,
            name: self.tier_name(index),
            holds: kind(is_raw),
            wanted: kind(raw),
        })
    }

    fn tier_name(&self, index: usize) -> String {
        self.tiers
            .iter()
            .nth(index)
            .map_or_else(String::new, |(_, t)| t.name().to_owned())
    }

    fn corrupt(
        &self,
        index: usize,
        end: i64,
        span: i64,
        series: u64,
        detail: String,
    ) -> StoreError {
        StoreError::Corrupt {
            tier: self.tier_name(index),
            partition: format!("{}_p{}_{span}", self.kinds[index], end.saturating_sub(span)),
            series,
            detail,
        }
    }

    fn read_registry(&self) -> Result<RwLockReadGuard<'_, Registry>, StoreError> {
        self.registry.read().map_err(|_| StoreError::Poisoned)
    }

    fn write_registry(&self) -> Result<RwLockWriteGuard<'_, Registry>, StoreError> {
        self.registry.write().map_err(|_| StoreError::Poisoned)
    }

    fn cut(&self, index: usize) -> i64 {
        self.cuts[index].load(Ordering::Acquire)
    }
}

/// A batch: nothing of it is visible or on disk until [`Batch::commit`]; a reader sees
/// a partition's new values once they are registered, all together. Dropping it without
/// committing writes nothing.
pub struct Batch<'s> {
    store: &'s Store,
    /// Registry and metadata records, through the journal.
    batch: OwnedWriteBatch,
    /// Per tier: data values to ingest, in the order they were added.
    values: Vec<Vec<([u8; KEY_LEN], Vec<u8>)>>,
    stats: WriteStats,
    /// (tier index, partition end) → (span, whether this batch registers it).
    touched: BTreeMap<(usize, i64), (i64, bool)>,
}

impl Batch<'_> {
    /// Adds a sealed raw chunk, split at partition boundaries if it crosses one.
    pub fn chunk(&mut self, c: &ChunkRef<'_>) -> Result<(), StoreError> {
        let store = self.store;
        store.expect_kind(0, true)?;
        let invalid = |detail: String| StoreError::InvalidChunk {
            series: c.series_id,
            detail,
        };
        if c.max_t < c.min_t {
            return Err(invalid(format!("max_t {} < min_t {}", c.max_t, c.min_t)));
        }
        let stats = chunk::stats(c.bytes).map_err(|e| invalid(e.to_string()))?;
        if stats.samples == 0 {
            return Err(invalid("no samples".into()));
        }
        let span = store.tiers.get(0).map_or(1, |t| t.partition_ms());
        let first = align_down(c.min_t, span);
        if first == align_down(c.max_t, span) {
            let value = encode_value(c.min_t, c.max_t, stats.samples as u64, c.bytes);
            return self.put(0, first, span, c.series_id, c.min_t, value);
        }
        let samples = chunk::decode(c.bytes).map_err(|e| invalid(e.to_string()))?;
        if samples.iter().any(|s| s.0 < c.min_t || s.0 > c.max_t) {
            return Err(invalid("samples outside [min_t, max_t]".into()));
        }
        let mut by_partition: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
        for s in samples {
            by_partition
                .entry(align_down(s.0, span))
                .or_default()
                .push(s);
        }
        let mut parts = Vec::with_capacity(by_partition.len());
        for (start, samples) in by_partition {
            let bytes = chunk::encode(&samples).map_err(|e| invalid(e.to_string()))?;
            let min_t = samples.iter().map(|s| s.0).min().unwrap_or(start);
            let max_t = samples.iter().map(|s| s.0).max().unwrap_or(start);
            let value = encode_value(min_t, max_t, samples.len() as u64, &bytes);
            parts.push((start, min_t, value));
        }
        for (start, min_t, value) in parts {
            self.put(0, start, span, c.series_id, min_t, value)?;
        }
        Ok(())
    }

    /// Adds aggregate windows of one series (ascending, on the tier's step grid), one
    /// value per partition they fall in.
    pub fn aggregates(
        &mut self,
        tier: u8,
        series_id: u64,
        windows: &[Aggregate],
    ) -> Result<(), StoreError> {
        let store = self.store;
        let index = store.expect_kind(tier, false)?;
        let Some(t) = store.tiers.get(tier) else {
            return Err(StoreError::UnknownTier {
                tier,
                count: store.tiers.len(),
            });
        };
        let (step, span) = (t.step_ms().unwrap_or(1), t.partition_ms());
        let invalid = |detail: String| StoreError::InvalidChunk {
            series: series_id,
            detail,
        };
        if windows
            .iter()
            .any(|w| w.start_ms.rem_euclid(step) != 0 || w.count == 0)
        {
            return Err(invalid(format!("window off the {step} ms grid or empty")));
        }
        if !windows.is_sorted_by(|a, b| a.start_ms < b.start_ms) {
            return Err(invalid("windows do not ascend".into()));
        }
        let mut parts = Vec::new();
        for run in
            windows.chunk_by(|a, b| align_down(a.start_ms, span) == align_down(b.start_ms, span))
        {
            let block = aggregate::encode_block(run).map_err(|e| invalid(e.to_string()))?;
            let (min_t, max_t) = (run[0].start_ms, run[run.len() - 1].start_ms);
            let value = encode_value(min_t, max_t, run.len() as u64, &block);
            parts.push((align_down(min_t, span), min_t, value));
        }
        for (start, min_t, value) in parts {
            self.put(index, start, span, series_id, min_t, value)?;
        }
        Ok(())
    }

    /// Adds a block sealed by the aggregator.
    pub fn block(&mut self, block: &SealedBlock) -> Result<(), StoreError> {
        self.aggregates(block.tier, block.series_id, &block.windows)
    }

    /// Sets a metadata key in the batch's journal records, committed after its data.
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_meta_key(key)?;
        self.batch.insert(&self.store.meta, key, value);
        self.stats.bytes += (key.len() + value.len()) as u64;
        Ok(())
    }

    pub fn delete_meta(&mut self, key: &[u8]) -> Result<(), StoreError> {
        check_meta_key(key)?;
        self.batch.remove(&self.store.meta, key);
        Ok(())
    }

    /// Ingests the data values, then commits the registry and metadata records and
    /// registers the partitions the batch started.
    pub fn commit(mut self) -> Result<WriteStats, StoreError> {
        let store = self.store;
        self.check_cuts()?;
        for (index, mut values) in std::mem::take(&mut self.values).into_iter().enumerate() {
            if values.is_empty() {
                continue;
            }
            // Ingestion takes keys strictly ascending; of two values with one key the
            // later one wins, as a second insert would.
            values.reverse();
            values.sort_by_key(|v| v.0);
            values.dedup_by(|later, earlier| later.0 == earlier.0);
            let mut ingestion = store.data[index].start_ingestion()?;
            for (key, value) in values {
                ingestion.write(key.to_vec(), value)?;
            }
            ingestion.finish()?;
        }
        // Held across the commit: a retention cut cannot slip between the check below and
        // the registration.
        let mut registry = store.write_registry()?;
        self.check_cuts()?;
        self.batch.commit()?;
        for (&(index, end), &(span, new)) in &self.touched {
            if new {
                let span = registry[index].get(&end).map_or(span, |&s| s.max(span));
                registry[index].insert(end, span);
            }
        }
        Ok(self.stats)
    }

    /// Refuses the batch if a retention cut dropped a partition it writes into (its data
    /// must not bring the partition back).
    fn check_cuts(&self) -> Result<(), StoreError> {
        for &(index, end) in self.touched.keys() {
            if end <= self.store.cut(index) {
                return Err(StoreError::CutDuringBatch {
                    tier: self.store.tier_name(index),
                    partition_end: end,
                });
            }
        }
        Ok(())
    }

    fn put(
        &mut self,
        index: usize,
        start: i64,
        span: i64,
        series_id: u64,
        min_t: i64,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        let store = self.store;
        let end = start.saturating_add(span);
        if end <= store.cut(index) {
            self.stats.expired += 1;
            return Ok(());
        }
        if !self.touched.contains_key(&(index, end)) {
            let registered = store.read_registry()?[index].get(&end).copied();
            let new = registered.is_none_or(|s| s < span);
            if new {
                // In the batch, so a partition is registered exactly when its data lands.
                let span = registered.map_or(span, |s| s.max(span));
                let key = registry_key(&store.kinds[index], end);
                self.batch.insert(&store.layout, key, span.to_be_bytes());
            }
            self.touched.insert((index, end), (span, new));
        }
        self.stats.values += 1;
        self.stats.bytes += (KEY_LEN + value.len()) as u64;
        self.values[index].push((data_key(end, series_id, min_t), value));
        Ok(())
    }
}

/// Removes, during fjall's compactions, the values of partitions a retention cut dropped.
struct ExpiredFilterFactory {
    cuts: Arc<Vec<AtomicI64>>,
    tier: usize,
}

impl Factory for ExpiredFilterFactory {
    fn name(&self) -> &str {
        "argus-tsdb-retention"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        let cut = self
            .cuts
            .get(self.tier)
            .map_or(i64::MIN, |c| c.load(Ordering::Acquire));
        Box::new(ExpiredFilter { cut })
    }
}

struct ExpiredFilter {
    cut: i64,
}

impl CompactionFilter for ExpiredFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        // Every version of a key in a dropped partition is dropped too, so no tombstone
        // is needed to hide older ones.
        Ok(match parse_data_key(item.key()) {
            Some((end, _, _)) if end <= self.cut => Verdict::Destroy,
            _ => Verdict::Keep,
        })
    }
}

fn keyspace_options(compression: Compression) -> KeyspaceCreateOptions {
    let policy = match compression {
        Compression::None => CompressionPolicy::disabled(),
        Compression::Lz4 => CompressionPolicy::all(CompressionType::Lz4),
    };
    KeyspaceCreateOptions::default().data_block_compression_policy(policy)
}

fn check_meta_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_META_KEY {
        return Err(StoreError::MetaKey(key.len()));
    }
    Ok(())
}

fn cut_key(kind: &str) -> Vec<u8> {
    format!("cut/{kind}").into_bytes()
}

fn registry_prefix(kind: &str) -> Vec<u8> {
    format!("part/{kind}/").into_bytes()
}

fn registry_key(kind: &str, end: i64) -> Vec<u8> {
    let mut key = registry_prefix(kind);
    key.extend_from_slice(&flip(end));
    key
}

/// A timestamp as 8 bytes that sort like the signed value.
fn flip(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn unflip(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn data_key(partition_end: i64, series_id: u64, min_t: i64) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..8].copy_from_slice(&flip(partition_end));
    key[8..16].copy_from_slice(&series_id.to_be_bytes());
    key[16..].copy_from_slice(&flip(min_t));
    key
}

/// (partition end, series, min_t) of a data key.
fn parse_data_key(key: &[u8]) -> Option<(i64, u64, i64)> {
    let key: &[u8; KEY_LEN] = key.try_into().ok()?;
    let end = unflip(key[..8].try_into().ok()?);
    let series = u64::from_be_bytes(key[8..16].try_into().ok()?);
    let min_t = unflip(key[16..].try_into().ok()?);
    Some((end, series, min_t))
}

fn encode_value(min_t: i64, max_t: i64, count: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 12);
    v.push(VALUE_FORMAT);
    put_varint(&mut v, max_t.wrapping_sub(min_t) as u64);
    put_varint(&mut v, count);
    v.extend_from_slice(payload);
    v
}

/// (max_t, count, payload) of a stored value.
fn parse_value(min_t: i64, value: &[u8]) -> Result<(i64, u64, &[u8]), String> {
    match value.first() {
        None => return Err("empty value".into()),
        Some(&VALUE_FORMAT) => {}
        Some(v) => return Err(format!("value format {v}, this build reads {VALUE_FORMAT}")),
    }
    let mut pos = 1;
    let span = get_varint(value, &mut pos).ok_or("value header cut short")?;
    let count = get_varint(value, &mut pos).ok_or("value header cut short")?;
    let max_t = i64::try_from(span)
        .ok()
        .and_then(|s| min_t.checked_add(s))
        .ok_or("value header: max_t out of range")?;
    if count == 0 || count > chunk::MAX_SAMPLES as u64 {
        return Err(format!("value header: count {count}"));
    }
    Ok((max_t, count, &value[pos..]))
}

/// Bytes allocated to the files under `dir` (fjall preallocates its journal as a sparse
/// 64 MiB file, so the apparent size would overstate the disk in use). Files removed while
/// walking (by a compaction) are skipped.
#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks().saturating_mul(512)
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}

fn dir_bytes(dir: &Path) -> Result<u64, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => total += allocated(&m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
#[path = "store/tests.rs"]
mod tests;
