//! Block-driver logic as pure, sans-IO functions.

mod extent;

pub use extent::Extent;
