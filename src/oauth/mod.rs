//! OAuth 2.0 with providers: the catalog, the token endpoint client and the
//! reading and classification of its answers.

// Provider answers are hostile input read on the refresh path, where a panic loses a
// rotated refresh token (see `crate::refresh`, which denies the same): no path in
// this module may panic.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod catalog;
pub mod client;
pub mod response;
