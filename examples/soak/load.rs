//! The load generator: token reads at a steady rate over random accounts (open loop: a slow
//! answer does not slow the arrivals), every answer classified against the provider that
//! issued the token. Writes `reads.jsonl` (one line per second of counts by class) and
//! `reads_summary.json` (totals, latency percentiles).
//!
//! Classes: `ok` (200 active, the token is live at the provider for the right user with at
//! least `min_validity` left there, and the wire `expires_at` is at least `min_validity` after
//! the answer arrived); `short_expires_at` (wire `expires_at` closer than that);
//! `short_at_provider`, `dead_at_provider`, `wrong_user` (what the provider says of the
//! token); `inactive_<error>` (200 `active: false`); `http_<status>_<code>`; `transport`
//! (no answer within 10 s); `not_sent` (more than `MAX_IN_FLIGHT` outstanding).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use pipes::demo_provider::DemoProvider;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::epoch;

const MAX_IN_FLIGHT: usize = 4_000;

pub struct Settings {
    pub serve_url: String,
    pub key: String,
    pub accounts: usize,
    pub rate: u32,
    pub duration: Duration,
    pub min_validity: Duration,
}

struct Sample {
    second: u64,
    class: String,
    latency: Duration,
}

pub async fn run(settings: Settings, demo: DemoProvider, dir: &Path) -> Result<()> {
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(MAX_IN_FLIGHT).build()?;
    let url = Arc::new(format!("{}/data-integrations/{}/token", settings.serve_url, crate::provider::SLUG));
    let auth = Arc::new(format!("Bearer {}", settings.key));
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let started = Instant::now();
    let start_epoch = epoch();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let min_validity = settings.min_validity;

    // Arrivals: `rate / 100` requests every 10 ms, for `duration`.
    let sender = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let per_tick = (settings.rate / 100).max(1);
            while started.elapsed() < settings.duration {
                tick.tick().await;
                for _ in 0..per_tick {
                    let second = started.elapsed().as_secs();
                    if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= MAX_IN_FLIGHT {
                        let _ = tx.send(Sample { second, class: "not_sent".into(), latency: Duration::ZERO });
                        continue;
                    }
                    let user = format!("user{}", rand::thread_rng().gen_range(0..settings.accounts));
                    let (client, url, auth, tx, demo, in_flight) =
                        (client.clone(), url.clone(), auth.clone(), tx.clone(), demo.clone(), in_flight.clone());
                    in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let answer = client
                            .post(url.as_str())
                            .header("authorization", auth.as_str())
                            .header("content-type", "application/json")
                            .body(format!(r#"{{"user_id":"{user}"}}"#))
                            .send()
                            .await;
                        let class = match answer {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                match response.bytes().await {
                                    Ok(body) => classify(status, &body, &user, &demo, min_validity),
                                    Err(_) => "transport".to_owned(),
                                }
                            }
                            Err(_) => "transport".to_owned(),
                        };
                        in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = tx.send(Sample { second, class, latency: sent.elapsed() });
                    });
                }
            }
        })
    };
    drop(tx);

    let mut seconds: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies: Vec<f32> = Vec::with_capacity(settings.rate as usize * settings.duration.as_secs() as usize);
    let mut max_ms: BTreeMap<u64, f32> = BTreeMap::new();
    while let Some(sample) = rx.recv().await {
        let ms = sample.latency.as_secs_f32() * 1000.0;
        if sample.class != "not_sent" {
            latencies.push(ms);
            let max = max_ms.entry(sample.second).or_default();
            *max = max.max(ms);
        }
        *seconds.entry(sample.second).or_default().entry(sample.class.clone()).or_default() += 1;
        *totals.entry(sample.class).or_default() += 1;
    }
    sender.await?;

    let mut file = tokio::fs::File::create(dir.join("reads.jsonl")).await?;
    for (second, counts) in &seconds {
        let line =
            serde_json::json!({"t": start_epoch + *second as f64, "counts": counts, "max_ms": max_ms.get(second)});
        file.write_all(format!("{line}\n").as_bytes()).await?;
    }
    latencies.sort_by(f32::total_cmp);
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    let summary = serde_json::json!({
        "start": start_epoch, "seconds": started.elapsed().as_secs_f64(), "totals": totals,
        "sent": latencies.len(), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999), "max_ms": latencies.last(),
    });
    tokio::fs::write(dir.join("reads_summary.json"), serde_json::to_vec_pretty(&summary)?).await?;
    eprintln!("reads: {summary}");
    Ok(())
}

/// One answer's class (see the module header).
fn classify(status: u16, body: &[u8], user: &str, demo: &DemoProvider, min_validity: Duration) -> String {
    let received = Utc::now();
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if status != 200 {
        let code = json.get("code").and_then(|c| c.as_str()).unwrap_or("none");
        return format!("http_{status}_{code}");
    }
    if json.get("active").and_then(|a| a.as_bool()) != Some(true) {
        let error = json.get("error").and_then(|e| e.as_str()).unwrap_or("none");
        return format!("inactive_{error}");
    }
    let token = json.pointer("/access_token/access_token").and_then(|t| t.as_str()).unwrap_or_default();
    let expires_at = json
        .pointer("/access_token/expires_at")
        .and_then(|e| e.as_str())
        .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
        .map(|e| e.with_timezone(&Utc));
    let min = chrono::Duration::from_std(min_validity).unwrap_or_default();
    match demo.access_token_info(token) {
        None => "dead_at_provider".into(),
        Some((owner, _)) if owner != user => "wrong_user".into(),
        Some((_, Some(left))) if left < min_validity => "short_at_provider".into(),
        Some(_) if expires_at.is_none_or(|at| at < received + min) => "short_expires_at".into(),
        Some(_) => "ok".into(),
    }
}
