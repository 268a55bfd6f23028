//! The `pipes` command line (DESIGN §6): the roles and the admin commands.

mod api_keys;
mod keys;
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
    /// API keys for the backend (`admin` or `tokens`).
    #[command(subcommand, name = "api-keys")]
    ApiKeys(api_keys::ApiKeysCommand),
    /// Encryption keys: generate one, re-encrypt everything under the newest.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Webhook endpoints: add, list, remove; replay deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
}

/// Loads the configuration: the file first, then the environment.
pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut settings = Settings::from_env()?;
    if let Some(path) = &cli.config {
        let mut from_file = Settings::default();
        from_file.merge_file(path)?;
        // The environment wins over the file.
        let env = Settings::from_env()?;
        settings = from_file;
        settings.merge(env);
    }
    Ok(Config::from_settings(&settings)?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Keys(keys::KeysCommand::Generate { id }) = &cli.command {
        return keys::generate(id.as_deref());
    }
    let dev = matches!(cli.command, Command::Dev);
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(err) if dev && std::env::var_os("PIPES_ENCRYPTION_KEYS").is_none() => {
            let _ = err;
            let key = crate::crypto::KeyRing::generate_key_text("dev");
            eprintln!("WARNING: PIPES_ENCRYPTION_KEYS is not set; `pipes dev` generated a throw-away development key.");
            eprintln!("WARNING: data encrypted under it cannot be read after this process exits. Never use this in production.");
            std::env::set_var("PIPES_ENCRYPTION_KEYS", key);
            load_config(&cli)?
        }
        Err(err) => return Err(err),
    };
    crate::telemetry::init_logging(config.log_format);
    let cancel = CancellationToken::new();
    crate::app::cancel_on_signal(cancel.clone());
    match cli.command {
        Command::Serve => roles::run(config, RoleSet { serve: true, scheduler: false, worker: false }, cancel).await,
        Command::Scheduler => roles::run(config, RoleSet { serve: false, scheduler: true, worker: false }, cancel).await,
        Command::Worker => roles::run(config, RoleSet { serve: false, scheduler: false, worker: true }, cancel).await,
        Command::Dev => {
            let db = crate::db::pool(&config.database_url, 2)?;
            crate::db::migrate(&db).await?;
            roles::run(config, RoleSet { serve: true, scheduler: true, worker: true }, cancel).await
        }
        Command::Migrate => {
            let db = crate::db::pool(&config.database_url, 2)?;
            crate::db::migrate(&db).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKeys(cmd) => api_keys::run(&config, cmd).await,
        Command::Keys(cmd) => keys::run(&config, cmd).await,
        Command::Webhooks(cmd) => webhooks::run(&config, cmd).await,
    }
}
