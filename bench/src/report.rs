//! Figures: medians of the runs with their spread, the printed table, the JSON, and the targets
//! of issue 14.

use std::time::Duration;

use serde_json::{Value, json};

use crate::load::Sample;
use crate::stand_in::Counts;

/// One measured run, reduced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Answered calls including warm-up.
    all_ok: u64,
}

/// One figure: the runs of one scenario.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) name: String,
    backend: String,
    /// Concurrent calls or connections; 0 for the open loop.
    concurrency: usize,
    runs: Vec<Run>,
    /// Stripe traffic during the figure's runs.
    pub(crate) stripe: Option<Counts>,
    /// How many distinct payments the runs cycled through.
    pub(crate) pool: Option<usize>,
    pub(crate) offered_rate: Option<f64>,
    /// CPU seconds of serve, gateway, the bench (load generator and stand-in) and the database
    /// server during the runs.
    pub(crate) cpu_s: Option<[f64; 4]>,
    /// Resident MiB of serve and gateway after the runs.
    pub(crate) rss_after: Option<[f64; 2]>,
}

/// A figure's CPU per answered call, in microseconds, by process.
#[derive(Debug, Clone, Copy)]
struct CpuPerCall {
    serve: f64,
    gateway: f64,
    /// The load generator and the Stripe stand-in.
    bench: f64,
    /// PostgreSQL's main process and sessions (0 on SQLite, which runs inside serve).
    database_server: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn spread(values: &[f64]) -> [f64; 2] {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [min, max]
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

impl Figure {
    pub(crate) fn new(name: &str, backend: &str, concurrency: usize) -> Figure {
        Figure {
            name: name.to_owned(),
            backend: backend.to_owned(),
            concurrency,
            runs: Vec::new(),
            stripe: None,
            pool: None,
            offered_rate: None,
            cpu_s: None,
            rss_after: None,
        }
    }

    pub(crate) fn push(&mut self, mut sample: Sample) {
        self.runs.push(Run {
            rps: sample.rps(),
            p50_ms: sample.percentile_ms(50.0),
            p99_ms: sample.percentile_ms(99.0),
            errors: sample.errors,
            all_ok: sample.all_ok,
        });
    }

    fn values(&self, pick: fn(&Run) -> f64) -> Vec<f64> {
        self.runs.iter().map(pick).collect()
    }

    fn rps(&self) -> f64 {
        median(&mut self.values(|r| r.rps))
    }

    fn p50(&self) -> f64 {
        median(&mut self.values(|r| r.p50_ms))
    }

    fn p99(&self) -> f64 {
        median(&mut self.values(|r| r.p99_ms))
    }

    /// Calls answered during the figure, warm-up included (what its Stripe counts cover).
    fn all_calls(&self) -> f64 {
        self.runs.iter().map(|r| r.all_ok as f64).sum()
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }

    /// CPU per call over the figure's runs, warm-up calls included (as the CPU is).
    fn cpu_us_per_call(&self) -> Option<CpuPerCall> {
        let [serve, gateway, bench, database] = self.cpu_s?;
        let per_call = 1e6 / self.all_calls().max(1.0);
        Some(CpuPerCall {
            serve: serve * per_call,
            gateway: gateway * per_call,
            bench: bench * per_call,
            database_server: database * per_call,
        })
    }

    fn json(&self) -> Value {
        let rps = self.values(|r| r.rps);
        let p50 = self.values(|r| r.p50_ms);
        let p99 = self.values(|r| r.p99_ms);
        let mut value = json!({
            "rps": round(self.rps(), 0),
            "p50_ms": round(self.p50(), 2),
            "p99_ms": round(self.p99(), 2),
            "spread": {
                "rps": spread(&rps).map(|v| round(v, 0)),
                "p50_ms": spread(&p50).map(|v| round(v, 2)),
                "p99_ms": spread(&p99).map(|v| round(v, 2)),
            },
            "runs": self.runs.iter().map(|r| json!({
                "rps": round(r.rps, 0), "p50_ms": round(r.p50_ms, 2),
                "p99_ms": round(r.p99_ms, 2), "errors": r.errors,
            })).collect::<Vec<_>>(),
            "errors": self.errors(),
            "backend": self.backend,
        });
        if self.concurrency > 0 {
            value["concurrency"] = json!(self.concurrency);
        }
        if let Some(rate) = self.offered_rate {
            value["offered_rate"] = json!(rate);
        }
        if let Some(cpu) = self.cpu_us_per_call() {
            value["cpu_us_per_call"] = json!({
                "serve": round(cpu.serve, 0),
                "gateway": round(cpu.gateway, 0),
                "serve_and_gateway": round(cpu.serve + cpu.gateway, 0),
                "bench": round(cpu.bench, 0),
                "database_server": round(cpu.database_server, 0),
            });
        }
        if let Some([serve, gateway]) = self.rss_after {
            value["rss_mib_after"] =
                json!({ "serve": round(serve, 1), "gateway": round(gateway, 1) });
        }
        if let Some(pool) = self.pool {
            value["distinct_payments"] = json!(pool);
        }
        if let Some(stripe) = self.stripe {
            let calls = self.all_calls();
            value["stripe_requests"] = json!(stripe.requests);
            value["stripe_connections"] = json!(stripe.connections);
            if calls > 0.0 {
                value["stripe_requests_per_call"] = json!(round(stripe.requests as f64 / calls, 3));
            }
        }
        value
    }
}

/// Everything measured.
#[derive(Debug)]
pub(crate) struct Report {
    runs: usize,
    seconds: f64,
    latency_ms: u64,
    mode: &'static str,
    pub(crate) figures: Vec<Figure>,
    pub(crate) startup_ms: Vec<f64>,
    /// (backend, serve, gateway, together) peaks in MiB.
    pub(crate) rss: Vec<(String, f64, f64, f64)>,
    pub(crate) calls_per_payment: Vec<(&'static str, f64)>,
    pub(crate) stripe_total: Option<Counts>,
    pub(crate) localstripe_routes: Option<Value>,
    pub(crate) elapsed: Duration,
    /// How the gateway reached the core: "unix socket" (the chart's layout) or "tcp".
    gateway_to_core: &'static str,
}

/// The closed-loop targets' callers (gRPC calls or HTTP connections at once).
const CALLERS: usize = 64;

/// One of the targets, checked against this run.
struct Target {
    name: String,
    backend: &'static str,
    target: String,
    measured: String,
    met: Option<bool>,
}

impl Report {
    pub(crate) fn new(
        runs: usize,
        seconds: f64,
        latency_ms: u64,
        mode: &'static str,
        gateway_to_core: &'static str,
    ) -> Report {
        Report {
            runs,
            seconds,
            latency_ms,
            mode,
            figures: Vec::new(),
            startup_ms: Vec::new(),
            rss: Vec::new(),
            calls_per_payment: Vec::new(),
            gateway_to_core,
            stripe_total: None,
            localstripe_routes: None,
            elapsed: Duration::ZERO,
        }
    }

    fn figure(&self, name: &str, backend: &str) -> Option<&Figure> {
        // The highest concurrency of that name (64 by default).
        self.figures
            .iter()
            .filter(|f| f.name == name && f.backend == backend)
            .max_by_key(|f| f.concurrency)
    }

    fn connection_reuse(&self) -> Option<f64> {
        let total = self.stripe_total?;
        (total.requests > 0)
            .then(|| 1.0 - total.connections.min(total.requests) as f64 / total.requests as f64)
    }

    fn calls_per_paid_payment(&self) -> Option<f64> {
        self.calls_per_payment
            .iter()
            .filter(|(name, _)| *name != "no_webhook")
            .map(|(_, calls)| *calls)
            .reduce(f64::max)
    }

    fn rss_peak(&self) -> Option<(f64, f64, f64)> {
        self.rss
            .iter()
            .map(|(_, s, g, t)| (*s, *g, *t))
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1), a.2.max(b.2)))
    }

    /// The figure of that name and engine at exactly `concurrency` (0: the open loop).
    fn figure_at(&self, name: &str, backend: &str, concurrency: usize) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.name == name && f.backend == backend && f.concurrency == concurrency)
    }

    /// Issue 14's targets, on each engine the run measured.
    fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        for backend in ["sqlite", "postgres"] {
            let open_loop = format!("create_{backend}_open_loop");
            if let Some(f) = self.figure_at(&open_loop, backend, 0) {
                let rate = f.offered_rate.unwrap_or(0.0);
                targets.push(Target {
                    name: open_loop,
                    backend,
                    target: "1000/s offered, p99 <= 15 ms, no errors".to_owned(),
                    measured: format!(
                        "{:.0}/s of {rate:.0}/s, p99 {:.2} ms, {} errors",
                        f.rps(),
                        f.p99(),
                        f.errors()
                    ),
                    met: Some(rate >= 1000.0 && f.p99() <= 15.0 && f.errors() == 0),
                });
            }
        }
        if let Some(cpu) = self
            .figure_at("create_postgres_open_loop", "postgres", 0)
            .and_then(Figure::cpu_us_per_call)
        {
            targets.push(Target {
                name: "cpu_us_per_call create_postgres_open_loop".to_owned(),
                backend: "postgres",
                target: "serve <= 300 µs".to_owned(),
                measured: format!("{:.0} µs", cpu.serve),
                met: Some(cpu.serve <= 300.0),
            });
        }
        for backend in ["sqlite", "postgres"] {
            if let Some(cpu) = self
                .figure_at("return_settled", backend, CALLERS)
                .and_then(Figure::cpu_us_per_call)
            {
                let both = cpu.serve + cpu.gateway;
                targets.push(Target {
                    name: "cpu_us_per_call return_settled".to_owned(),
                    backend,
                    target: "serve + gateway <= 100 µs".to_owned(),
                    measured: format!("{both:.0} µs"),
                    met: Some(both <= 100.0),
                });
            }
        }
        for backend in ["sqlite", "postgres"] {
            let create = format!("create_{backend}");
            for (name, min_rps) in [
                (create.as_str(), 2_000.0),
                ("return_settled", 10_000.0),
                ("return_unsettled", 5_000.0),
            ] {
                if let Some(f) = self.figure_at(name, backend, CALLERS) {
                    targets.push(Target {
                        name: name.to_owned(),
                        backend,
                        target: format!(">= {min_rps:.0}/s, p99 <= 25 ms @{CALLERS}"),
                        measured: format!("{:.0}/s, p99 {:.2} ms", f.rps(), f.p99()),
                        met: Some(f.rps() >= min_rps && f.p99() <= 25.0),
                    });
                }
            }
        }
        if let Some((serve, gateway, together)) = self.rss_peak() {
            targets.push(Target {
                name: "rss_mib".to_owned(),
                backend: "both",
                target: "serve + gateway <= 64 MiB".to_owned(),
                measured: format!("{serve:.1} + {gateway:.1} (peak together {together:.1})"),
                met: Some(together <= 64.0),
            });
        }
        if !self.startup_ms.is_empty() {
            let startup = median(&mut self.startup_ms.clone());
            targets.push(Target {
                name: "startup_ms".to_owned(),
                backend: "sqlite",
                target: "<= 300 ms".to_owned(),
                measured: format!("{startup:.0} ms"),
                met: Some(startup <= 300.0),
            });
        }
        targets
    }

    pub(crate) fn print(&self) {
        println!();
        println!(
            "paybridge-bench: {} — {} cores — Stripe: {}{} — {} runs x {:.1} s, {:.0} s in all",
            date(),
            cores(),
            self.mode,
            if self.mode == "canned" {
                format!(" ({} ms)", self.latency_ms)
            } else {
                String::new()
            },
            self.runs,
            self.seconds,
            self.elapsed.as_secs_f64()
        );
        println!();
        println!(
            "| figure | db | conc. | rps (median) | rps spread | p50 ms | p99 ms (spread) | Stripe req/call | CPU µs/call serve + gw / bench / PostgreSQL server | errors |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &self.figures {
            let rps = f.values(|r| r.rps);
            let p99 = f.values(|r| r.p99_ms);
            let [lo, hi] = spread(&rps);
            let [p99lo, p99hi] = spread(&p99);
            let per_call = f
                .stripe
                .map(|s| {
                    let calls = f.all_calls();
                    if calls > 0.0 {
                        format!("{:.2}", s.requests as f64 / calls)
                    } else {
                        "-".to_owned()
                    }
                })
                .unwrap_or_else(|| "-".to_owned());
            let conc = match (f.concurrency, f.offered_rate) {
                (_, Some(rate)) => format!("{rate:.0}/s open"),
                (c, None) => c.to_string(),
            };
            let cpu = f
                .cpu_us_per_call()
                .map(|cpu| {
                    let database = if f.backend == "postgres" {
                        format!("{:.0}", cpu.database_server)
                    } else {
                        "-".to_owned()
                    };
                    format!(
                        "{:.0} + {:.0} / {:.0} / {database}",
                        cpu.serve, cpu.gateway, cpu.bench
                    )
                })
                .unwrap_or_else(|| "-".to_owned());
            println!(
                "| {} | {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} ({:.2}–{:.2}) | {} | {} | {} |",
                f.name,
                f.backend,
                conc,
                f.rps(),
                lo,
                hi,
                f.p50(),
                f.p99(),
                p99lo,
                p99hi,
                per_call,
                cpu,
                f.errors()
            );
        }
        println!();
        if !self.startup_ms.is_empty() {
            let [lo, hi] = spread(&self.startup_ms);
            println!(
                "startup to SERVING (SQLite, fresh file): median {:.0} ms ({lo:.0}–{hi:.0})",
                median(&mut self.startup_ms.clone())
            );
        }
        for (backend, serve, gateway, together) in &self.rss {
            println!(
                "peak RSS under load ({backend}): serve {serve:.1} MiB, gateway {gateway:.1} MiB, together {together:.1} MiB"
            );
        }
        for (scenario, calls) in &self.calls_per_payment {
            println!("Stripe calls per paid payment ({scenario}): {calls:.2}");
        }
        if let (Some(total), Some(reuse)) = (self.stripe_total, self.connection_reuse()) {
            println!(
                "Stripe stand-in: {} requests on {} TCP connections: {:.2}% on a reused connection",
                total.requests,
                total.connections,
                reuse * 100.0
            );
        }
        println!();
        println!("| target (issue 14) | db | wanted | measured | met |");
        println!("|---|---|---|---|---|");
        for t in self.targets() {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            println!(
                "| {} | {} | {} | {} | {} |",
                t.name, t.backend, t.target, t.measured, met
            );
        }
        println!();
        println!(
            "Notes: PAYBRIDGE_STRIPE_MAX_RPS=1000000 for these runs (the request budget protects the real \
             Stripe's rate limit; the stand-in has none); PAYBRIDGE_LOG=warn; payments use an existing \
             Stripe customer (one Stripe call per create); the gateway calls the core over {}; load \
             generator, serve, gateway, database and Stripe stand-in share this machine's {} cores.",
            self.gateway_to_core,
            cores()
        );
    }

    pub(crate) fn json(&self) -> Value {
        let fig = |name: &str, backend: &str| {
            self.figure(name, backend).map_or(Value::Null, |f| f.json())
        };
        let mut by_concurrency = serde_json::Map::new();
        for f in &self.figures {
            if f.offered_rate.is_none() && f.name.starts_with("create_") {
                by_concurrency.insert(format!("{}@{}", f.name, f.concurrency), f.json());
            }
        }
        let (serve, gateway, together) = self.rss_peak().unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let startup = median(&mut self.startup_ms.clone());
        json!({
            "date": date(),
            "machine": machine(),
            "cores": cores(),
            "gateway_to_core": self.gateway_to_core,
            "stripe": self.mode,
            "stripe_latency_ms": self.latency_ms,
            "runs": self.runs,
            "seconds_per_run": self.seconds,
            "elapsed_s": round(self.elapsed.as_secs_f64(), 1),
            "return_settled": fig("return_settled", "sqlite"),
            "return_unsettled": fig("return_unsettled", "sqlite"),
            "create_sqlite": fig("create_sqlite", "sqlite"),
            "create_postgres": fig("create_postgres", "postgres"),
            "create_sqlite_open_loop": fig("create_sqlite_open_loop", "sqlite"),
            "create_postgres_open_loop": fig("create_postgres_open_loop", "postgres"),
            "webhook": fig("webhook", "sqlite"),
            "postgres": {
                "return_settled": fig("return_settled", "postgres"),
                "return_unsettled": fig("return_unsettled", "postgres"),
                "webhook": fig("webhook", "postgres"),
            },
            "create_by_concurrency": by_concurrency,
            "localstripe": {
                "create": fig("create_sqlite_localstripe", "sqlite"),
                "return": fig("return_localstripe", "sqlite"),
                "requests_by_route": self.localstripe_routes.clone().unwrap_or(Value::Null),
            },
            "stripe_calls_per_payment": self.calls_per_paid_payment().map(|v| round(v, 3)),
            "stripe_calls_per_payment_by_order": self.calls_per_payment.iter()
                .map(|(k, v)| (k.to_string(), json!(round(*v, 3))))
                .collect::<serde_json::Map<_, _>>(),
            "stripe_connection_reuse": self.connection_reuse().map(|v| round(v, 5)),
            "stripe_requests": self.stripe_total.map(|t| t.requests),
            "stripe_connections": self.stripe_total.map(|t| t.connections),
            "rss_mib": {
                "serve": round(serve, 1),
                "gateway": round(gateway, 1),
                "together": round(together, 1),
                "by_backend": self.rss.iter().map(|(b, s, g, t)| json!({
                    "backend": b, "serve": round(*s, 1), "gateway": round(*g, 1), "together": round(*t, 1)
                })).collect::<Vec<_>>(),
            },
            "startup_ms": round(startup, 1),
            "startup_ms_runs": self.startup_ms.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|t| json!({
                "name": t.name, "backend": t.backend, "target": t.target,
                "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
            "notes": [
                "PAYBRIDGE_STRIPE_MAX_RPS=1000000: the request budget protects the real Stripe's rate limit; the stand-in has none",
                "PAYBRIDGE_LOG=warn",
                "all parts (load generator, serve, gateway, database, Stripe stand-in) share this machine; compare ratios",
            ],
        })
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {:.0} GiB", kib / 1024.0 / 1024.0)
        });
    format!("{cpu}, {} cores{memory}", cores())
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
