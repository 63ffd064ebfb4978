//! Stage 2's per-delta loops in native code: the minute buckets a batch changes
//! (`BucketWriter`) and the signal cells it sends the alerting stage (`SignalCells`).
//!
//! Both mirror the Python reference implementations (`streams.core.aggregates.BucketWriter`,
//! `streams.core.signals.SignalCells`) call for call and byte for byte; the tests run both.

mod advice;
mod ledger;
mod msgpack;
mod recipient;
mod state;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySet, PyString, PyTuple};

use msgpack::Reader;

/// Outcome counts and the last input absorbed per source, in insertion order (a Python dict's).
#[derive(Default)]
struct Bucket {
    counts: Vec<(String, i64)>,
    applied: Vec<(i64, (i64, i64))>,
}

impl Bucket {
    fn decode(raw: &[u8]) -> Result<Bucket, String> {
        let mut r = Reader::new(raw);
        let fields = r.array_len()?;
        if fields > 2 {
            return Err(format!("a bucket has at most 2 fields, found {fields}"));
        }
        let mut bucket = Bucket::default();
        if fields >= 1 {
            for _ in 0..r.map_len()? {
                let outcome = r.string()?;
                let n = r.int()?;
                set(&mut bucket.counts, outcome, n);
            }
        }
        if fields >= 2 {
            for _ in 0..r.map_len()? {
                let source = r.int()?;
                if r.array_len()? != 2 {
                    return Err("a bucket's applied position has 2 items".to_owned());
                }
                let at = (r.int()?, r.int()?);
                set(&mut bucket.applied, source, at);
            }
        }
        if !r.at_end() {
            return Err("trailing bytes after a bucket".to_owned());
        }
        Ok(bucket)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 16 * self.counts.len() + 12 * self.applied.len());
        msgpack::write_array_len(&mut out, 2);
        msgpack::write_map_len(&mut out, self.counts.len());
        for (outcome, n) in &self.counts {
            msgpack::write_str(&mut out, outcome);
            msgpack::write_int(&mut out, *n);
        }
        msgpack::write_map_len(&mut out, self.applied.len());
        for (source, (offset, index)) in &self.applied {
            msgpack::write_int(&mut out, *source);
            msgpack::write_array_len(&mut out, 2);
            msgpack::write_int(&mut out, *offset);
            msgpack::write_int(&mut out, *index);
        }
        out
    }
}

/// `entries[key] = value` of an insertion-ordered map (a Python dict's semantics).
fn set<K: PartialEq, V>(entries: &mut Vec<(K, V)>, key: K, value: V) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => entries.push((key, value)),
    }
}

/// `counts[key] = counts.get(key, 0) + n`, dropping the key when the sum is 0 (`drop_zero`).
fn add_count(counts: &mut Vec<(String, i64)>, key: &str, n: i64, drop_zero: bool) {
    match counts.iter().position(|(k, _)| k == key) {
        Some(i) => {
            let sum = counts[i].1 + n;
            if sum == 0 && drop_zero {
                counts.remove(i);
            } else {
                counts[i].1 = sum;
            }
        }
        None => {
            if n != 0 || !drop_zero {
                counts.push((key.to_owned(), n));
            }
        }
    }
}

/// A delta's fields: (dim, key, minute, outcome, delta, visible).
type DeltaRef<'a> = (&'a str, &'a str, i64, &'a str, i64, i64);

/// A Python `BucketDelta`'s fields, its strings still Python's.
type PyDelta<'py> = (
    Bound<'py, PyString>,
    Bound<'py, PyString>,
    i64,
    Bound<'py, PyString>,
    i64,
    i64,
);

/// The deltas of Python `BucketDelta` objects.
fn py_deltas<'py>(items: &Bound<'py, PyAny>) -> PyResult<Vec<PyDelta<'py>>> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let d = item?;
        let py = d.py();
        out.push((
            d.getattr(intern!(py, "dim"))?.downcast_into::<PyString>()?,
            d.getattr(intern!(py, "key"))?.downcast_into::<PyString>()?,
            d.getattr(intern!(py, "minute"))?.extract()?,
            d.getattr(intern!(py, "outcome"))?
                .downcast_into::<PyString>()?,
            d.getattr(intern!(py, "delta"))?.extract()?,
            d.getattr(intern!(py, "visible"))?.extract()?,
        ));
    }
    Ok(out)
}

fn borrow<'a>(items: &'a [PyDelta<'_>]) -> PyResult<Vec<DeltaRef<'a>>> {
    items
        .iter()
        .map(|(dim, key, minute, outcome, delta, visible)| {
            Ok((
                dim.to_str()?,
                key.to_str()?,
                *minute,
                outcome.to_str()?,
                *delta,
                *visible,
            ))
        })
        .collect()
}

fn native_deltas(items: &[ledger::Delta]) -> Vec<DeltaRef<'_>> {
    items
        .iter()
        .map(|d| {
            (
                d.dim,
                d.key.as_str(),
                d.minute,
                d.outcome.as_str(),
                d.delta,
                d.visible,
            )
        })
        .collect()
}

/// FxHash (rustc's): the cells are hashed once per delta, SipHash's cost would show.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn hash_of(parts: &[&str], ints: &[i64]) -> u64 {
    let mut h = Fx::default();
    for p in parts {
        h.write(p.as_bytes());
        h.write_u64(0xff);
    }
    for i in ints {
        h.write_i64(*i);
    }
    h.finish()
}

/// Indexes of entries by a hash of their key (candidates are compared by the caller).
#[derive(Default)]
struct HashIndex(HashMap<u64, Vec<usize>, BuildHasherDefault<Fx>>);

impl HashIndex {
    fn find(&self, hash: u64, mut is: impl FnMut(usize) -> bool) -> Option<usize> {
        self.0.get(&hash)?.iter().copied().find(|i| is(*i))
    }

    fn insert(&mut self, hash: u64, index: usize) {
        self.0.entry(hash).or_default().push(index);
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

struct BucketEntry {
    dim: String,
    key: String,
    minute: i64,
    id: Vec<u8>,
    bucket: Bucket,
}

/// Adds deltas to the buckets of one partition, once per input position (see the Python
/// `BucketWriter`): `get(key)` reads a bucket's stored bytes; `reset()` hands back every
/// bucket the batch touched, encoded, and the (dim, hour) of each.
#[pyclass(module = "streams_native")]
struct BucketWriter {
    #[pyo3(get)]
    partition: i64,
    get: PyObject,
    prefix: String,
    sep: String,
    index: HashIndex,
    buckets: Vec<BucketEntry>,
    hours: Vec<(String, i64)>,
}

#[pymethods]
impl BucketWriter {
    #[new]
    fn new(partition: i64, get: PyObject, prefix: String, sep: String) -> Self {
        BucketWriter {
            partition,
            get,
            prefix,
            sep,
            index: HashIndex::default(),
            buckets: Vec::new(),
            hours: Vec::new(),
        }
    }

    /// Add `deltas` (all from the input at `position`); returns (dim, key, minute) of each
    /// bucket that did not exist before.
    fn add<'py>(
        &mut self,
        py: Python<'py>,
        position: (i64, i64, i64),
        deltas: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let created = PyList::empty(py);
        let items = py_deltas(deltas)?;
        self.add_deltas(py, position, &borrow(&items)?, &created)?;
        Ok(created)
    }

    /// Every bucket the batch touched as (key, encoded value), in the order first touched,
    /// and the (dim, hour) of each; the writer starts empty again.
    fn reset<'py>(&mut self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PySet>)> {
        let writes = PyList::empty(py);
        for entry in self.buckets.drain(..) {
            let item = (
                PyBytes::new(py, &entry.id),
                PyBytes::new(py, &entry.bucket.encode()),
            );
            writes.append(item)?;
        }
        self.index.clear();
        let hours = PySet::empty(py)?;
        for (dim, hour) in self.hours.drain(..) {
            hours.add((dim, hour))?;
        }
        Ok((writes, hours))
    }
}

impl BucketWriter {
    fn add_deltas(
        &mut self,
        py: Python<'_>,
        position: (i64, i64, i64),
        deltas: &[DeltaRef],
        created: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let (source, at) = (position.0, (position.1, position.2));
        // per cell of this call: (dim, key, minute, the bucket's index or None for a replay)
        let mut decided: Vec<(&str, &str, i64, Option<usize>)> = Vec::new();
        for &(dim, key, minute, outcome, n, _) in deltas {
            let known = decided
                .iter()
                .find(|c| c.2 == minute && c.0 == dim && c.1 == key);
            let index = match known {
                Some(c) => c.3,
                None => {
                    let hash = hash_of(&[dim, key], &[minute]);
                    let buckets = &self.buckets;
                    let found = self.index.find(hash, |i| {
                        let b = &buckets[i];
                        b.minute == minute && b.dim == dim && b.key == key
                    });
                    let index = match found {
                        Some(i) => i,
                        None => self.load(py, hash, dim, key, minute, created)?,
                    };
                    let bucket = &mut self.buckets[index].bucket;
                    let last = bucket
                        .applied
                        .iter()
                        .find(|(s, _)| *s == source)
                        .map(|e| e.1);
                    let decision = match last {
                        Some(last) if at <= last => None,
                        _ => {
                            set(&mut bucket.applied, source, at);
                            Some(index)
                        }
                    };
                    decided.push((dim, key, minute, decision));
                    decision
                }
            };
            if let Some(index) = index {
                add_count(&mut self.buckets[index].bucket.counts, outcome, n, true);
            }
        }
        Ok(())
    }

    fn load(
        &mut self,
        py: Python<'_>,
        hash: u64,
        dim: &str,
        key: &str,
        minute: i64,
        created: &Bound<'_, PyList>,
    ) -> PyResult<usize> {
        let sep = &self.sep;
        let id = format!(
            "{}{dim}{sep}{}{sep}{minute}{sep}{key}",
            self.prefix, self.partition
        );
        let raw = self
            .get
            .bind(py)
            .call1((PyBytes::new(py, id.as_bytes()),))?;
        let bucket = if raw.is_none() {
            created.append((dim, key, minute))?;
            Bucket::default()
        } else {
            let raw = raw.downcast::<PyBytes>()?;
            Bucket::decode(raw.as_bytes())
                .map_err(|e| PyValueError::new_err(format!("{id:?}: {e}")))?
        };
        let index = self.buckets.len();
        self.buckets.push(BucketEntry {
            dim: dim.to_owned(),
            key: key.to_owned(),
            minute,
            id: id.into_bytes(),
            bucket,
        });
        self.index.insert(hash, index);
        let hour = minute.div_euclid(60);
        if !self.hours.iter().any(|(d, h)| *h == hour && d == dim) {
            self.hours.push((dim.to_owned(), hour));
        }
        Ok(index)
    }
}

struct SignalEntry {
    source: i64,
    apart: i64,
    dim: String,
    key: String,
    minute: i64,
    visible: i64,
    counts: Vec<(String, i64)>,
    upto: i64,
}

/// The deltas a batch signals, per (source, input offset if replayed else -1, dim, key,
/// minute, visible), and the positive deltas of new inputs per (dim, key, outcome) for the
/// metrics (see the Python `SignalCells`).
#[pyclass(module = "streams_native")]
#[derive(Default)]
struct SignalCells {
    index: HashIndex,
    cells: Vec<SignalEntry>,
    counted_index: HashIndex,
    counted: Vec<((String, String, String), i64)>,
}

#[pymethods]
impl SignalCells {
    #[new]
    fn new() -> Self {
        SignalCells::default()
    }

    fn __len__(&self) -> usize {
        self.cells.len()
    }

    /// The deltas and shifts of the input at (`source`, `offset`); `replayed`: they stay apart
    /// per offset and are not counted for the metrics again.
    fn add(
        &mut self,
        source: i64,
        offset: i64,
        replayed: bool,
        deltas: &Bound<'_, PyAny>,
        shifts: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (deltas, shifts) = (py_deltas(deltas)?, py_deltas(shifts)?);
        self.add_deltas(
            source,
            offset,
            replayed,
            &borrow(&deltas)?,
            &borrow(&shifts)?,
        );
        Ok(())
    }

    /// Every cell as (source, apart, dim, key, minute, visible, counts, upto), in the order
    /// first added; the cells start empty again.
    fn drain<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        self.index.clear();
        for e in self.cells.drain(..) {
            let counts = PyDict::new(py);
            for (outcome, n) in e.counts {
                counts.set_item(outcome, n)?;
            }
            let items: [PyObject; 8] = [
                e.source.into_pyobject(py)?.into_any().unbind(),
                e.apart.into_pyobject(py)?.into_any().unbind(),
                e.dim.into_pyobject(py)?.into_any().unbind(),
                e.key.into_pyobject(py)?.into_any().unbind(),
                e.minute.into_pyobject(py)?.into_any().unbind(),
                e.visible.into_pyobject(py)?.into_any().unbind(),
                counts.into_any().unbind(),
                e.upto.into_pyobject(py)?.into_any().unbind(),
            ];
            out.append(PyTuple::new(py, items)?)?;
        }
        Ok(out)
    }

    /// The counts for the metrics as ((dim, key, outcome), n), in the order first added;
    /// they start empty again.
    fn take_counted<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        self.counted_index.clear();
        for (k, n) in self.counted.drain(..) {
            out.append((k, n))?;
        }
        Ok(out)
    }

    /// Forget the cells of these sources (their partition was revoked).
    fn discard(&mut self, sources: Vec<i64>) {
        let cells = std::mem::take(&mut self.cells);
        self.index.clear();
        for e in cells {
            if !sources.contains(&e.source) {
                let hash = hash_of(&[&e.dim, &e.key], &[e.source, e.apart, e.minute, e.visible]);
                self.index.insert(hash, self.cells.len());
                self.cells.push(e);
            }
        }
    }
}

impl SignalCells {
    fn add_deltas(
        &mut self,
        source: i64,
        offset: i64,
        replayed: bool,
        deltas: &[DeltaRef],
        shifts: &[DeltaRef],
    ) {
        let apart = if replayed { offset } else { -1 };
        for (list, count) in [(deltas, !replayed), (shifts, false)] {
            for &(dim, key, minute, outcome, n, visible) in list {
                if count && n > 0 {
                    let hash = hash_of(&[dim, key, outcome], &[]);
                    let counted = &self.counted;
                    let found = self.counted_index.find(hash, |i| {
                        let (d, k, o) = &counted[i].0;
                        d == dim && k == key && o == outcome
                    });
                    match found {
                        Some(i) => self.counted[i].1 += n,
                        None => {
                            self.counted_index.insert(hash, self.counted.len());
                            self.counted
                                .push(((dim.to_owned(), key.to_owned(), outcome.to_owned()), n));
                        }
                    }
                }
                let hash = hash_of(&[dim, key], &[source, apart, minute, visible]);
                let cells = &self.cells;
                let found = self.index.find(hash, |i| {
                    let e = &cells[i];
                    e.minute == minute
                        && e.visible == visible
                        && e.source == source
                        && e.apart == apart
                        && e.dim == dim
                        && e.key == key
                });
                let i = match found {
                    Some(i) => i,
                    None => {
                        let i = self.cells.len();
                        self.index.insert(hash, i);
                        self.cells.push(SignalEntry {
                            source,
                            apart,
                            dim: dim.to_owned(),
                            key: key.to_owned(),
                            minute,
                            visible,
                            counts: Vec::new(),
                            upto: offset,
                        });
                        i
                    }
                };
                let entry = &mut self.cells[i];
                add_count(&mut entry.counts, outcome, n, false);
                entry.upto = offset;
            }
        }
    }
}

/// The status fields the ledger reads, borrowed from a Python `StatusFact`.
struct PyStatus {
    wamid: String,
    status: String,
    timestamp: i64,
    sender: String,
    phone: Option<String>,
    user_id: Option<String>,
    country: String,
    category: Option<String>,
    error_code: Option<i64>,
    error_class: Option<String>,
    origin: (i64, i64, i64),
    mark: i64,
}

fn py_status(fact: &Bound<'_, PyAny>) -> PyResult<PyStatus> {
    let py = fact.py();
    Ok(PyStatus {
        wamid: fact.getattr(intern!(py, "wamid"))?.extract()?,
        status: fact.getattr(intern!(py, "status"))?.extract()?,
        timestamp: fact.getattr(intern!(py, "timestamp"))?.extract()?,
        sender: fact.getattr(intern!(py, "sender"))?.extract()?,
        phone: fact.getattr(intern!(py, "phone"))?.extract()?,
        user_id: fact.getattr(intern!(py, "user_id"))?.extract()?,
        country: fact.getattr(intern!(py, "country"))?.extract()?,
        category: fact.getattr(intern!(py, "category"))?.extract()?,
        error_code: fact.getattr(intern!(py, "error_code"))?.extract()?,
        error_class: fact.getattr(intern!(py, "error_class"))?.extract()?,
        origin: fact.getattr(intern!(py, "origin"))?.extract()?,
        mark: fact.getattr(intern!(py, "mark"))?.extract()?,
    })
}

/// Flags of :func:`apply_status`'s result.
const DUPLICATE: i64 = 1;
const REPLAYED: i64 = 2;
const LATE: i64 = 4;
const FIRST_STATUS: i64 = 8;
const COUNTED: i64 = 16;

/// The messages stage's step for one status fact not applied before (``MessageLedger.
/// apply_status`` and what the stage does with its effects): the message's new state
/// (encoded), its deltas added to ``writer`` and ``cells``. None when ``raw``'s state has
/// absorbed ``position`` already (a replay: the Python ledger re-derives its effects).
/// Returns (state, flags, category, last_ts, facts, created buckets, US-pause (minute,
/// visible) or None); ``make_fact(*fields)`` builds a ``RecipientFact``.
#[pyfunction]
#[pyo3(signature = (writer, cells, raw, fact, position, watermark, template, category, campaign, lateness, is_retryable, make_fact))]
#[allow(clippy::too_many_arguments)]
fn apply_status<'py>(
    py: Python<'py>,
    mut writer: PyRefMut<'py, BucketWriter>,
    mut cells: PyRefMut<'py, SignalCells>,
    raw: Option<&[u8]>,
    fact: &Bound<'py, PyAny>,
    position: (i64, i64, i64),
    watermark: i64,
    template: Option<&str>,
    category: Option<&str>,
    campaign: Option<&str>,
    lateness: i64,
    is_retryable: &Bound<'py, PyAny>,
    make_fact: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let mut state = match raw {
        None => state::MessageState::default(),
        Some(raw) => state::MessageState::decode(raw).map_err(PyValueError::new_err)?,
    };
    if let Some((_, last)) = state.applied.iter().find(|(s, _)| *s == position.0) {
        if (position.1, position.2) <= *last {
            return Ok(None);
        }
    }
    let first_status = state.seen.is_empty();
    let f = py_status(fact)?;
    let status = ledger::Status {
        wamid: &f.wamid,
        status: &f.status,
        timestamp: f.timestamp,
        sender: &f.sender,
        phone: f.phone.as_deref(),
        user_id: f.user_id.as_deref(),
        country: &f.country,
        category: f.category.as_deref(),
        error_code: f.error_code,
        error_class: f.error_class.as_deref(),
        origin: f.origin,
        mark: f.mark,
    };
    let named = ledger::Named {
        template,
        category,
        campaign,
    };
    let mut retryable = |code: i64| -> Result<bool, String> {
        is_retryable
            .call1((code,))
            .and_then(|r| r.extract::<bool>())
            .map_err(|e| e.to_string())
    };
    let fx = ledger::apply_status(
        &mut state,
        &status,
        position,
        watermark,
        &named,
        lateness,
        &mut retryable,
    )
    .map_err(PyValueError::new_err)?;
    let mut flags = 0;
    if fx.duplicate {
        flags |= DUPLICATE;
    }
    if fx.replayed {
        flags |= REPLAYED;
    }
    if fx.late {
        flags |= LATE;
    }
    if first_status {
        flags |= FIRST_STATUS;
    }
    let created = PyList::empty(py);
    if !fx.deltas.is_empty() || !fx.shifts.is_empty() {
        flags |= COUNTED;
        let (deltas, shifts) = (native_deltas(&fx.deltas), native_deltas(&fx.shifts));
        let all: Vec<DeltaRef> = deltas.iter().chain(&shifts).copied().collect();
        writer.add_deltas(py, position, &all, &created)?;
        cells.add_deltas(position.0, position.1, false, &deltas, &shifts);
    }
    let facts = PyList::empty(py);
    for fa in &fx.facts {
        let fields = (
            fa.recipient.as_str(),
            fa.kind,
            fa.timestamp,
            fa.position,
            fa.other.as_deref(),
            fa.template.as_deref(),
            fa.wamid.as_deref(),
            fa.sender.as_deref(),
            fa.campaign.as_deref(),
            fa.code,
        );
        facts.append(make_fact.call1(fields)?)?;
    }
    // `_us_paused`: also for a retry that moved the count to its earlier point
    let us_paused = if f.error_class.as_deref() == Some("us_marketing_pause")
        && (!fx.shifts.is_empty() || !fx.duplicate)
    {
        if fx.deltas.is_empty() {
            &fx.shifts
        } else {
            &fx.deltas
        }
        .iter()
        .find(|d| {
            d.dim == ledger::SENDER && d.outcome == "failed.us_marketing_pause" && d.delta > 0
        })
        .map(|d| (d.minute, d.visible))
    } else {
        None
    };
    let encoded = PyBytes::new(py, &state.encode());
    let result: [PyObject; 7] = [
        encoded.into_any().unbind(),
        flags.into_pyobject(py)?.into_any().unbind(),
        state.category.into_pyobject(py)?.into_any().unbind(),
        state.last_ts.into_pyobject(py)?.into_any().unbind(),
        facts.into_any().unbind(),
        created.into_any().unbind(),
        us_paused.into_pyobject(py)?.into_any().unbind(),
    ];
    Ok(Some(PyTuple::new(py, result)?))
}

/// Decode and encode a message state again (tests: the codec agrees with msgspec's).
#[pyfunction]
fn reencode_message_state<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let state = state::MessageState::decode(raw).map_err(PyValueError::new_err)?;
    Ok(PyBytes::new(py, &state.encode()))
}

/// What `apply_recipient_fact` returns for a fact not applied before.
type Applied<'py> = (
    Bound<'py, PyBytes>,
    i64,
    i64,
    bool,
    bool,
    (bool, i64),
    i64,
    Bound<'py, PyList>,
    usize,
);

/// Stage 3's step for one recipient fact (`apply_fact`, then `premature_resends`) on the
/// recipient's encoded state (`raw`, None: a new recipient), the failures', engagement's and
/// attempts' windows given. None when the state absorbed the fact's position already.
/// Returns (state, last_ts, last_engagement, opted_out, open plans, (opted out, last 131049)
/// before, last 131049 after, resends [(template, ts, sender, campaign, wamid_hash)], new).
#[pyfunction]
#[pyo3(signature = (raw, fact, failures, engagement, attempts))]
fn apply_recipient_fact<'py>(
    py: Python<'py>,
    raw: Option<&[u8]>,
    fact: &Bound<'py, PyAny>,
    failures: i64,
    engagement: i64,
    attempts: i64,
) -> PyResult<Option<Applied<'py>>> {
    let mut state = match raw {
        None => recipient::RecipientState::default(),
        Some(raw) => recipient::RecipientState::decode(raw).map_err(PyValueError::new_err)?,
    };
    let before = (state.opted_out(), state.last_limit_failure());
    let text =
        |name: &Bound<'py, PyString>| -> PyResult<Option<String>> { fact.getattr(name)?.extract() };
    let other = text(intern!(py, "other"))?;
    let template = text(intern!(py, "template"))?;
    let wamid = text(intern!(py, "wamid"))?;
    let sender = text(intern!(py, "sender"))?;
    let campaign = text(intern!(py, "campaign"))?;
    let f = recipient::Fact {
        kind: fact.getattr(intern!(py, "kind"))?.extract()?,
        timestamp: fact.getattr(intern!(py, "timestamp"))?.extract()?,
        position: fact.getattr(intern!(py, "position"))?.extract()?,
        other: other.as_deref(),
        template: template.as_deref(),
        wamid: wamid.as_deref(),
        sender: sender.as_deref(),
        campaign: campaign.as_deref(),
    };
    let windows = recipient::Windows {
        failures,
        engagement,
        attempts,
    };
    if !recipient::apply_fact(&mut state, &f, &windows) {
        return Ok(None);
    }
    let (resends, new) = recipient::premature_resends(&mut state, &f);
    let signals = PyList::empty(py);
    for a in resends {
        signals.append((a.template, a.ts, a.sender, a.campaign, a.wamid_hash))?;
    }
    Ok(Some((
        PyBytes::new(py, &state.encode()),
        state.last_ts,
        state.last_engagement(),
        state.opted_out(),
        !state.plans.is_empty(),
        before,
        state.last_limit_failure(),
        signals,
        new,
    )))
}

/// `changed_advice`'s step for one recipient: its advice at `now` (`advice_record` with the
/// policy's fields, see `advice::Policy`) from its encoded state. None when the advice's
/// signature is the one last published; else (the state with the new signature, encoded;
/// the advice record, JSON).
#[pyfunction]
#[pyo3(signature = (raw, recipient, now, is_us, policy))]
fn advise_recipient<'py>(
    py: Python<'py>,
    raw: &[u8],
    recipient: &str,
    now: i64,
    is_us: bool,
    policy: (i64, i64, usize, i64, i64, i64, i64, i64),
) -> PyResult<Option<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
    let mut state = recipient::RecipientState::decode(raw).map_err(PyValueError::new_err)?;
    let policy = advice::Policy {
        cooldown_s: policy.0,
        resend_extension_s: policy.1,
        undeliverable_threshold: policy.2,
        undeliverable_window_s: policy.3,
        undeliverable_suppress_s: policy.4,
        recent_s: policy.5,
        window_s: policy.6,
        unengaged_min_delivered: policy.7,
    };
    let (signature, record) = advice::advice_record(&state, recipient, now, is_us, &policy);
    if signature == state.advice_signature {
        return Ok(None);
    }
    state.advice_signature = signature;
    Ok(Some((
        PyBytes::new(py, &state.encode()),
        PyBytes::new(py, record.as_bytes()),
    )))
}

/// Decode and encode a recipient state again (tests: the codec agrees with msgspec's).
#[pyfunction]
fn reencode_recipient_state<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let state = recipient::RecipientState::decode(raw).map_err(PyValueError::new_err)?;
    Ok(PyBytes::new(py, &state.encode()))
}

/// `wamid_hash` (tests: the same as zlib's CRC-32).
#[pyfunction(name = "wamid_hash")]
#[pyo3(signature = (wamid))]
fn wamid_hash_py(wamid: Option<&str>) -> i64 {
    recipient::wamid_hash(wamid)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`) as an unsigned 32-bit int.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
#[pyfunction]
fn partition_for(key: &str, partitions: u32) -> PyResult<u32> {
    if partitions == 0 {
        return Err(PyValueError::new_err("a topic has at least one partition"));
    }
    Ok((murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions)
}

/// Kafka's murmur2 of `data` (tests: the same as the Python and aiokafka's).
#[pyfunction(name = "murmur2")]
fn murmur2_py(data: &[u8]) -> u32 {
    murmur2(data)
}

#[pymodule]
fn streams_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BucketWriter>()?;
    m.add_class::<SignalCells>()?;
    m.add_function(wrap_pyfunction!(apply_status, m)?)?;
    m.add_function(wrap_pyfunction!(reencode_message_state, m)?)?;
    m.add_function(wrap_pyfunction!(apply_recipient_fact, m)?)?;
    m.add_function(wrap_pyfunction!(advise_recipient, m)?)?;
    m.add_function(wrap_pyfunction!(reencode_recipient_state, m)?)?;
    m.add_function(wrap_pyfunction!(wamid_hash_py, m)?)?;
    m.add_function(wrap_pyfunction!(partition_for, m)?)?;
    m.add_function(wrap_pyfunction!(murmur2_py, m)?)?;
    Ok(())
}
