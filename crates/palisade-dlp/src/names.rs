//! People's names and street addresses: shipped name lists, titles and
//! street suffixes found in one case-sensitive pass, then capitalisation
//! and the words around them.

use std::collections::HashSet;

use aho_corasick::{
    AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, Anchored, Input, MatchKind, StartKind,
};

use crate::entity::{Entity, Finding};

const FIRST_NAMES: &str = include_str!("../data/first_names.txt");
const LAST_NAMES: &str = include_str!("../data/last_names.txt");

const TITLES: &[&str] = &["Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Sir", "Dame"];

const STREET_SUFFIXES: &[&str] = &[
    "Street",
    "St",
    "Avenue",
    "Ave",
    "Road",
    "Rd",
    "Boulevard",
    "Blvd",
    "Lane",
    "Ln",
    "Drive",
    "Dr",
    "Court",
    "Ct",
    "Way",
    "Place",
    "Pl",
    "Terrace",
    "Ter",
    "Parkway",
    "Pkwy",
    "Circle",
    "Cir",
    "Highway",
    "Hwy",
    "Square",
    "Sq",
    "Trail",
    "Trl",
    "Alley",
    "Row",
    "Close",
    "Crescent",
];

/// Capitalised words that start sentences and name things but are not
/// surnames.
const NOT_SURNAMES: &[&str] = &[
    "The",
    "A",
    "An",
    "And",
    "Or",
    "But",
    "If",
    "In",
    "On",
    "At",
    "To",
    "For",
    "Of",
    "With",
    "By",
    "From",
    "Is",
    "Was",
    "Are",
    "I",
    "We",
    "You",
    "He",
    "She",
    "It",
    "They",
    "This",
    "That",
    "These",
    "Those",
    "My",
    "Our",
    "Your",
    "His",
    "Her",
    "Their",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
    "Street",
    "Avenue",
    "Road",
    "Team",
    "Inc",
    "LLC",
    "Ltd",
    "Corp",
    "Company",
    "University",
    "Hospital",
    "Bank",
    "Please",
    "Thanks",
    "Thank",
    "Hi",
    "Hello",
    "Dear",
    "Yes",
    "No",
    "OK",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Last,
    /// In both lists (`Thomas`, `James`, `Jordan`).
    Either,
    Title,
    Suffix,
}

pub struct Names {
    words: AhoCorasick,
    kinds: Vec<Kind>,
    not_surnames: HashSet<&'static str>,
    /// Words that are street suffixes as well as names (`Lane`, `Way`).
    suffixes: HashSet<&'static str>,
}

fn list(text: &'static str) -> impl Iterator<Item = &'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

impl Names {
    /// The lists' automaton, built once per process and shared by every
    /// detector (it takes a while to build).
    pub fn shared() -> Result<&'static Self, String> {
        static SHARED: std::sync::OnceLock<Result<Names, String>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| Self::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn new() -> Result<Self, aho_corasick::BuildError> {
        let first: HashSet<&str> = list(FIRST_NAMES).collect();
        let last: HashSet<&str> = list(LAST_NAMES).collect();
        let mut words: Vec<String> = Vec::new();
        let mut kinds = Vec::new();
        let mut add = |w: &str, k: Kind| {
            words.push(w.to_owned());
            kinds.push(k);
            // Names in forms are often in capitals.
            if w.len() > 1 && k != Kind::Suffix && k != Kind::Title {
                words.push(w.to_uppercase());
                kinds.push(k);
            }
        };
        for &w in &first {
            add(
                w,
                if last.contains(w) {
                    Kind::Either
                } else {
                    Kind::First
                },
            );
        }
        for &w in last.difference(&first) {
            add(w, Kind::Last);
        }
        for &t in TITLES {
            add(t, Kind::Title);
        }
        for &s in STREET_SUFFIXES {
            if !TITLES.contains(&s) {
                add(s, Kind::Suffix);
            }
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .start_kind(StartKind::Both)
            .build(&words)?;
        Ok(Self {
            words: ac,
            kinds,
            not_surnames: NOT_SURNAMES.iter().copied().collect(),
            suffixes: STREET_SUFFIXES.iter().copied().collect(),
        })
    }

    pub fn scan(&self, text: &str, out: &mut Vec<Finding>) {
        let s = text.as_bytes();
        let mut covered = 0;
        // Every listed word starts with a capital: look only where a
        // capitalised word starts, anchored there.
        let mut i = 0;
        while i < s.len() {
            if !s[i].is_ascii_uppercase() || (i > 0 && s[i - 1].is_ascii_alphanumeric()) {
                i += 1;
                continue;
            }
            let at = i;
            i += 1;
            let input = Input::new(text)
                .span(at..text.len())
                .anchored(Anchored::Yes);
            let Some(m) = self.words.find(input) else {
                continue;
            };
            let (a, b) = (m.start(), m.end());
            if a < covered || !whole_word(s, a, b) {
                continue;
            }
            let kind = self.kinds[m.pattern().as_usize()];
            // `Dr` is a title before a name and a street after a number;
            // `Lane` a surname and a street.
            let is_dr = &text[a..b] == "Dr";
            let street =
                (kind == Kind::Last || kind == Kind::Either) && self.suffixes.contains(&text[a..b]);
            let found = match kind {
                _ if street && let Some(f) = address(s, a, b) => Some(f),
                Kind::Suffix => address(s, a, b),
                Kind::Title if is_dr => address(s, a, b).or_else(|| self.titled(text, b)),
                Kind::Title => self.titled(text, b),
                Kind::First | Kind::Either => self.after_first_name(text, a, b, kind),
                Kind::Last => self.before_last(text, a, b),
            };
            if let Some(f) = found {
                covered = f.end;
                out.push(f);
            }
        }
    }

    /// `Mr. Smith`, `Dr Jane Doe`: the name after a title.
    fn titled(&self, text: &str, title_end: usize) -> Option<Finding> {
        let s = text.as_bytes();
        let mut i = title_end;
        if s.get(i) == Some(&b'.') {
            i += 1;
        }
        if s.get(i) != Some(&b' ') {
            return None;
        }
        i += 1;
        let (start, mut end) = self.capitalized(text, i)?;
        if let Some(next) = s.get(end + 1).filter(|_| s[end] == b' ')
            && next.is_ascii_uppercase()
            && let Some((_, e2)) = self.capitalized(text, end + 1)
        {
            end = e2;
        }
        Some(Finding::new(Entity::Person, start, end, 0.85))
    }

    /// A first name, then perhaps a middle initial and a surname.
    fn after_first_name(&self, text: &str, a: usize, b: usize, kind: Kind) -> Option<Finding> {
        let s = text.as_bytes();
        let mut i = b;
        if s.get(i) != Some(&b' ') {
            return Some(Finding::new(Entity::Person, a, b, 0.4));
        }
        i += 1;
        // Middle initial: `John F. Kennedy`.
        if s.get(i).is_some_and(u8::is_ascii_uppercase)
            && s.get(i + 1) == Some(&b'.')
            && s.get(i + 2) == Some(&b' ')
        {
            i += 3;
        }
        match self.capitalized(text, i) {
            Some((_, end)) => {
                let word = &text[i..end];
                let known = self.words.find(word).is_some_and(|m| {
                    m.start() == 0
                        && m.end() == word.len()
                        && self.kinds[m.pattern().as_usize()] != Kind::Suffix
                });
                let score = if known { 0.85 } else { 0.7 };
                Some(Finding::new(Entity::Person, a, end, score))
            }
            None => Some(Finding::new(
                Entity::Person,
                a,
                b,
                if kind == Kind::Either { 0.3 } else { 0.4 },
            )),
        }
    }

    /// An unlisted first name before a listed surname: `Xavier Nakamura`.
    fn before_last(&self, text: &str, a: usize, b: usize) -> Option<Finding> {
        let s = text.as_bytes();
        if a >= 2 && s[a - 1] == b' ' {
            let mut start = a - 1;
            while start > 0 && (s[start - 1].is_ascii_alphabetic() || s[start - 1] == b'-') {
                start -= 1;
            }
            if start + 1 < a - 1
                && s[start].is_ascii_uppercase()
                && (start == 0 || !s[start - 1].is_ascii_alphanumeric())
                && !self.not_surnames.contains(&text[start..a - 1])
            {
                return Some(Finding::new(Entity::Person, start, b, 0.7));
            }
        }
        Some(Finding::new(Entity::Person, a, b, 0.35))
    }

    /// A capitalised word at `i` (letters, `'`, `-`) that is not a common
    /// capitalised word; its range.
    fn capitalized(&self, text: &str, i: usize) -> Option<(usize, usize)> {
        let s = text.as_bytes();
        if !s.get(i)?.is_ascii_uppercase() {
            return None;
        }
        let mut end = i + 1;
        while end < s.len() && (s[end].is_ascii_alphabetic() || s[end] == b'\'' || s[end] == b'-') {
            end += 1;
        }
        let word = &text[i..end];
        (end - i >= 2 && !self.not_surnames.contains(word)).then_some((i, end))
    }
}

fn whole_word(s: &[u8], a: usize, b: usize) -> bool {
    (a == 0 || !s[a - 1].is_ascii_alphanumeric()) && (b >= s.len() || !s[b].is_ascii_alphanumeric())
}

/// `221B Baker Street`, `1600 Pennsylvania Ave NW, Washington, DC 20500`:
/// a house number, up to four capitalised words (or ordinals), the street
/// suffix at `a..b`, then a unit, city, state and ZIP when present.
fn address(s: &[u8], a: usize, b: usize) -> Option<Finding> {
    // Back over the street's name.
    let mut start = a;
    let mut words = 0;
    loop {
        if start < 2 || s[start - 1] != b' ' {
            return None;
        }
        let end = start - 1;
        let mut w = end;
        while w > 0 && (s[w - 1].is_ascii_alphanumeric() || s[w - 1] == b'\'' || s[w - 1] == b'.') {
            w -= 1;
        }
        let word = &s[w..end];
        if word.is_empty() {
            return None;
        }
        if word[0].is_ascii_digit() {
            // The house number (`221B`), or an ordinal street (`5th`).
            let digits = word.iter().take_while(|c| c.is_ascii_digit()).count();
            let rest = &word[digits..];
            let ordinal = matches!(rest, b"st" | b"nd" | b"rd" | b"th");
            if ordinal && words < 4 {
                words += 1;
                start = w;
                continue;
            }
            if (1..=6).contains(&digits)
                && rest.len() <= 1
                && words >= 1
                && (w == 0 || !s[w - 1].is_ascii_alphanumeric())
            {
                start = w;
                break;
            }
            return None;
        }
        if !word[0].is_ascii_uppercase() || words >= 4 {
            return None;
        }
        words += 1;
        start = w;
    }
    // Forward: `.`, a direction, a unit, city, state, ZIP.
    let mut end = b;
    if s.get(end) == Some(&b'.') {
        end += 1;
    }
    let after = |i: usize, w: &[u8]| s.len() >= i + w.len() && &s[i..i + w.len()] == w;
    for dir in [
        &b" NW"[..],
        b" NE",
        b" SW",
        b" SE",
        b" N",
        b" S",
        b" E",
        b" W",
    ] {
        if after(end, dir)
            && !s
                .get(end + dir.len())
                .is_some_and(u8::is_ascii_alphanumeric)
        {
            end += dir.len();
            break;
        }
    }
    for unit in [
        &b", Apt "[..],
        b" Apt ",
        b", Suite ",
        b" Suite ",
        b", Unit ",
        b" Unit ",
        b", #",
        b" #",
    ] {
        if after(end, unit) {
            let mut i = end + unit.len();
            let from = i;
            while i < s.len() && s[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i > from {
                end = i;
            }
            break;
        }
    }
    // `, City, ST 12345`
    if after(end, b", ") && s.get(end + 2).is_some_and(u8::is_ascii_uppercase) {
        let mut i = end + 2;
        let mut city_end = i;
        while i < s.len() && (s[i].is_ascii_alphabetic() || s[i] == b' ') && i - end < 40 {
            i += 1;
            if s[i - 1].is_ascii_alphabetic() {
                city_end = i;
            }
        }
        if after(city_end, b", ")
            && s.get(city_end + 2).is_some_and(u8::is_ascii_uppercase)
            && s.get(city_end + 3).is_some_and(u8::is_ascii_uppercase)
            && !s.get(city_end + 4).is_some_and(u8::is_ascii_alphabetic)
        {
            end = city_end + 4;
            if s.get(end) == Some(&b' ')
                && s.get(end + 1..end + 6)
                    .is_some_and(|z| z.iter().all(u8::is_ascii_digit))
            {
                end += 6;
                if s.get(end) == Some(&b'-')
                    && s.get(end + 1..end + 5)
                        .is_some_and(|z| z.iter().all(u8::is_ascii_digit))
                {
                    end += 5;
                }
            }
        }
    }
    Some(Finding::new(Entity::StreetAddress, start, end, 0.85))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Entity, &str)> {
        let mut out = Vec::new();
        Names::new().unwrap().scan(text, &mut out);
        out.iter()
            .filter(|f| f.score >= 0.5)
            .map(|f| (f.entity, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn people() {
        assert_eq!(
            found("Please ask Maria Garcia today"),
            [(Entity::Person, "Maria Garcia")]
        );
        assert_eq!(
            found("signed John F. Kennedy."),
            [(Entity::Person, "John F. Kennedy")]
        );
        assert_eq!(
            found("from Dr. Aisha Okafor"),
            [(Entity::Person, "Aisha Okafor")]
        );
        assert_eq!(found("Mr Smith called"), [(Entity::Person, "Smith")]);
        assert_eq!(
            found("Xavier Nakamura joined"),
            [(Entity::Person, "Xavier Nakamura")]
        );
        assert_eq!(
            found("PATIENT: JOHN SMITH"),
            [(Entity::Person, "JOHN SMITH")]
        );
        assert_eq!(
            found("Priya Quintanilla-Ortega leads"),
            [(Entity::Person, "Priya Quintanilla-Ortega")]
        );
        for no in [
            "we will mark the may release",
            "Mark the date",
            "The Smith chart",
            "In May we ship",
            "johnson",
        ] {
            assert_eq!(found(no), [], "{no}");
        }
    }

    #[test]
    fn street_addresses() {
        for yes in [
            "221B Baker Street",
            "1600 Pennsylvania Ave NW, Washington, DC 20500",
            "42 W 5th St, Apt 4B",
            "10 Downing St.",
            "350 Fifth Avenue, New York, NY 10118-0110",
            "77 Massachusetts Ave, Cambridge, MA",
            "1 Infinite Loop Dr",
        ] {
            assert_eq!(
                found(&format!("Ship to {yes} please")),
                [(Entity::StreetAddress, yes)],
                "{yes}"
            );
        }
        for no in [
            "the main street",
            "Baker Street",
            "version 2 Drive",
            "on 5 street",
        ] {
            assert!(
                found(no).iter().all(|(e, _)| *e != Entity::StreetAddress),
                "{no}"
            );
        }
    }
}
