//! Client-side commands: `blockwire info` and `blockwire copy`.

pub mod copy;
mod endpoint;
pub mod info;
mod json;

use std::time::Duration;

use crate::client::Options;

/// `--timeout SECS`, shared by `info` and `copy`.
#[derive(Clone, Debug, clap::Args)]
pub struct TimeoutArg {
    /// Give up, with an error, when the handshake (connecting included)
    /// takes longer than SECS, or when the server neither answers nor
    /// takes anything for SECS while requests wait. Without it the
    /// handshake may take 30 s and requests as long as the server takes.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
}

impl TimeoutArg {
    /// The client options these timeouts give.
    pub fn options(&self) -> Options {
        let mut o = Options::default();
        if let Some(t) = self.timeout {
            o.handshake_timeout = t;
            o.request_timeout = Some(t);
        }
        o
    }
}

/// Seconds, fractions allowed ("10", "0.5"); more than zero.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= 1e9) {
        return Err(format!(
            "{s:?}: the timeout must be more than 0 and at most 1e9 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "nan", "inf", "x", ""] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
        let t = TimeoutArg {
            timeout: Some(Duration::from_secs(3)),
        };
        let o = t.options();
        assert_eq!(o.handshake_timeout, Duration::from_secs(3));
        assert_eq!(o.request_timeout, Some(Duration::from_secs(3)));
        let o = TimeoutArg { timeout: None }.options();
        assert_eq!(o.handshake_timeout, Duration::from_secs(30));
        assert_eq!(o.request_timeout, None);
    }
}
