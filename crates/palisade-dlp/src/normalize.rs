//! Text normalisation before matching, so that evasions do not pass:
//! compatibility decomposition (NFKD: full-width `ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ`
//! becomes ASCII), invisible characters removed (zero-width spaces and
//! joiners, soft hyphens, bidirectional controls, variation selectors, tag
//! characters), combining marks dropped, look-alike separators (Unicode
//! dashes, spaces, dots, quotes) mapped to their ASCII forms, and decimal
//! digits of other scripts mapped to ASCII digits.
//!
//! Every byte of the normalised text remembers the range of the original
//! character it came from, so findings map back to the text as given.
//! ASCII text is its own normalisation and costs one pass.

use std::borrow::Cow;

use icu_normalizer::DecomposingNormalizerBorrowed;

/// A text and its normalised form.
#[derive(Debug)]
pub struct Normalized<'a> {
    text: Cow<'a, str>,
    /// For each byte of `text` (when it differs from the original): the
    /// original range of the character it came from.
    map: Option<Vec<(u32, u32)>>,
}

impl<'a> Normalized<'a> {
    pub fn of(original: &'a str) -> Self {
        if original.is_ascii() {
            return Self {
                text: Cow::Borrowed(original),
                map: None,
            };
        }
        let nfkd = DecomposingNormalizerBorrowed::new_nfkd();
        let mut text = String::with_capacity(original.len());
        let mut map = Vec::with_capacity(original.len());
        let mut buf = [0u8; 4];
        for (at, ch) in original.char_indices() {
            let range = (at as u32, (at + ch.len_utf8()) as u32);
            let mut push = |s: &str| {
                text.push_str(s);
                map.extend(std::iter::repeat_n(range, s.len()));
            };
            if ch.is_ascii() {
                push(ch.encode_utf8(&mut buf));
                continue;
            }
            if is_invisible(ch) {
                continue;
            }
            if let Some(mapped) = look_alike(ch) {
                push(mapped.encode_utf8(&mut buf));
                continue;
            }
            let decomposed = nfkd.normalize(ch.encode_utf8(&mut buf));
            for d in decomposed.chars() {
                if is_combining(d) || is_invisible(d) {
                    continue;
                }
                let d = look_alike(d).unwrap_or(d);
                push(d.encode_utf8(&mut [0u8; 4]));
            }
        }
        Self {
            text: Cow::Owned(text),
            map: Some(map),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The original byte range of the normalised range `start..end`
    /// (`start < end`).
    pub fn original(&self, start: usize, end: usize) -> (usize, usize) {
        match &self.map {
            None => (start, end),
            Some(map) => (map[start].0 as usize, map[end - 1].1 as usize),
        }
    }
}

/// Characters that render as nothing and would split a value in two.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'                      // soft hyphen
        | '\u{034F}'                    // combining grapheme joiner
        | '\u{061C}'                    // Arabic letter mark
        | '\u{115F}' | '\u{1160}'       // Hangul fillers
        | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'       // Mongolian variation selectors, vowel separator
        | '\u{200B}'..='\u{200F}'       // zero-width space, joiners, LRM, RLM
        | '\u{202A}'..='\u{202E}'       // bidirectional embeddings and overrides
        | '\u{2060}'..='\u{2064}'       // word joiner, invisible operators
        | '\u{2066}'..='\u{206F}'       // bidirectional isolates, deprecated formats
        | '\u{3164}'                    // Hangul filler
        | '\u{FE00}'..='\u{FE0F}'       // variation selectors
        | '\u{FEFF}'                    // zero-width no-break space (BOM)
        | '\u{FFA0}'
        | '\u{1D173}'..='\u{1D17A}'     // musical formatting
        | '\u{E0000}'..='\u{E007F}'     // tag characters
        | '\u{E0100}'..='\u{E01EF}'     // variation selectors supplement
    )
}

/// Combining marks dropped after decomposition (`é` → `e`).
fn is_combining(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{0483}'..='\u{0489}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}'
    )
}

/// Separators and digits that look like ASCII ones but are not.
fn look_alike(c: char) -> Option<char> {
    Some(match c {
        '\u{2010}'..='\u{2015}'
        | '\u{2043}'
        | '\u{2212}'
        | '\u{FE58}'
        | '\u{FE63}'
        | '\u{FF0D}'
        | '\u{02D7}'
        | '\u{2796}' => '-',
        '\u{00A0}'
        | '\u{1680}'
        | '\u{2000}'..='\u{200A}'
        | '\u{202F}'
        | '\u{205F}'
        | '\u{3000}' => ' ',
        '\u{2028}' | '\u{2029}' => '\n',
        '\u{2024}' | '\u{FF0E}' | '\u{FE52}' | '\u{3002}' | '\u{FF61}' => '.',
        '\u{FF20}' | '\u{FE6B}' => '@',
        '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{2032}' | '\u{FF07}' => '\'',
        '\u{201C}' | '\u{201D}' | '\u{201F}' | '\u{2033}' | '\u{FF02}' => '"',
        '\u{FF1A}' | '\u{2236}' | '\u{FE55}' => ':',
        '\u{0660}'..='\u{0669}' => digit(c, 0x0660),
        '\u{06F0}'..='\u{06F9}' => digit(c, 0x06F0),
        '\u{0966}'..='\u{096F}' => digit(c, 0x0966),
        '\u{09E6}'..='\u{09EF}' => digit(c, 0x09E6),
        '\u{0E50}'..='\u{0E59}' => digit(c, 0x0E50),
        _ => return None,
    })
}

fn digit(c: char, zero: u32) -> char {
    char::from_digit(u32::from(c) - zero, 10).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Normalized::of(s).text().to_owned()
    }

    #[test]
    fn ascii_is_untouched_and_free() {
        let n = Normalized::of("plain text 123");
        assert!(matches!(n.text, Cow::Borrowed(_)));
        assert_eq!(n.original(6, 10), (6, 10));
    }

    #[test]
    fn evasions_are_undone() {
        assert_eq!(norm("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ"), "john@example.com");
        assert_eq!(norm("078\u{200B}-05\u{2060}-1120"), "078-05-1120");
        assert_eq!(norm("078\u{2013}05\u{2011}1120"), "078-05-1120");
        assert_eq!(
            norm("4111\u{00A0}1111\u{2009}1111\u{202F}1111"),
            "4111 1111 1111 1111"
        );
        assert_eq!(norm("jo\u{0301}hn"), "john");
        assert_eq!(norm("٠٧٨-٠٥-١١٢٠"), "078-05-1120");
        assert_eq!(norm("ﬁle"), "file");
        assert_eq!(norm("x\u{E0041}y\u{FE0F}"), "xy");
    }

    #[test]
    fn offsets_map_back_to_the_original() {
        let original = "mail: ｊｏ＠ｘ．ｉｏ!";
        let n = Normalized::of(original);
        let at = n.text().find("jo@x.io").unwrap();
        let (s, e) = n.original(at, at + "jo@x.io".len());
        assert_eq!(&original[s..e], "ｊｏ＠ｘ．ｉｏ");
        let zw = "a\u{200B}b";
        let n = Normalized::of(zw);
        assert_eq!(n.text(), "ab");
        assert_eq!(n.original(0, 2), (0, zw.len()));
    }
}
