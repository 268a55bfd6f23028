//! Benchmark helper for `benches/refresh.sh` (not a test): seeds accounts at an
//! in-process demo provider and measures the refresh pipeline, the raw broker rate and
//! the scheduler's claim. Configuration comes from the same `PIPES_*` environment as
//! the `pipes` roles it runs next to.
//!
//! * `e2e N` — N due accounts; `pipes scheduler` and `pipes worker` (separate processes,
//!   started by the script) refresh them; prints accounts refreshed per second.
//! * `broker N [IN_FLIGHT] [PREFETCH]` — persistent, confirmed publish + manual-ack
//!   consume of N messages on a quorum queue, concurrently, with IN_FLIGHT confirms
//!   awaited at once (256) and the consumer's prefetch PREFETCH (500); prints messages
//!   per second.
//! * `tick STORED DUE` — STORED accounts of which DUE are due; times the claim (the
//!   database part of a tick) and a full tick with confirmed publishing.
//! * `drop-queues` — deletes the queues of `PIPES_QUEUE_PREFIX`.

// Tests and tools read the clock directly (clippy.toml keeps the library to `pipes::time::now`).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use pipes::config::Config;
use pipes::crypto::aad;
use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};
use pipes::keys::columns;
use pipes_workers::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use pipes_workers::lapin::types::{AMQPValue, FieldTable};
use pipes_workers::lapin::BasicProperties;
use pipes_workers::{Broker, Publisher};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<()> {
    pipes::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_env()?;
    let db = PgPool::connect(&config.database_url).await?;
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("e2e") => e2e(&config, &db, arg(1, 100_000) as usize).await,
        Some("broker") => broker(&config, arg(1, 100_000) as usize, arg(2, 256) as usize, arg(3, 500) as u16).await,
        Some("tick") => tick(&config, &db, arg(1, 1_000_000) as i64, arg(2, 10_000) as i64).await,
        Some("drop-queues") => drop_queues(&config).await,
        _ => bail!("usage: refresh_bench e2e N | broker N [IN_FLIGHT] [PREFETCH] | tick STORED DUE | drop-queues"),
    }
}

/// Registers a demo provider as integration `bench` and returns the integration id.
async fn integration(config: &Config, db: &PgPool, demo: &DemoProvider) -> Result<String> {
    let secret = format!("secret-{}", ulid::Ulid::new());
    demo.register_client(ClientRegistration {
        client_id: "bench".into(),
        client_secret: secret.clone(),
        redirect_uris: vec![config.redirect_uri("bench")],
        auth_method: ClientAuthMethod::Basic,
    });
    let base = demo.base_url();
    let custom = serde_json::json!({
        "name": "Bench", "authorization_url": format!("{base}/authorize"), "token_url": format!("{base}/token"),
        "pkce_enabled": true, "request_scope_separator": " ", "authenticate_via": "basic_auth_header",
    });
    let id = pipes::ids::IdKind::Integration.new_id();
    let sealed = config.encryption_keys.seal_str(&secret, aad(columns::CLIENT_SECRET, &id))?;
    sqlx::query("TRUNCATE connected_accounts, integrations, events CASCADE").execute(db).await?;
    sqlx::query(
        "INSERT INTO integrations (id, slug, provider, scopes, client_id, client_secret_enc, redacted_secret, custom_provider)
         VALUES ($1, 'bench', 'bench', ARRAY['read'], 'bench', $2, '***', $3)",
    )
    .bind(&id)
    .bind(sealed)
    .bind(custom)
    .execute(db)
    .await?;
    Ok(id)
}

async fn e2e(config: &Config, db: &PgPool, n: usize) -> Result<()> {
    let (demo, _) =
        DemoProvider::spawn(DemoConfig { access_ttl: Duration::from_secs(3600), ..DemoConfig::default() }).await?;
    let integration_id = integration(config, db, &demo).await?;
    // Seeded due, but under a disabled integration, whose accounts the scheduler leaves
    // alone; enabling it starts the run. Their schedule rows are written once and
    // vacuumed, as in a deployment where accounts come due as time passes (and their
    // rows were written at their last refresh, an hour or more before). Making them due
    // with an UPDATE instead would leave 100,000 dead row versions in the accounts, the
    // schedule and their indexes for the run to wade through.
    sqlx::query("UPDATE integrations SET enabled = false WHERE id = $1").bind(&integration_id).execute(db).await?;
    let seeding = Instant::now();
    // Real grants at the provider, sealed under the app's keys and bound to their rows.
    // Due times are spread over the last minute, as the jitter in every real
    // `refresh_at` spreads them (a backlog after an outage looks the same).
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let (mut ids, mut users, mut access, mut refresh) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in chunk {
            let user = format!("user{i}");
            let issued = demo.issue_grant("bench", &user, &["read"])?;
            let id = pipes::ids::IdKind::ConnectedAccount.new_id();
            access.push(config.encryption_keys.seal_str(&issued.access_token, aad(columns::ACCESS_TOKEN, &id))?);
            let refresh_token = issued.refresh_token.context("demo grants carry a refresh token")?;
            refresh.push(config.encryption_keys.seal_str(&refresh_token, aad(columns::REFRESH_TOKEN, &id))?);
            ids.push(id);
            users.push(user);
        }
        sqlx::query(
            "WITH accounts AS (
               INSERT INTO connected_accounts (id, integration_id, user_id, state, access_token_enc, refresh_token_enc,
                 expires_at, scopes, token_version)
               SELECT a.id, $5, a.user_id, 'connected', a.access, a.refresh, now() + interval '1 hour',
                 ARRAY['read'], nextval('token_versions')
               FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]) AS a(id, user_id, access, refresh)
               RETURNING id, integration_id)
             INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
             SELECT id, integration_id, now() - interval '1 second' - random() * interval '1 minute' FROM accounts",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&access)
        .bind(&refresh)
        .bind(&integration_id)
        .execute(db)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE connected_accounts, refresh_schedule").execute(db).await?;
    eprintln!("seeded {n} accounts in {:.1}s", seeding.elapsed().as_secs_f64());

    // Nothing can be claimed before this commits, so the clock starts then.
    let arming = Instant::now();
    sqlx::query("UPDATE integrations SET enabled = true WHERE id = $1").bind(&integration_id).execute(db).await?;
    let armed = arming.elapsed();
    let started = Instant::now();
    let cpu_at_start = own_cpu_seconds();
    eprintln!("armed: {n} accounts due");
    // The provider's count is read every 10 ms (it is in this process), so the end is
    // seen within that; progress is printed once a second.
    let mut last = (Instant::now(), 0u64);
    let mut first = None;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let done = demo.refreshes();
        if done > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        let finished = done as usize >= n;
        if finished || last.0.elapsed() >= Duration::from_secs(1) {
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprintln!("  {:>6.1}s  provider refreshes {done:>7}  ({rate:>6.0}/s)", started.elapsed().as_secs_f64());
            last = (Instant::now(), done);
        }
        if finished {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("not finished after 30 minutes");
        }
    }
    // Done when every new token is in PostgreSQL (the worker writes Redis right after).
    loop {
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM refresh_schedule WHERE refresh_at > now() + interval '10 minutes'",
        )
        .fetch_one(db)
        .await?;
        if stored as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = demo.stats();
    println!("e2e_accounts={n}");
    println!("e2e_seconds={elapsed:.2}");
    println!("e2e_rate={:.0}", n as f64 / elapsed);
    println!("e2e_arm_seconds={:.2}", armed.as_secs_f64());
    // The scheduler's first tick after the clock started, its first claim and publish.
    println!("e2e_first_refresh_seconds={:.2}", first.unwrap_or_default().as_secs_f64());
    println!("e2e_reuse_detected={}", stats.reuse_detected);
    println!("e2e_provider_refreshes={}", stats.refreshes);
    // This process is the provider while the clock runs (and polls PostgreSQL once a second).
    let cpu = own_cpu_seconds() - cpu_at_start;
    println!("cpu_provider_s={cpu:.1} ({:.0} us/refresh)", cpu * 1e6 / n as f64);
    Ok(())
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised name: state is the 3rd field, utime and stime the 14th and 15th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    (ticks(14) + ticks(15)) / 100.0
}

/// `in_flight` publishes await their confirm at once; the consumer's prefetch is `prefetch`.
async fn broker(config: &Config, n: usize, in_flight: usize, prefetch: u16) -> Result<()> {
    let broker = Broker::connect(&config.amqp_url, "pipes-bench").await?;
    let queue = format!("{}.bench.raw", config.queue_prefix);
    let setup = broker.channel().await?;
    let _ = setup.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let setup = broker.channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    setup.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args).await?;

    let consumer_channel = broker.channel().await?;
    consumer_channel.basic_qos(prefetch, BasicQosOptions { global: false }).await?;
    let mut consumer = consumer_channel
        .basic_consume(queue.as_str().into(), "bench".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let Some(delivery) = consumer.next().await else { break };
            delivery?.ack(BasicAckOptions::default()).await?;
            got += 1;
        }
        anyhow::Ok(started.elapsed())
    });
    let channel = broker.channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = br#"{"type":"refresh.v1","account_id":"data_installation_01JBENCHBENCHBENCHBENCHBENC","integration_id":"data_integration_01JBENCHBENCHBENCHBENCHBENC"}"#;
    let mut pending = FuturesUnordered::new();
    for _ in 0..n {
        if pending.len() >= in_flight.max(1) {
            if let Some(confirm) = pending.next().await {
                let confirm: Result<_, pipes_workers::lapin::Error> = confirm;
                confirm?;
            }
        }
        let properties = BasicProperties::default().with_delivery_mode(2);
        let publish = channel.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            body,
            properties,
        );
        pending.push(async move { publish.await?.await });
    }
    while let Some(confirm) = pending.next().await {
        confirm?;
    }
    let published = started.elapsed();
    let consumed = consuming.await??;
    let _ = setup.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    println!("broker_messages={n}");
    println!("broker_publish_rate={:.0}", n as f64 / published.as_secs_f64());
    println!("broker_rate={:.0}", n as f64 / consumed.as_secs_f64());
    Ok(())
}

/// Deletes every claim, as refreshes do, and vacuums them away, as autovacuum does
/// long before an account comes due again.
async fn unclaim(db: &PgPool) -> Result<()> {
    sqlx::query("DELETE FROM refresh_claims").execute(db).await?;
    sqlx::query("VACUUM refresh_claims").execute(db).await?;
    Ok(())
}

async fn tick(config: &Config, db: &PgPool, stored: i64, due: i64) -> Result<()> {
    let demo = DemoProvider::new(DemoConfig { base_url: "http://127.0.0.1:9".into(), ..DemoConfig::default() });
    let integration_id = integration(config, db, &demo).await?;
    // Placeholder ciphertexts: the claim never decrypts.
    sqlx::query(
        "WITH accounts AS (
           INSERT INTO connected_accounts (id, integration_id, user_id, state, access_token_enc, refresh_token_enc, expires_at)
           SELECT 'data_installation_bench' || g, $1, 'user' || g, 'connected', '\\x00'::bytea, '\\x00'::bytea,
                  now() + interval '1 day'
           FROM generate_series(1, $2) g
           RETURNING id)
         INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
         SELECT 'data_installation_bench' || g, $1,
                CASE WHEN g % ($2 / $3) = 0 THEN now() - random() * interval '5 minutes' ELSE now() + interval '1 hour' + random() * interval '1 day' END
         FROM generate_series(1, $2) g WHERE 'data_installation_bench' || g IN (SELECT id FROM accounts)",
    )
    .bind(&integration_id)
    .bind(stored)
    .bind(due)
    .execute(db)
    .await?;
    sqlx::query("VACUUM ANALYZE connected_accounts, refresh_schedule").execute(db).await?;

    let cancel = CancellationToken::new();
    let state = pipes::state::AppState::new(config.clone(), cancel.clone())?;
    let broker = Broker::connect(&config.amqp_url, "pipes-bench").await?;
    let topology = pipes::queues::topology(config);
    topology.declare(&broker.channel().await?).await?;
    let publisher = Publisher::new(&broker);
    let (mut claims, mut ticks) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        unclaim(db).await?;
        let started = Instant::now();
        use pipes::store::schedule::{claim, new_claim_id, WalkKey, BATCH};
        let (mut claimed, mut cursor) = (0, WalkKey::before(chrono::DateTime::UNIX_EPOCH));
        loop {
            let batch = claim(db, config.requeue_after, BATCH, &cursor, &new_claim_id()).await?;
            claimed += batch.claimed.len() as i64;
            let more = batch.more(BATCH);
            match batch.walked_to {
                Some(to) if more => cursor = to,
                _ => break,
            }
        }
        claims.push(started.elapsed());
        anyhow::ensure!(claimed == due, "claimed {claimed}, expected {due}");

        unclaim(db).await?;
        let tick = pipes::scheduler::Tick {
            state: state.clone(),
            publisher: publisher.clone(),
            topology: topology.clone(),
            now: chrono::Utc::now(),
            cancel: cancel.clone(),
        };
        let started = Instant::now();
        pipes::scheduler::claim::Claims::default().enqueue_due(tick).await?;
        ticks.push(started.elapsed());
        let channel = broker.channel().await?;
        channel.queue_purge(topology.work_queue(pipes::queues::REFRESH).as_str().into(), Default::default()).await?;
    }
    claims.sort();
    ticks.sort();
    println!("tick_stored={stored}");
    println!("tick_due={due}");
    println!("tick_claim_ms={:.1}", claims[claims.len() / 2].as_secs_f64() * 1000.0);
    println!("tick_full_ms={:.1}", ticks[ticks.len() / 2].as_secs_f64() * 1000.0);
    cancel.cancel();
    drop_queues(config).await
}

/// Deletes the queues of `PIPES_QUEUE_PREFIX` (the roles declared them during the run).
async fn drop_queues(config: &Config) -> Result<()> {
    let broker = Broker::connect(&config.amqp_url, "pipes-bench").await?;
    for name in pipes::queues::topology(config).queue_names() {
        // A channel per queue: deleting a missing one closes the channel.
        if let Ok(channel) = broker.channel().await {
            let _ = channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
        }
    }
    Ok(())
}
