//! Exact decimals from event text: the CONTRACT's decimal strings and JSON number literals,
//! parsed without rounding into values that fit `Decimal(38, 9)`.

use std::borrow::Cow;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::truncate;

/// The most fraction digits a counted number may have: `Decimal(38, 9)`.
pub const MAX_FRACTION_DIGITS: usize = 9;
/// The most integer digits a counted number may have: `Decimal(38, 9)`.
pub const MAX_INTEGER_DIGITS: usize = 29;
/// The most fraction digits of a decimal amount in an event (CONTRACT section 1).
pub const MAX_AMOUNT_FRACTION_DIGITS: usize = 6;

/// Parses `-?digits(.digits)?` (no exponent, no sign but `-`) into an exact decimal with at
/// most `max_frac` fraction digits that fits `Decimal(38, 9)` and is held exactly by
/// [`Decimal`] (28 to 29 significant digits: up to 79228162514264337593543950335 in
/// magnitude). `-0` is zero. Errors are human text naming the value.
fn parse_exact(s: &str, max_frac: usize) -> Result<Decimal, String> {
    let shown = truncate(s);
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{shown}` is not a decimal number"));
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{shown}` is not a decimal number"));
        }
        if f.len() > max_frac {
            return Err(format!(
                "`{shown}` has more than {max_frac} fraction digits"
            ));
        }
    }
    let significant = int.trim_start_matches('0');
    if significant.len() > MAX_INTEGER_DIGITS {
        return Err(format!(
            "`{shown}` is too large: counted numbers must fit Decimal(38, 9), at most {MAX_INTEGER_DIGITS} integer digits"
        ));
    }
    // Leading zeros cost precision in the parser: parse the canonical text.
    let text: Cow<'_, str> = if significant.len() == int.len() {
        Cow::Borrowed(s)
    } else {
        let mut t = String::with_capacity(s.len());
        if s.starts_with('-') {
            t.push('-');
        }
        t.push_str(if significant.is_empty() {
            "0"
        } else {
            significant
        });
        if let Some(f) = frac {
            t.push('.');
            t.push_str(f);
        }
        Cow::Owned(t)
    };
    let too_large = || {
        format!(
            "`{shown}` is too large to be counted exactly (the largest magnitude is {})",
            Decimal::MAX
        )
    };
    let mut d = Decimal::from_str(&text).map_err(|_| too_large())?;
    // The parser rounds digits it cannot hold: only an exact value is counted.
    if d.scale() as usize != frac.map_or(0, str::len) {
        return Err(too_large());
    }
    if d.is_zero() {
        d.set_sign_positive(true);
    }
    Ok(d)
}

/// Parses a CONTRACT decimal: a JSON string `-?digits(.digits{1,6})?` that fits
/// `Decimal(38, 9)` exactly (see [`parse_exact`]).
pub fn parse_decimal_str(s: &str) -> Result<Decimal, String> {
    parse_exact(s, MAX_AMOUNT_FRACTION_DIGITS)
}

/// A JSON value as an exact decimal: a number literal (no exponent, at most 9 fraction
/// digits) or a decimal string (at most 6 fraction digits), fitting `Decimal(38, 9)`.
pub fn raw_decimal(v: &RawValue) -> Result<Decimal, String> {
    let t = v.get().trim();
    if t.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(t).map_err(|e| e.to_string())?;
        return parse_decimal_str(&s);
    }
    if t.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
        && t.contains(['e', 'E'])
    {
        return Err(format!(
            "`{}` uses an exponent; send a decimal",
            truncate(t)
        ));
    }
    let number = t
        .strip_prefix('-')
        .unwrap_or(t)
        .starts_with(|c: char| c.is_ascii_digit());
    if !number {
        return Err(format!("`{}` is not a number", truncate(t)));
    }
    parse_exact(t, MAX_FRACTION_DIGITS)
}
