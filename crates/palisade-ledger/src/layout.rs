//! The C2SP tlog-tiles layout of a ledger directory:
//!
//! ```text
//! checkpoint                     the latest signed checkpoint (signed note)
//! tile/<L>/<N>[.p/<W>]           hash tiles: 256 hashes of level 8·L
//! tile/entries/<N>[.p/<W>]       entry bundles: 256 uint16-length-prefixed entries
//! ```
//!
//! `<N>` is written in groups of three digits, all but the last prefixed
//! with `x` (`1234067` → `x001/x234/067`); `.p/<W>` marks a partial tile of
//! width `W` < 256. Files are written to a temporary name, synced and
//! renamed, so a reader never sees half a tile.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Tile height: 2^8 = 256 hashes or entries per tile.
pub const HEIGHT: u8 = 8;
pub const WIDTH: u64 = 1 << HEIGHT;

/// A hash tile (`Some(level)`) or an entry bundle (`None`).
pub fn tile_path(level: Option<u8>, n: u64, width: u64) -> String {
    let mut digits = format!("{:03}", n % 1000);
    let mut rest = n / 1000;
    while rest > 0 {
        digits = format!("x{:03}/{digits}", rest % 1000);
        rest /= 1000;
    }
    let kind = match level {
        Some(l) => l.to_string(),
        None => "entries".to_owned(),
    };
    if width == WIDTH {
        format!("tile/{kind}/{digits}")
    } else {
        format!("tile/{kind}/{digits}.p/{width}")
    }
}

/// Writes `data` at `path` under `root` atomically and durably.
pub fn write_atomic(root: &Path, path: &str, data: &[u8]) -> std::io::Result<()> {
    let full = root.join(path);
    let dir = full.parent().unwrap_or(root);
    std::fs::create_dir_all(dir)?;
    let tmp = tmp_name(&full);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &full)?;
    sync_dir(dir)
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads a tile of `width`: the full tile if present (cut to `width`),
/// else the partial tile of exactly that width.
pub fn read_tile(
    root: &Path,
    level: Option<u8>,
    n: u64,
    width: u64,
    item_len: Option<usize>,
) -> std::io::Result<Vec<u8>> {
    let full = root.join(tile_path(level, n, WIDTH));
    let data = match std::fs::read(&full) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && width < WIDTH => {
            match std::fs::read(root.join(tile_path(level, n, width))) {
                Ok(data) => return Ok(data),
                // A newer checkpoint replaced this partial tile with a
                // wider one, which starts with the same items.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    wider_partial(root, level, n, width).ok_or(e)?
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    Ok(match item_len {
        Some(len) => {
            let mut data = data;
            data.truncate(len * width as usize);
            data
        }
        None => truncate_bundle(data, width),
    })
}

/// The narrowest partial tile wider than `width`, if any.
fn wider_partial(root: &Path, level: Option<u8>, n: u64, width: u64) -> Option<Vec<u8>> {
    let narrow = tile_path(level, n, width);
    let dir = root.join(narrow.rsplit_once('/')?.0);
    let best = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|w| *w > width && *w < WIDTH)
        .min()?;
    std::fs::read(dir.join(best.to_string())).ok()
}

/// The first `width` entries of a bundle (all of it when it has no more).
fn truncate_bundle(mut data: Vec<u8>, width: u64) -> Vec<u8> {
    let mut at = 0usize;
    for _ in 0..width {
        let Some(len) = data.get(at..at + 2) else {
            return data;
        };
        at += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
    }
    data.truncate(at.min(data.len()));
    data
}

/// Encodes entries as a bundle: each as a big-endian uint16 length, then
/// its bytes.
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        // Callers keep entries under 64 KiB.
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Splits a bundle into its entries; `None` if the framing is broken.
pub fn decode_bundle(data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let len_bytes: [u8; 2] = rest.get(..2)?.try_into().ok()?;
        let len = u16::from_be_bytes(len_bytes) as usize;
        out.push(rest.get(2..2 + len)?);
        rest = &rest[2 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_c2sp() {
        assert_eq!(tile_path(Some(0), 0, 256), "tile/0/000");
        assert_eq!(tile_path(Some(0), 1_234_067, 256), "tile/0/x001/x234/067");
        assert_eq!(tile_path(Some(1), 7, 3), "tile/1/007.p/3");
        assert_eq!(tile_path(None, 1000, 256), "tile/entries/x001/000");
        assert_eq!(tile_path(None, 5, 17), "tile/entries/005.p/17");
    }

    #[test]
    fn a_superseded_partial_tile_is_read_from_a_wider_one() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 3]).collect();
        let bundle = encode_bundle(entries.iter().map(Vec::as_slice));
        let path = dir.path().join(tile_path(None, 0, 5));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bundle).unwrap();
        let got = read_tile(dir.path(), None, 0, 3, None).unwrap();
        let first3 = encode_bundle(entries[..3].iter().map(Vec::as_slice));
        assert_eq!(got, first3);
        let hashes = vec![7u8; 32 * 5];
        let path = dir.path().join(tile_path(Some(0), 0, 5));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &hashes).unwrap();
        assert_eq!(
            read_tile(dir.path(), Some(0), 0, 2, Some(32))
                .unwrap()
                .len(),
            64
        );
        assert!(read_tile(dir.path(), Some(0), 0, 7, Some(32)).is_err());
    }

    #[test]
    fn bundles_round_trip_and_reject_broken_framing() {
        let entries: Vec<&[u8]> = vec![b"a", b"", b"hello"];
        let data = encode_bundle(entries.iter().copied());
        assert_eq!(decode_bundle(&data).unwrap(), entries);
        assert!(decode_bundle(&data[..data.len() - 1]).is_none());
        assert!(decode_bundle(&[0]).is_none());
    }
}
