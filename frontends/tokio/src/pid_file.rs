//! `--pid-file`: the process id written at start, removed at exit (by
//! `serve` and `daemon` alike).

use std::path::{Path, PathBuf};

use crate::serve::Error;

/// Removes the pid file on drop.
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn create(p: &Path) -> Result<Self, Error> {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| format!("{}: cannot write pid file: {e}", p.display()))?;
        Ok(Self(p.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
