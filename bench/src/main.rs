//! `paybridge-bench`: starts its own parts — `paybridge serve` and `paybridge gateway` (child
//! processes of the release binary), a throwaway PostgreSQL and a Stripe stand-in — drives load,
//! prints a table and writes every figure as JSON. See bench/README.md.
//!
//! ```sh
//! cargo run --release --manifest-path bench/Cargo.toml -- --out bench.json
//! ```
//!
//! Every figure is the median of `--runs` runs with its spread (min–max); all parts run on this
//! machine side by side, so compare ratios rather than absolute numbers across machines.

mod load;
mod procs;
mod report;
mod stand_in;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};

use load::{Created, HttpCall, Sample};
use procs::{ChildGuard, Parts, Postgres};
use report::{Figure, Report};
use stand_in::{Counts, StandIn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StripeMode {
    /// The fast canned stand-in inside the bench (load figures).
    Canned,
    /// localstripe behind the compat layer: the realistic flow at a low rate.
    Localstripe,
}

/// Benchmarks paybridge's hot paths against its own parts.
#[derive(Debug, Parser)]
#[command(name = "paybridge-bench")]
struct Args {
    /// Write every figure as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Which Stripe to run against.
    #[arg(long, value_enum, default_value = "canned")]
    stripe: StripeMode,
    /// Fixed latency of the canned Stripe stand-in, in milliseconds.
    #[arg(long, default_value_t = 1)]
    stripe_latency_ms: u64,
    /// Runs per figure (the median is reported, with min–max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent gRPC calls for CreateInvoicePayment (closed loop).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// HTTP connections for the gateway's return and webhook routes.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offered rate of the open-loop CreateInvoicePayment run (per second; 0 skips it).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Skip the PostgreSQL part.
    #[arg(long)]
    no_postgres: bool,
    /// The paybridge binary to measure, e.g. an older release build to alternate runs with
    /// (default: the repository's own, built first by `cargo build --release`).
    #[arg(long)]
    paybridge: Option<PathBuf>,
    /// Only the CreateInvoicePayment runs (e.g. for profiling).
    #[arg(long)]
    create_only: bool,
    /// Runs `paybridge serve` under this command, e.g.
    /// `"valgrind --tool=callgrind --callgrind-out-file=/tmp/serve.%p.callgrind"`.
    #[arg(long)]
    serve_wrapper: Option<String>,
    /// An extra setting for `paybridge serve`, e.g. `PAYBRIDGE_SETTLED_CACHE_SIZE=0` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    serve_env: Vec<String>,
    /// The gateway reaches the core over TCP instead of the core's Unix socket (the chart's
    /// layout, and the default).
    #[arg(long)]
    gateway_core_over_tcp: bool,
    /// An extra setting for `paybridge gateway`, e.g. `TOKIO_WORKER_THREADS=1` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    gateway_env: Vec<String>,
    /// Do not run `cargo build --release --bin paybridge` in the repository first; measure the
    /// binary it last built.
    #[arg(long)]
    no_build: bool,
}

/// Payments whose returns and webhooks the HTTP runs use.
const WEBHOOK_POOL: usize = 2000;
/// Unsettled payments the returns cycle through: more than a second of returns at 15,000/s.
const UNSETTLED_POOL_MIN: usize = 15_000;
/// Payments per `stripe_calls_per_payment` scenario.
const FLOW_PAYMENTS: usize = 100;

impl Args {
    /// How the gateway reaches the core in this run, as the report names it.
    fn gateway_to_core(&self) -> &'static str {
        if self.gateway_core_over_tcp {
            "tcp"
        } else {
            "unix socket"
        }
    }
}

/// `KEY=VALUE` settings of `option`, as pairs.
fn settings(option: &str, settings: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    settings
        .iter()
        .map(|setting| {
            setting
                .split_once('=')
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .with_context(|| format!("{option} {setting:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seconds_ok = args.seconds.is_finite() && args.seconds > 0.0;
    if args.runs == 0 || !seconds_ok || args.concurrency.contains(&0) || args.connections == 0 {
        bail!("--runs, --seconds, --connections and each --concurrency must be above 0");
    }
    // The repository this bench lives in: its scripts, fixtures and the paybridge package.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench package has no parent directory")?
        .to_path_buf();
    let paybridge = match &args.paybridge {
        Some(path) => path.clone(),
        None if args.no_build => procs::release_binary(&repo),
        None => procs::build_release(&repo)?,
    };
    if !paybridge.exists() {
        let hint = match args.paybridge {
            Some(_) => "check --paybridge".to_owned(),
            None => format!("run `cargo build --release` in {}", repo.display()),
        };
        bail!("{} does not exist: {hint}", paybridge.display());
    }
    eprintln!("measuring {}", paybridge.display());
    let work = std::env::temp_dir().join(format!("paybridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut parts = Parts::new(paybridge, repo, work.clone())?;
    parts.serve_env = settings("--serve-env", &args.serve_env)?;
    parts.gateway_env = settings("--gateway-env", &args.gateway_env)?;
    parts.core_socket = !args.gateway_core_over_tcp;
    parts.serve_wrapper = args
        .serve_wrapper
        .as_deref()
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match args.stripe {
            StripeMode::Canned => canned(&args, &parts).await,
            StripeMode::Localstripe => localstripe(&args, &parts).await,
        }
    });
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    report.print();
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// The largest resident set seen of each child while load runs.
#[derive(Debug, Default)]
struct RssPeak {
    serve: f64,
    gateway: f64,
    together: f64,
}

/// Samples VmRSS of serve and gateway every 50 ms until dropped.
struct RssSampler {
    peak: Arc<Mutex<RssPeak>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(serve: &ChildGuard, gateway: &ChildGuard) -> RssSampler {
        let peak = Arc::new(Mutex::new(RssPeak::default()));
        let (serve_pid, gateway_pid) = (serve.pid(), gateway.pid());
        let shared = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let s = rss_of(serve_pid).unwrap_or(0.0);
                let g = rss_of(gateway_pid).unwrap_or(0.0);
                {
                    let mut peak = shared.lock().unwrap();
                    peak.serve = peak.serve.max(s);
                    peak.gateway = peak.gateway.max(g);
                    peak.together = peak.together.max(s + g);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssSampler { peak, task }
    }

    fn finish(self) -> RssPeak {
        self.task.abort();
        std::mem::take(&mut *self.peak.lock().unwrap())
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat` (100 ticks/s).
fn cpu_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds a process and its live children have used (PostgreSQL: the server and its
/// sessions, one process each).
fn cpu_with_children(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_of(&pid.to_string()) + children.split_whitespace().map(cpu_of).sum::<f64>()
}

/// CPU used so far by serve, gateway, the bench itself and the database server (0 on SQLite,
/// which runs inside serve).
fn cpu_now(stack: &Stack) -> [f64; 4] {
    [
        cpu_of(&stack.serve.pid().to_string()),
        cpu_of(&stack.gateway.pid().to_string()),
        cpu_of("self"),
        stack.database_pid.map_or(0.0, cpu_with_children),
    ]
}

/// Records what the figure's runs cost in CPU and where resident memory stood after them.
fn annotate(figure: &mut Figure, stack: &Stack, cpu_before: [f64; 4]) {
    let after = cpu_now(stack);
    figure.cpu_s = Some(std::array::from_fn(|i| after[i] - cpu_before[i]));
    figure.rss_after = Some([
        rss_of(stack.serve.pid()).unwrap_or(0.0),
        rss_of(stack.gateway.pid()).unwrap_or(0.0),
    ]);
}

fn rss_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Everything about one running serve + gateway pair.
struct Stack {
    serve: ChildGuard,
    gateway: ChildGuard,
    gateway_addr: SocketAddr,
    clients: Vec<load::Client>,
    /// The PostgreSQL server's main process, when the stack runs on one.
    database_pid: Option<u32>,
}

async fn start_stack(
    parts: &Parts,
    database_url: &str,
    stripe: &str,
    database_pid: Option<u32>,
) -> anyhow::Result<Stack> {
    let gateway_addr = procs::free_addr()?;
    let (serve, grpc, _) = parts.serve(database_url, stripe, gateway_addr).await?;
    let gateway = parts.gateway(gateway_addr, grpc).await?;
    let clients = load::grpc_clients(grpc, procs::TENANT_TOKEN, 4).await?;
    Ok(Stack {
        serve,
        gateway,
        gateway_addr,
        clients,
        database_pid,
    })
}

async fn canned(args: &Args, parts: &Parts) -> anyhow::Result<Report> {
    let started = Instant::now();
    let warmup = Duration::from_millis(500);
    let seconds = Duration::from_secs_f64(args.seconds);
    let stand_in = StandIn::start(Duration::from_millis(args.stripe_latency_ms)).await?;
    let mut report = Report::new(
        args.runs,
        args.seconds,
        args.stripe_latency_ms,
        "canned",
        args.gateway_to_core(),
    );

    // Start to SERVING on a fresh SQLite file (migrations included), several times.
    eprintln!("startup: {} fresh starts on SQLite", args.runs.max(3));
    let mut startup = Vec::new();
    for i in 0..args.runs.max(3) {
        let db = format!(
            "sqlite:{}",
            parts.work.join(format!("startup-{i}.db")).display()
        );
        let (mut serve, _, took) = parts
            .serve(&db, &stand_in.base_url(), procs::free_addr()?)
            .await?;
        startup.push(took.as_secs_f64() * 1000.0);
        serve.stop(Duration::from_secs(5));
    }
    report.startup_ms = startup;

    let mut backends = vec![(
        "sqlite",
        format!("sqlite:{}", parts.work.join("bench.db").display()),
        None,
    )];
    if !args.no_postgres {
        eprintln!("postgres: starting a throwaway cluster");
        let pg = Postgres::start(&parts.repo, parts.work.join("pg"))?;
        let url = pg.create_database("paybridge_bench")?;
        backends.push(("postgres", url, Some(pg)));
    }
    for (backend, url, pg) in &backends {
        eprintln!("{backend}: starting serve and gateway");
        let database_pid = pg.as_ref().and_then(Postgres::postmaster_pid);
        let stack = start_stack(parts, url, &stand_in.base_url(), database_pid).await?;
        let rss = RssSampler::start(&stack.serve, &stack.gateway);
        let mut created = Vec::new();

        // CreateInvoicePayment, closed loop at each concurrency.
        for &concurrency in &args.concurrency {
            let tag = format!("{backend}-c{concurrency}");
            let _ = load::create_closed_loop(
                &stack.clients,
                &format!("{tag}-warm"),
                concurrency,
                Duration::ZERO,
                warmup,
                &mut created,
            )
            .await;
            let before = stand_in.counts();
            let cpu = cpu_now(&stack);
            let mut figure = Figure::new(&format!("create_{backend}"), backend, concurrency);
            for run in 0..args.runs {
                eprintln!("{backend}: create c={concurrency} run {}", run + 1);
                let sample = load::create_closed_loop(
                    &stack.clients,
                    &format!("{tag}-r{run}"),
                    concurrency,
                    Duration::from_millis(200),
                    seconds,
                    &mut created,
                )
                .await;
                figure.push(sample);
            }
            figure.stripe = Some(stand_in.counts() - before);
            annotate(&mut figure, &stack, cpu);
            report.figures.push(figure);
        }
        if args.rate > 0.0 {
            let cpu = cpu_now(&stack);
            let mut figure = Figure::new(&format!("create_{backend}_open_loop"), backend, 0);
            figure.offered_rate = Some(args.rate);
            for run in 0..args.runs {
                eprintln!(
                    "{backend}: create open loop {} /s run {}",
                    args.rate,
                    run + 1
                );
                let sample = load::create_open_loop(
                    &stack.clients,
                    &format!("{backend}-open-r{run}"),
                    args.rate,
                    seconds,
                    &mut created,
                )
                .await;
                figure.push(sample);
            }
            annotate(&mut figure, &stack, cpu);
            report.figures.push(figure);
        }
        created.retain(|c| !c.intent_id.is_empty());
        if args.create_only {
            let peak = rss.finish();
            report
                .rss
                .push((backend.to_string(), peak.serve, peak.gateway, peak.together));
            continue;
        }
        // Each unsettled return must miss the 1 s read cache, so its pool has to outlast a second
        // of the fastest returns; top it up (untimed) when the timed creates made fewer.
        let mut fill = 0;
        while created.len() < WEBHOOK_POOL + UNSETTLED_POOL_MIN && fill < 20 {
            eprintln!("{backend}: creating payments for the return pools");
            load::create_closed_loop(
                &stack.clients,
                &format!("{backend}-fill{fill}"),
                64,
                Duration::ZERO,
                Duration::from_secs(2),
                &mut created,
            )
            .await;
            created.retain(|c| !c.intent_id.is_empty());
            fill += 1;
        }
        if created.len() < WEBHOOK_POOL + 1000 {
            bail!(
                "{backend}: only {} payments were created; too few for the HTTP runs",
                created.len()
            );
        }
        let (webhook_pool, unsettled_pool) = created.split_at(WEBHOOK_POOL);

        // Webhooks through the gateway: signed payment_intent.succeeded events, which settle the
        // pool (later events for the same payment are recorded and change nothing).
        for c in webhook_pool {
            stand_in.succeed(&c.intent_id);
        }
        let cpu = cpu_now(&stack);
        let mut figure = Figure::new("webhook", backend, args.connections);
        let mut stripe = Counts::default();
        for run in 0..args.runs {
            eprintln!("{backend}: webhook run {}", run + 1);
            let events = webhook_calls(
                &stand_in,
                webhook_pool,
                &format!("{backend}{run}"),
                (8000.0 * (args.seconds + 1.0)) as usize,
            );
            let before = stand_in.counts();
            let sample = load::http_closed_loop(
                stack.gateway_addr,
                Arc::new(events),
                false,
                200,
                args.connections,
                Duration::from_millis(200),
                seconds,
            )
            .await?;
            stripe = stripe + (stand_in.counts() - before);
            figure.push(sample);
        }
        figure.stripe = Some(stripe);
        annotate(&mut figure, &stack, cpu);
        report.figures.push(figure);

        // Returns of settled payments (no Stripe call) and of unsettled ones (one retrieve each:
        // the pool is large enough that each payment comes back after its cached read expired).
        for (name, pool) in [
            ("return_settled", webhook_pool),
            ("return_unsettled", unsettled_pool),
        ] {
            let calls: Arc<Vec<HttpCall>> = Arc::new(
                pool.iter()
                    .map(|c| HttpCall::Get(load::return_path(c)))
                    .collect(),
            );
            let mut figure = Figure::new(name, backend, args.connections);
            let before = stand_in.counts();
            let cpu = cpu_now(&stack);
            for run in 0..args.runs {
                eprintln!("{backend}: {name} run {}", run + 1);
                let sample = load::http_closed_loop(
                    stack.gateway_addr,
                    calls.clone(),
                    false,
                    303,
                    args.connections,
                    Duration::from_millis(200),
                    seconds,
                )
                .await?;
                figure.push(sample);
            }
            figure.stripe = Some(stand_in.counts() - before);
            figure.pool = Some(pool.len());
            annotate(&mut figure, &stack, cpu);
            report.figures.push(figure);
        }
        let peak = rss.finish();
        report
            .rss
            .push((backend.to_string(), peak.serve, peak.gateway, peak.together));

        // Stripe calls per paid payment: create, pay, webhook and return in both orders, and
        // without webhooks.
        if *backend == "sqlite" {
            for scenario in [
                FlowOrder::WebhookThenReturn,
                FlowOrder::ReturnThenWebhook,
                FlowOrder::NoWebhook,
            ] {
                let calls = paid_flow(&stack, &stand_in, scenario).await?;
                report.calls_per_payment.push((scenario.name(), calls));
            }
        }
        drop(stack);
    }
    let counts = stand_in.counts();
    report.stripe_total = Some(counts);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// `count` signed `payment_intent.succeeded` deliveries for the pool's payments, round robin.
fn webhook_calls(stand_in: &StandIn, pool: &[Created], tag: &str, count: usize) -> Vec<HttpCall> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (0..count)
        .filter_map(|i| {
            let created = &pool[i % pool.len()];
            let body = stand_in.event_for(&created.intent_id, &format!("evt_bench{tag}x{i}"))?;
            let signature =
                paybridge::adapters::stripe::webhook::sign(&body, procs::WEBHOOK_SECRET, now);
            Some(HttpCall::Post {
                path: "/stripe/webhook".to_owned(),
                headers: vec![
                    ("content-type", "application/json".to_owned()),
                    ("stripe-signature", signature),
                ],
                body: Bytes::from(body),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum FlowOrder {
    WebhookThenReturn,
    ReturnThenWebhook,
    NoWebhook,
}

impl FlowOrder {
    fn name(self) -> &'static str {
        match self {
            FlowOrder::WebhookThenReturn => "webhook_then_return",
            FlowOrder::ReturnThenWebhook => "return_then_webhook",
            FlowOrder::NoWebhook => "no_webhook",
        }
    }
}

/// Creates `FLOW_PAYMENTS` payments, pays them at the stand-in, delivers what Stripe would, and
/// returns the Stripe calls paybridge made per payment.
async fn paid_flow(stack: &Stack, stand_in: &StandIn, order: FlowOrder) -> anyhow::Result<f64> {
    eprintln!("stripe calls per paid payment: {}", order.name());
    let before = stand_in.counts();
    let mut client = stack.clients[0].clone();
    let mut done = 0;
    for n in 0..FLOW_PAYMENTS {
        let answer = client
            .create_invoice_payment(load::create_request(
                &format!("flow-{}", order.name()),
                n as u64,
            ))
            .await?
            .into_inner();
        let created = Created::from(answer);
        stand_in.succeed(&created.intent_id);
        let webhook = || async {
            let call = webhook_calls(
                stand_in,
                std::slice::from_ref(&created),
                &format!("flow{n}"),
                1,
            );
            load::http_send(stack.gateway_addr, &call[0])
                .await
                .map(|(s, _)| s)
        };
        let back_call = HttpCall::Get(load::return_path(&created));
        let browser = || load::http_send(stack.gateway_addr, &back_call);
        let (hook, back) = match order {
            FlowOrder::WebhookThenReturn => {
                let hook = webhook().await;
                (hook, browser().await.map(|(s, _)| s))
            }
            FlowOrder::ReturnThenWebhook => {
                let back = browser().await.map(|(s, _)| s);
                (webhook().await, back)
            }
            FlowOrder::NoWebhook => (Some(200), browser().await.map(|(s, _)| s)),
        };
        if hook == Some(200) && back == Some(303) {
            done += 1;
        }
    }
    if done != FLOW_PAYMENTS {
        bail!(
            "{}: only {done} of {FLOW_PAYMENTS} paid flows completed",
            order.name()
        );
    }
    let spent: Counts = stand_in.counts() - before;
    Ok(spent.requests as f64 / FLOW_PAYMENTS as f64)
}

async fn localstripe(args: &Args, parts: &Parts) -> anyhow::Result<Report> {
    let started = Instant::now();
    let stripe = procs::LocalStripe::start(&parts.repo)?;
    let stripe_addr: SocketAddr = stripe
        .base_url
        .trim_start_matches("http://")
        .parse()
        .context("localstripe address")?;
    let mut report = Report::new(
        args.runs,
        args.seconds,
        0,
        "localstripe",
        args.gateway_to_core(),
    );
    let db = format!("sqlite:{}", parts.work.join("localstripe.db").display());
    let stack = start_stack(parts, &db, &stripe.base_url, None).await?;
    // localstripe sends payment_intent.succeeded to the gateway about a second after the change.
    let register = form_call(
        "/_config/webhooks/bench",
        &[
            (
                "url",
                &format!("http://{}/stripe/webhook", stack.gateway_addr),
            ),
            ("secret", procs::WEBHOOK_SECRET),
        ],
        None,
    );
    match load::http_send(stripe_addr, &register).await {
        Some((200, _)) => {}
        other => bail!("registering the webhook at localstripe: {other:?}"),
    }
    let payments = 20 * args.runs;
    let mut create = Figure::new("create_sqlite_localstripe", "sqlite", 1);
    let mut back = Figure::new("return_localstripe", "sqlite", 1);
    let mut create_sample = Sample::default();
    let mut return_sample = Sample::default();
    let mut client = stack.clients[0].clone();
    for n in 0..payments {
        let sent = Instant::now();
        let mut request = load::create_request("localstripe", n as u64);
        // localstripe knows no `cus_bench`: one customer by email, created on the first payment
        // and reused after.
        request.customer = Some(paybridge::pb::v1::Customer {
            who: Some(paybridge::pb::v1::customer::Who::Email(
                "bench@example.com".to_owned(),
            )),
            name: "Bench Customer".to_owned(),
        });
        let answer = client.create_invoice_payment(request).await?.into_inner();
        create_sample
            .latencies
            .push(sent.elapsed().as_micros() as u32);
        create_sample.ok += 1;
        let created = Created::from(answer);
        // Stripe.js: a card PaymentMethod with the publishable key, then confirm.
        let method = form_call(
            "/v1/payment_methods",
            &[
                ("type", "card"),
                ("card[number]", "4242424242424242"),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2034"),
                ("card[cvc]", "123"),
                ("key", procs::PUBLISHABLE_KEY),
            ],
            None,
        );
        let (_, body) = load::http_send(stripe_addr, &method)
            .await
            .context("localstripe payment method")?;
        let method: serde_json::Value = serde_json::from_slice(&body)?;
        let method_id = method["id"]
            .as_str()
            .context("payment method id")?
            .to_owned();
        let confirm = form_call(
            &format!("/v1/payment_intents/{}/confirm", created.intent_id),
            &[
                ("payment_method", &method_id),
                ("client_secret", &created.client_secret),
                (
                    "return_url",
                    &format!("http://{}/payment/return", stack.gateway_addr),
                ),
                ("key", procs::PUBLISHABLE_KEY),
            ],
            None,
        );
        load::http_send(stripe_addr, &confirm)
            .await
            .context("localstripe confirm")?;
        // The browser comes back at once; the webhook follows about a second later.
        let sent = Instant::now();
        let status = load::http_send(
            stack.gateway_addr,
            &HttpCall::Get(load::return_path(&created)),
        )
        .await
        .map(|(s, _)| s);
        if status == Some(303) {
            return_sample.ok += 1;
            return_sample
                .latencies
                .push(sent.elapsed().as_micros() as u32);
        } else {
            return_sample.errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last webhooks arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let elapsed = started.elapsed().as_secs_f64();
    create_sample.seconds = elapsed;
    return_sample.seconds = elapsed;
    create.push(create_sample);
    back.push(return_sample);
    report.figures.push(create);
    report.figures.push(back);
    let requests = load::http_send(stripe_addr, &HttpCall::Get("/_test/requests".to_owned()))
        .await
        .context("localstripe /_test/requests")?;
    let requests: serde_json::Value = serde_json::from_slice(&requests.1)?;
    let mut by_paybridge = 0u64;
    if let Some(routes) = requests["by_route"].as_object() {
        for (route, count) in routes {
            // The browser's calls, and the one customer all these payments share.
            let browser = route.starts_with("POST /v1/payment_methods")
                || route.ends_with("/confirm")
                || route == "POST /v1/customers";
            if !browser {
                by_paybridge += count.as_u64().unwrap_or(0);
            }
        }
    }
    report.calls_per_payment.push((
        "localstripe_return_then_webhook",
        by_paybridge as f64 / payments as f64,
    ));
    report.localstripe_routes = Some(requests["by_route"].clone());
    report.elapsed = started.elapsed();
    Ok(report)
}

fn form_call(path: &str, fields: &[(&str, &str)], bearer: Option<&str>) -> HttpCall {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut headers = vec![(
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some(token) = bearer {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    HttpCall::Post {
        path: path.to_owned(),
        headers,
        body: Bytes::from(body),
    }
}
