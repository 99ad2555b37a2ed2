//! Load for the controller benchmark (`bench/fleet_bench.py` runs it): simulated bots that speak
//! the real protocol over the real WebSocket (`Hello`, then a `Heartbeat` every interval, as
//! `recfleet-bot agent` does), and API traffic at a fixed rate. Latency is measured from each
//! request's scheduled time, so a slow controller cannot hide behind a slow client (no
//! coordinated omission). The controller's RSS and CPU are read from `/proc`, its processed
//! heartbeats from its own metrics. One JSON object on stdout says what was measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use recfleet_proto::protocol::{BotMessage, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
struct Args {
    /// The controller's base URL (`http://127.0.0.1:8080`).
    #[arg(long)]
    controller: String,
    /// The controller's pid, to read its RSS and CPU.
    #[arg(long)]
    controller_pid: u32,
    #[arg(long)]
    api_key: String,
    /// Simulated bots; bot `i` (from 0) is `<bot-prefix><i>` with token `<token-prefix><i>`,
    /// as the benchmark wrote them into the state database.
    #[arg(long, default_value_t = 10_000)]
    bots: usize,
    #[arg(long, default_value = "bench_bot_")]
    bot_prefix: String,
    #[arg(long, default_value = "bench_token_")]
    token_prefix: String,
    /// The bots' heartbeat interval (`recfleet-bot agent` sends one every 2 s).
    #[arg(long, default_value_t = 2.0)]
    heartbeat_secs: f64,
    /// Connections opened at once while the bots connect.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// After the last bot connected, how long to wait before measuring.
    #[arg(long, default_value_t = 10.0)]
    settle_secs: f64,
    /// API requests per second during the measurement.
    #[arg(long, default_value_t = 5_000)]
    rps: u32,
    #[arg(long, default_value_t = 30.0)]
    duration_secs: f64,
    /// HTTP connections the API traffic is spread over.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// API paths, requested in turn.
    #[arg(long = "path", default_values_t = ["/v1/recordings?limit=20".to_string(), "/v1/pool".to_string()])]
    paths: Vec<String>,
}

/// What every bot task counts.
#[derive(Debug, Default)]
struct BotCounters {
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    heartbeats: AtomicU64,
}

/// Resident memory and CPU time (user + system) of `pid`.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the controller is gone")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').context("a stat line")? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("the controller is gone")?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")?;
    Ok((rss_kib * 1024, Duration::from_secs_f64((utime + stime) / ticks_per_sec)))
}

/// The sum of a counter's series in the controller's `/metrics`, for the given label pair.
async fn scrape(http: &reqwest::Client, base: &str, name: &str, label: &str) -> anyhow::Result<f64> {
    let text = http.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await?;
    Ok(text.lines().filter(|l| l.starts_with(name) && l.contains(label)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}

async fn run_bot(args: Arc<Args>, i: usize, counters: Arc<BotCounters>, gate: Arc<tokio::sync::Semaphore>) {
    let bot_id = format!("{}{i}", args.bot_prefix);
    let ws_base = args.controller.replacen("http", "ws", 1);
    let mut request = match format!("{ws_base}/v1/bots/connect?bot_id={bot_id}").into_client_request() {
        Ok(r) => r,
        Err(_) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let bearer = format!("Bearer {}{i}", args.token_prefix).parse().expect("a header value");
    request.headers_mut().insert("authorization", bearer);
    let permit = gate.acquire().await.expect("never closed");
    let socket = tokio_tungstenite::connect_async(request).await;
    drop(permit);
    let Ok((socket, _)) = socket else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (mut tx, mut rx) = socket.split();
    let hello = BotMessage::Hello { bot_id, protocol: PROTOCOL_VERSION, ready: true, recording_id: None };
    if tx.send(Message::text(serde_json::to_string(&hello).expect("serializes"))).await.is_err() {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    counters.connected.fetch_add(1, Ordering::Relaxed);
    let heartbeat =
        serde_json::to_string(&BotMessage::Heartbeat { capture: None, cpu_cores: Some(0.01), rss_bytes: Some(50 << 20), upload: None })
            .expect("serializes");
    // Spread the bots over the interval, as independently started bots are.
    let every = Duration::from_secs_f64(args.heartbeat_secs);
    let offset = every.mul_f64((i % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tx.send(Message::text(heartbeat.clone())).await.is_err() {
                    break;
                }
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            frame = rx.next() => match frame {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).timeout(Duration::from_secs(10)).build()?;
    let (rss_before, _) = proc_usage(args.controller_pid)?;

    // The bots connect.
    let counters = Arc::new(BotCounters::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let connecting = Instant::now();
    for i in 0..args.bots {
        tokio::spawn(run_bot(args.clone(), i, counters.clone(), gate.clone()));
    }
    let deadline = connecting + Duration::from_secs(120);
    loop {
        let settled = counters.connected.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
        if settled as usize >= args.bots {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {settled} of {} bots connected or failed within 120 s", args.bots);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    let connected = counters.connected.load(Ordering::Relaxed);
    eprintln!("fleet-load: {connected} bots connected in {connect_secs:.1} s ({} failed)", counters.failed.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let (rss_with_bots, _) = proc_usage(args.controller_pid)?;

    // API traffic at a fixed rate, beside the bots' heartbeats.
    let processed_before = scrape(&http, &args.controller, "recfleet_bot_messages_total", "kind=\"heartbeat\"").await?;
    let sent_before = counters.heartbeats.load(Ordering::Relaxed);
    let (_, cpu_before) = proc_usage(args.controller_pid)?;
    let started = Instant::now();
    let total = (args.rps as f64 * args.duration_secs) as u64;
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(AtomicU64::new(0));
    // A fixed set of connections, as wrk2 keeps: connection `w` sends requests w, w + C, …, each
    // at its scheduled time or at once when behind, its latency counted from the schedule.
    let mut workers = tokio::task::JoinSet::new();
    let auth = format!("Bearer {}", args.api_key);
    for w in 0..args.connections as u64 {
        let (http, auth, latencies, errors, args) = (http.clone(), auth.clone(), latencies.clone(), errors.clone(), args.clone());
        workers.spawn(async move {
            let mut n = w;
            while n < total {
                let due = started + Duration::from_secs_f64(n as f64 / args.rps as f64);
                tokio::time::sleep_until(due.into()).await;
                let url = format!("{}{}", args.controller, args.paths[n as usize % args.paths.len()]);
                let ok = match http.get(url).header("authorization", &auth).send().await {
                    Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
                    Ok(_) | Err(_) => false,
                };
                if ok {
                    latencies.lock().expect("not poisoned").push(due.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                n += args.connections as u64;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let window = started.elapsed().as_secs_f64();
    let (rss_after, cpu_after) = proc_usage(args.controller_pid)?;
    let processed_after = scrape(&http, &args.controller, "recfleet_bot_messages_total", "kind=\"heartbeat\"").await?;
    let sent = counters.heartbeats.load(Ordering::Relaxed) - sent_before;

    let mut lat = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    lat.sort_unstable();
    let per_bot = if connected > 0 { (rss_with_bots.saturating_sub(rss_before)) as f64 / connected as f64 } else { f64::NAN };
    let report = serde_json::json!({
        "bots": args.bots,
        "bots_connected": connected,
        "bots_failed": counters.failed.load(Ordering::Relaxed),
        "bots_closed": counters.closed.load(Ordering::Relaxed),
        "connect_secs": connect_secs,
        "rss_before_bytes": rss_before,
        "rss_with_bots_bytes": rss_with_bots,
        "rss_after_bytes": rss_after,
        "rss_per_bot_bytes": per_bot,
        "window_secs": window,
        "api_target_rps": args.rps,
        "api_done": lat.len(),
        "api_errors": errors.load(Ordering::Relaxed),
        "api_rps": lat.len() as f64 / window,
        "api_p50_ms": percentile(&lat, 50.0),
        "api_p99_ms": percentile(&lat, 99.0),
        "api_max_ms": lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        "heartbeats_sent_per_sec": sent as f64 / window,
        "heartbeats_processed_per_sec": (processed_after - processed_before) / window,
        "controller_cpu_cores": (cpu_after - cpu_before).as_secs_f64() / window,
    });
    println!("{report}");
    Ok(())
}
