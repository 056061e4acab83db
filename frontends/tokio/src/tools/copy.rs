//! `blockwire copy SRC DST`: what `nbdcopy` does. File ↔ NBD and
//! NBD ↔ NBD, sparse-aware (zero runs found by `base:allocation` or
//! `SEEK_HOLE`, and all-zero reads, are skipped on a destination known to
//! read as zeroes, else written with `WRITE_ZEROES`), many requests and
//! connections in flight. Any failed read or write stops the copy with a
//! non-zero exit: never a silent partial copy.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;

use super::endpoint::{BIG_REQUEST, Endpoint, Run};

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source: an NBD URI or a file / block device.
    #[arg(value_name = "SRC")]
    pub source: String,
    /// Destination: an NBD URI, a file / block device (created or
    /// truncated to the source's size), or null: to discard.
    #[arg(value_name = "DST")]
    pub destination: String,
    /// Connections per NBD side (used when the server allows multi-conn).
    #[arg(short = 'C', long, value_name = "N", default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(short = 'R', long, value_name = "N", default_value_t = 64)]
    pub requests: usize,
    /// Bytes per read / write request.
    #[arg(long, value_name = "SIZE", default_value = "256K",
          value_parser = crate::size::parse_size)]
    pub request_size: u64,
    /// Flush (fsync) a file destination at the end; NBD destinations are
    /// always flushed when the server supports it.
    #[arg(long)]
    pub flush: bool,
    /// No progress bar (it is shown only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Incremental copy: only the ranges the NBD source reports dirty in
    /// qemu:dirty-bitmap:NAME, written in place into DST (the previous
    /// copy, which must exist with the source's size). Pull-mode backup,
    /// as virtnbdbackup does it with qemu-nbd -B or a
    /// qemu-storage-daemon export with bitmaps.
    #[arg(long, value_name = "NAME")]
    pub dirty_bitmap: Option<String>,
    #[command(flatten)]
    pub timeout: super::TimeoutArg,
}

/// How far ahead block status looks in one request.
const STATUS_WINDOW: u64 = BIG_REQUEST;

/// One unit of work.
#[derive(Clone, Copy, Debug)]
enum Item {
    Data { offset: u64, len: u64 },
    Zero { offset: u64, len: u64 },
}

struct Job {
    src: Endpoint,
    dst: Endpoint,
    /// The destination reads as zeroes where nothing is written.
    dst_zeroed: bool,
    bar: ProgressBar,
    error: Mutex<Option<String>>,
    /// Buffers of finished requests, reused by the next reads: a fresh
    /// 256 KiB buffer per request is a zeroing pass (and often page faults)
    /// as costly as the copy itself. At most one per request in flight.
    bufs: Mutex<Vec<Vec<u8>>>,
}

impl Job {
    fn failed(&self) -> bool {
        self.error.lock().map(|e| e.is_some()).unwrap_or(true)
    }

    fn take_buf(&self) -> Vec<u8> {
        self.bufs
            .lock()
            .ok()
            .and_then(|mut b| b.pop())
            .unwrap_or_default()
    }

    fn put_buf(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        if let Ok(mut b) = self.bufs.lock() {
            b.push(buf);
        }
    }

    fn fail(&self, e: String) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
    }

    async fn run(&self, i: usize, item: Item) -> Result<(), String> {
        match item {
            Item::Data { offset, len } => {
                let data = self.src.read(i, offset, len, self.take_buf()).await?;
                if data.iter().all(|&b| b == 0) {
                    if !self.dst_zeroed {
                        self.dst.zero(i, offset, len).await?;
                    }
                    self.put_buf(data);
                } else {
                    let back = self.dst.write(i, offset, data).await?;
                    self.put_buf(back);
                }
                self.bar.inc(len);
            }
            Item::Zero { offset, len } => {
                if !self.dst_zeroed {
                    self.dst.zero(i, offset, len).await?;
                }
                self.bar.inc(len);
            }
        }
        Ok(())
    }
}

fn progress_bar(size: u64, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template(
        "{wide_bar} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Split a run into work items no larger than the request size (data) or
/// `BIG_REQUEST` (zeroes), keeping `align`.
fn items(run: Run, request: u64, out: &mut Vec<Item>) {
    let step = if run.zero { BIG_REQUEST } else { request };
    let mut at = run.offset;
    let end = run.offset + run.len;
    while at < end {
        let len = (end - at).min(step);
        out.push(if run.zero {
            Item::Zero { offset: at, len }
        } else {
            Item::Data { offset: at, len }
        });
        at += len;
    }
}

pub async fn run(args: CopyArgs) -> Result<(), String> {
    let opts = args.timeout.options();
    let bitmap_ctx = args
        .dirty_bitmap
        .as_ref()
        .map(|b| format!("{}{b}", blockwire_core::block::dirty_bitmap::CONTEXT_PREFIX));
    let src =
        Endpoint::open_source_with(&args.source, args.connections, bitmap_ctx.as_deref(), &opts)
            .await?;
    let size = src.size();
    let dst = Endpoint::open_destination_with(
        &args.destination,
        args.connections,
        size,
        bitmap_ctx.is_some(),
        &opts,
    )
    .await?;
    let align = src.min_block().max(dst.min_block());
    let request = args
        .request_size
        .min(src.max_request())
        .min(dst.max_request());
    let request = (request - request % align).max(align);
    // An incremental copy writes over the previous copy: nothing there
    // reads as zeroes unless written so.
    let dst_zeroed = match bitmap_ctx {
        Some(_) => false,
        None => dst.prezero(size).await?,
    };
    let width = src.connections().max(dst.connections());
    let job = Arc::new(Job {
        src,
        dst,
        dst_zeroed,
        bar: progress_bar(size, args.no_progress),
        error: Mutex::new(None),
        bufs: Mutex::new(Vec::new()),
    });
    let slots = (width * args.requests.max(1)) as u32;
    let sem = Arc::new(Semaphore::new(slots as usize));
    let mut n = 0usize;
    let mut at = 0;
    let mut batch = Vec::new();
    'produce: while at < size && !job.failed() {
        let window = (size - at).min(STATUS_WINDOW);
        let runs = match &bitmap_ctx {
            // Dirty ranges are copied as data (all-zero reads become
            // write-zeroes in Job::run); clean ones are left alone.
            Some(ctx) => match job.src.bitmap_runs(ctx, at, window).await {
                Ok(r) => Ok(r
                    .into_iter()
                    .filter_map(|(offset, len, dirty)| {
                        at = offset + len;
                        dirty.then_some(Run {
                            offset,
                            len,
                            zero: false,
                        })
                    })
                    .collect::<Vec<_>>()),
                Err(e) => Err(e),
            },
            None => job.src.runs(at, window).await,
        };
        let runs = match runs {
            Ok(r) => r,
            Err(e) => {
                job.fail(format!("reading the source's allocation: {e}"));
                break;
            }
        };
        batch.clear();
        for r in runs {
            at = at.max(r.offset + r.len);
            items(r, request, &mut batch);
        }
        for &item in &batch {
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break 'produce;
            };
            if job.failed() {
                break 'produce;
            }
            let (job, i) = (job.clone(), n);
            n += 1;
            tokio::spawn(async move {
                if let Err(e) = job.run(i, item).await {
                    job.fail(e);
                }
                drop(permit);
            });
        }
    }
    // Wait for everything in flight, successful or not.
    let _all = sem
        .acquire_many(slots)
        .await
        .map_err(|_| "copy aborted".to_owned())?;
    if let Some(e) = job.error.lock().ok().and_then(|e| e.clone()) {
        job.bar.abandon();
        return Err(format!(
            "copy from {} to {} FAILED, the destination is incomplete: {e}",
            args.source, args.destination
        ));
    }
    let must_flush = matches!(job.dst, Endpoint::Nbd { .. }) || args.flush;
    if must_flush {
        job.dst
            .flush()
            .await
            .map_err(|e| format!("flushing {}: {e}", args.destination))?;
    }
    job.bar.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_into_items() {
        let mut v = Vec::new();
        items(
            Run {
                offset: 0,
                len: 10,
                zero: false,
            },
            4,
            &mut v,
        );
        let lens: Vec<_> = v
            .iter()
            .map(|i| match i {
                Item::Data { offset, len } => (*offset, *len),
                Item::Zero { .. } => panic!(),
            })
            .collect();
        assert_eq!(lens, [(0, 4), (4, 4), (8, 2)]);
        v.clear();
        items(
            Run {
                offset: 0,
                len: 3 << 30,
                zero: true,
            },
            4,
            &mut v,
        );
        assert_eq!(v.len(), 3);
    }
}
