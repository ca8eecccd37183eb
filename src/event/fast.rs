//! One-pass decoding of the common case: a valid `call.completed` whose attributes and data
//! fields are the known ones, each once, with strings that need no unescaping.
//!
//! It returns `None` for anything else (unknown or repeated keys, escapes, other types,
//! every invalid value) and [`decode`] then runs the general decoder, which accepts or
//! rejects with the usual code and message. So this path only decides *how fast* a valid
//! event is decoded, never *whether* it is valid; the tests check that both paths agree.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{
    Body, CALL_COMPLETED, CallCompleted, Direction, Event, HandledBy, MAX_DURATION_MS, Money,
    parse_decimal_str, valid_subject,
};

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips JSON whitespace and returns the next byte.
    fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(c) = b.get(self.at) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(*c);
            }
            self.at += 1;
        }
        None
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let b = self.bytes();
        loop {
            match *b.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let s = &self.text[start..self.at];
        self.at += 1;
        Some(s)
    }

    /// A non-negative integer literal (`0` or no leading zero), as text.
    fn integer(&mut self) -> Option<&'a str> {
        self.peek()?;
        let start = self.at;
        let b = self.bytes();
        while b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let digits = &self.text[start..self.at];
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        Some(digits)
    }

    fn null(&mut self) -> Option<()> {
        self.peek()?;
        if self.text[self.at..].starts_with("null") {
            self.at += 4;
            Some(())
        } else {
            None
        }
    }

    /// After a member: `true` if another follows, `false` at the closing brace.
    fn next_member(&mut self) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            b'}' => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }
}

/// Sets a field seen once; a repeated key gives up.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

/// `Some(None)` for `null`, `Some(Some(s))` for a string.
fn string_or_null<'a>(c: &mut Cursor<'a>) -> Option<Option<&'a str>> {
    if c.peek()? == b'n' {
        c.null()?;
        Some(None)
    } else {
        c.string().map(Some)
    }
}

#[derive(Default)]
struct Data<'a> {
    call_id: Option<&'a str>,
    duration_ms: Option<&'a str>,
    direction: Option<&'a str>,
    handled_by: Option<Option<&'a str>>,
    /// `Some(None)`: `null`; `Some(Some((amount, currency)))`: an object.
    revenue: Option<Option<(&'a str, &'a str)>>,
}

fn revenue<'a>(c: &mut Cursor<'a>) -> Option<Option<(&'a str, &'a str)>> {
    if c.peek()? == b'n' {
        c.null()?;
        return Some(None);
    }
    c.eat(b'{')?;
    let (mut amount, mut currency) = (None, None);
    loop {
        let key = c.string()?;
        c.eat(b':')?;
        match key {
            "amount" => once(&mut amount, c.string()?)?,
            "currency" => once(&mut currency, c.string()?)?,
            _ => return None,
        }
        if !c.next_member()? {
            break;
        }
    }
    Some(Some((amount?, currency?)))
}

/// The `data` object; returns its fields and raw text.
fn data<'a>(c: &mut Cursor<'a>) -> Option<(Data<'a>, &'a str)> {
    c.eat(b'{')?;
    let start = c.at - 1;
    let mut d = Data::default();
    loop {
        let key = c.string()?;
        c.eat(b':')?;
        match key {
            "call_id" => once(&mut d.call_id, c.string()?)?,
            "duration_ms" => once(&mut d.duration_ms, c.integer()?)?,
            "direction" => once(&mut d.direction, c.string()?)?,
            "handled_by" => once(&mut d.handled_by, string_or_null(c)?)?,
            "revenue" => once(&mut d.revenue, revenue(c)?)?,
            _ => return None,
        }
        if !c.next_member()? {
            break;
        }
    }
    Some((d, &c.text[start..c.at]))
}

fn chars_within(s: &str, max: usize) -> bool {
    !s.is_empty() && (s.len() <= max || s.chars().count() <= max)
}

/// See the module docs.
pub(super) fn call_completed<'a>(
    payload: &'a [u8],
    known_type: &impl Fn(&str) -> bool,
) -> Option<Event<'a>> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut c = Cursor { text, at: 0 };
    c.eat(b'{')?;
    let (mut specversion, mut id, mut source, mut ty, mut subject, mut time, mut dct) =
        (None, None, None, None, None, None, None);
    let mut data_field = None;
    loop {
        let key = c.string()?;
        c.eat(b':')?;
        match key {
            "specversion" => once(&mut specversion, c.string()?)?,
            "id" => once(&mut id, c.string()?)?,
            "source" => once(&mut source, c.string()?)?,
            "type" => once(&mut ty, c.string()?)?,
            "subject" => once(&mut subject, c.string()?)?,
            "time" => once(&mut time, c.string()?)?,
            "datacontenttype" => once(&mut dct, c.string()?)?,
            "data" => once(&mut data_field, data(&mut c)?)?,
            _ => return None,
        }
        if !c.next_member()? {
            break;
        }
    }
    if c.peek().is_some() {
        return None;
    }
    // The general decoder's checks, in any order: all must pass.
    let (id, source, ty, subject) = (id?, source?, ty?, subject?);
    if specversion? != "1.0"
        || !chars_within(id, 128)
        || !chars_within(source, 256)
        || ty != CALL_COMPLETED
        || !valid_subject(subject)
        || dct.is_some_and(|ct| !ct.contains("json"))
        || !known_type(ty)
    {
        return None;
    }
    let time = DateTime::parse_from_rfc3339(time?)
        .ok()?
        .with_timezone(&Utc);
    let (d, raw) = data_field?;
    let call_id = d.call_id.filter(|s| !s.is_empty())?;
    let duration_ms = d
        .duration_ms?
        .parse::<u64>()
        .ok()
        .filter(|v| *v <= MAX_DURATION_MS)?;
    let direction = match d.direction? {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        _ => return None,
    };
    let handled_by = match d.handled_by.flatten() {
        None | Some("ai") => HandledBy::Ai,
        Some("human") => HandledBy::Human,
        Some(_) => return None,
    };
    let revenue = match d.revenue.flatten() {
        None => None,
        Some((amount, currency)) => {
            let amount = parse_decimal_str(amount).ok()?;
            if amount < Decimal::ZERO
                || currency.len() != 3
                || !currency.bytes().all(|b| b.is_ascii_uppercase())
            {
                return None;
            }
            Some(Money {
                amount,
                currency: Cow::Borrowed(currency),
            })
        }
    };
    Some(Event {
        id: Cow::Borrowed(id),
        source: Cow::Borrowed(source),
        ty: Cow::Borrowed(ty),
        subject: Cow::Borrowed(subject),
        time,
        data: raw,
        body: Body::Call(CallCompleted {
            call_id: Cow::Borrowed(call_id),
            duration_ms,
            direction,
            handled_by,
            revenue,
        }),
    })
}
