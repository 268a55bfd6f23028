//! `sqlx::migrate!` embeds `migrations/` at compile time; this makes a new or
//! changed migration rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
