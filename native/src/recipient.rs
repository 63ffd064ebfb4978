//! Stage 3's step for one recipient fact (`streams.core.recipient_state`): the recipient's
//! state decoded from and encoded to the bytes msgspec reads and writes, `apply_fact` and
//! `premature_resends`, each a line-by-line mirror of the Python, which stays the
//! specification (tests/unit/test_native_recipients.py runs both on the same inputs).

use crate::msgpack::{self, fields, opt_string, write_opt_str, Reader};

type R<T> = Result<T, String>;

const DAY: i64 = 86_400;
/// `streams.core.recipient_state.MAX_EVENTS`
const MAX_EVENTS: usize = 200;

// `streams.core.facts.RecipientFactKind`
pub const MARKETING_DELIVERED: i64 = 1;
pub const LIMIT_FAILURE: i64 = 2;
pub const US_PAUSE: i64 = 3;
pub const OPT_OUT_FAILURE: i64 = 4;
pub const UNDELIVERABLE: i64 = 5;
pub const MARKETING_ATTEMPT: i64 = 6;
pub const INBOUND_MESSAGE: i64 = 7;
pub const PREFERENCE_STOP: i64 = 8;
pub const PREFERENCE_RESUME: i64 = 9;
pub const LINK: i64 = 10;
pub const MARKETING_READ: i64 = 11;
pub const SEND_ATTEMPT: i64 = 12;

#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub ts: i64,
    pub template: Option<String>,
    pub sender: Option<String>,
    pub campaign: Option<String>,
    pub marketing: bool,
    pub wamid_hash: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpenPlan {
    pub due: i64,
    pub wamid: String,
    pub template: Option<String>,
    pub failed_at: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipientState {
    pub marketing_delivered: Vec<i64>,
    pub marketing_attempts: Vec<i64>,
    pub limit_failures: Vec<i64>,
    pub us_pause_ts: i64,
    pub undeliverable: Vec<i64>,
    pub stop_ts: i64,
    pub resume_ts: i64,
    pub opt_out_source: String,
    pub csw_open_until: i64,
    pub link: Option<String>,
    pub last_ts: i64,
    pub applied: Vec<(i64, (i64, i64))>,
    pub premature_resends: Vec<i64>,
    pub advice_signature: String,
    pub marketing_read: Vec<i64>,
    pub last_inbound: i64,
    pub attempts: Vec<Attempt>,
    pub plans: Vec<OpenPlan>,
}

/// The fields of a `RecipientFact` the step reads.
pub struct Fact<'a> {
    pub kind: i64,
    pub timestamp: i64,
    pub position: (i64, i64, i64),
    pub other: Option<&'a str>,
    pub template: Option<&'a str>,
    pub wamid: Option<&'a str>,
    pub sender: Option<&'a str>,
    pub campaign: Option<&'a str>,
}

/// `streams.stages.recipients.Windows`: how long each history is kept.
pub struct Windows {
    pub failures: i64,
    pub engagement: i64,
    pub attempts: i64,
}

// -- the codec ----------------------------------------------------------------------------------

fn ints(r: &mut Reader) -> R<Vec<i64>> {
    let n = r.array_len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.int()?);
    }
    Ok(out)
}

fn attempt(r: &mut Reader) -> R<Attempt> {
    let n = fields(r, 6, 2, "an attempt")?;
    let mut a = Attempt {
        ts: r.int()?,
        template: opt_string(r)?,
        sender: None,
        campaign: None,
        marketing: true,
        wamid_hash: 0,
    };
    if n > 2 {
        a.sender = opt_string(r)?;
    }
    if n > 3 {
        a.campaign = opt_string(r)?;
    }
    if n > 4 {
        a.marketing = r.boolean()?;
    }
    if n > 5 {
        a.wamid_hash = r.int()?;
    }
    Ok(a)
}

fn open_plan(r: &mut Reader) -> R<OpenPlan> {
    fields(r, 4, 4, "an open plan")?;
    Ok(OpenPlan {
        due: r.int()?,
        wamid: r.string()?,
        template: opt_string(r)?,
        failed_at: r.int()?,
    })
}

fn write_ints(o: &mut Vec<u8>, v: &[i64]) {
    msgpack::write_array_len(o, v.len());
    for n in v {
        msgpack::write_int(o, *n);
    }
}

impl RecipientState {
    pub fn decode(raw: &[u8]) -> R<RecipientState> {
        let mut r = Reader::new(raw);
        let n = fields(&mut r, 18, 0, "a recipient state")?;
        let mut s = RecipientState::default();
        for i in 0..n {
            match i {
                0 => s.marketing_delivered = ints(&mut r)?,
                1 => s.marketing_attempts = ints(&mut r)?,
                2 => s.limit_failures = ints(&mut r)?,
                3 => s.us_pause_ts = r.int()?,
                4 => s.undeliverable = ints(&mut r)?,
                5 => s.stop_ts = r.int()?,
                6 => s.resume_ts = r.int()?,
                7 => s.opt_out_source = r.string()?,
                8 => s.csw_open_until = r.int()?,
                9 => s.link = opt_string(&mut r)?,
                10 => s.last_ts = r.int()?,
                11 => s.applied = msgpack::read_applied(&mut r)?,
                12 => s.premature_resends = ints(&mut r)?,
                13 => s.advice_signature = r.string()?,
                14 => s.marketing_read = ints(&mut r)?,
                15 => s.last_inbound = r.int()?,
                16 => {
                    for _ in 0..r.array_len()? {
                        s.attempts.push(attempt(&mut r)?);
                    }
                }
                _ => {
                    for _ in 0..r.array_len()? {
                        s.plans.push(open_plan(&mut r)?);
                    }
                }
            }
        }
        if !r.at_end() {
            return Err("trailing bytes after a recipient state".to_owned());
        }
        Ok(s)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let o = &mut out;
        msgpack::write_array_len(o, 18);
        write_ints(o, &self.marketing_delivered);
        write_ints(o, &self.marketing_attempts);
        write_ints(o, &self.limit_failures);
        msgpack::write_int(o, self.us_pause_ts);
        write_ints(o, &self.undeliverable);
        msgpack::write_int(o, self.stop_ts);
        msgpack::write_int(o, self.resume_ts);
        msgpack::write_str(o, &self.opt_out_source);
        msgpack::write_int(o, self.csw_open_until);
        write_opt_str(o, self.link.as_deref());
        msgpack::write_int(o, self.last_ts);
        msgpack::write_applied(o, &self.applied);
        write_ints(o, &self.premature_resends);
        msgpack::write_str(o, &self.advice_signature);
        write_ints(o, &self.marketing_read);
        msgpack::write_int(o, self.last_inbound);
        msgpack::write_array_len(o, self.attempts.len());
        for a in &self.attempts {
            msgpack::write_array_len(o, 6);
            msgpack::write_int(o, a.ts);
            write_opt_str(o, a.template.as_deref());
            write_opt_str(o, a.sender.as_deref());
            write_opt_str(o, a.campaign.as_deref());
            o.push(if a.marketing { 0xc3 } else { 0xc2 });
            msgpack::write_int(o, a.wamid_hash);
        }
        msgpack::write_array_len(o, self.plans.len());
        for p in &self.plans {
            msgpack::write_array_len(o, 4);
            msgpack::write_int(o, p.due);
            msgpack::write_str(o, &p.wamid);
            write_opt_str(o, p.template.as_deref());
            msgpack::write_int(o, p.failed_at);
        }
        out
    }

    pub fn opted_out(&self) -> bool {
        self.stop_ts > self.resume_ts
    }

    pub fn last_limit_failure(&self) -> i64 {
        self.limit_failures.iter().copied().max().unwrap_or(0)
    }

    pub fn last_engagement(&self) -> i64 {
        let last = |v: &[i64]| v.last().copied().unwrap_or(0);
        last(&self.marketing_delivered)
            .max(last(&self.marketing_read))
            .max(self.last_inbound)
    }
}

// -- the step -----------------------------------------------------------------------------------

/// zlib's CRC-32 (`wamid_hash`: `zlib.crc32(wamid.encode())`).
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for b in data {
        crc = TABLE[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

pub fn wamid_hash(wamid: Option<&str>) -> i64 {
    match wamid {
        Some(w) if !w.is_empty() => i64::from(crc32(w.as_bytes())),
        _ => 0,
    }
}

/// Python's truth of an optional string: neither None nor empty.
fn truthy(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

/// `a or b` of two optional strings.
fn or(a: &Option<String>, b: Option<&str>) -> Option<String> {
    if truthy(a) {
        a.clone()
    } else {
        b.map(str::to_owned)
    }
}

fn add(times: &mut Vec<i64>, ts: i64, horizon: i64) {
    times.push(ts);
    times.sort();
    let mut drop = 0;
    while drop < times.len() && (times[drop] < horizon || times.len() - drop > MAX_EVENTS) {
        drop += 1;
    }
    times.drain(..drop);
}

fn add_attempt(state: &mut RecipientState, fact: &Fact, marketing: bool, horizon: i64) {
    let attempts = &mut state.attempts;
    let wh = wamid_hash(fact.wamid);
    let same = attempts.iter_mut().find(|a| wh != 0 && a.wamid_hash == wh);
    match same {
        Some(same) => {
            same.ts = same.ts.min(fact.timestamp);
            same.template = or(&same.template, fact.template);
            same.sender = or(&same.sender, fact.sender);
            same.campaign = or(&same.campaign, fact.campaign);
        }
        None => attempts.push(Attempt {
            ts: fact.timestamp,
            template: fact.template.map(str::to_owned),
            sender: fact.sender.map(str::to_owned),
            campaign: fact.campaign.map(str::to_owned),
            marketing,
            wamid_hash: wh,
        }),
    }
    attempts.sort_by_key(|a| a.ts);
    let mut drop = 0;
    while drop < attempts.len()
        && (attempts[drop].ts < horizon || attempts.len() - drop > MAX_EVENTS)
    {
        drop += 1;
    }
    attempts.drain(..drop);
}

/// `apply_fact`: false when the state absorbed the fact's position already (nothing changed).
pub fn apply_fact(state: &mut RecipientState, fact: &Fact, windows: &Windows) -> bool {
    let (source, offset, index) = fact.position;
    match state.applied.iter_mut().find(|(s, _)| *s == source) {
        Some((_, last)) => {
            if (offset, index) <= *last {
                return false;
            }
            *last = (offset, index);
        }
        None => state.applied.push((source, (offset, index))),
    }
    let ts = fact.timestamp;
    state.last_ts = state.last_ts.max(ts);
    let horizon = state.last_ts - windows.failures;
    match fact.kind {
        MARKETING_DELIVERED => add(
            &mut state.marketing_delivered,
            ts,
            state.last_ts - windows.engagement,
        ),
        MARKETING_READ => add(
            &mut state.marketing_read,
            ts,
            state.last_ts - windows.engagement,
        ),
        MARKETING_ATTEMPT | SEND_ATTEMPT => {
            let horizon = state.last_ts - windows.attempts;
            add_attempt(state, fact, fact.kind == MARKETING_ATTEMPT, horizon);
        }
        LIMIT_FAILURE => add(&mut state.limit_failures, ts, horizon),
        US_PAUSE => state.us_pause_ts = state.us_pause_ts.max(ts),
        UNDELIVERABLE => add(&mut state.undeliverable, ts, horizon),
        OPT_OUT_FAILURE | PREFERENCE_STOP if ts >= state.stop_ts => {
            state.stop_ts = ts;
            state.opt_out_source = if fact.kind == OPT_OUT_FAILURE {
                "error"
            } else {
                "user_preferences"
            }
            .to_owned();
        }
        PREFERENCE_RESUME => state.resume_ts = state.resume_ts.max(ts),
        INBOUND_MESSAGE => {
            state.csw_open_until = state.csw_open_until.max(ts + DAY);
            state.last_inbound = state.last_inbound.max(ts);
        }
        LINK => state.link = fact.other.map(str::to_owned),
        _ => {}
    }
    true
}

/// `premature_resends` (cool-down a day): the attempts to signal, and how many were new.
pub fn premature_resends(state: &mut RecipientState, fact: &Fact) -> (Vec<Attempt>, usize) {
    let cooldown = DAY;
    let premature = |a: &Attempt, f: i64| 0 < a.ts - f && a.ts - f < cooldown;
    let candidates: Vec<&Attempt> = match fact.kind {
        MARKETING_ATTEMPT => {
            let wh = wamid_hash(fact.wamid);
            let failures = &state.limit_failures;
            state
                .attempts
                .iter()
                .filter(|a| a.wamid_hash == wh && failures.iter().any(|f| premature(a, *f)))
                .collect()
        }
        LIMIT_FAILURE => state
            .attempts
            .iter()
            .filter(|a| premature(a, fact.timestamp))
            .collect(),
        _ => return (Vec::new(), 0),
    };
    let candidates: Vec<Attempt> = candidates
        .into_iter()
        .filter(|a| a.marketing && truthy(&a.template) && truthy(&a.sender))
        .cloned()
        .collect();
    let found: Vec<&Attempt> = candidates
        .iter()
        .filter(|a| !state.premature_resends.contains(&a.wamid_hash))
        .collect();
    let new = found.len();
    if new > 0 {
        let mut reported = std::mem::take(&mut state.premature_resends);
        reported.extend(found.iter().map(|a| a.wamid_hash));
        let live: Vec<i64> = state.attempts.iter().map(|a| a.wamid_hash).collect();
        reported.retain(|h| live.contains(h));
        let skip = reported.len().saturating_sub(MAX_EVENTS);
        reported.drain(..skip);
        state.premature_resends = reported;
    }
    if fact.kind == MARKETING_ATTEMPT {
        return (candidates, new);
    }
    let found: Vec<Attempt> = found.into_iter().cloned().collect();
    (found, new)
}
