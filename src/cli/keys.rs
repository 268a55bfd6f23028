//! `pipes keys generate | rotate`.

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::crypto::KeyRing;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Prints a new random key (`kid:base64`); put it first in PIPES_ENCRYPTION_KEYS.
    Generate {
        /// The key id (default: k + today's date and a random suffix).
        #[arg(long)]
        id: Option<String>,
    },
    /// Re-encrypts every stored secret under the newest key, online and resumable.
    Rotate {
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
    },
}

pub fn generate(id: Option<&str>) -> anyhow::Result<()> {
    let id = match id {
        Some(id) => id.to_owned(),
        None => format!(
            "k{}{}",
            crate::time::now().format("%Y%m%d"),
            &crate::crypto::random_token(3)[..4].to_ascii_lowercase().replace(['-', '_'], "x")
        ),
    };
    let text = KeyRing::generate_key_text(&id);
    KeyRing::parse(&text)?;
    println!("{text}");
    Ok(())
}

pub async fn run(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { id } => generate(id.as_deref()),
        KeysCommand::Rotate { batch_size } => {
            anyhow::ensure!(batch_size > 0, "--batch-size must be positive");
            let db = crate::db::pool(&config.database_url, 2)?;
            let ring = &config.encryption_keys;
            let total = crate::keys::count_secrets(&db).await?;
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{spinner} re-encrypting [{bar:40}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let report = crate::keys::rotate(&db, ring, batch_size, |n| bar.inc(n)).await?;
            bar.finish();
            println!(
                "examined {}, re-encrypted {} under key `{}`, {} changed meanwhile (already current)",
                report.examined,
                report.rewritten,
                ring.newest_id(),
                report.raced
            );
            Ok(())
        }
    }
}
