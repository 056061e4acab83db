//! Boot Loader Specification Type #1 entries (UAPI.1): the
//! `loader/entries/*.conf` files of the boot partition, their keys, the
//! order a boot menu shows them in, and choosing the first.

use core::cmp::Ordering;

use crate::fat::{Entry as FileEntry, Fat};
use crate::{Disk, Error};

/// Largest entry file read: entries are a few lines.
pub const MAX_CONF: usize = 4096;
/// Entry files considered at most.
pub const MAX_ENTRIES: usize = 64;
const MAX_INITRD: usize = 4;
const MAX_OPTIONS: usize = 16;

#[derive(Debug, Clone, Copy, Default)]
pub struct Entry<'a> {
    pub title: Option<&'a str>,
    pub version: Option<&'a str>,
    pub machine_id: Option<&'a str>,
    pub sort_key: Option<&'a str>,
    pub linux: Option<&'a str>,
    pub architecture: Option<&'a str>,
    initrd: [&'a str; MAX_INITRD],
    initrds: usize,
    options: [&'a str; MAX_OPTIONS],
    option_lines: usize,
    /// The entry has an `efi` key: a PE program, which this loader
    /// cannot run.
    pub efi: bool,
}

impl<'a> Entry<'a> {
    /// Parse an entry file: one `key value` per line, `#` comments.
    pub fn parse(text: &'a [u8]) -> Result<Self, &'static str> {
        let text = core::str::from_utf8(text).map_err(|_| "entry is not UTF-8")?;
        let mut e = Entry::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(|c: char| c.is_ascii_whitespace())
                .map_or((line, ""), |(k, v)| (k, v.trim()));
            match key {
                "title" => e.title = Some(value),
                "version" => e.version = Some(value),
                "machine-id" => e.machine_id = Some(value),
                "sort-key" => e.sort_key = Some(value),
                "linux" => e.linux = Some(value),
                "architecture" => e.architecture = Some(value),
                "efi" => e.efi = true,
                "initrd" => {
                    if e.initrds == MAX_INITRD {
                        return Err("more than 4 initrd lines");
                    }
                    e.initrd[e.initrds] = value;
                    e.initrds += 1;
                }
                "options" => {
                    if e.option_lines == MAX_OPTIONS {
                        return Err("more than 16 options lines");
                    }
                    e.options[e.option_lines] = value;
                    e.option_lines += 1;
                }
                // devicetree and devicetree-overlay are for other
                // architectures; unknown keys are for other loaders
                // (the specification says to ignore them).
                _ => {}
            }
        }
        Ok(e)
    }

    /// Why this loader cannot boot the entry, if it cannot.
    pub fn unusable(&self) -> Option<&'static str> {
        if self
            .architecture
            .is_some_and(|a| !a.eq_ignore_ascii_case("x64"))
        {
            return Some("entry is for another architecture");
        }
        if self.linux.is_none_or(str::is_empty) {
            return Some(if self.efi {
                "entry runs an EFI program, not a Linux kernel"
            } else {
                "entry has no linux line"
            });
        }
        None
    }

    pub fn initrds(&self) -> &[&'a str] {
        &self.initrd[..self.initrds]
    }

    /// The `options` lines, in order (to be joined with spaces).
    pub fn options(&self) -> &[&'a str] {
        &self.options[..self.option_lines]
    }
}

/// Version comparison: runs of digits compare as numbers, everything else
/// byte by byte, and a `~` sorts before anything (even the end), as in
/// the UAPI version format specification's common cases.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (&a[..na], &b[..nb]);
                let (sa, sb) = (strip_zeros(da), strip_zeros(db));
                let o = sa.len().cmp(&sb.len()).then_with(|| sa.cmp(sb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn strip_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

/// Boot menu order: `Less` if `(a, a_name)` is shown before `(b, b_name)`.
/// Entries with a sort key come first, by sort key, machine ID, then
/// version newest first; the rest by file name, newest version first.
pub fn menu_order(a: &Entry, a_name: &str, b: &Entry, b_name: &str) -> Ordering {
    let by_name = || version_cmp(b_name, a_name);
    match (a.sort_key, b.sort_key) {
        (Some(x), Some(y)) => x
            .cmp(y)
            .then_with(|| a.machine_id.unwrap_or("").cmp(b.machine_id.unwrap_or("")))
            .then_with(|| version_cmp(b.version.unwrap_or(""), a.version.unwrap_or("")))
            .then_with(by_name),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => by_name(),
    }
}

/// The chosen entry: its file and the length of its text in the buffer.
pub struct Chosen {
    pub file: FileEntry,
    pub len: usize,
}

impl Chosen {
    /// The file name without the directory.
    pub fn name(&self) -> &str {
        core::str::from_utf8(self.file.name()).unwrap_or("?")
    }
}

/// Read every usable entry in `loader/entries/` and keep the first in
/// menu order; its text is left in `best`. `scratch` holds each other
/// entry while it is compared.
pub fn choose<D: Disk>(
    fat: &mut Fat,
    disk: &mut D,
    best: &mut [u8; MAX_CONF],
    scratch: &mut [u8; MAX_CONF],
) -> Result<Chosen, Error<D::Error>> {
    let dir = match fat.lookup(disk, b"loader/entries") {
        Ok(d) if d.is_dir() => d,
        Ok(_) | Err(Error::NotFound) => return Err(Error::NoEntry),
        Err(e) => return Err(e),
    };
    let mut files = [None::<FileEntry>; MAX_ENTRIES];
    let mut count = 0;
    let mut overflow = false;
    fat.for_each(disk, &dir, &mut |f| {
        let n = f.name();
        let conf = n.len() > 5 && n[n.len() - 5..].eq_ignore_ascii_case(b".conf");
        if !conf || f.is_dir() {
            return false;
        }
        if count == MAX_ENTRIES {
            overflow = true;
            return true;
        }
        files[count] = Some(*f);
        count += 1;
        false
    })?;
    if overflow {
        return Err(Error::BadEntry("more than 64 entry files"));
    }
    let mut chosen: Option<Chosen> = None;
    let mut reason = None;
    for f in files[..count].iter().flatten() {
        let len = f.size as usize;
        if len > MAX_CONF {
            reason = Some("entry file larger than 4 KiB");
            continue;
        }
        fat.read(disk, f, 0, &mut scratch[..len])?;
        let e = match Entry::parse(&scratch[..len]) {
            Ok(e) => e,
            Err(why) => {
                reason = Some(why);
                continue;
            }
        };
        if let Some(why) = e.unusable() {
            reason = Some(why);
            continue;
        }
        let name = core::str::from_utf8(f.name()).unwrap_or("");
        let better = match &chosen {
            None => true,
            Some(c) => {
                // `best` parsed before: it is usable.
                let b = Entry::parse(&best[..c.len]).unwrap_or_default();
                menu_order(&e, name, &b, c.name()) == Ordering::Less
            }
        };
        if better {
            best[..len].copy_from_slice(&scratch[..len]);
            chosen = Some(Chosen { file: *f, len });
        }
    }
    match (chosen, reason) {
        (Some(c), _) => Ok(c),
        (None, Some(why)) => Err(Error::BadEntry(why)),
        (None, None) => Err(Error::NoEntry),
    }
}
