//! The chart's Grafana dashboard (`helm/paybridge/files/dashboard.json`) and alerts
//! (`helm/paybridge/templates/prometheusrule.yaml`): every PromQL expression parses
//! (promql-parser), and every metric they name is in the `/metrics` of a running core or gateway
//! (the built binaries). The chart tests (tests/helm) check the rendered objects themselves.

use std::collections::BTreeSet;
use std::path::PathBuf;

use promql_parser::parser::{self, Expr};

use crate::support::LocalStripe;
use crate::support::child::{GatewayProcess, ServeProcess};

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helm/paybridge")
}

/// The dashboard's expressions (every panel's targets, rows' panels included) and the metrics its
/// variables query (`label_values(metric, label)`).
fn dashboard_queries() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(chart().join("files/dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    fn panels(value: &serde_json::Value, out: &mut Vec<String>) {
        for panel in value.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(target["expr"].as_str().expect("a target's expr").to_owned());
            }
            panels(&panel["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    panels(&dashboard["panels"], &mut exprs);
    let mut variables = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["definition"].as_str()
            && let Some(inner) = query.strip_prefix("label_values(")
        {
            let metric = inner.split([',', ')']).next().unwrap_or_default().trim();
            variables.push(metric.to_owned());
        }
    }
    (exprs, variables)
}

/// The rules' `expr:` blocks (block scalars or one line), their template placeholders
/// (`{{ … }}`: the namespace, thresholds) replaced by `1`.
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(chart().join("templates/prometheusrule.yaml"))
        .expect("prometheusrule.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = Vec::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push(lines[i].trim());
                    i += 1;
                }
                exprs.push(block.join(" "));
                continue;
            }
            exprs.push(rest.trim_matches(['\'', '"']).to_owned());
        }
        i += 1;
    }
    exprs.into_iter().map(|e| untemplated(&e)).collect()
}

fn untemplated(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("a closed placeholder") + start + 2;
        out.push('1');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Grafana's variables, as a query would see them.
fn with_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$namespace", "payments")
}

fn metric_names(expr: &Expr, out: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(e) => {
            metric_names(&e.expr, out);
            if let Some(param) = &e.param {
                metric_names(param, out);
            }
        }
        Expr::Unary(e) => metric_names(&e.expr, out),
        Expr::Binary(e) => {
            metric_names(&e.lhs, out);
            metric_names(&e.rhs, out);
        }
        Expr::Paren(e) => metric_names(&e.expr, out),
        Expr::Subquery(e) => metric_names(&e.expr, out),
        Expr::VectorSelector(vs) => {
            out.insert(vs.name.clone().expect("every selector names its metric"));
        }
        Expr::MatrixSelector(ms) => {
            out.insert(ms.vs.name.clone().expect("every selector names its metric"));
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                metric_names(arg, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The sample names a Prometheus scrape of `text` yields: counters as `_total`, histograms as
/// `_bucket`, `_sum` and `_count`, gauges as they are (metrics not observed yet count too).
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[test]
fn every_expression_of_the_dashboard_and_the_alerts_parses() {
    let (dashboard, _) = dashboard_queries();
    let rules = rule_exprs();
    assert!(dashboard.len() >= 20, "{dashboard:#?}");
    assert!(rules.len() >= 9, "{rules:#?}");
    for expr in dashboard.iter().chain(&rules) {
        let expr = with_variables(expr);
        if let Err(error) = parser::parse(&expr) {
            panic!("{expr}\n{error}");
        }
    }
    // The parser refuses what is not PromQL (the check above can fail).
    assert!(parser::parse("sum(rate(paybridge_grpc_requests_total[5m])").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exposed_by_the_core_or_the_gateway() {
    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = format!("sqlite:{}", dir.path().join("chart.db").display());
    let serve = ServeProcess::new(dir.path(), database_url, stripe.base_url.clone());
    let core = serve.start().await;
    let gateway_process = GatewayProcess::new(format!("http://{}", serve.grpc_addr));
    let gateway = gateway_process.start().await;
    let mut exposed = BTreeSet::new();
    for addr in [serve.admin_addr, gateway_process.admin_addr] {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        exposed.extend(exposed_names(&text));
    }

    let (dashboard, variables) = dashboard_queries();
    let mut used = BTreeSet::new();
    for expr in dashboard.iter().chain(&rule_exprs()) {
        let parsed = parser::parse(&with_variables(expr)).expect("parses");
        metric_names(&parsed, &mut used);
    }
    used.extend(variables);
    assert!(used.len() >= 15, "{used:#?}");
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "not in /metrics: {missing:#?}\nexposed: {exposed:#?}"
    );
    drop((core, gateway));
}
