//! librados/librbd errno values as `std::io::Error`.
//!
//! Data-path errors (read, write, flush, discard, zeroes) are plain
//! `io::Error::from_raw_os_error(errno)`: what an NBD server maps to its
//! error codes, with `raw_os_error()` intact. Set-up errors (connect, open)
//! carry one line saying what failed, as an [`RbdError`] inside the
//! `io::Error`, with the errno's `ErrorKind` and the errno itself readable
//! through [`errno`].

use std::fmt;
use std::io;

/// An errno with the sentence that says what was being done.
#[derive(Debug)]
pub struct RbdError {
    errno: i32,
    what: String,
}

impl RbdError {
    pub fn errno(&self) -> i32 {
        self.errno
    }
}

impl fmt::Display for RbdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // strerror text without std's " (os error N)" suffix, then the errno
        // by name so that it can be searched for.
        let os = io::Error::from_raw_os_error(self.errno).to_string();
        let text = os.split(" (os error").next().unwrap_or(&os);
        write!(f, "{}: {} ({})", self.what, text, errno_name(self.errno))
    }
}

impl std::error::Error for RbdError {}

/// A data-path error: the errno as an OS error.
pub(crate) fn os_error(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// A set-up error: `what` failed with `errno`.
pub(crate) fn failed(errno: i32, what: impl Into<String>) -> io::Error {
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(
        kind,
        RbdError {
            errno,
            what: what.into(),
        },
    )
}

/// A request the crate refuses before it reaches librbd.
pub(crate) fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.into())
}

/// The errno behind an error from this crate, if it came from librados or
/// librbd (either form above).
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| e.get_ref()?.downcast_ref::<RbdError>().map(RbdError::errno))
}

/// The symbolic names of the errno values librados/librbd return in
/// practice (Linux numbering); others print as `errno N`.
fn errno_name(e: i32) -> String {
    let name = match e {
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        5 => "EIO",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        27 => "EFBIG",
        28 => "ENOSPC",
        30 => "EROFS",
        34 => "ERANGE",
        38 => "ENOSYS",
        61 => "ENODATA",
        95 => "EOPNOTSUPP",
        107 => "ENOTCONN",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        122 => "EDQUOT",
        125 => "ECANCELED",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_keep_kind_and_errno() {
        let e = failed(2, "RBD image 'p/i' does not exist");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(errno(&e), Some(2));
        assert_eq!(
            e.to_string(),
            "RBD image 'p/i' does not exist: No such file or directory (ENOENT)"
        );
        let t = failed(110, "x");
        assert_eq!(t.kind(), io::ErrorKind::TimedOut);
        assert!(t.to_string().ends_with("(ETIMEDOUT)"), "{t}");
    }

    #[test]
    fn data_errors_are_os_errors() {
        let e = os_error(5);
        assert_eq!(e.raw_os_error(), Some(5));
        assert_eq!(errno(&e), Some(5));
        assert_eq!(errno(&invalid("bad")), None);
    }

    #[test]
    fn unknown_errno_prints_its_number() {
        assert_eq!(errno_name(4095), "errno 4095");
    }
}
