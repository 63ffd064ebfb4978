//! The msgpack subset of the native stages' records, byte for byte as msgspec writes them: the
//! smallest integer and string forms, maps in insertion order; and the pieces the state
//! codecs share (array-like structs, optional strings, a state's applied positions).

pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        let u = v as u64;
        if u < 128 {
            out.push(u as u8);
        } else if u <= 0xff {
            out.push(0xcc);
            out.push(u as u8);
        } else if u <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        } else if u <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= -128 {
        out.push(0xd0);
        out.push(v as i8 as u8);
    } else if v >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= -2_147_483_648 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= 0xff {
        out.push(0xd9);
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn write_len(out: &mut Vec<u8>, n: usize, fix: u8, m16: u8, m32: u8) {
    if n < 16 {
        out.push(fix | n as u8);
    } else if n <= 0xffff {
        out.push(m16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m32);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

pub fn write_array_len(out: &mut Vec<u8>, n: usize) {
    write_len(out, n, 0x90, 0xdc, 0xdd);
}

pub fn write_map_len(out: &mut Vec<u8>, n: usize) {
    write_len(out, n, 0x80, 0xde, 0xdf);
}

pub fn write_opt_str(o: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(o, s),
        None => o.push(0xc0),
    }
}

/// A state's applied positions (`dict[int, tuple[int, int]]`, in insertion order).
pub fn write_applied(o: &mut Vec<u8>, applied: &[(i64, (i64, i64))]) {
    write_map_len(o, applied.len());
    for (source, (offset, index)) in applied {
        write_int(o, *source);
        write_array_len(o, 2);
        write_int(o, *offset);
        write_int(o, *index);
    }
}

/// The number of fields of an array-like struct, refused outside `least..=most`.
pub fn fields(r: &mut Reader, most: usize, least: usize, what: &str) -> R<usize> {
    let n = r.array_len()?;
    if n > most || n < least {
        return Err(format!(
            "{what}: expected {least} to {most} fields, found {n}"
        ));
    }
    Ok(n)
}

pub fn opt_string(r: &mut Reader) -> R<Option<String>> {
    if r.nil()? {
        Ok(None)
    } else {
        r.string().map(Some)
    }
}

/// See :func:`write_applied`.
pub fn read_applied(r: &mut Reader) -> R<Vec<(i64, (i64, i64))>> {
    let n = r.map_len()?;
    let mut applied = Vec::with_capacity(n);
    for _ in 0..n {
        let source = r.int()?;
        if r.array_len()? != 2 {
            return Err("an applied position has 2 items".to_owned());
        }
        applied.push((source, (r.int()?, r.int()?)));
    }
    Ok(applied)
}

/// A reader over one encoded value; every error is a message for a ``ValueError``.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, String>;

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.data.len()
    }

    fn byte(&mut self) -> R<u8> {
        let b = *self.data.get(self.pos).ok_or("truncated msgpack")?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or("truncated msgpack")?;
        let s = self.data.get(self.pos..end).ok_or("truncated msgpack")?;
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> R<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Consumes a nil and says so; anything else is left to read.
    pub fn nil(&mut self) -> R<bool> {
        if *self.data.get(self.pos).ok_or("truncated msgpack")? == 0xc0 {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn boolean(&mut self) -> R<bool> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            b => Err(format!("expected a boolean, found 0x{b:02x}")),
        }
    }

    pub fn int(&mut self) -> R<i64> {
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7f => i64::from(b),
            0xe0..=0xff => i64::from(b as i8),
            0xcc => self.be(1)? as i64,
            0xcd => self.be(2)? as i64,
            0xce => self.be(4)? as i64,
            0xcf => i64::try_from(self.be(8)?).map_err(|_| "integer out of range")?,
            0xd0 => i64::from(self.be(1)? as u8 as i8),
            0xd1 => i64::from(self.be(2)? as u16 as i16),
            0xd2 => i64::from(self.be(4)? as u32 as i32),
            0xd3 => self.be(8)? as i64,
            _ => return Err(format!("expected an integer, found 0x{b:02x}")),
        })
    }

    pub fn string(&mut self) -> R<String> {
        let b = self.byte()?;
        let n = match b {
            0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Err(format!("expected a string, found 0x{b:02x}")),
        };
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| "invalid UTF-8".to_owned())
    }

    fn len(&mut self, fix: u8, m16: u8, m32: u8, what: &str) -> R<usize> {
        let b = self.byte()?;
        if b & 0xf0 == fix {
            Ok(usize::from(b & 0x0f))
        } else if b == m16 {
            Ok(self.be(2)? as usize)
        } else if b == m32 {
            Ok(self.be(4)? as usize)
        } else {
            Err(format!("expected {what}, found 0x{b:02x}"))
        }
    }

    pub fn array_len(&mut self) -> R<usize> {
        self.len(0x90, 0xdc, 0xdd, "an array")
    }

    pub fn map_len(&mut self) -> R<usize> {
        self.len(0x80, 0xde, 0xdf, "a map")
    }
}
