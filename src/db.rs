//! PostgreSQL: the pool, and the migrations embedded at build time.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connections are made lazily so a role can start (and report
/// itself not ready) while PostgreSQL is still coming up.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options.application_name("pipes")))
}

/// Applies every pending migration; running it again is a no-op.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    match MIGRATOR.run(pool).await {
        Err(sqlx::migrate::MigrateError::VersionMissing(version)) => anyhow::bail!(
            "this database holds migration {version}, which this build does not know: it was made by a \
             development build from before the schema baseline (README, Upgrading); drop it and start again"
        ),
        result => Ok(result?),
    }
}

/// Creates the database named in `url` if it does not exist yet (first run on a laptop).
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::migrate::MigrateDatabase;
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
        tracing::info!("created the database");
    }
    Ok(())
}
