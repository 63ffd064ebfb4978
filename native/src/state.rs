//! `MessageState` (streams.core.ledger) and what it holds, decoded from and encoded to the
//! bytes msgspec reads and writes (array-like structs: every field in declaration order; a
//! shorter array, an older save, leaves the trailing fields at their defaults).

use crate::msgpack::{self, fields, opt_string, write_opt_str, Reader};

pub type Position = (i64, i64, i64);
type R<T> = Result<T, String>;

#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub position: Position,
    pub origin: Position,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Shift {
    pub position: Position,
    pub from_minute: i64,
    pub to_minute: i64,
    pub template: String,
    pub campaign: bool,
    pub mark: i64,
    pub from_mark: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Counted {
    pub minute: i64,
    pub outcome: String,
    pub position: Position,
    pub template: String,
    pub moved_at: Option<Position>,
    pub mark: i64,
    pub campaigned_at: Option<Position>,
    pub shifts: Vec<Shift>,
}

/// `streams.core.facts.RecipientFact`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    pub recipient: String,
    pub kind: i64,
    pub timestamp: i64,
    pub position: Position,
    pub other: Option<String>,
    pub template: Option<String>,
    pub wamid: Option<String>,
    pub sender: Option<String>,
    pub campaign: Option<String>,
    pub code: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageState {
    pub wamid: String,
    pub template: Option<String>,
    pub campaign: Option<String>,
    pub category: Option<String>,
    pub stages: i64,
    pub seen: Vec<(String, Seen)>,
    pub counted: Vec<Counted>,
    pub emitted: Vec<Fact>,
    pub sender: String,
    pub country: String,
    pub recipient: String,
    pub delivered_ts: i64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub applied: Vec<(i64, (i64, i64))>,
    pub log_mark: i64,
    pub campaign_mark: i64,
    pub read_ts: i64,
    pub attempt_ts: i64,
}

// -- decoding ---------------------------------------------------------------------------------

fn position(r: &mut Reader) -> R<Position> {
    if r.array_len()? != 3 {
        return Err("a position has 3 items".to_owned());
    }
    Ok((r.int()?, r.int()?, r.int()?))
}

fn opt_position(r: &mut Reader) -> R<Option<Position>> {
    if r.nil()? {
        Ok(None)
    } else {
        position(r).map(Some)
    }
}

fn opt_int(r: &mut Reader) -> R<Option<i64>> {
    if r.nil()? {
        Ok(None)
    } else {
        r.int().map(Some)
    }
}

fn shift(r: &mut Reader) -> R<Shift> {
    fields(r, 7, 7, "a shift")?;
    Ok(Shift {
        position: position(r)?,
        from_minute: r.int()?,
        to_minute: r.int()?,
        template: r.string()?,
        campaign: r.boolean()?,
        mark: r.int()?,
        from_mark: r.int()?,
    })
}

fn counted(r: &mut Reader) -> R<Counted> {
    let n = fields(r, 8, 4, "a counted outcome")?;
    let mut c = Counted {
        minute: r.int()?,
        outcome: r.string()?,
        position: position(r)?,
        template: r.string()?,
        moved_at: None,
        mark: 0,
        campaigned_at: None,
        shifts: Vec::new(),
    };
    if n > 4 {
        c.moved_at = opt_position(r)?;
    }
    if n > 5 {
        c.mark = r.int()?;
    }
    if n > 6 {
        c.campaigned_at = opt_position(r)?;
    }
    if n > 7 {
        for _ in 0..r.array_len()? {
            c.shifts.push(shift(r)?);
        }
    }
    Ok(c)
}

fn fact(r: &mut Reader) -> R<Fact> {
    let n = fields(r, 10, 4, "a recipient fact")?;
    let mut f = Fact {
        recipient: r.string()?,
        kind: r.int()?,
        timestamp: r.int()?,
        position: position(r)?,
        other: None,
        template: None,
        wamid: None,
        sender: None,
        campaign: None,
        code: None,
    };
    let optional: [&mut Option<String>; 5] = [
        &mut f.other,
        &mut f.template,
        &mut f.wamid,
        &mut f.sender,
        &mut f.campaign,
    ];
    for (i, field) in optional.into_iter().enumerate() {
        if n > 4 + i {
            *field = opt_string(r)?;
        }
    }
    if n > 9 {
        f.code = opt_int(r)?;
    }
    Ok(f)
}

impl MessageState {
    pub fn decode(raw: &[u8]) -> R<MessageState> {
        let mut r = Reader::new(raw);
        let n = fields(&mut r, 19, 0, "a message state")?;
        let mut s = MessageState::default();
        for i in 0..n {
            match i {
                0 => s.wamid = r.string()?,
                1 => s.template = opt_string(&mut r)?,
                2 => s.campaign = opt_string(&mut r)?,
                3 => s.category = opt_string(&mut r)?,
                4 => s.stages = r.int()?,
                5 => {
                    for _ in 0..r.map_len()? {
                        let status = r.string()?;
                        fields(&mut r, 2, 2, "a sighting")?;
                        let seen = Seen {
                            position: position(&mut r)?,
                            origin: position(&mut r)?,
                        };
                        s.seen.push((status, seen));
                    }
                }
                6 => {
                    for _ in 0..r.array_len()? {
                        s.counted.push(counted(&mut r)?);
                    }
                }
                7 => {
                    for _ in 0..r.array_len()? {
                        s.emitted.push(fact(&mut r)?);
                    }
                }
                8 => s.sender = r.string()?,
                9 => s.country = r.string()?,
                10 => s.recipient = r.string()?,
                11 => s.delivered_ts = r.int()?,
                12 => s.first_ts = r.int()?,
                13 => s.last_ts = r.int()?,
                14 => s.applied = msgpack::read_applied(&mut r)?,
                15 => s.log_mark = r.int()?,
                16 => s.campaign_mark = r.int()?,
                17 => s.read_ts = r.int()?,
                _ => s.attempt_ts = r.int()?,
            }
        }
        if !r.at_end() {
            return Err("trailing bytes after a message state".to_owned());
        }
        Ok(s)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let o = &mut out;
        msgpack::write_array_len(o, 19);
        msgpack::write_str(o, &self.wamid);
        write_opt_str(o, self.template.as_deref());
        write_opt_str(o, self.campaign.as_deref());
        write_opt_str(o, self.category.as_deref());
        msgpack::write_int(o, self.stages);
        msgpack::write_map_len(o, self.seen.len());
        for (status, seen) in &self.seen {
            msgpack::write_str(o, status);
            msgpack::write_array_len(o, 2);
            write_position(o, seen.position);
            write_position(o, seen.origin);
        }
        msgpack::write_array_len(o, self.counted.len());
        for c in &self.counted {
            msgpack::write_array_len(o, 8);
            msgpack::write_int(o, c.minute);
            msgpack::write_str(o, &c.outcome);
            write_position(o, c.position);
            msgpack::write_str(o, &c.template);
            write_opt_position(o, c.moved_at);
            msgpack::write_int(o, c.mark);
            write_opt_position(o, c.campaigned_at);
            msgpack::write_array_len(o, c.shifts.len());
            for s in &c.shifts {
                msgpack::write_array_len(o, 7);
                write_position(o, s.position);
                msgpack::write_int(o, s.from_minute);
                msgpack::write_int(o, s.to_minute);
                msgpack::write_str(o, &s.template);
                o.push(if s.campaign { 0xc3 } else { 0xc2 });
                msgpack::write_int(o, s.mark);
                msgpack::write_int(o, s.from_mark);
            }
        }
        msgpack::write_array_len(o, self.emitted.len());
        for f in &self.emitted {
            write_fact(o, f);
        }
        msgpack::write_str(o, &self.sender);
        msgpack::write_str(o, &self.country);
        msgpack::write_str(o, &self.recipient);
        msgpack::write_int(o, self.delivered_ts);
        msgpack::write_int(o, self.first_ts);
        msgpack::write_int(o, self.last_ts);
        msgpack::write_applied(o, &self.applied);
        msgpack::write_int(o, self.log_mark);
        msgpack::write_int(o, self.campaign_mark);
        msgpack::write_int(o, self.read_ts);
        msgpack::write_int(o, self.attempt_ts);
        out
    }
}

fn write_position(o: &mut Vec<u8>, p: Position) {
    msgpack::write_array_len(o, 3);
    msgpack::write_int(o, p.0);
    msgpack::write_int(o, p.1);
    msgpack::write_int(o, p.2);
}

fn write_opt_position(o: &mut Vec<u8>, p: Option<Position>) {
    match p {
        Some(p) => write_position(o, p),
        None => o.push(0xc0),
    }
}

pub fn write_fact(o: &mut Vec<u8>, f: &Fact) {
    msgpack::write_array_len(o, 10);
    msgpack::write_str(o, &f.recipient);
    msgpack::write_int(o, f.kind);
    msgpack::write_int(o, f.timestamp);
    write_position(o, f.position);
    write_opt_str(o, f.other.as_deref());
    write_opt_str(o, f.template.as_deref());
    write_opt_str(o, f.wamid.as_deref());
    write_opt_str(o, f.sender.as_deref());
    write_opt_str(o, f.campaign.as_deref());
    match f.code {
        Some(code) => msgpack::write_int(o, code),
        None => o.push(0xc0),
    }
}
