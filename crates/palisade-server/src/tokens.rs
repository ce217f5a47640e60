//! Counting a prompt's tokens for the token rates and budgets.
//!
//! OpenAI-kind providers are counted with OpenAI's `o200k_base` encoding,
//! exactly as `tiktoken` counts it. The ranks are compiled in (1.6 MB,
//! about 6 MB of tables once the first count needs them); the counting is
//! Palisade's, because the reference pre-tokenizer is a backtracking regex
//! (~9 MB/s) and `tiktoken-rs`'s encoder holds its ranks three times over
//! (~40 MB): here the same split is made in one forward pass — where
//! only ASCII decides a cut, directly, one table look-up a byte; elsewhere
//! by the pattern compiled to a lazily built DFA — with the one construct
//! a DFA lacks, `\s+(?!\S)` (a run of whitespace not followed by a
//! non-space), done by hand, and each piece is looked up whole before it
//! is merged pair by pair. The unit tests hold the count equal to
//! `tiktoken-rs` over prose, code, other scripts and random text, and the
//! ASCII cuts equal the DFA's.
//!
//! Other providers' tokenizers are not public: their prompts are estimated
//! at one token per four bytes. Either way the reservation is settled
//! against the usage the provider reports.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::OnceLock;

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::{Anchored, MatchKind};
use rustc_hash::FxHasher;

/// The pre-tokenizer of `o200k_base` without its look-ahead alternative
/// (`\s+(?!\S)`), which [`Encoding::pieces`] applies itself.
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

/// OpenAI's `o200k_base` ranks (MIT licence): each token's length, one
/// byte, then its bytes, in rank order — written by
/// `scripts/o200k-ranks.py` from the file `tiktoken-rs` ships.
static O200K: &[u8] = include_bytes!("../data/o200k_base.ranks");

/// How many ordinary tokens `o200k_base` has (ranks `0..RANKS`).
const RANKS: u32 = 199_998;

/// Pieces longer than this (long runs of one character class: base64,
/// a wall of dashes) are merged in slices of this length, which keeps the
/// pairwise merge, quadratic in a piece's length, bounded; the count
/// stays within about a token per cut of the exact one.
const MAX_PIECE: usize = 256;

/// The ranks of tokens longer than [`SHORT`] bytes, by their bytes.
type LongRanks = HashMap<&'static [u8], u32, BuildHasherDefault<FxHasher>>;

/// The ranks of tokens of one length from [`TINY`] + 1 to [`SHORT`]
/// bytes, keyed by [`short_key`]: two integers compared and hashed
/// directly, where a byte-slice key costs a `memcmp` call per look-up.
type ShortRanks = HashMap<(u64, u64), u32, BuildHasherDefault<FxHasher>>;

/// The longest token kept in [`ShortRanks`]; nearly all of them are.
const SHORT: usize = 16;

/// The longest token kept in [`TinyRanks`]: three in four of them, and
/// most of the pieces prose is cut into.
const TINY: usize = 8;

/// `b` (9 to [`SHORT`] bytes) as two integers, unique among slices of its
/// length: its first and last 8 bytes, overlapping.
#[inline(always)]
fn short_key(b: &[u8]) -> (u64, u64) {
    match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(first), Some(last)) => (u64::from_le_bytes(*first), u64::from_le_bytes(*last)),
        _ => (tiny_key(b), 0),
    }
}

/// `b` (up to [`TINY`] bytes) as one integer: its bytes, little-endian,
/// read in at most two loads.
#[inline(always)]
fn tiny_key(b: &[u8]) -> u64 {
    if let Some(all) = b.first_chunk::<8>() {
        return u64::from_le_bytes(*all);
    }
    if let (Some(first), Some(last)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        // The last four overlap the first where shorter than 8; the
        // shared bytes are the same on both sides.
        let (first, last) = (u32::from_le_bytes(*first), u32::from_le_bytes(*last));
        return u64::from(first) | u64::from(last) << ((b.len() - 4) * 8);
    }
    let at = |i: usize| u64::from(b.get(i).copied().unwrap_or(0));
    let (mid, end) = (b.len() / 2, b.len().saturating_sub(1));
    at(0) | at(mid) << (mid * 8) | at(end) << (end * 8)
}

/// The ranks of tokens of up to [`TINY`] bytes in one open-addressed
/// table (linear probing, about half full): a look-up is a multiply, a
/// load and a compare or two.
struct TinyRanks {
    slots: Box<[TinySlot]>,
    len: usize,
}

#[derive(Clone, Copy, Default)]
struct TinySlot {
    key: u64,
    /// The rank in the low 24 bits, the token's length above; 0: empty.
    meta: u32,
}

impl TinyRanks {
    /// Room for 2^18 tokens; `o200k_base` has 148,310 of up to 8 bytes.
    const BITS: u32 = 18;

    fn new() -> Self {
        Self {
            slots: vec![TinySlot::default(); 1 << Self::BITS].into_boxed_slice(),
            len: 0,
        }
    }

    /// The slot that holds the token of `len` bytes whose key is `key`, or
    /// else the empty slot where it would go (the table is never full:
    /// [`TinyRanks::insert`] stops at three quarters).
    #[inline(always)]
    fn position(&self, key: u64, len: usize) -> usize {
        // A folded multiply: every bit of the key reaches the top bits,
        // which pick the first slot to look at.
        let p = u128::from(key ^ (len as u64).rotate_right(4)) * 0x9e37_79b9_7f4a_7c15;
        let mut i = ((p as u64 ^ (p >> 64) as u64) >> (64 - Self::BITS)) as usize;
        loop {
            let slot = self.slots[i];
            if slot.meta == 0 || (slot.key == key && (slot.meta >> 24) as usize == len) {
                return i;
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }

    /// `false` if the table is full or the token was there already.
    fn insert(&mut self, token: &[u8], rank: u32) -> bool {
        if token.is_empty()
            || token.len() > TINY
            || rank >= 1 << 24
            || self.len * 4 >= self.slots.len() * 3
        {
            return false;
        }
        let key = tiny_key(token);
        let slot = &mut self.slots[self.position(key, token.len())];
        if slot.meta != 0 {
            return false;
        }
        let meta = rank | (token.len() as u32) << 24;
        *slot = TinySlot { key, meta };
        self.len += 1;
        true
    }

    #[inline(always)]
    fn get(&self, piece: &[u8]) -> Option<u32> {
        let slot = self.slots[self.position(tiny_key(piece), piece.len())];
        (slot.meta != 0).then_some(slot.meta & 0xff_ffff)
    }
}

/// Every rank, by the token's bytes.
struct Ranks {
    tiny: TinyRanks,
    /// Index: the token's length less [`TINY`] + 1.
    short: Vec<ShortRanks>,
    long: LongRanks,
}

impl Ranks {
    fn new() -> Self {
        Self {
            tiny: TinyRanks::new(),
            short: (TINY + 1..=SHORT).map(|_| ShortRanks::default()).collect(),
            long: LongRanks::default(),
        }
    }

    /// `false` if the token was there already (or the tiny table is full).
    fn insert(&mut self, token: &'static [u8], rank: u32) -> bool {
        match token.len() {
            0..=TINY => self.tiny.insert(token, rank),
            n @ ..=SHORT => self.short[n - TINY - 1]
                .insert(short_key(token), rank)
                .is_none(),
            _ => self.long.insert(token, rank).is_none(),
        }
    }

    #[inline(always)]
    fn get(&self, piece: &[u8]) -> Option<u32> {
        match piece.len() {
            0 => None,
            1..=TINY => self.tiny.get(piece),
            n @ ..=SHORT => self.short[n - TINY - 1].get(&short_key(piece)).copied(),
            _ => self.long.get(piece).copied(),
        }
    }

    fn len(&self) -> usize {
        self.tiny.len + self.long.len() + self.short.iter().map(HashMap::len).sum::<usize>()
    }
}

struct Encoding {
    ranks: Ranks,
    /// The pre-tokenizer as a lazily built DFA. Every character begins
    /// some piece, so each search is anchored where the last piece ended
    /// and only its end is looked for — one forward pass over the text.
    split: DFA,
}

thread_local! {
    /// Each thread's states of the pre-tokenizer's DFA, built as met.
    static SPLIT_CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
}

impl Encoding {
    /// Built once, when a token rate or budget first needs a count; the
    /// table borrows the token bytes from the compiled-in ranks.
    /// `None` only if the shipped ranks or the pattern failed to load,
    /// which the tests rule out; counts then fall back to bytes / 4.
    fn get() -> Option<&'static Encoding> {
        static ENCODING: OnceLock<Option<Encoding>> = OnceLock::new();
        ENCODING
            .get_or_init(|| {
                let loaded = Encoding::load();
                if let Err(e) = &loaded {
                    tracing::error!(error = %e, "o200k_base did not load; prompts are estimated at 4 bytes a token");
                }
                loaded.ok()
            })
            .as_ref()
    }

    fn load() -> Result<Encoding, String> {
        let mut ranks = Ranks::new();
        let mut rest = O200K;
        let mut next = 0usize;
        while let Some((&len, tail)) = rest.split_first() {
            let (token, tail) = tail
                .split_at_checked(usize::from(len))
                .ok_or("the o200k_base ranks are truncated")?;
            let rank = u32::try_from(next).map_err(|e| e.to_string())?;
            if !ranks.insert(token, rank) {
                return Err(format!("o200k_base rank {rank} did not land"));
            }
            next += 1;
            rest = tail;
        }
        if ranks.len() != RANKS as usize {
            return Err(format!(
                "{} o200k_base ranks, expected {RANKS}",
                ranks.len()
            ));
        }
        let split = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .cache_capacity(1 << 20)
                    // Never give up on a text that keeps the cache busy.
                    .minimum_cache_clear_count(None),
            )
            .thompson(
                regex_automata::nfa::thompson::Config::new()
                    .which_captures(regex_automata::nfa::thompson::WhichCaptures::None),
            )
            .build(PATTERN)
            .map_err(|e| e.to_string())?;
        Ok(Encoding { ranks, split })
    }

    /// The pieces the reference pre-tokenizer would cut `text` into.
    fn pieces<'t>(&self, text: &'t str, mut each: impl FnMut(&'t [u8])) {
        SPLIT_CACHE.with_borrow_mut(|cache| {
            let cache = cache.get_or_insert_with(|| self.split.create_cache());
            self.pieces_with(cache, text, &mut each, true);
        });
    }

    /// `ascii`: take [`ascii_piece_end`]'s answer where it has one (the
    /// tests turn it off to compare).
    #[inline(always)]
    fn pieces_with<'t>(
        &self,
        cache: &mut Cache,
        text: &'t str,
        each: &mut impl FnMut(&'t [u8]),
        ascii: bool,
    ) {
        let bytes = text.as_bytes();
        let mut at = 0;
        let mut start = None;
        while at < bytes.len() {
            let end = match ascii.then(|| ascii_piece_end(bytes, at)).flatten() {
                Some(end) => end,
                None => self.wide_piece_end(cache, &mut start, text, at),
            };
            each(&bytes[at..end]);
            at = end;
        }
    }

    /// Where the piece that begins at `at` ends, by the pattern, with its
    /// look-ahead: the way for text [`ascii_piece_end`] cannot cut.
    #[inline(never)]
    fn wide_piece_end(
        &self,
        cache: &mut Cache,
        start: &mut Option<(usize, LazyStateID)>,
        text: &str,
        at: usize,
    ) -> usize {
        let mut end = match self.piece_end(cache, start, text.as_bytes(), at) {
            Some(end) if end > at => end,
            // Every character begins a piece; should the search ever
            // fail, the character stands alone.
            _ => at + text[at..].chars().next().map_or(1, char::len_utf8),
        };
        let piece = &text[at..end];
        // `\s+(?!\S)`: a run of whitespace followed by a non-space
        // gives up its last character, which then leads the next piece.
        if end < text.len()
            && piece.chars().all(char::is_whitespace)
            && !piece.contains(['\r', '\n'])
            && piece.chars().nth(1).is_some()
        {
            end -= piece.chars().next_back().map_or(0, char::len_utf8);
        }
        end
    }

    /// Where the piece that begins at `at` ends: the DFA walked byte by
    /// byte from its anchored start, the last match before it dies.
    /// `start` keeps the start state while the cache holds it.
    fn piece_end(
        &self,
        cache: &mut Cache,
        start: &mut Option<(usize, LazyStateID)>,
        text: &[u8],
        at: usize,
    ) -> Option<usize> {
        let dfa = &self.split;
        let mut sid = match *start {
            Some((clears, sid)) if clears == cache.clear_count() => sid,
            _ => {
                let config = regex_automata::util::start::Config::new().anchored(Anchored::Yes);
                let sid = dfa.start_state(cache, &config).ok()?;
                *start = Some((cache.clear_count(), sid));
                sid
            }
        };
        let mut end = None;
        for (i, &b) in text.iter().enumerate().skip(at) {
            sid = dfa.next_state(cache, sid, b).ok()?;
            if sid.is_tagged() {
                // Matches show one byte late: this state says a match
                // ended before byte `i`.
                if sid.is_match() {
                    end = Some(i);
                } else if sid.is_dead() || sid.is_quit() {
                    return end;
                }
            }
        }
        sid = dfa.next_eoi_state(cache, sid).ok()?;
        if sid.is_match() {
            end = Some(text.len());
        }
        end
    }

    /// Tokens in one piece: looked up whole (most are one token), else
    /// merged.
    #[inline(always)]
    fn piece_tokens(&self, piece: &[u8]) -> u64 {
        if piece.len() <= 1 || self.ranks.get(piece).is_some() {
            piece.len().min(1) as u64
        } else {
            self.merged_tokens(piece)
        }
    }

    /// Tokens in a piece that is no token itself: merged pair by pair,
    /// lowest rank first, as byte-pair encoding does.
    #[inline(never)]
    fn merged_tokens(&self, piece: &[u8]) -> u64 {
        if piece.len() > MAX_PIECE {
            return piece.chunks(MAX_PIECE).map(|c| self.piece_tokens(c)).sum();
        }
        let ranks = &self.ranks;
        // A function rather than a closure so that it can be inlined by
        // demand: a rank look-up per pair is most of a merge's work.
        #[inline(always)]
        fn of(ranks: &Ranks, piece: &[u8], a: u16, b: u16) -> u32 {
            let part = piece
                .get(usize::from(a)..usize::from(b))
                .unwrap_or_default();
            ranks.get(part).unwrap_or(u32::MAX)
        }
        let rank = |a: u16, b: u16| of(ranks, piece, a, b);
        // `starts[i]` begins part i of `parts`; `pair[i]` ranks parts i and
        // i+1 merged. On the stack: no allocation per piece.
        let mut parts = piece.len();
        let mut starts = [0u16; MAX_PIECE + 1];
        let mut pair = [u32::MAX; MAX_PIECE];
        for (i, (s, n)) in starts.iter_mut().zip(0u16..).take(parts + 1).enumerate() {
            *s = n;
            if i + 1 < parts {
                pair[i] = rank(n, n + 2);
            }
        }
        while let Some((i, &r)) = pair[..parts - 1]
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| **r)
        {
            if r == u32::MAX {
                break;
            }
            // Part i+1 joins part i.
            starts.copy_within(i + 2..=parts, i + 1);
            pair.copy_within(i + 1..parts - 1, i);
            parts -= 1;
            if i + 1 < parts {
                pair[i] = rank(starts[i], starts[i + 2]);
            }
            if i > 0 {
                pair[i - 1] = rank(starts[i - 1], starts[i + 1]);
            }
        }
        parts as u64
    }
}

/// The classes of bytes [`ascii_piece_end`] tells apart, one bit each.
const UPPER: u8 = 1;
const LOWER: u8 = 2;
const DIGIT: u8 = 4;
/// Space, tab, vertical tab, form feed.
const BLANK: u8 = 8;
/// CR, LF.
const NEWLINE: u8 = 16;
/// Any other ASCII byte: punctuation, symbols, control characters.
const SYMBOL: u8 = 32;
/// A byte of a character that is not ASCII.
const WIDE: u8 = 64;
/// Past the end of the text.
const END: u8 = 128;
const LETTER: u8 = UPPER | LOWER;

/// Each byte's class.
static CLASS: [u8; 256] = {
    let mut table = [SYMBOL; 256];
    let mut c = 0;
    while c < table.len() {
        table[c] = match c as u8 {
            b'A'..=b'Z' => UPPER,
            b'a'..=b'z' => LOWER,
            b'0'..=b'9' => DIGIT,
            b' ' | b'\t' | 0x0b | 0x0c => BLANK,
            b'\r' | b'\n' => NEWLINE,
            0x80.. => WIDE,
            _ => SYMBOL,
        };
        c += 1;
    }
    table
};

/// The end of the piece of the `o200k_base` pre-tokenizer (without its
/// look-ahead alternative) that begins at `i`, worked out directly where
/// only ASCII decides it — most prose and code — or `None` when a
/// character that could change the answer is not ASCII (a letter, mark,
/// digit, space or symbol of another script; `ſ`, which folds to `s` in a
/// contraction). The pattern's alternatives, first match first:
/// 1. `P? U* L+ C?` and 2. `P? U+ L* C?`: an optional leading character that
///    is no letter, digit, CR or LF, then letters — capitals then small
///    letters — then an optional contraction (`'s 't 're 've 'm 'll 'd`,
///    any case);
/// 3. one to three digits;
/// 4. an optional space, symbols, then CRs, LFs (and `/`);
/// 5. whitespace up to and including its last CR or LF;
/// 6. whitespace; with the look-ahead `\s+(?!\S)`, a run of two or more
///    followed by a non-space gives up its last character to the next
///    piece.
///
/// One table look-up per byte: a run ends at the first byte outside its
/// classes, and a run that ends at a byte of a wider character is left to
/// the pattern (that character could belong to the run).
#[inline(always)]
fn ascii_piece_end(b: &[u8], i: usize) -> Option<usize> {
    let class = |k: usize| b.get(k).map_or(END, |&c| CLASS[usize::from(c)]);
    // The first byte from `k` on whose class is not in `set`.
    let skip = |mut k: usize, set: u8| loop {
        match class(k) {
            c if c & set != 0 => k += 1,
            WIDE => return None,
            _ => return Some(k),
        }
    };
    let c = class(i);
    if c & (WIDE | END) != 0 {
        return None;
    }
    let next = class(i + 1);
    let letters_at = if c & LETTER != 0 {
        Some(i)
    } else if c & (BLANK | SYMBOL) != 0 {
        // A leading `P`, if a letter follows; a wide character could be one.
        match next {
            WIDE => return None,
            n if n & LETTER != 0 => Some(i + 1),
            _ => None,
        }
    } else {
        None
    };
    if let Some(j) = letters_at {
        let k = skip(skip(j, UPPER)?, LOWER)?;
        if b.get(k) == Some(&b'\'') {
            // `None`: not ASCII; `Some(None)`: the end of the text.
            let lower = |k: usize| match b.get(k) {
                Some(&c) if c >= 0x80 => None,
                c => Some(c.map(u8::to_ascii_lowercase)),
            };
            match lower(k + 1)? {
                Some(b's' | b't' | b'm' | b'd') => return Some(k + 2),
                Some(b'r') if lower(k + 2)? == Some(b'e') => return Some(k + 3),
                Some(b'v') if lower(k + 2)? == Some(b'e') => return Some(k + 3),
                Some(b'l') if lower(k + 2)? == Some(b'l') => return Some(k + 3),
                _ => {}
            }
        }
        return Some(k);
    }
    if c == DIGIT {
        let mut k = i + 1;
        while k < i + 3 {
            match class(k) {
                DIGIT => k += 1,
                WIDE => return None,
                _ => break,
            }
        }
        return Some(k);
    }
    let symbols_at = if c == SYMBOL {
        Some(i)
    } else if b[i] == b' ' && next == SYMBOL {
        Some(i + 1)
    } else {
        None
    };
    if let Some(j) = symbols_at {
        let mut k = skip(j, SYMBOL)?;
        while matches!(b.get(k), Some(b'\r' | b'\n' | b'/')) {
            k += 1;
        }
        return Some(k);
    }
    // Whitespace: the whole run (a wide space could continue it), up to
    // and including its last CR or LF if it has one; without one, less its
    // last character if two or more come before a non-space.
    let mut k = i;
    let mut last_newline = None;
    loop {
        match class(k) {
            BLANK => {}
            NEWLINE => last_newline = Some(k),
            WIDE => return None,
            END => return Some(last_newline.map_or(k, |n| n + 1)),
            _ => break,
        }
        k += 1;
    }
    Some(match last_newline {
        Some(n) => n + 1,
        None if k - i > 1 => k - 1,
        None => k,
    })
}

/// Tokens in `text` under `o200k_base`.
pub fn count(text: &str) -> u64 {
    let Some(e) = Encoding::get() else {
        return (text.len() as u64).div_ceil(4);
    };
    let mut n = 0;
    e.pieces(text, |p| n += e.piece_tokens(p));
    n
}

/// How many strings' counts each thread remembers.
const COUNT_CACHE: usize = 20_000;

/// [`count`], remembered by a hash of the text for strings long enough to
/// be worth it: a chat resends its whole history on every turn.
fn count_cached(s: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        /// Each thread's own: no lock, and no cache line shared between
        /// the connection threads.
        static CACHE: RefCell<HashMap<(u64, usize), u64, BuildHasherDefault<FxHasher>>> =
            RefCell::new(HashMap::default());
    }
    // A keyed hash (a random seed per process), several times faster than
    // SipHash over a long prompt.
    static KEYS: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    if s.len() < 512 {
        return count(s);
    }
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write(s.as_bytes());
    let key = (h.finish(), s.len());
    if let Some(n) = CACHE.with_borrow(|c| c.get(&key).copied()) {
        return n;
    }
    let n = count(s);
    CACHE.with_borrow_mut(|c| {
        if c.len() >= COUNT_CACHE {
            c.clear();
        }
        c.insert(key, n);
    });
    n
}

/// The prompt's tokens: every string a provider would see (structural
/// keys excepted), counted with `o200k_base` for OpenAI-kind providers and
/// estimated as one token per four bytes for others.
pub fn estimate_prompt(body: &[u8], openai: bool) -> u64 {
    let mut total = 0u64;
    let _ = palisade_dlp::json::rewrite_strings(
        body,
        palisade_dlp::json::MAX_DEPTH,
        &palisade_dlp::json::structural,
        &mut |s| {
            total += if openai {
                count_cached(s)
            } else {
                (s.len() as u64).div_ceil(4)
            };
            None
        },
    );
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> u64 {
        tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(text)
            .len() as u64
    }

    /// A small deterministic generator for the randomized tests.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// Two different slices of one length never share a key: the key
    /// covers every byte.
    #[test]
    fn short_keys_tell_every_slice_of_a_length_apart() {
        let mut next = xorshift(0x2545f4914f6cdd1d);
        for len in 1..=SHORT {
            let mut seen: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
            for _ in 0..3000 {
                // Few distinct byte values, so that near-equal slices meet.
                let b: Vec<u8> = (0..len)
                    .map(|_| b"ab\xff\0"[(next() % 4) as usize])
                    .collect();
                let key = if len <= TINY {
                    (tiny_key(&b), 0)
                } else {
                    short_key(&b)
                };
                let earlier = seen.entry(key).or_insert_with(|| b.clone());
                assert_eq!(*earlier, b, "length {len}");
            }
        }
    }

    #[test]
    fn the_compiled_in_ranks_are_tiktokens() {
        let e = Encoding::get().expect("the ranks load");
        assert_eq!(e.ranks.len(), RANKS as usize);
        let bpe = tiktoken_rs::o200k_base_singleton();
        for rank in (0..RANKS).step_by(97).chain([RANKS - 1]) {
            let bytes: Vec<u8> = bpe._decode_native_and_split(vec![rank]).flatten().collect();
            assert_eq!(e.ranks.get(bytes.as_slice()), Some(rank), "rank {rank}");
        }
        // Every token finds its own rank, whichever table holds it.
        let (mut rest, mut rank) = (O200K, 0);
        while let Some((&len, tail)) = rest.split_first() {
            let (token, tail) = tail.split_at(usize::from(len));
            assert_eq!(e.ranks.get(token), Some(rank), "{token:?}");
            (rest, rank) = (tail, rank + 1);
        }
        assert_eq!(rank, RANKS);
        // Slices that are no token find none, in each table.
        for missing in [
            &b"\xff\xfe"[..],
            b"zzqxj",
            b"qqqqqqqq",
            b"zzqxjzzqxjzz",
            &[0xff; 20],
        ] {
            assert_eq!(e.ranks.get(missing), None, "{missing:?}");
        }
    }

    /// The pieces of `text`, with or without the ASCII shortcut.
    fn split(text: &str, ascii: bool) -> Vec<&str> {
        let e = Encoding::get().expect("the ranks load");
        let mut cache = e.split.create_cache();
        let mut out = Vec::new();
        e.pieces_with(
            &mut cache,
            text,
            &mut |p| out.push(std::str::from_utf8(p).unwrap()),
            ascii,
        );
        out
    }

    #[test]
    fn the_ascii_shortcut_cuts_where_the_pattern_does() {
        let alphabet: Vec<char> =
            "aAbZzsStTrReEvVmMlLdD09 7  \t\n\r\x0b\x0c'''.,!-/()_\"#\x01éſ١\u{a0}\u{85}—Ａ\u{301}"
                .chars()
                .collect();
        let ascii = alphabet.iter().take_while(|c| c.is_ascii()).count();
        let mut next = xorshift(0x9e3779b97f4a7c15);
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| {
                    // Mostly ASCII, as prose is.
                    let pick = next() as usize;
                    if pick.is_multiple_of(8) {
                        alphabet[pick / 8 % alphabet.len()]
                    } else {
                        alphabet[pick / 8 % ascii]
                    }
                })
                .collect();
            assert_eq!(split(&text, true), split(&text, false), "{text:?}");
        }
        assert_eq!(
            split("Hello  world's\n\n  (x)", true),
            ["Hello", " ", " world's", "\n\n", " ", " (", "x", ")"]
        );
    }

    #[test]
    fn counts_equal_tiktoken_on_written_text() {
        let texts = [
            "",
            "a",
            "Hello, world!",
            "The committee met on Tuesday to review the roadmap.",
            "  leading spaces, then    four, then a tab\tand trailing   ",
            "line one\nline two\r\n\r\n  indented\n\n\n",
            "I'm sure they'll say we've done it; HE'S RIGHT, SHE'D agree, it'ſ odd",
            "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
            "Numbers: 1234567890, 3.14159, -42, 1e10, 0x1F, 12,345,678",
            "Ünïcödé: naïve café, Straße, Ærøskøbing, ĳ ǅ ǈ",
            "日本語のテキストと中文文本，还有한국어 텍스트。",
            "Emoji 🙂👍🏽 👨‍👩‍👧 and symbols ©®™ → ⇒ ∀x∈ℝ",
            "Arabic مرحبا بالعالم and Hebrew שלום עולם and Hindi नमस्ते दुनिया",
            "URLs https://example.com/a/b?c=d&e=f#g and paths /usr/local/bin//",
            "   \n   \n\t\t\n x",
            "a  b   c    d     e\u{3000}\u{3000}f\u{a0}\u{a0}g",
            "aGVsbG8gd29ybGQ=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789+/==",
            "--------------------------------------------------------------- ====",
        ];
        for t in texts {
            assert_eq!(count(t), reference(t), "{t:?}");
        }
    }

    #[test]
    fn counts_equal_tiktoken_on_random_text() {
        // Characters chosen to meet at every boundary of the pre-tokenizer:
        // cases, marks, digits, apostrophes, separators, newlines, symbols.
        let alphabet: Vec<char> =
            "aAbZ sS'tTmMlLdD09 5\t\n\r\u{a0}\u{3000}.,!?-/_()é\u{301}ß日本한🙂٣ſǅ  \n"
                .chars()
                .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 40) as usize;
            let t: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            assert_eq!(count(&t), reference(&t), "{t:?}");
        }
    }

    #[test]
    fn long_runs_are_merged_in_slices_within_a_token_per_cut() {
        // The reference merges a run pairwise over its whole length.
        for run in ["x".repeat(2_000), "=-".repeat(700), "a1".repeat(900)] {
            let (n, exact) = (count(&run), reference(&run));
            let cuts = (run.len() / MAX_PIECE) as u64;
            assert!(n.abs_diff(exact) <= cuts, "{n} against {exact}");
        }
        // A run the reference would take minutes over.
        assert!(count(&"x".repeat(200_000)) >= 200_000 / 16);
    }

    /// `limits::Ask::bound` reserves a body's length in place of its
    /// prompt's count: no body, raw or escaped, counts more.
    #[test]
    fn no_body_counts_more_tokens_than_it_has_bytes() {
        let alphabet: Vec<char> = "a Z9'\"\\\n\t\u{1}\u{7f}é\u{301}日🙂\u{a0}.?"
            .chars()
            .collect();
        let mut next = xorshift(0x243f_6a88_85a3_08d3);
        // The same text with every character written as a `\uXXXX` escape.
        let escaped = |t: &str| {
            let mut out = String::from("\"");
            for unit in t.encode_utf16() {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            out.push('"');
            out
        };
        for _ in 0..2000 {
            let texts: Vec<String> = (0..1 + next() % 4)
                .map(|_| {
                    (0..next() % 60)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect()
                })
                .collect();
            let raw = serde_json::to_vec(&serde_json::json!({
                "model": "gpt-4o",
                "messages": texts.iter().map(|t| serde_json::json!({"role": "user", "content": t})).collect::<Vec<_>>(),
            }))
            .unwrap();
            let contents: Vec<String> = texts
                .iter()
                .map(|t| format!(r#"{{"role":"user","content":{}}}"#, escaped(t)))
                .collect();
            let escaped = format!(r#"{{"messages":[{}]}}"#, contents.join(","));
            for body in [raw.as_slice(), escaped.as_bytes()] {
                for openai in [true, false] {
                    let n = estimate_prompt(body, openai);
                    assert!(
                        n <= body.len() as u64,
                        "{n} for {:?}",
                        String::from_utf8_lossy(body)
                    );
                }
            }
            // The escaped body says the same as the raw one.
            assert_eq!(
                estimate_prompt(escaped.as_bytes(), true),
                estimate_prompt(&raw, true)
            );
        }
    }

    #[test]
    fn prompts_count_every_string_but_the_structure() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}]}"#;
        // The model and the role are structure, not prompt.
        assert_eq!(estimate_prompt(body, true), reference("Hello, world!"));
        // Bytes / 4 for providers whose tokenizer is not public.
        assert_eq!(estimate_prompt(body, false), 13_u64.div_ceil(4));
        let long = "word ".repeat(400);
        let body =
            serde_json::to_vec(&serde_json::json!({"messages":[{"content": long}]})).unwrap();
        assert_eq!(estimate_prompt(&body, true), reference(&long));
        assert_eq!(estimate_prompt(&body, true), reference(&long), "cached");
    }
}
