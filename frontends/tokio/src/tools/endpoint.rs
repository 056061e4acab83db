//! What `blockwire copy` copies from and to: an NBD export (a pool of
//! connections), a local file or block device, or `null:` (discard).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use blockwire_core::wire::{TransmissionFlags as F, allocation, context};

use crate::client::{ClientError, NbdUri, Options, Pool};

/// Largest write-zeroes or block-status request sent at once (compact
/// requests carry 32-bit lengths; 1 GiB keeps any alignment).
pub const BIG_REQUEST: u64 = 1 << 30;

pub enum Endpoint {
    Nbd {
        pool: Pool,
        allocation: bool,
    },
    File {
        file: Arc<File>,
        size: u64,
        path: PathBuf,
        regular: bool,
    },
    Null,
}

/// A run of the source: `zero` if it reads as zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

fn is_uri(s: &str) -> bool {
    ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
        .iter()
        .any(|p| s.starts_with(p))
}

fn io_err(what: &str, path: &std::path::Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Size of a regular file or block device.
fn file_size(f: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut f = f;
    f.seek(std::io::SeekFrom::End(0))
}

impl Endpoint {
    /// The source, also asking an NBD server for metadata context
    /// `extra` (a dirty bitmap); a server that does not agree to it is an
    /// error, as is a source that is not NBD.
    pub async fn open_source_with(
        s: &str,
        connections: usize,
        extra: Option<&str>,
        opts: &Options,
    ) -> Result<Endpoint, String> {
        if is_uri(s) {
            let e = Self::nbd(s, connections, extra, opts).await?;
            if let (Some(ctx), Endpoint::Nbd { pool, .. }) = (extra, &e)
                && pool.get(0).context_id(ctx).is_none()
            {
                return Err(format!("{s}: the server does not offer {ctx}"));
            }
            return Ok(e);
        }
        if let Some(ctx) = extra {
            return Err(format!("{s}: {ctx} needs an NBD source"));
        }
        let path = PathBuf::from(s);
        let file = File::open(&path).map_err(|e| io_err("open", &path, e))?;
        let size = file_size(&file).map_err(|e| io_err("size of", &path, e))?;
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(Endpoint::File {
            file: Arc::new(file),
            size,
            path,
            regular,
        })
    }

    /// Open the destination for a source of `size` bytes. A regular file
    /// is created or truncated to `size` (it then reads as zeroes, so zero
    /// runs need no writing), unless `keep`: then it must already exist
    /// with the source's size and is written in place (an incremental
    /// copy into the previous one).
    pub async fn open_destination_with(
        s: &str,
        connections: usize,
        size: u64,
        keep: bool,
        opts: &Options,
    ) -> Result<Endpoint, String> {
        if s == "null:" {
            return Ok(Endpoint::Null);
        }
        if is_uri(s) {
            let e = Self::nbd(s, connections, None, opts).await?;
            if let Endpoint::Nbd { pool, .. } = &e {
                let c = pool.get(0);
                if c.has(F::READ_ONLY) {
                    return Err(format!("{s}: the destination export is read-only"));
                }
                if c.size() < size {
                    return Err(format!(
                        "{s}: the destination ({} bytes) is smaller than the source ({size} bytes)",
                        c.size()
                    ));
                }
            }
            return Ok(e);
        }
        let path = PathBuf::from(s);
        let is_blockdev = std::fs::metadata(&path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(!is_blockdev && !keep)
            .truncate(!is_blockdev && !keep)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        if keep && !is_blockdev {
            let have = file_size(&file).map_err(|e| io_err("size of", &path, e))?;
            if have != size {
                return Err(format!(
                    "{}: the destination ({have} bytes) is not the source's size ({size} bytes): \
                     an incremental copy goes into the previous full copy",
                    path.display()
                ));
            }
        } else if is_blockdev {
            let have = file_size(&file).map_err(|e| io_err("size of", &path, e))?;
            if have < size {
                return Err(format!(
                    "{}: the device ({have} bytes) is smaller than the source ({size} bytes)",
                    path.display()
                ));
            }
        } else {
            file.set_len(size).map_err(|e| io_err("resize", &path, e))?;
        }
        Ok(Endpoint::File {
            file: Arc::new(file),
            size,
            path,
            regular: !is_blockdev,
        })
    }

    async fn nbd(
        s: &str,
        connections: usize,
        extra: Option<&str>,
        base: &Options,
    ) -> Result<Endpoint, String> {
        let uri = NbdUri::parse(s).map_err(|e| e.to_string())?;
        let mut meta_contexts = vec![context::BASE_ALLOCATION.to_owned()];
        meta_contexts.extend(extra.map(str::to_owned));
        let opts = Options {
            meta_contexts,
            ..base.clone()
        };
        let pool = Pool::connect(&uri, &opts, connections)
            .await
            .map_err(|e| format!("{s}: {e}"))?;
        let allocation = pool.get(0).context_id(context::BASE_ALLOCATION).is_some();
        Ok(Endpoint::Nbd { pool, allocation })
    }

    pub fn size(&self) -> u64 {
        match self {
            Endpoint::Nbd { pool, .. } => pool.get(0).size(),
            Endpoint::File { size, .. } => *size,
            Endpoint::Null => u64::MAX,
        }
    }

    /// Alignment requests must keep.
    pub fn min_block(&self) -> u64 {
        match self {
            Endpoint::Nbd { pool, .. } => u64::from(pool.get(0).export().min_block()),
            _ => 1,
        }
    }

    pub fn max_request(&self) -> u64 {
        match self {
            Endpoint::Nbd { pool, .. } => pool.get(0).max_request(),
            _ => 32 << 20,
        }
    }

    pub fn connections(&self) -> usize {
        match self {
            Endpoint::Nbd { pool, .. } => pool.connections().len(),
            _ => 1,
        }
    }

    /// Whether zero runs can be skipped: the destination already reads as
    /// zeroes everywhere. For NBD, one fast zero of the whole export is
    /// tried first (as nbdcopy does); `ENOTSUP` just means "no".
    pub async fn prezero(&self, size: u64) -> Result<bool, String> {
        match self {
            Endpoint::Null => Ok(true),
            Endpoint::File { regular, .. } => Ok(*regular),
            Endpoint::Nbd { pool, .. } => {
                let c = pool.get(0);
                if !c.has(F::SEND_WRITE_ZEROES) || !c.has(F::SEND_FAST_ZERO) {
                    return Ok(false);
                }
                let mut at = 0;
                while at < size {
                    let len = (size - at).min(BIG_REQUEST);
                    match c.zero(at, len, true, false).await {
                        Ok(()) => at += len,
                        Err(ClientError::Request { .. }) if at == 0 => return Ok(false),
                        Err(e) => return Err(format!("zeroing the destination: {e}")),
                    }
                }
                Ok(true)
            }
        }
    }

    /// The extents of metadata context `ctx` (a `qemu:dirty-bitmap:`)
    /// from `offset`, at most `len`: `(offset, length, dirty)`.
    pub async fn bitmap_runs(
        &self,
        ctx: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>, String> {
        let Endpoint::Nbd { pool, .. } = self else {
            return Err(format!("{ctx} needs an NBD source"));
        };
        let ext = pool
            .get(0)
            .block_status(ctx, offset, len)
            .await
            .map_err(|e| e.to_string())?;
        let mut at = offset;
        let mut out = Vec::new();
        for e in ext {
            let l = e.length.min(offset + len - at);
            if l == 0 {
                break;
            }
            // NBD_STATE_DIRTY, bit 0 of a qemu:dirty-bitmap extent.
            out.push((at, l, e.flags & 1 != 0));
            at += l;
        }
        if out.is_empty() {
            return Err(format!("{ctx} at offset {offset} described nothing"));
        }
        Ok(out)
    }

    /// Runs covering at least one byte from `offset` (at most `len`).
    pub async fn runs(&self, offset: u64, len: u64) -> Result<Vec<Run>, String> {
        let all = vec![Run {
            offset,
            len,
            zero: false,
        }];
        match self {
            Endpoint::Nbd {
                pool,
                allocation: true,
            } => {
                let ext = pool
                    .get(0)
                    .block_status(context::BASE_ALLOCATION, offset, len)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut at = offset;
                let mut out = Vec::new();
                for e in ext {
                    let l = e.length.min(offset + len - at);
                    if l == 0 {
                        break;
                    }
                    out.push(Run {
                        offset: at,
                        len: l,
                        zero: e.flags & u64::from(allocation::ZERO) != 0,
                    });
                    at += l;
                }
                if out.is_empty() {
                    return Err(format!("block status at offset {offset} described nothing"));
                }
                Ok(out)
            }
            Endpoint::File {
                file,
                regular: true,
                ..
            } => Ok(file_runs(file, offset, len).unwrap_or(all)),
            _ => Ok(all),
        }
    }

    /// Reads `len` bytes at `offset` into `buf` (resized; a buffer from an
    /// earlier read or write, so that no request allocates and zeroes one).
    pub async fn read(
        &self,
        i: usize,
        offset: u64,
        len: u64,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        match self {
            Endpoint::Nbd { pool, .. } => pool
                .get(i)
                .read_into(offset, len as u32, buf)
                .await
                .map_err(|e| e.to_string()),
            Endpoint::File { file, path, .. } => {
                let (file, path) = (file.clone(), path.clone());
                blocking(move || {
                    // Every byte is overwritten by the read.
                    buf.resize(len as usize, 0);
                    file.read_exact_at(&mut buf, offset)
                        .map_err(|e| read_err(&path, offset, len, e))?;
                    Ok(buf)
                })
                .await
            }
            Endpoint::Null => {
                buf.clear();
                buf.resize(len as usize, 0);
                Ok(buf)
            }
        }
    }

    /// Writes `data` at `offset`; hands the buffer back for reuse.
    pub async fn write(&self, i: usize, offset: u64, data: Vec<u8>) -> Result<Vec<u8>, String> {
        match self {
            Endpoint::Nbd { pool, .. } => pool
                .get(i)
                .write_buf(offset, data, false)
                .await
                .map_err(|e| e.to_string()),
            Endpoint::File { file, path, .. } => {
                let (file, path) = (file.clone(), path.clone());
                blocking(move || {
                    file.write_all_at(&data, offset).map_err(|e| {
                        format!(
                            "write of {} bytes at offset {offset} to {} failed: {e}",
                            data.len(),
                            path.display()
                        )
                    })?;
                    Ok(data)
                })
                .await
            }
            Endpoint::Null => Ok(data),
        }
    }

    /// Make `len` bytes at `offset` read as zeroes.
    pub async fn zero(&self, i: usize, offset: u64, len: u64) -> Result<(), String> {
        match self {
            Endpoint::Nbd { pool, .. } if pool.get(i).has(F::SEND_WRITE_ZEROES) => {
                let c = pool.get(i);
                let mut at = offset;
                while at < offset + len {
                    let l = (offset + len - at).min(BIG_REQUEST);
                    c.zero(at, l, false, false)
                        .await
                        .map_err(|e| e.to_string())?;
                    at += l;
                }
                Ok(())
            }
            Endpoint::Null => Ok(()),
            _ => {
                // No way to zero but writing zeroes.
                let chunk = self.max_request().min(1 << 20);
                let mut at = offset;
                while at < offset + len {
                    let l = (offset + len - at).min(chunk);
                    self.write(i, at, vec![0; l as usize]).await?;
                    at += l;
                }
                Ok(())
            }
        }
    }

    pub async fn flush(&self) -> Result<(), String> {
        match self {
            Endpoint::Nbd { pool, .. } if pool.get(0).has(F::SEND_FLUSH) => {
                pool.flush().await.map_err(|e| e.to_string())
            }
            Endpoint::File { file, path, .. } => {
                let (file, path) = (file.clone(), path.clone());
                blocking(move || file.sync_all().map_err(|e| io_err("fsync", &path, e))).await
            }
            _ => Ok(()),
        }
    }
}

fn read_err(path: &std::path::Path, offset: u64, len: u64, e: std::io::Error) -> String {
    format!(
        "read of {len} bytes at offset {offset} from {} failed: {e}",
        path.display()
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("I/O task failed: {e}"))?
}

/// Data and holes of a regular file by `SEEK_DATA` / `SEEK_HOLE`; `None`
/// if the file system cannot tell (then everything is data).
fn file_runs(file: &File, offset: u64, len: u64) -> Option<Vec<Run>> {
    use crate::sys::{Seek, seek};
    let end = offset + len;
    let data = match seek(file, offset, Seek::Data) {
        Ok(Some(d)) => d.min(end),
        // ENXIO: no data from here to the end of the file.
        Ok(None) => end,
        // Any other error means the file system cannot tell: read
        // everything.
        Err(_) => return None,
    };
    if data > offset {
        return Some(vec![Run {
            offset,
            len: data - offset,
            zero: true,
        }]);
    }
    let hole = seek(file, offset, Seek::Hole).ok()??.min(end);
    (hole > offset).then(|| {
        vec![Run {
            offset,
            len: hole - offset,
            zero: false,
        }]
    })
}
