//! The `pipes` binary: parses the command line and runs it.

use clap::Parser;

/// mimalloc instead of the system allocator: a refresh or a token read allocates and
/// frees many small buffers across tokio's threads, where glibc's malloc is slow
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pipes::install_crypto_provider();
    let cli = pipes::cli::Cli::parse();
    match pipes::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
