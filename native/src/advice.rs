//! A recipient's advice (`streams.core.advice.advice_record`, with `engagement`): its
//! signature and its JSON record, byte for byte as msgspec writes the `Advice` struct. The
//! Python stays the specification (tests/unit/test_native_recipients.py runs both).

use crate::recipient::RecipientState;

const DAY: i64 = 86_400;

/// `streams.core.advice.AdvicePolicy` with its `EngagementPolicy`.
pub struct Policy {
    pub cooldown_s: i64,
    pub resend_extension_s: i64,
    pub undeliverable_threshold: usize,
    pub undeliverable_window_s: i64,
    pub undeliverable_suppress_s: i64,
    pub recent_s: i64,
    pub window_s: i64,
    pub unengaged_min_delivered: i64,
}

fn count_since(times: &[i64], since: i64, until: i64) -> i64 {
    times.iter().filter(|t| since < **t && **t <= until).count() as i64
}

fn storm_until(s: &RecipientState, now: i64, cooldown: i64, extension: i64) -> i64 {
    let failures: Vec<i64> = s
        .limit_failures
        .iter()
        .copied()
        .filter(|f| *f <= now)
        .collect();
    if failures.is_empty() {
        return 0;
    }
    let sends = s
        .attempts
        .iter()
        .filter(|a| a.marketing && a.ts <= now)
        .map(|a| a.ts)
        .chain(s.marketing_attempts.iter().copied().filter(|t| *t <= now));
    let mut until = 0;
    for t in sends {
        if t + extension > until && failures.iter().any(|f| 0 < t - f && t - f < cooldown) {
            until = t + extension;
        }
    }
    until
}

fn window_open(s: &RecipientState, now: i64) -> bool {
    if s.last_inbound != 0 && s.last_inbound <= now {
        return now - s.last_inbound < DAY;
    }
    s.csw_open_until > now && s.last_inbound == 0
}

/// msgspec's JSON string: `"` and `\` escaped, control characters as `\b \t \n \f \r` or
/// `\u00xx`, everything else as it is (UTF-8).
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `n or None`.
fn nonzero(n: i64) -> Option<i64> {
    (n != 0).then_some(n)
}

/// An optional number written as JSON (`none` "null") or as Python's `str` (`none` "None").
fn show(n: Option<i64>, none: &str) -> String {
    n.map_or_else(|| none.to_owned(), |n| n.to_string())
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// (signature, JSON record) of `advice_record(state, recipient, now, policy)`.
pub fn advice_record(
    s: &RecipientState,
    recipient: &str,
    now: i64,
    is_us: bool,
    p: &Policy,
) -> (String, String) {
    let mut reasons: Vec<&str> = Vec::new();
    let mut never = false;
    let mut not_before = 0;
    let stop = if s.stop_ts <= now { s.stop_ts } else { 0 };
    let resume = if s.resume_ts <= now { s.resume_ts } else { 0 };
    let opted_out = stop > resume;
    if is_us {
        reasons.push("us_marketing_pause");
        never = true;
    }
    if opted_out {
        reasons.push("opted_out");
        never = true;
    }
    let last_limit = s
        .limit_failures
        .iter()
        .copied()
        .filter(|f| *f <= now)
        .max()
        .unwrap_or(0);
    if last_limit != 0 && now < last_limit + p.cooldown_s {
        reasons.push("per_user_limit_cooldown");
        not_before = not_before.max(last_limit + p.cooldown_s);
    }
    let storm = storm_until(s, now, p.cooldown_s, p.resend_extension_s);
    if storm > now {
        reasons.push("resend_storm_extension");
        not_before = not_before.max(storm);
    }
    let recent: Vec<i64> = s
        .undeliverable
        .iter()
        .copied()
        .filter(|t| now - p.undeliverable_window_s < *t && *t <= now)
        .collect();
    if recent.len() >= p.undeliverable_threshold {
        let until = recent.iter().copied().max().unwrap_or(0) + p.undeliverable_suppress_s;
        if until > now {
            reasons.push("undeliverable");
            not_before = not_before.max(until);
        }
    }
    let may_send = !(never || not_before > now);
    let not_before = if never {
        None
    } else {
        Some(not_before.max(now))
    };
    let csw_open = window_open(s, now);
    let csw_until = nonzero(s.csw_open_until);
    // engagement
    let (recent_since, window_since) = (now - p.recent_s, now - p.window_s);
    let (delivered, read) = (&s.marketing_delivered, &s.marketing_read);
    let inbound = if s.last_inbound <= now {
        s.last_inbound
    } else {
        0
    };
    let d7 = count_since(delivered, recent_since, now);
    let d30 = count_since(delivered, window_since, now);
    let r7 = count_since(read, recent_since, now);
    let r30 = count_since(read, window_since, now);
    let tier = if r7 != 0 || inbound > recent_since {
        "engaged"
    } else if d30 >= p.unengaged_min_delivered && r30 == 0 && inbound <= window_since {
        "unengaged"
    } else if d30 != 0 || r30 != 0 || inbound > window_since {
        "cooling"
    } else {
        "unknown"
    };
    let signature = format!(
        "{}|{}|{}|{}|{}",
        py_bool(may_send),
        reasons.join(","),
        show(if may_send { None } else { not_before }, "None"),
        show(csw_until, "None"),
        tier
    );
    let mut j = String::with_capacity(512);
    j.push_str("{\"recipient\":");
    write_json_str(&mut j, recipient);
    j.push_str(&format!(
        ",\"as_of\":{now},\"may_send_marketing\":{may_send},\"reasons\":["
    ));
    let quoted: Vec<String> = reasons.iter().map(|r| format!("\"{r}\"")).collect();
    j.push_str(&quoted.join(","));
    j.push_str(&format!(
        "],\"not_before\":{},\"never_until_resume\":{opted_out},\
         \"customer_service_window_open\":{csw_open},\
         \"customer_service_window_open_until\":{},\
         \"marketing_delivered_24h\":{},\"marketing_delivered_7d\":{},\
         \"last_limit_failure\":{},\"known\":true,\
         \"engagement\":{{\"tier\":\"{tier}\",\"marketing_delivered_7d\":{d7},\
         \"marketing_delivered_30d\":{d30},\"marketing_read_7d\":{r7},\
         \"marketing_read_30d\":{r30},\"last_inbound\":{},\
         \"customer_service_window_open\":{csw_open}}}}}",
        show(not_before, "null"),
        show(csw_until, "null"),
        count_since(delivered, now - DAY, now),
        count_since(delivered, now - 7 * DAY, now),
        show(nonzero(last_limit), "null"),
        show(nonzero(inbound), "null"),
    ));
    (signature, j)
}
