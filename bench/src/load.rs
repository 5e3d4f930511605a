//! Load: a tonic client at a fixed concurrency or at a fixed rate (open loop), and an HTTP/1.1
//! client on a fixed number of keep-alive connections; latencies in microseconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use paybridge::pb::v1 as pb;
use paybridge::transport::gateway::BearerToken;
use pb::payment_service_client::PaymentServiceClient;
use tokio::net::TcpStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// One measured run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    /// Successful calls including warm-up (what the Stripe counts cover).
    pub(crate) all_ok: u64,
    /// Latencies of the successful calls, microseconds.
    pub(crate) latencies: Vec<u32>,
}

impl Sample {
    pub(crate) fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    pub(crate) fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        f64::from(self.latencies[rank.clamp(1, self.latencies.len()) - 1]) / 1000.0
    }
}

pub(crate) type Client = PaymentServiceClient<InterceptedService<Channel, BearerToken>>;

/// `channels` HTTP/2 connections to the core, each a tenant client.
pub(crate) async fn grpc_clients(
    addr: SocketAddr,
    token: &str,
    channels: usize,
) -> anyhow::Result<Vec<Client>> {
    let bearer = BearerToken::new(token).context("the tenant token is not a header value")?;
    let mut clients = Vec::new();
    for _ in 0..channels.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(PaymentServiceClient::with_interceptor(
            channel,
            bearer.clone(),
        ));
    }
    Ok(clients)
}

/// What a created payment leaves for the return and webhook runs.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    pub(crate) intent_id: String,
    pub(crate) client_secret: String,
}

impl From<pb::CreateInvoicePaymentResponse> for Created {
    fn from(answer: pb::CreateInvoicePaymentResponse) -> Created {
        Created {
            intent_id: answer
                .payment
                .map(|p| p.stripe_payment_intent_id)
                .unwrap_or_default(),
            client_secret: answer.client_secret,
        }
    }
}

/// A CreateInvoicePayment request for a new invoice (an existing Stripe customer, so that each
/// payment costs exactly one Stripe call at create).
pub(crate) fn create_request(tag: &str, n: u64) -> pb::CreateInvoicePaymentRequest {
    pb::CreateInvoicePaymentRequest {
        idempotency_key: format!("bench-{tag}-{n}"),
        invoice_id: format!("INV-{tag}-{n}"),
        amount: 4200,
        currency: "usd".to_owned(),
        customer: Some(pb::Customer {
            who: Some(pb::customer::Who::StripeCustomerId("cus_bench".to_owned())),
            name: String::new(),
        }),
        description: "Bench invoice".to_owned(),
        metadata: HashMap::from([("order".to_owned(), format!("ord-{n}"))]),
        success_url: String::new(),
        failure_url: String::new(),
        ..Default::default()
    }
}

async fn create_one(client: &mut Client, tag: &str, n: u64) -> Result<Created, tonic::Status> {
    let answer = client
        .create_invoice_payment(create_request(tag, n))
        .await?
        .into_inner();
    Ok(Created::from(answer))
}

/// `concurrency` callers, each creating payments back to back for `duration` after `warmup`.
pub(crate) async fn create_closed_loop(
    clients: &[Client],
    tag: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    created: &mut Vec<Created>,
) -> Sample {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = clients[i % clients.len()].clone();
        let counter = counter.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut sample = Sample::default();
            let mut made = Vec::new();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = create_one(&mut client, &tag, n).await;
                let done = Instant::now();
                match result {
                    Ok(c) => {
                        made.push(c);
                        sample.all_ok += 1;
                        if sent >= measure_from && done <= end {
                            sample.ok += 1;
                            sample.latencies.push(micros(done - sent));
                        }
                    }
                    Err(status) => {
                        if sample.errors == 0 {
                            eprintln!("  create failed: {:?} {}", status.code(), status.message());
                        }
                        sample.errors += 1;
                    }
                }
            }
            (sample, made)
        }));
    }
    let mut total = Sample {
        seconds: duration.as_secs_f64(),
        ..Sample::default()
    };
    for task in tasks {
        if let Ok((sample, made)) = task.await {
            total.ok += sample.ok;
            total.all_ok += sample.all_ok;
            total.errors += sample.errors;
            total.latencies.extend(sample.latencies);
            created.extend(made);
        }
    }
    total
}

/// Open loop: creates sent at `rate` per second regardless of answers (latency counted from the
/// scheduled send time, so a stall is not hidden), at most `max_in_flight` at once.
pub(crate) async fn create_open_loop(
    clients: &[Client],
    tag: &str,
    rate: f64,
    duration: Duration,
    created: &mut Vec<Created>,
) -> Sample {
    let max_in_flight = 4096;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut skipped = 0u64;
    for n in 0..total {
        let scheduled = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            skipped += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let mut client = clients[n as usize % clients.len()].clone();
        let tag = tag.to_owned();
        let in_flight = in_flight.clone();
        tasks.push(tokio::spawn(async move {
            let result = create_one(&mut client, &tag, n).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            (result.ok(), micros(scheduled.elapsed()))
        }));
    }
    let mut sample = Sample {
        seconds: duration.as_secs_f64(),
        errors: skipped,
        ..Sample::default()
    };
    for task in tasks {
        match task.await {
            Ok((Some(c), latency)) => {
                sample.ok += 1;
                sample.all_ok += 1;
                sample.latencies.push(latency);
                created.push(c);
            }
            _ => sample.errors += 1,
        }
    }
    // Answers that arrived after the schedule ended still count: the rate is what was offered.
    sample
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One HTTP request the load sends.
#[derive(Debug, Clone)]
pub(crate) enum HttpCall {
    Get(String),
    Post {
        path: String,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

fn build(addr: SocketAddr, call: &HttpCall) -> Request<Full<Bytes>> {
    let host = addr.to_string();
    match call {
        HttpCall::Get(path) => Request::get(path.as_str())
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("valid request"),
        HttpCall::Post {
            path,
            headers,
            body,
        } => {
            let mut request = Request::post(path.as_str()).header("host", host);
            for (name, value) in headers {
                request = request.header(*name, value.as_str());
            }
            request
                .body(Full::new(body.clone()))
                .expect("valid request")
        }
    }
}

/// The bytes of `call` as an HTTP/1.1 request on a keep-alive connection.
fn request_bytes(addr: SocketAddr, call: &HttpCall) -> Vec<u8> {
    match call {
        HttpCall::Get(path) => format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes(),
        HttpCall::Post {
            path,
            headers,
            body,
        } => {
            let mut head = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n");
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(body);
            bytes
        }
    }
}

/// A keep-alive HTTP/1.1 connection of the load generator: it writes a prepared request and
/// reads the answer in the calling task. The load shares the machine's cores with what it
/// measures, so it should cost as little as it can: hyper's client connection runs as a task of
/// its own beside the caller (two wake-ups per request; see bench/README.md for what that cost).
struct LoadConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl LoadConnection {
    async fn connect(addr: SocketAddr) -> std::io::Result<LoadConnection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(LoadConnection {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` and reads the whole answer; returns its status and whether the
    /// connection may carry the next request.
    async fn call(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(request).await?;
        self.buffer.clear();
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end])
            .map_err(|_| invalid("answer head is not UTF-8"))?;
        let status = head
            .get(9..12)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| invalid("no status code"))?;
        let (mut length, mut chunked, mut keep_alive) = (0usize, false, true);
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| invalid("bad content-length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        if chunked {
            let mut at = head_end;
            loop {
                let line_end = loop {
                    if let Some(end) = find(&self.buffer[at..], b"\r\n") {
                        break at + end;
                    }
                    self.read_more().await?;
                };
                let size_text = std::str::from_utf8(&self.buffer[at..line_end])
                    .map_err(|_| invalid("bad chunk size"))?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| invalid("bad chunk size"))?;
                // The chunk, then its CRLF (after the last, empty chunk: the final CRLF).
                let chunk_end = line_end + 2 + size + 2;
                while self.buffer.len() < chunk_end {
                    self.read_more().await?;
                }
                at = chunk_end;
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.buffer.len() < head_end + length {
                self.read_more().await?;
            }
        }
        Ok((status, keep_alive))
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// `connections` keep-alive connections, each sending the next call of `calls` (shared, in
/// order, wrapping around unless `once`) back to back for `duration` after `warmup`; a call
/// counts when it is answered with `expect`.
pub(crate) async fn http_closed_loop(
    addr: SocketAddr,
    calls: Arc<Vec<HttpCall>>,
    once: bool,
    expect: u16,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let requests: Arc<Vec<Vec<u8>>> =
        Arc::new(calls.iter().map(|call| request_bytes(addr, call)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut connection = Some(LoadConnection::connect(addr).await?);
        let requests = requests.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut sample = Sample::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if once && i >= requests.len() {
                    break;
                }
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let open = match connection.take() {
                    Some(open) => Ok(open),
                    None => LoadConnection::connect(addr).await,
                };
                let status = match open {
                    Ok(mut open) => match open.call(&requests[i % requests.len()]).await {
                        Ok((status, keep_alive)) => {
                            if keep_alive {
                                connection = Some(open);
                            }
                            status
                        }
                        Err(_) => 0,
                    },
                    Err(_) => 0,
                };
                let done = Instant::now();
                if status == expect {
                    sample.all_ok += 1;
                    if sent >= measure_from && done <= end {
                        sample.ok += 1;
                        sample.latencies.push(micros(done - sent));
                    }
                } else {
                    if sample.errors == 0 {
                        eprintln!("  HTTP answer {status}, expected {expect}");
                    }
                    sample.errors += 1;
                }
            }
            sample
        }));
    }
    let mut total = Sample {
        seconds: duration.as_secs_f64(),
        ..Sample::default()
    };
    for task in tasks {
        let sample = task.await?;
        total.ok += sample.ok;
        total.all_ok += sample.all_ok;
        total.errors += sample.errors;
        total.latencies.extend(sample.latencies);
    }
    Ok(total)
}

/// One request on a fresh connection: the status and body, or `None` if nothing answered.
pub(crate) async fn http_send(addr: SocketAddr, call: &HttpCall) -> Option<(u16, Bytes)> {
    let mut sender = connect(addr).await.ok()?;
    sender.ready().await.ok()?;
    let response = sender.send_request(build(addr, call)).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

pub(crate) async fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    Some(response.status().as_u16())
}

/// The gateway's return URL path for a payment, as Stripe would redirect the browser.
pub(crate) fn return_path(created: &Created) -> String {
    format!(
        "/payment/return?payment_intent={}&payment_intent_client_secret={}&redirect_status=succeeded",
        created.intent_id, created.client_secret
    )
}
