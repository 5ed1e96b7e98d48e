//! The tar format as WebDataset shards use it: a reader that lists the regular files of an
//! archive with where their bytes lie (ustar, with pax and GNU long names, as GNU tar,
//! Python's `tarfile` and webdataset's writers produce), and a writer of deterministic
//! ustar archives (fixed mode, owner and time, so the same files give the same bytes).
//!
//! The reader checks every header's checksum and never trusts a size beyond the file: a
//! damaged header is an error naming its byte offset, a member cut off by the end of the
//! file is reported as truncated (the caller skips it), nothing panics.

use std::io::{self, Read, Seek, SeekFrom, Write};

pub const BLOCK: u64 = 512;

/// A regular file of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Byte offset of the file's data in the archive.
    pub offset: u64,
    pub size: u64,
    /// The archive ends before the file's last byte.
    pub truncated: bool,
}

/// Why an archive cannot be listed (the file itself is wrong, not one member).
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("not a tar archive (its first header is invalid)")]
    NotTar,
    #[error("the tar header at byte {0} is damaged (checksum mismatch)")]
    Checksum(u64),
    #[error("the tar header at byte {offset} is invalid: {what}")]
    Header { offset: u64, what: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The value of an octal (or GNU base-256) numeric field.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256: big-endian, the first byte's top bit is the marker.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Whether the header's checksum (the byte sum with the checksum field read as spaces,
/// unsigned or, as some old writers, signed) matches the one it records.
fn checksum_ok(h: &[u8; 512]) -> bool {
    let Some(recorded) = number(&h[148..156]) else { return false };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    recorded == unsigned || recorded as i64 == signed
}

/// `path=` and `size=` of a pax extended header ("LEN key=value\n" records).
fn pax_records(data: &[u8], offset: u64) -> Result<(Option<String>, Option<u64>), TarError> {
    let bad = |what: &str| TarError::Header { offset, what: format!("pax record {what}") };
    let (mut path, mut size, mut rest) = (None, None, data);
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(|| bad("without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("with a bad length"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad("longer than the header"));
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match &record[..eq] {
                b"path" => path = Some(value),
                b"size" => size = Some(value.parse().map_err(|_| bad("with a bad size"))?),
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    Ok((path, size))
}

/// Longest pax header or GNU long name read into memory (real ones are a few hundred bytes).
const MAX_META: u64 = 1 << 20;

/// Lists the regular files of the archive `r` (of `len` bytes), in order. Listing stops at
/// the end-of-archive blocks, at the end of the file, or after a truncated file.
pub fn list<R: Read + Seek>(r: &mut R, len: u64) -> Result<Vec<Entry>, TarError> {
    let mut entries = Vec::new();
    let (mut pos, mut long_name, mut pax): (u64, Option<String>, (Option<String>, Option<u64>)) = (0, None, (None, None));
    while pos + BLOCK <= len {
        let mut h = [0u8; 512];
        r.seek(SeekFrom::Start(pos))?;
        r.read_exact(&mut h)?;
        if h.iter().all(|&b| b == 0) {
            break;
        }
        if !checksum_ok(&h) {
            return Err(if pos == 0 { TarError::NotTar } else { TarError::Checksum(pos) });
        }
        let header_size = number(&h[124..136]).ok_or_else(|| TarError::Header { offset: pos, what: "its size field is not a number".into() })?;
        let size = pax.1.take().unwrap_or(header_size);
        let data = pos + BLOCK;
        let next = size.div_ceil(BLOCK).checked_mul(BLOCK).and_then(|s| s.checked_add(data)).ok_or_else(|| TarError::Header { offset: pos, what: format!("size {size} is too large") })?;
        let kind = h[156];
        if matches!(kind, b'x' | b'L') {
            if size > MAX_META || data + size > len {
                return Err(TarError::Header { offset: pos, what: format!("an extended header of {size} bytes") });
            }
            let mut meta = vec![0u8; size as usize];
            r.read_exact(&mut meta)?;
            if kind == b'x' {
                pax = pax_records(&meta, pos)?;
            } else {
                long_name = Some(text(&meta));
            }
            pos = next;
            continue;
        }
        let mut name = text(&h[0..100]);
        // POSIX ustar has a name prefix; GNU's "ustar  " uses that space for other fields.
        if &h[257..263] == b"ustar\0" {
            let prefix = text(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(n) = long_name.take() {
            name = n;
        }
        if let Some(n) = pax.0.take() {
            name = n;
        }
        if matches!(kind, b'0' | 0 | b'7') {
            let truncated = data.saturating_add(size) > len;
            entries.push(Entry { name, offset: data, size, truncated });
            if truncated {
                break;
            }
        }
        pos = next;
    }
    Ok(entries)
}

/// WebDataset's split of a member name into the sample key and the field: the key is the
/// name up to the first dot of its last path component (`a/b.c.jpg` → `a/b`, `c.jpg`);
/// `None` for names without one (webdataset ignores them).
pub fn key_and_field(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base_start..].find('.')? + base_start;
    if dot == base_start {
        return None;
    }
    Some((&name[..dot], &name[dot + 1..]))
}

/// Writes deterministic ustar archives: every header has mode 0644, owner 0:0, empty
/// owner names and mtime 0; names over 100 bytes get a pax `path` record.
pub struct TarWriter<W: Write> {
    w: W,
    written: u64,
}

fn header(name: &[u8], size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0width$o}\0", v, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        TarWriter { w, written: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.written
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let pad = (BLOCK - bytes.len() as u64 % BLOCK) % BLOCK;
        self.w.write_all(&[0u8; 512][..pad as usize])?;
        self.written += pad;
        Ok(())
    }

    /// Appends a regular file; returns the offset of its data.
    pub fn append(&mut self, name: &str, data: &[u8]) -> io::Result<u64> {
        if data.len() as u64 > 0o77_777_777_777 {
            return Err(io::Error::other(format!("{name}: {} bytes is more than a ustar member can hold", data.len())));
        }
        if name.len() > 100 {
            // "LEN path=NAME\n", where LEN counts its own digits.
            let body = format!(" path={name}\n");
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            let record = format!("{len}{body}");
            self.put(&header(b"././@PaxHeader", record.len() as u64, b'x'))?;
            self.put(record.as_bytes())?;
        }
        self.put(&header(name.as_bytes(), data.len() as u64, b'0'))?;
        let offset = self.written;
        self.put(data)?;
        Ok(offset)
    }

    /// Writes the two end-of-archive blocks and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 1024])?;
        self.written += 1024;
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut t = TarWriter::new(Vec::new());
        for (n, d) in files {
            t.append(n, d).unwrap();
        }
        t.finish().unwrap()
    }

    #[test]
    fn round_trip_with_long_names() {
        let long = format!("{}/x.jpg", "d".repeat(120));
        let bytes = archive(&[("a.jpg", b"abc"), ("a.cls", b"3"), (&long, &[7u8; 700])]);
        assert_eq!(bytes.len() % 512, 0);
        let e = list(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(e.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a.jpg", "a.cls", long.as_str()]);
        assert_eq!(&bytes[e[0].offset as usize..][..3], b"abc");
        assert_eq!(&bytes[e[2].offset as usize..][..700], &[7u8; 700][..]);
        assert!(e.iter().all(|e| !e.truncated));
        assert_eq!(archive(&[("a.jpg", b"abc")]), archive(&[("a.jpg", b"abc")]), "deterministic");
    }

    #[test]
    fn damage_is_an_error_or_a_truncated_member() {
        let bytes = archive(&[("a.jpg", &[1u8; 600]), ("b.jpg", b"xyz")]);
        let n = bytes.len() as u64;
        assert!(matches!(list(&mut Cursor::new(b"hello world".repeat(100)), 1100), Err(TarError::NotTar)));
        let mut bad = bytes.clone();
        bad[1536 + 3] ^= 1; // a name byte of the second header
        assert!(matches!(list(&mut Cursor::new(&bad), n), Err(TarError::Checksum(1536))));
        // Cut inside the first file: it is listed as truncated and listing stops.
        let cut = &bytes[..700];
        let e = list(&mut Cursor::new(cut), cut.len() as u64).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].truncated);
        // Cut at a header boundary: the files before it.
        let cut = &bytes[..1536];
        assert_eq!(list(&mut Cursor::new(cut), 1536).unwrap().len(), 1);
        assert!(list(&mut Cursor::new(Vec::<u8>::new()), 0).unwrap().is_empty());
        // A size field that is not a number, with a correct checksum.
        let mut h = header(b"a.jpg", 1, b'0');
        h[124..136].copy_from_slice(b"zzzzzzzzzzz\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(matches!(list(&mut Cursor::new(h.to_vec()), 512), Err(TarError::Header { offset: 0, .. })));
    }

    #[test]
    fn huge_sizes_are_refused_not_allocated() {
        let mut h = header(b"././@PaxHeader", 0, b'x');
        h[124] = 0x80; // base-256
        h[128..136].copy_from_slice(&[0xff; 8]);
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let r = list(&mut Cursor::new(h.to_vec()), 512);
        assert!(matches!(r, Err(TarError::Header { .. })), "{r:?}");
    }

    #[test]
    fn webdataset_keys() {
        assert_eq!(key_and_field("n01/n01_1.JPEG"), Some(("n01/n01_1", "JPEG")));
        assert_eq!(key_and_field("a/b.c.jpg"), Some(("a/b", "c.jpg")));
        assert_eq!(key_and_field("a.b/c"), None);
        assert_eq!(key_and_field("dir/.hidden"), None);
    }
}
