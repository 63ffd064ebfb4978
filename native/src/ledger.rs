//! `MessageLedger.apply_status` (streams/core/ledger.py) for an input not applied before: the
//! Python method is the specification, line for line; a replay is left to it.

use crate::state::{Counted, Fact, MessageState, Position, Seen, Shift};

const ATTEMPTED: i64 = 1;
const SENT: i64 = 1 << 1;
const DELIVERED: i64 = 1 << 2;
const READ: i64 = 1 << 3;
const PLAYED: i64 = 1 << 4;
const FAILED: i64 = 1 << 5;
const DELETED: i64 = 1 << 6;
const WARNING: i64 = 1 << 7;
const OTHER: i64 = 1 << 8;
const SHIFTABLE: i64 = ATTEMPTED | SENT | DELIVERED;
const MKT_DELIVERED_FACT: i64 = 1 << 16;
const MKT_ATTEMPT_FACT: i64 = 1 << 17;
const LINKED: i64 = 1 << 18;
const MKT_READ_FACT: i64 = 1 << 19;
const ATTEMPT_SENDER: i64 = 1 << 20;
const ATTEMPT_TEMPLATE: i64 = 1 << 21;

const STAGE_OUTCOMES: [(i64, &str); 9] = [
    (ATTEMPTED, "attempted"),
    (SENT, "sent"),
    (DELIVERED, "delivered"),
    (READ, "read"),
    (PLAYED, "played"),
    (FAILED, "failed"),
    (DELETED, "deleted"),
    (WARNING, "warning"),
    (OTHER, "other_status"),
];

pub const UNKNOWN_TEMPLATE: &str = "unknown";
const GRID: i64 = 15;
pub const FACTS_PER_ITEM: i64 = 16;

// RecipientFactKind
const MARKETING_DELIVERED: i64 = 1;
const LIMIT_FAILURE: i64 = 2;
const US_PAUSE: i64 = 3;
const OPT_OUT_FAILURE: i64 = 4;
const UNDELIVERABLE: i64 = 5;
const MARKETING_ATTEMPT: i64 = 6;
const LINK: i64 = 10;
const MARKETING_READ: i64 = 11;
const SEND_ATTEMPT: i64 = 12;
const RETRYABLE_FAILURE: i64 = 13;

pub const TEMPLATE: &str = "t";
pub const SENDER: &str = "s";
pub const COUNTRY: &str = "c";
pub const CAMPAIGN: &str = "g";

fn implies(status: &str) -> i64 {
    match status {
        "sent" => ATTEMPTED | SENT,
        "delivered" => ATTEMPTED | SENT | DELIVERED,
        "read" => ATTEMPTED | SENT | DELIVERED | READ,
        "played" => ATTEMPTED | SENT | DELIVERED | PLAYED,
        "failed" => ATTEMPTED | FAILED,
        "deleted" => ATTEMPTED | DELETED,
        "warning" => ATTEMPTED | WARNING,
        _ => ATTEMPTED | OTHER,
    }
}

fn failure_fact(error_class: &str) -> Option<i64> {
    match error_class {
        "per_user_marketing_limit" => Some(LIMIT_FAILURE),
        "us_marketing_pause" => Some(US_PAUSE),
        "opt_out" => Some(OPT_OUT_FAILURE),
        "undeliverable" => Some(UNDELIVERABLE),
        _ => None,
    }
}

fn is_marketing(category: &str) -> bool {
    matches!(category, "marketing" | "marketing_lite" | "group_marketing")
}

fn detailed(kind: i64) -> bool {
    matches!(
        kind,
        MARKETING_ATTEMPT | SEND_ATTEMPT | LIMIT_FAILURE | RETRYABLE_FAILURE
    )
}

pub fn visible_at(mark: i64) -> i64 {
    (mark.div_euclid(GRID) + 1) * GRID
}

/// `s or default` (Python's, for a `str`).
fn or(s: &str, default: &str) -> String {
    if s.is_empty() { default } else { s }.to_owned()
}

/// A non-empty string (Python's truthiness of ``str | None``).
fn truthy(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    pub dim: &'static str,
    pub key: String,
    pub minute: i64,
    pub outcome: String,
    pub delta: i64,
    pub visible: i64,
}

/// The fields of a `StatusFact` the ledger reads.
pub struct Status<'a> {
    pub wamid: &'a str,
    pub status: &'a str,
    pub timestamp: i64,
    pub sender: &'a str,
    pub phone: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub country: &'a str,
    pub category: Option<&'a str>,
    pub error_code: Option<i64>,
    pub error_class: Option<&'a str>,
    pub origin: Position,
    pub mark: i64,
}

impl Status<'_> {
    fn recipient(&self) -> &str {
        self.phone
            .filter(|s| !s.is_empty())
            .or(self.user_id.filter(|s| !s.is_empty()))
            .unwrap_or("")
    }
}

#[derive(Default)]
pub struct Effects {
    pub deltas: Vec<Delta>,
    pub shifts: Vec<Delta>,
    pub facts: Vec<Fact>,
    pub duplicate: bool,
    pub replayed: bool,
    pub late: bool,
}

/// What the callback data named (the Python `Attribution`'s template, category, campaign).
pub struct Named<'a> {
    pub template: Option<&'a str>,
    pub category: Option<&'a str>,
    pub campaign: Option<&'a str>,
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// `apply_status` for an input not applied before (the caller checks `already_applied`).
pub fn apply_status(
    state: &mut MessageState,
    fact: &Status,
    position: Position,
    watermark: i64,
    named: &Named,
    lateness: i64,
    is_retryable: &mut dyn FnMut(i64) -> Result<bool, String>,
) -> Result<Effects, String> {
    let mut fx = Effects::default();
    set(&mut state.applied, position.0, (position.1, position.2));
    state.wamid = fact.wamid.to_owned();
    if let Some((_, seen)) = state.seen.iter().find(|(s, _)| s == fact.status) {
        if seen.origin == fact.origin {
            fx.replayed = true;
        } else {
            fx.duplicate = true;
            repeat(state, fact, position, watermark, lateness, &mut fx);
        }
        return Ok(fx);
    }
    state.seen.push((
        fact.status.to_owned(),
        Seen {
            position,
            origin: fact.origin,
        },
    ));
    let ts = fact.timestamp;
    state.last_ts = state.last_ts.max(ts);
    if state.first_ts == 0 || ts < state.first_ts {
        state.first_ts = ts;
    }
    if state.sender.is_empty() {
        state.sender = fact.sender.to_owned();
    }
    if state.country.is_empty() {
        state.country = fact.country.to_owned();
    }
    if state.recipient.is_empty() {
        state.recipient = fact.recipient().to_owned();
    }
    let template_named = nonempty(named.template);
    let campaign_named = nonempty(named.campaign);
    if state.template.is_none() {
        if let Some(t) = template_named {
            state.template = Some(t.to_owned());
        }
    }
    let mark = if fact.mark != 0 { fact.mark } else { ts };
    if state.campaign.is_none() {
        if let Some(c) = campaign_named {
            attribute_campaign(state, c, position, &mut fx, mark, true);
        }
    }
    if template_named.is_some() && template_named == state.template.as_deref() {
        state.log_mark = 0;
    }
    if campaign_named.is_some() && campaign_named == state.campaign.as_deref() {
        state.campaign_mark = 0;
    }
    if truthy(&state.category).is_none() {
        let category = nonempty(fact.category).or(named.category);
        state.category = category.map(str::to_owned);
    }

    let implied = implies(fact.status);
    let new = implied & !state.stages;
    let earlier = implied & state.stages & SHIFTABLE;
    state.stages |= new;
    let late = ts < watermark.max(fact.mark) - lateness;
    fx.late = late && new != 0;
    let template = truthy(&state.template)
        .unwrap_or(UNKNOWN_TEMPLATE)
        .to_owned();
    let minute = ts.div_euclid(60);
    if earlier != 0 && !late {
        shift(
            state,
            &outcomes_of(earlier, None),
            minute,
            position,
            mark,
            &mut fx,
        );
    }
    if new != 0 && !late {
        let cells = cells(state, &template, mark, true);
        for (bit, outcome) in STAGE_OUTCOMES {
            if new & bit == 0 {
                continue;
            }
            let label = if bit == FAILED {
                format!("failed.{}", nonempty(fact.error_class).unwrap_or("unknown"))
            } else {
                outcome.to_owned()
            };
            for (dim, key, visible) in &cells {
                fx.deltas.push(Delta {
                    dim,
                    key: key.clone(),
                    minute,
                    outcome: label.clone(),
                    delta: 1,
                    visible: *visible,
                });
            }
            state.counted.push(Counted {
                minute,
                outcome: label,
                position,
                template: template.clone(),
                moved_at: None,
                mark,
                campaigned_at: None,
                shifts: Vec::new(),
            });
        }
    }
    if new & DELIVERED != 0 {
        state.delivered_ts = ts;
    }
    if new & READ != 0 {
        state.read_ts = ts;
    }
    if new & FAILED != 0 {
        let mut kind = failure_fact(fact.error_class.unwrap_or(""));
        if kind.is_none() {
            if let Some(code) = fact.error_code {
                if is_retryable(code)? {
                    kind = Some(RETRYABLE_FAILURE);
                }
            }
        }
        if let Some(kind) = kind {
            emit(
                state,
                &mut fx,
                kind,
                ts,
                position,
                None,
                None,
                fact.error_code,
            );
        }
    }
    if let (Some(phone), Some(user_id)) = (nonempty(fact.phone), nonempty(fact.user_id)) {
        if state.stages & LINKED == 0 {
            state.stages |= LINKED;
            emit(
                state,
                &mut fx,
                LINK,
                ts,
                position,
                Some(phone),
                Some(user_id),
                None,
            );
        }
    }
    marketing_facts(state, &mut fx, position);
    Ok(fx)
}

fn set<K: PartialEq, V>(entries: &mut Vec<(K, V)>, key: K, value: V) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => entries.push((key, value)),
    }
}

/// `_cells`: (dim, key, visible) of each dimension an outcome counts under.
fn cells(
    state: &MessageState,
    template: &str,
    mark: i64,
    campaign: bool,
) -> Vec<(&'static str, String, i64)> {
    let seen = visible_at(mark);
    let by_template = if state.log_mark != 0 && template != UNKNOWN_TEMPLATE {
        visible_at(state.log_mark).max(seen)
    } else {
        seen.max(0)
    };
    let mut out = vec![
        (TEMPLATE, template.to_owned(), by_template),
        (SENDER, or(&state.sender, "unknown"), seen),
        (COUNTRY, or(&state.country, "ZZ"), seen),
    ];
    if campaign {
        if let Some(c) = truthy(&state.campaign) {
            out.push((
                CAMPAIGN,
                c.to_owned(),
                visible_at(state.campaign_mark).max(seen),
            ));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn deltas(
    out: &mut Vec<Delta>,
    state: &MessageState,
    template: &str,
    minute: i64,
    outcome: &str,
    n: i64,
    mark: i64,
    campaign: bool,
) {
    for (dim, key, visible) in cells(state, template, mark, campaign) {
        out.push(Delta {
            dim,
            key,
            minute,
            outcome: outcome.to_owned(),
            delta: n,
            visible,
        });
    }
}

/// The outcome labels of ``bits`` (``failed.<class>`` for FAILED, with ``error_class``).
fn outcomes_of(bits: i64, error_class: Option<&str>) -> Vec<String> {
    STAGE_OUTCOMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(bit, outcome)| {
            if *bit == FAILED {
                format!("failed.{}", nonempty(error_class).unwrap_or("unknown"))
            } else {
                (*outcome).to_owned()
            }
        })
        .collect()
}

/// `_repeat`: a status seen before from another raw record counts what it implies from the
/// lower of the two marks (and the earlier minute).
fn repeat(
    state: &mut MessageState,
    fact: &Status,
    position: Position,
    watermark: i64,
    lateness: i64,
    fx: &mut Effects,
) {
    let ts = fact.timestamp;
    if ts < watermark.max(fact.mark) - lateness {
        return;
    }
    let implied = implies(fact.status) & state.stages;
    let outcomes = outcomes_of(implied, fact.error_class);
    let mark = if fact.mark != 0 { fact.mark } else { ts };
    shift(state, &outcomes, ts.div_euclid(60), position, mark, fx);
}

fn shift(
    state: &mut MessageState,
    outcomes: &[String],
    minute: i64,
    position: Position,
    mark: i64,
    fx: &mut Effects,
) {
    let campaign = truthy(&state.campaign).is_some();
    let mut moved: Vec<(String, Shift)> = Vec::new();
    for c in state.counted.iter_mut() {
        if !outcomes.contains(&c.outcome) || (minute, mark) >= (c.minute, c.mark) {
            continue;
        }
        let s = Shift {
            position,
            from_minute: c.minute,
            to_minute: minute,
            template: c.template.clone(),
            campaign,
            mark,
            from_mark: c.mark,
        };
        c.shifts.push(s.clone());
        c.minute = minute;
        c.mark = mark;
        moved.push((c.outcome.clone(), s));
    }
    for (outcome, s) in moved {
        let (template, campaign) = (s.template.as_str(), s.campaign);
        deltas(
            &mut fx.shifts,
            state,
            template,
            s.from_minute,
            &outcome,
            -1,
            s.from_mark,
            campaign,
        );
        deltas(
            &mut fx.shifts,
            state,
            template,
            s.to_minute,
            &outcome,
            1,
            s.mark,
            campaign,
        );
    }
}

fn attribute_campaign(
    state: &mut MessageState,
    campaign: &str,
    position: Position,
    fx: &mut Effects,
    mark: i64,
    carried: bool,
) {
    state.campaign = Some(campaign.to_owned());
    state.campaign_mark = if carried { 0 } else { mark };
    let named = visible_at(mark);
    for c in state.counted.iter_mut() {
        c.campaigned_at = Some(position);
        fx.deltas.push(Delta {
            dim: CAMPAIGN,
            key: campaign.to_owned(),
            minute: c.minute,
            outcome: c.outcome.clone(),
            delta: 1,
            visible: visible_at(c.mark).max(named),
        });
    }
}

fn marketing_facts(state: &mut MessageState, fx: &mut Effects, position: Position) {
    let Some(category) = state.category.as_deref() else {
        return;
    };
    if state.recipient.is_empty() {
        return;
    }
    let marketing = is_marketing(category);
    attempt_fact(state, fx, position, marketing);
    if !marketing {
        return;
    }
    if state.stages & DELIVERED != 0 && state.stages & MKT_DELIVERED_FACT == 0 {
        state.stages |= MKT_DELIVERED_FACT;
        let ts = state.delivered_ts;
        emit(
            state,
            fx,
            MARKETING_DELIVERED,
            ts,
            position,
            None,
            None,
            None,
        );
    }
    if state.stages & READ != 0 && state.stages & MKT_READ_FACT == 0 {
        state.stages |= MKT_READ_FACT;
        let ts = state.read_ts;
        emit(state, fx, MARKETING_READ, ts, position, None, None, None);
    }
}

fn attempt_fact(state: &mut MessageState, fx: &mut Effects, position: Position, marketing: bool) {
    if state.first_ts == 0 {
        return;
    }
    let kind = if marketing {
        MARKETING_ATTEMPT
    } else {
        SEND_ATTEMPT
    };
    let stages = state.stages;
    let known = (if state.sender.is_empty() {
        0
    } else {
        ATTEMPT_SENDER
    }) | (if truthy(&state.template).is_some() {
        ATTEMPT_TEMPLATE
    } else {
        0
    });
    if stages & MKT_ATTEMPT_FACT != 0 {
        let earlier = 0 < state.first_ts && state.first_ts < state.attempt_ts;
        if !(earlier || known & !stages != 0) {
            return;
        }
    }
    state.stages |= MKT_ATTEMPT_FACT | known;
    state.attempt_ts = state.first_ts;
    let ts = state.first_ts;
    emit(state, fx, kind, ts, position, None, None, None);
}

#[allow(clippy::too_many_arguments)]
fn emit(
    state: &mut MessageState,
    fx: &mut Effects,
    kind: i64,
    ts: i64,
    position: Position,
    recipient: Option<&str>,
    other: Option<&str>,
    code: Option<i64>,
) {
    let sub = fx
        .facts
        .iter()
        .filter(|f| (f.position.0, f.position.1) == (position.0, position.1))
        .count() as i64;
    let detailed = detailed(kind);
    let recipient = nonempty(recipient).unwrap_or(&state.recipient).to_owned();
    if recipient.is_empty() {
        return;
    }
    let fact = Fact {
        recipient,
        kind,
        timestamp: ts,
        position: (position.0, position.1, position.2 * FACTS_PER_ITEM + sub),
        other: other.map(str::to_owned),
        template: state.template.clone(),
        wamid: Some(state.wamid.clone()),
        sender: if detailed && !state.sender.is_empty() {
            Some(state.sender.clone())
        } else {
            None
        },
        campaign: if detailed {
            state.campaign.clone()
        } else {
            None
        },
        code,
    };
    state.emitted.push(fact.clone());
    fx.facts.push(fact);
}
