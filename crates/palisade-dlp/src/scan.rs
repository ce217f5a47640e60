//! The structured detectors: hand-written scanners that look at each byte
//! a bounded number of times (linear time, no backtracking), each followed
//! by the value's own validity check (Luhn, mod-97, SSN area rules, ...).
//!
//! Scores are base confidences; `detector` raises or lowers them with
//! context words and drops what stays under the entity's threshold.

use std::net::Ipv6Addr;

use crate::entity::{Entity, Finding};

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True when `at` is not inside a word or a number: the byte before it is
/// not alphanumeric.
fn boundary_before(s: &[u8], at: usize) -> bool {
    at == 0 || !is_alnum(s[at - 1])
}

fn boundary_after(s: &[u8], end: usize) -> bool {
    end >= s.len() || !is_alnum(s[end])
}

/// Appends every structured finding in `text` to `out`.
pub fn structured(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    emails(s, out);
    numbers(s, out);
    ipv6(text, out);
}

// ---------------------------------------------------------------- email

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn emails(s: &[u8], out: &mut Vec<Finding>) {
    for at in memchr::memchr_iter(b'@', s) {
        // Local part: back to the first byte that cannot be in one.
        let mut start = at;
        while start > 0 && is_local(s[start - 1]) && at - start < 64 {
            start -= 1;
        }
        while start < at && matches!(s[start], b'.' | b'-' | b'+') {
            start += 1;
        }
        if start == at {
            continue;
        }
        let mut end = at + 1;
        while end < s.len() && is_domain(s[end]) && end - at <= 253 {
            end += 1;
        }
        // A sentence's full stop or a trailing hyphen is not the domain's.
        while end > at + 1 && matches!(s[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let domain = &s[at + 1..end];
        let Some(dot) = domain.iter().rposition(|&b| b == b'.') else {
            continue;
        };
        let tld = &domain[dot + 1..];
        let labels_ok = domain
            .split(|&b| b == b'.')
            .all(|l| !l.is_empty() && l[0] != b'-' && l[l.len() - 1] != b'-');
        if tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic) && labels_ok {
            out.push(Finding::new(Entity::Email, start, end, 0.95));
        }
    }
}

// -------------------------------------------------------------- numbers

/// Bytes that can start a numeric value: digits, `+`, `(`, capitals.
static NUMBER_START: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_digit() || c == b'+' || c == b'(' || c.is_ascii_uppercase();
        b += 1;
    }
    t
};

/// Visits every place a number-shaped value could start and tries each
/// numeric detector there; a match moves the scan past it.
fn numbers(s: &[u8], out: &mut Vec<Finding>) {
    let mut i = 0;
    while i < s.len() {
        // Most text is letters and spaces: skip to the next byte that can
        // start a number, a phone number or an IBAN.
        while i < s.len() && !NUMBER_START[usize::from(s[i])] {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let b = s[i];
        let starts = (b.is_ascii_digit() && boundary_before(s, i))
            || ((b == b'+' || b == b'(') && s.get(i + 1).is_some_and(u8::is_ascii_digit));
        // IBAN: two capitals and two check digits.
        if b.is_ascii_uppercase()
            && boundary_before(s, i)
            && s.len() >= i + 4
            && s[i + 1].is_ascii_uppercase()
            && s[i + 2].is_ascii_digit()
            && s[i + 3].is_ascii_digit()
            && let Some((end, valid)) = iban(s, i)
        {
            // Shaped like an IBAN but with a wrong check: not a phone
            // number or anything else either.
            if valid {
                out.push(Finding::new(Entity::Iban, i, end, 0.95));
            }
            i = end;
            continue;
        }
        if !starts {
            i += 1;
            continue;
        }
        let found = [
            ipv4(s, i),
            card(s, i),
            ssn(s, i),
            phone(s, i),
            npi(s, i),
            date(s, i),
        ]
        .into_iter()
        .flatten()
        .max_by(|a, b| {
            (a.end - a.start)
                .cmp(&(b.end - b.start))
                .then(a.score.total_cmp(&b.score))
        });
        match found {
            Some(f) => {
                i = f.end;
                out.push(f);
            }
            None => {
                // Skip the rest of this number.
                i += 1;
                while i < s.len() && s[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
}

/// Reads digit groups from `at`: digits, with single separators from
/// `seps` between groups. Returns the groups' lengths, the digits and the
/// end. Stops at `max_digits`.
fn groups(s: &[u8], at: usize, seps: &[u8], max_digits: usize) -> (Vec<usize>, Vec<u8>, usize) {
    let mut lens = Vec::new();
    let mut digits = Vec::new();
    let mut i = at;
    let mut sep: Option<u8> = None;
    loop {
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() && digits.len() < max_digits {
            digits.push(s[i] - b'0');
            i += 1;
        }
        if i == start {
            // A separator not followed by a digit is not part of it.
            if let Some(last) = lens.last()
                && *last > 0
            {
                i -= 1;
            }
            break;
        }
        lens.push(i - start);
        match s.get(i) {
            Some(&c) if seps.contains(&c) && sep.is_none_or(|x| x == c) => {
                sep = Some(c);
                i += 1;
            }
            _ => break,
        }
    }
    (lens, digits, i)
}

/// Whether the last digit is the Luhn check digit of the others.
fn luhn(digits: &[u8]) -> bool {
    digits
        .split_last()
        .is_some_and(|(&check, payload)| luhn_check_digit(payload) == check)
}

/// The Luhn check digit that completes `payload` (digit values, not ASCII).
pub(crate) fn luhn_check_digit(payload: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, d) in payload.iter().rev().enumerate() {
        let mut d = u32::from(*d);
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

fn prefix_num(digits: &[u8], n: usize) -> u32 {
    digits
        .iter()
        .take(n)
        .fold(0u32, |acc, d| acc * 10 + u32::from(*d))
}

/// Card numbers: 13–19 digits, contiguous or in groups separated by one
/// space or hyphen, a known issuer prefix and length, and a valid Luhn
/// check digit.
fn card(s: &[u8], at: usize) -> Option<Finding> {
    if !s[at].is_ascii_digit() {
        return None;
    }
    let (lens, digits, end) = groups(s, at, b" -", 19);
    if !boundary_after(s, end) || (end < s.len() && s[end].is_ascii_digit()) {
        return None;
    }
    let n = digits.len();
    if !(13..=19).contains(&n) {
        return None;
    }
    let grouped_ok = lens.len() == 1
        || lens[..lens.len() - 1].iter().all(|&l| l == 4)
        || lens == [4, 6, 5]
        || lens == [4, 6, 4];
    if !grouped_ok || !luhn(&digits) {
        return None;
    }
    let p2 = prefix_num(&digits, 2);
    let p3 = prefix_num(&digits, 3);
    let p4 = prefix_num(&digits, 4);
    let p6 = prefix_num(&digits, 6);
    let issuer = match digits[0] {
        4 => matches!(n, 13 | 16 | 19),              // Visa
        5 => (51..=55).contains(&p2) && n == 16,     // Mastercard
        2 => (2221..=2720).contains(&p4) && n == 16, // Mastercard 2-series
        3 => {
            ((p2 == 34 || p2 == 37) && n == 15)                                 // Amex
                || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38) && (14..=19).contains(&n)) // Diners
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&n)) // JCB
        }
        6 => {
            (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || (622126..=622925).contains(&p6))
                && (16..=19).contains(&n)                                       // Discover
                || (p2 == 62 && (16..=19).contains(&n)) // UnionPay
        }
        _ => false,
    };
    issuer.then(|| {
        Finding::new(
            Entity::CreditCard,
            at,
            end,
            if lens.len() > 1 { 0.95 } else { 0.85 },
        )
    })
}

/// US SSNs: `ddd-dd-dddd`, `ddd dd dddd`, or nine digits in a row (which
/// need a context word). Area 000, 666 and 900–999, group 00 and serial
/// 0000 are never issued.
fn ssn(s: &[u8], at: usize) -> Option<Finding> {
    if !s[at].is_ascii_digit() {
        return None;
    }
    let (lens, digits, end) = groups(s, at, b"- ", 9);
    if !boundary_after(s, end) || (end < s.len() && s[end].is_ascii_digit()) {
        return None;
    }
    let score = match lens.as_slice() {
        [3, 2, 4] => 0.75,
        [9] => 0.35,
        _ => return None,
    };
    let area = prefix_num(&digits, 3);
    let group = u32::from(digits[3]) * 10 + u32::from(digits[4]);
    let serial = prefix_num(&digits[5..], 4);
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    valid.then(|| Finding::new(Entity::UsSsn, at, end, score))
}

/// Phone numbers: NANP (`(415) 555-0132`, `415-555-0132`, `+1 415 555
/// 0132`), E.164 and international forms with a `+` country code
/// (`+44 20 7946 0958`), and national forms with a trunk `0`
/// (`020 7946 0958`). Ten digits in a row need a context word.
fn phone(s: &[u8], at: usize) -> Option<Finding> {
    let mut i = at;
    let plus = s[i] == b'+';
    if plus {
        i += 1;
    }
    // NANP with an optional country code 1.
    let mut j = i;
    let mut country_one = false;
    if s.get(j) == Some(&b'1')
        && s.get(j + 1)
            .is_some_and(|c| matches!(c, b' ' | b'-' | b'.' | b'('))
    {
        country_one = true;
        j += 1;
        if s[j] != b'(' {
            j += 1;
        }
    }
    if let Some(f) = nanp(s, j).filter(|_| !plus || country_one) {
        let start = if plus || country_one { at } else { j };
        let score = if plus || country_one { 0.9 } else { f.score };
        return Some(Finding::new(Entity::Phone, start, f.end, score));
    }
    if plus {
        // +CC then groups: 8 to 15 digits in all.
        let (lens, digits, end) = groups(s, i, b" -.", 15);
        if boundary_after(s, end)
            && (8..=15).contains(&digits.len())
            && digits[0] != 0
            && (lens.len() >= 2 || digits.len() >= 10)
            && !(end < s.len() && s[end].is_ascii_digit())
        {
            return Some(Finding::new(Entity::Phone, at, end, 0.85));
        }
        return None;
    }
    if s[at] == b'0' && s.get(at + 1).is_some_and(|&c| c != b'0') {
        let (lens, digits, end) = groups(s, at, b" -", 12);
        if boundary_after(s, end)
            && (10..=11).contains(&digits.len())
            && lens.len() >= 2
            && lens.iter().all(|&l| l >= 2)
        {
            return Some(Finding::new(Entity::Phone, at, end, 0.55));
        }
    }
    None
}

fn nanp(s: &[u8], at: usize) -> Option<Finding> {
    let mut i = at;
    let paren = s.get(i) == Some(&b'(');
    if paren {
        i += 1;
    }
    let three = |i: usize| -> Option<u32> {
        let d = s.get(i..i + 3)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| prefix_num(&d.iter().map(|b| b - b'0').collect::<Vec<_>>(), 3))
    };
    let area = three(i)?;
    i += 3;
    if paren {
        if s.get(i) != Some(&b')') {
            return None;
        }
        i += 1;
        if s.get(i) == Some(&b' ') {
            i += 1;
        }
    }
    let sep1 = s
        .get(i)
        .copied()
        .filter(|c| matches!(c, b'-' | b'.' | b' '));
    if sep1.is_some() && !paren {
        i += 1;
    }
    let exchange = three(i)?;
    i += 3;
    let sep2 = s
        .get(i)
        .copied()
        .filter(|c| matches!(c, b'-' | b'.' | b' '));
    if sep2.is_some() {
        i += 1;
    }
    let line = s.get(i..i + 4)?;
    if !line.iter().all(u8::is_ascii_digit) {
        return None;
    }
    i += 4;
    if !boundary_after(s, i) || (i < s.len() && s[i].is_ascii_digit()) {
        return None;
    }
    // The separators must agree (or the area code be in parentheses).
    if !paren && sep1 != sep2 {
        return None;
    }
    let valid = (200..1000).contains(&area) && (200..1000).contains(&exchange);
    if !valid {
        return None;
    }
    let score = if paren || sep1.is_some() { 0.7 } else { 0.35 };
    Some(Finding::new(Entity::Phone, at, i, score))
}

/// US NPIs: ten digits starting with 1 or 2 whose Luhn check over the
/// `80840` prefix holds. Only with a context word (`NPI`).
fn npi(s: &[u8], at: usize) -> Option<Finding> {
    let d = s.get(at..at + 10)?;
    if !d.iter().all(u8::is_ascii_digit)
        || !boundary_after(s, at + 10)
        || !matches!(d[0], b'1' | b'2')
    {
        return None;
    }
    let mut digits = vec![8, 0, 8, 4, 0];
    digits.extend(d.iter().map(|b| b - b'0'));
    luhn(&digits).then(|| Finding::new(Entity::UsNpi, at, at + 10, 0.3))
}

/// Dates (`1985-03-04`, `03/04/1985`, `4.3.1985`): reported as dates of
/// birth only with a context word.
fn date(s: &[u8], at: usize) -> Option<Finding> {
    let (lens, digits, end) = groups(s, at, b"/-.", 8);
    if !boundary_after(s, end) || lens.len() != 3 {
        return None;
    }
    let num = |from: usize, n: usize| prefix_num(&digits[from..], n);
    let (y, m, d) = match lens.as_slice() {
        [4, 1..=2, 1..=2] => (num(0, 4), num(4, lens[1]), num(4 + lens[1], lens[2])),
        [1..=2, 1..=2, 4] => {
            let a = num(0, lens[0]);
            let b = num(lens[0], lens[1]);
            let y = num(lens[0] + lens[1], 4);
            // Month first (US) unless it cannot be.
            if a <= 12 { (y, a, b) } else { (y, b, a) }
        }
        _ => return None,
    };
    let valid = (1900..=2100).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d);
    valid.then(|| Finding::new(Entity::DateOfBirth, at, end, 0.2))
}

/// IPv4 addresses: four decimal octets, each at most 255, no leading
/// zeros; not part of a longer dotted number (a version string).
fn ipv4(s: &[u8], at: usize) -> Option<Finding> {
    let mut i = at;
    for n in 0..4 {
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() && i - start < 3 {
            i += 1;
        }
        let octet = &s[start..i];
        if octet.is_empty() || (octet.len() > 1 && octet[0] == b'0') {
            return None;
        }
        if prefix_num(&octet.iter().map(|b| b - b'0').collect::<Vec<_>>(), 3) > 255 {
            return None;
        }
        if n < 3 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    if i < s.len()
        && (is_alnum(s[i]) || (s[i] == b'.' && s.get(i + 1).is_some_and(u8::is_ascii_digit)))
    {
        return None;
    }
    if at > 0 && s[at - 1] == b'.' {
        return None;
    }
    // 0.x.x.x is "this network": a version number far more often.
    let score = if s[at] == b'0' { 0.4 } else { 0.8 };
    Some(Finding::new(Entity::IpAddress, at, i, score))
}

/// IPv6 addresses, in any of their textual forms (compressed, embedded
/// IPv4, bracketed); checked with the standard parser.
fn ipv6(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    let is_v6 = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut covered = 0;
    for at in memchr::memchr_iter(b':', s) {
        if at < covered {
            continue;
        }
        let mut start = at;
        while start > 0 && is_v6(s[start - 1]) {
            start -= 1;
        }
        let mut end = at;
        while end < s.len() && is_v6(s[end]) {
            end += 1;
        }
        covered = end;
        while end > start && s[end - 1] == b'.' {
            end -= 1;
        }
        if (start > 0 && is_word(s[start - 1])) || (end < s.len() && is_word(s[end])) {
            continue;
        }
        let candidate = &text[start..end];
        let colons = candidate.bytes().filter(|&b| b == b':').count();
        let hex = candidate.bytes().filter(u8::is_ascii_hexdigit).count();
        if colons < 2 || hex < 3 || candidate.parse::<Ipv6Addr>().is_err() {
            continue;
        }
        let score = if candidate.contains("::") && colons < 4 {
            0.6
        } else {
            0.85
        };
        out.push(Finding::new(Entity::IpAddress, start, end, score));
    }
}

/// IBAN length by country (ISO 13616 registry).
fn iban_length(cc: &[u8]) -> Option<usize> {
    Some(match cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SC" => 31,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    })
}

/// IBANs: country code, check digits, the country's length of letters and
/// digits (groups of four separated by single spaces allowed), and the
/// ISO 7064 mod-97 check. Returns the end and whether the check holds,
/// when the shape is right.
fn iban(s: &[u8], at: usize) -> Option<(usize, bool)> {
    let want = iban_length(&s[at..at + 2])?;
    let mut chars = Vec::with_capacity(want);
    let mut i = at;
    while chars.len() < want && i < s.len() {
        let c = s[i];
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            chars.push(c);
            i += 1;
        } else if c == b' '
            && chars.len() % 4 == 0
            && s.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric())
        {
            i += 1;
        } else {
            break;
        }
    }
    if chars.len() != want || !boundary_after(s, i) {
        return None;
    }
    // Move the first four characters to the end.
    let rem = mod97(chars[4..].iter().chain(&chars[..4]).copied());
    Some((i, rem == 1))
}

/// ISO 7064 MOD 97-10 over digits and upper-case letters (A = 10 … Z = 35),
/// as IBAN check digits use it.
pub(crate) fn mod97(chars: impl Iterator<Item = u8>) -> u32 {
    let mut rem = 0u32;
    for c in chars {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Entity, &str)> {
        let mut out = Vec::new();
        structured(text, &mut out);
        out.sort_by_key(|f| f.start);
        out.iter()
            .filter(|f| f.score >= 0.5)
            .map(|f| (f.entity, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn emails_with_their_boundaries() {
        assert_eq!(
            found("Write to jane.doe+news@mail.example.co.uk. Or (ops@acme.io)!"),
            [
                (Entity::Email, "jane.doe+news@mail.example.co.uk"),
                (Entity::Email, "ops@acme.io")
            ]
        );
        for no in [
            "@Override",
            "user@localhost",
            "a@b.c",
            "x@-bad.com",
            "price @ 3.50",
        ] {
            assert_eq!(found(no), [], "{no}");
        }
    }

    #[test]
    fn cards_pass_luhn_and_issuer_rules() {
        for yes in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5500 0000 0000 0004",
            "3782 822463 10005",
            "6011 1111 1111 1117",
            "2223 0031 2200 3222",
        ] {
            assert_eq!(
                found(&format!("card: {yes}.")),
                [(Entity::CreditCard, yes)],
                "{yes}"
            );
        }
        for no in [
            "4111 1111 1111 1112",  // Luhn fails
            "1234 5678 9012 3456",  // no issuer
            "41111 1111 1111 111",  // wrong grouping
            "978-3-16-148410-0",    // an ISBN
            "41111111111111111111", // too long
        ] {
            assert!(
                found(no).iter().all(|(e, _)| *e != Entity::CreditCard),
                "{no}"
            );
        }
    }

    #[test]
    fn ssns_follow_issuance_rules() {
        assert_eq!(found("SSN 078-05-1120"), [(Entity::UsSsn, "078-05-1120")]);
        assert_eq!(
            found("ssn 219 09 9999 ok"),
            [(Entity::UsSsn, "219 09 9999")]
        );
        for no in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45-67890",
        ] {
            assert_eq!(found(no), [], "{no}");
        }
        // Nine digits in a row are only a candidate (below threshold).
        let mut raw = Vec::new();
        structured("078051120", &mut raw);
        assert!(
            raw.iter()
                .any(|f| f.entity == Entity::UsSsn && f.score < 0.5)
        );
    }

    #[test]
    fn phones_in_many_formats() {
        for yes in [
            "(415) 555-0132",
            "415-555-0132",
            "415.555.0132",
            "+1 415 555 0132",
            "1-800-555-0199",
            "+44 20 7946 0958",
            "+49 30 1234567",
            "+33 6 12 34 56 78",
            "+918023456789",
            "020 7946 0958",
        ] {
            assert_eq!(
                found(&format!("call {yes} now")),
                [(Entity::Phone, yes)],
                "{yes}"
            );
        }
        for no in [
            "415-555.0132",
            "123-456-7890",
            "2024-01-15",
            "10:30:00",
            "v1.2.3",
            "3 + 4 = 7",
        ] {
            assert!(found(no).iter().all(|(e, _)| *e != Entity::Phone), "{no}");
        }
    }

    #[test]
    fn ip_addresses_v4_and_v6() {
        assert_eq!(
            found("from 192.168.1.20:8080"),
            [(Entity::IpAddress, "192.168.1.20")]
        );
        assert_eq!(
            found("host 2001:db8::8a2e:370:7334."),
            [(Entity::IpAddress, "2001:db8::8a2e:370:7334")]
        );
        assert_eq!(
            found("[fe80::1ff:fe23:4567:890a]"),
            [(Entity::IpAddress, "fe80::1ff:fe23:4567:890a")]
        );
        for no in [
            "1.2.3.4.5",
            "256.1.1.1",
            "01.2.3.4",
            "std::vector",
            "10:30:00",
            "a::b",
            "1.2.3",
        ] {
            assert_eq!(found(no), [], "{no}");
        }
    }

    #[test]
    fn ibans_check_length_and_mod_97() {
        for yes in [
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NL91ABNA0417164300",
        ] {
            assert_eq!(
                found(&format!("IBAN {yes}, thanks")),
                [(Entity::Iban, yes)],
                "{yes}"
            );
        }
        for no in [
            "DE89 3704 0044 0532 0130 01",
            "GB82WEST1234569876543",
            "ZZ12 3456",
        ] {
            assert_eq!(found(no), [], "{no}");
        }
    }

    #[test]
    fn npi_and_dates_are_candidates_for_context() {
        let mut raw = Vec::new();
        structured("1234567893 and 1985-03-04", &mut raw);
        assert!(raw.iter().any(|f| f.entity == Entity::UsNpi));
        assert!(raw.iter().any(|f| f.entity == Entity::DateOfBirth));
    }
}
