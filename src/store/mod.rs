//! PostgreSQL access for the domain: integrations and connected accounts.
//! Plain runtime-checked SQL next to the code that needs it.

pub mod accounts;
pub mod group;
pub mod integrations;
