//! PostgreSQL access for the domain: integrations, connected accounts and their
//! refresh schedule.
//! Plain runtime-checked SQL next to the code that needs it.

pub mod accounts;
pub mod group;
pub mod integrations;
pub mod organizations;
pub mod schedule;
