//! `sqlx::migrate!` embeds `migrations/` at compile time; this makes a new or
//! changed migration rebuild the crate. The provider catalog, one file per provider
//! under `providers/catalog/`, is embedded the same way: this writes the list of
//! files for `include_str!`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a build script fails the build loudly; that is its error reporting
use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=providers/catalog");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("providers/catalog");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("providers/catalog")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for path in files {
        let slug = path.file_stem().and_then(|s| s.to_str()).expect("a UTF-8 file name");
        writeln!(out, "    ({slug:?}, include_str!({:?})),", path.display().to_string()).expect("write");
    }
    out.push(']');
    let target = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("catalog_files.rs");
    std::fs::write(target, out).expect("write catalog_files.rs");
}
