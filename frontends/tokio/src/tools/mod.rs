//! Client-side commands: `blockwire info` and `blockwire copy`.

pub mod copy;
mod endpoint;
pub mod info;
mod json;

/// Run a tool on a fresh runtime (tools are one-shot commands).
pub fn block_on(
    f: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
        .map_err(Into::into)
}
