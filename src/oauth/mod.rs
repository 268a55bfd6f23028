//! OAuth 2.0 with providers: the catalog, the token endpoint client and the
//! reading and classification of its answers.

pub mod catalog;
pub mod client;
pub mod response;
