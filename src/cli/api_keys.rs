//! `pipes api-keys create | list | revoke`.

use clap::Subcommand;

use crate::auth::{self, Role};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Creates a key and prints it once, as the last line of stdout.
    Create {
        #[arg(long)]
        name: String,
        /// `admin` (everything) or `tokens` (only the token read routes).
        #[arg(long, value_parser = ["admin", "tokens", "relay"])]
        role: String,
    },
    /// Lists keys (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revokes a key by id or name; it stops working within seconds.
    Revoke { id_or_name: String },
}

pub async fn run(config: &Config, cmd: ApiKeysCommand) -> anyhow::Result<()> {
    let db = crate::db::pool(&config.database_url, 2)?;
    match cmd {
        ApiKeysCommand::Create { name, role } => {
            let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("--role must be admin, tokens or relay"))?;
            let name = name.trim();
            anyhow::ensure!(!name.is_empty(), "--name must not be empty");
            let (key, info) = auth::create_key(&db, name, role).await?;
            println!("created {} key `{}` ({}); it is shown once:", info.role.as_str(), info.name, info.id);
            println!("{key}");
        }
        ApiKeysCommand::List { json } => {
            let keys = auth::list_keys(&db).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!("{:<34} {:<20} {:<7} {:<16} {:<10}", "ID", "NAME", "ROLE", "PREFIX", "STATUS");
                for k in keys {
                    let status = if k.revoked_at.is_some() { "revoked" } else { "active" };
                    println!("{:<34} {:<20} {:<7} {:<16} {:<10}", k.id, k.name, k.role.as_str(), k.key_prefix, status);
                }
            }
        }
        ApiKeysCommand::Revoke { id_or_name } => {
            let n = auth::revoke_key(&db, &id_or_name).await?;
            anyhow::ensure!(n > 0, "no active key with id or name `{id_or_name}`");
            println!("revoked {n} key(s)");
        }
    }
    Ok(())
}
