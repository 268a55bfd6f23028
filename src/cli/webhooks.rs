//! `pipes webhooks add | list | remove | replay`.

use std::time::Duration;

use clap::Subcommand;

use crate::config::Config;
use crate::events::{EventKind, Family};
use crate::outbound as target;
use crate::webhooks::endpoints;
use crate::webhooks::relay::Relay;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Adds an endpoint and prints its signing secret once, as the last line of stdout.
    Add {
        /// Where deliveries are POSTed (http or https).
        url: String,
        /// Event types to send (repeat or comma-separate); default: all of them.
        #[arg(long = "event", value_delimiter = ',')]
        events: Vec<String>,
    },
    /// Lists endpoints (secrets redacted).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Removes an endpoint and its delivery log.
    Remove { id: String },
    /// Re-sends one event (same event id) to every enabled endpoint that wants it,
    /// or every delivery that failed within `--failed-since`.
    Replay {
        /// The event id (`event_…`).
        #[arg(required_unless_present = "failed_since", conflicts_with = "failed_since")]
        event_id: Option<String>,
        /// How far back to look for failed deliveries, e.g. 24h.
        #[arg(long, value_parser = humantime::parse_duration)]
        failed_since: Option<Duration>,
    },
}

pub async fn run(config: &Config, cmd: WebhooksCommand) -> anyhow::Result<()> {
    let db = crate::db::pool(&config.database_url, 2)?;
    let ring = &config.encryption_keys;
    match cmd {
        WebhooksCommand::Add { url, events } => {
            let url = target::check_for_save(&url, config.allow_private_network)
                .await
                .map_err(|problem| anyhow::anyhow!("the URL {problem}"))?;
            let events = if events.is_empty() {
                // Every event, under the first family's names.
                let mut all: Vec<String> = EventKind::ALL.map(|k| k.name(Family::ConnectedAccount).to_owned()).to_vec();
                all.dedup();
                all
            } else {
                events
                    .iter()
                    .map(|e| {
                        let e = e.trim();
                        EventKind::known(e)
                            .then(|| e.to_owned())
                            .ok_or_else(|| anyhow::anyhow!("unknown event type `{e}`"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let endpoint = endpoints::create(&db, ring, url.as_str(), &events).await?;
            println!(
                "created webhook endpoint {} for {} ({}); its secret is shown once:",
                endpoint.id,
                endpoint.endpoint_url,
                endpoint.events.join(", ")
            );
            println!("{}", endpoint.secret.expose());
        }
        WebhooksCommand::List { json } => {
            let all = endpoints::all(&db, ring).await?;
            if json {
                let items: Vec<_> = all.iter().map(|e| e.to_json(false)).collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                println!("{:<30} {:<9} {:<40} EVENTS", "ID", "STATUS", "URL");
                for e in all {
                    println!("{:<30} {:<9} {:<40} {}", e.id, e.status.as_str(), e.endpoint_url, e.events.join(","));
                }
            }
        }
        WebhooksCommand::Remove { id } => {
            anyhow::ensure!(endpoints::delete(&db, &id).await?, "no webhook endpoint with id `{id}`");
            println!("removed webhook endpoint {id}");
        }
        WebhooksCommand::Replay { event_id, failed_since } => {
            let broker = pipes_workers::Broker::connect(&config.amqp_url, "pipes-cli").await?;
            let relay = Relay::new(db.clone(), &broker, config);
            match (event_id, failed_since) {
                (Some(id), _) => {
                    let n = relay.replay_event(&id).await?.ok_or_else(|| anyhow::anyhow!("no event with id `{id}`"))?;
                    println!("queued {n} deliveries of {id}");
                }
                (None, Some(since)) => {
                    let n = relay.replay_failed_since(since).await?;
                    println!("queued {n} failed deliveries from the last {}", humantime::format_duration(since));
                }
                (None, None) => anyhow::bail!("give an EVENT_ID or --failed-since DURATION"),
            }
        }
    }
    Ok(())
}
