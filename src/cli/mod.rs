//! The `pipes` command line (DESIGN §6): the roles and the admin commands.

mod api_keys;
mod connections;
mod integrations;
mod keys;
mod status;

pub use status::render as render_status;
mod webhooks;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Settings};
use crate::roles::{self, RoleSet};

#[derive(Debug, Parser)]
#[command(name = "pipes", version, about = "Connected accounts with always-fresh OAuth access tokens")]
pub struct Cli {
    /// A TOML file with the same keys as the PIPES_* environment variables (the environment wins).
    #[arg(long, global = true, env = "PIPES_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTP API, widget, OAuth callback and /metrics.
    Serve,
    /// Finds tokens due for refresh and publishes refresh jobs; relays the event outbox.
    Scheduler,
    /// Runs refresh jobs and webhook deliveries.
    Worker,
    /// Migrates, then runs serve, scheduler and worker in one process (a laptop setup).
    Dev,
    /// Applies database migrations.
    Migrate,
    /// Runs the built-in demo OAuth provider (and registers the `demo` integration).
    #[command(name = "demo-provider")]
    DemoProvider,
    /// API keys for the backend (`admin` or `tokens`).
    #[command(subcommand, name = "api-keys")]
    ApiKeys(api_keys::ApiKeysCommand),
    /// Encryption keys: generate one, re-encrypt everything under the newest.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Due tokens, queue depths, failures, invalid integrations, roles alive.
    Status {
        /// The same fields as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Imports connected accounts from a JSON-lines file (one account per line).
    Import { file: std::path::PathBuf },
    /// Integrations: provider configurations with the application's OAuth credentials.
    #[command(subcommand)]
    Integrations(integrations::IntegrationsCommand),
    /// The provider catalog (with `PIPES_CATALOG_FILE` over it): list, search, or `show SLUG`.
    Providers {
        #[command(subcommand)]
        show: Option<integrations::ProvidersCommand>,
        /// Only providers whose slug, name, description or category contains this text.
        #[arg(long)]
        search: Option<String>,
        /// Only providers of this category.
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Connected accounts: list, show, refresh now.
    #[command(subcommand)]
    Connections(connections::ConnectionsCommand),
    /// Webhook endpoints: add, list, remove; replay deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
}

/// Loads the configuration: the file first, then the environment over it.
pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut settings = Settings::default();
    if let Some(path) = &cli.config {
        settings.merge_file(path)?;
    }
    settings.merge_env();
    Ok(Config::from_settings(&settings)?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Keys(keys::KeysCommand::Generate { id }) = &cli.command {
        return keys::generate(id.as_deref());
    }
    if let Command::Providers { show, search, category, json } = &cli.command {
        return integrations::providers(show.as_ref(), search.as_deref(), category.as_deref(), *json);
    }
    let dev = matches!(cli.command, Command::Dev);
    if dev && std::env::var_os("PIPES_ALLOW_PRIVATE_NETWORK").is_none() {
        // The demo provider and a developer's webhook receiver run on this machine, over http.
        std::env::set_var("PIPES_ALLOW_PRIVATE_NETWORK", "true");
        eprintln!("pipes dev: PIPES_ALLOW_PRIVATE_NETWORK=true (outbound requests may reach this machine over http)");
    }
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(_) if dev && std::env::var_os("PIPES_ENCRYPTION_KEYS").is_none() => {
            let key = dev_key()?;
            std::env::set_var("PIPES_ENCRYPTION_KEYS", key);
            load_config(&cli)?
        }
        Err(err) => return Err(err),
    };
    let telemetry = crate::telemetry::init(config.log_format);
    let cancel = CancellationToken::new();
    crate::roles::cancel_on_signal(cancel.clone());
    let result = run_command(cli.command, config, cancel).await;
    telemetry.shutdown().await;
    result
}

async fn run_command(command: Command, config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    match command {
        Command::Serve => roles::run(config, RoleSet { serve: true, scheduler: false, worker: false }, cancel).await,
        Command::Scheduler => {
            roles::run(config, RoleSet { serve: false, scheduler: true, worker: false }, cancel).await
        }
        Command::Worker => roles::run(config, RoleSet { serve: false, scheduler: false, worker: true }, cancel).await,
        Command::Dev => {
            crate::db::ensure_database(&config.database_url).await?;
            let db = crate::db::pool(&config.database_url, 2)?;
            crate::db::migrate(&db).await?;
            crate::demo_setup::ensure_integration(&db, &config).await?;
            let demo = {
                let config = config.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move { crate::demo_setup::run_provider(&config, cancel).await })
            };
            roles::run(config, RoleSet { serve: true, scheduler: true, worker: true }, cancel).await?;
            demo.await??;
            Ok(())
        }
        Command::DemoProvider => {
            let db = crate::db::pool(&config.database_url, 2)?;
            if let Err(err) = crate::demo_setup::ensure_integration(&db, &config).await {
                tracing::warn!(error = %err, "could not register the demo integration (run `pipes migrate` first)");
            }
            crate::demo_setup::run_provider(&config, cancel).await
        }
        Command::Migrate => {
            crate::db::ensure_database(&config.database_url).await?;
            let db = crate::db::pool(&config.database_url, 2)?;
            crate::db::migrate(&db).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKeys(cmd) => api_keys::run(&config, cmd).await,
        Command::Keys(cmd) => keys::run(&config, cmd).await,
        Command::Status { json } => status::run(&config, json).await,
        Command::Import { file } => import(config, &file, cancel).await,
        Command::Integrations(cmd) => integrations::run(&config, cmd).await,
        Command::Providers { show, search, category, json } => {
            integrations::providers(show.as_ref(), search.as_deref(), category.as_deref(), json)
        }
        Command::Connections(cmd) => connections::run(&config, cmd).await,
        Command::Webhooks(cmd) => webhooks::run(&config, cmd).await,
    }
}

async fn import(config: Config, file: &std::path::Path, cancel: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let state = crate::state::AppState::new(config, cancel.clone())?;
    state.redis.wait_connected(std::time::Duration::from_secs(2)).await;
    let bar = indicatif::ProgressBar::new(text.lines().count() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} importing [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = crate::import::import_lines(&state, &text, || bar.inc(1)).await?;
    bar.finish();
    for (line, problem) in &report.rejected {
        eprintln!("line {line}: {problem}");
    }
    println!("imported {} account(s), rejected {}", report.imported, report.rejected.len());
    cancel.cancel();
    anyhow::ensure!(report.rejected.is_empty(), "{} line(s) were rejected", report.rejected.len());
    Ok(())
}

/// A development key for `pipes dev`, generated once and kept in a file so a
/// restart can still read what the last run stored. Loudly not for production.
fn dev_key() -> anyhow::Result<String> {
    use anyhow::Context as _;
    let path = match std::env::var_os("PIPES_DEV_KEY_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(std::env::temp_dir);
            base.join("pipes").join("dev-encryption-key")
        }
    };
    let key = match std::fs::read_to_string(&path) {
        Ok(text) if crate::crypto::KeyRing::parse(text.trim()).is_ok() => text.trim().to_owned(),
        _ => {
            let key = crate::crypto::KeyRing::generate_key_text("dev");
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, &key).with_context(|| format!("writing {}", path.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            }
            key
        }
    };
    eprintln!(
        "WARNING: PIPES_ENCRYPTION_KEYS is not set; `pipes dev` uses a development key kept in {}.",
        path.display()
    );
    eprintln!("WARNING: never use it in production: set PIPES_ENCRYPTION_KEYS (see `pipes keys generate`).");
    Ok(key)
}
