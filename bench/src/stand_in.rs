//! A fast canned Stripe for load: answers the PaymentIntent and Customer calls paybridge makes with
//! Stripe's own example objects (`tests/fixtures/stripe/`, from `fixtures3.json`) patched with the
//! request's values, after a fixed latency. It keeps the intents it made (so a retrieve answers
//! what was created, with the status the bench set), replays `Idempotency-Key`s, and counts
//! requests and TCP connections, so that paybridge's own cost and its Stripe traffic are measured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};

const PAYMENT_INTENT: &str = include_str!("../../tests/fixtures/stripe/payment_intent.json");
const CUSTOMER: &str = include_str!("../../tests/fixtures/stripe/customer.json");
const EVENT: &str = include_str!("../../tests/fixtures/stripe/event.json");

/// What the stand-in has seen, since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) connections: u64,
    pub(crate) creates: u64,
    pub(crate) retrieves: u64,
    pub(crate) other: u64,
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests + other.requests,
            connections: self.connections + other.connections,
            creates: self.creates + other.creates,
            retrieves: self.retrieves + other.retrieves,
            other: self.other + other.other,
        }
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, earlier: Counts) -> Counts {
        Counts {
            requests: self.requests - earlier.requests,
            connections: self.connections - earlier.connections,
            creates: self.creates - earlier.creates,
            retrieves: self.retrieves - earlier.retrieves,
            other: self.other - earlier.other,
        }
    }
}

#[derive(Debug, Clone)]
struct Intent {
    amount: i64,
    currency: String,
    metadata: Map<String, Value>,
    status: &'static str,
    client_secret: String,
    customer: Option<String>,
    description: Option<String>,
    created: i64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
    creates: AtomicU64,
    retrieves: AtomicU64,
    other: AtomicU64,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    latency: Duration,
    template: Value,
    customer: Vec<u8>,
    intents: Mutex<HashMap<String, Intent>>,
    /// Idempotency-Key → the answer's intent id (Stripe replays the first answer).
    keys: Mutex<HashMap<String, String>>,
    counters: Counters,
}

/// A running stand-in. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl StandIn {
    /// Binds a free loopback port and serves in the background.
    pub(crate) async fn start(latency: Duration) -> anyhow::Result<StandIn> {
        let shared = Arc::new(Shared {
            latency,
            template: serde_json::from_str(PAYMENT_INTENT)?,
            customer: {
                let mut customer: Value = serde_json::from_str(CUSTOMER)?;
                customer["id"] = Value::from("cus_bench");
                serde_json::to_vec(&customer)?
            },
            intents: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/{id}", get(retrieve_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/customers", post(create_customer))
            .with_state(shared.clone());
        let listener = CountingListener {
            inner: listener,
            shared: shared.clone(),
        };
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("stripe stand-in stopped: {error}");
            }
        });
        Ok(StandIn { shared, addr })
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn counts(&self) -> Counts {
        let c = &self.shared.counters;
        Counts {
            requests: c.requests.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            creates: c.creates.load(Ordering::Relaxed),
            retrieves: c.retrieves.load(Ordering::Relaxed),
            other: c.other.load(Ordering::Relaxed),
        }
    }

    /// Moves an intent to `succeeded`, as a customer paying would.
    pub(crate) fn succeed(&self, intent_id: &str) {
        if let Some(intent) = self.shared.intents.lock().unwrap().get_mut(intent_id) {
            intent.status = "succeeded";
        }
    }

    /// The `payment_intent.<status>` event Stripe would send for the intent now, as JSON bytes.
    pub(crate) fn event_for(&self, intent_id: &str, event_id: &str) -> Option<Vec<u8>> {
        let intent = self.shared.intents.lock().unwrap().get(intent_id)?.clone();
        let object = render_intent(&self.shared.template, intent_id, &intent);
        let mut event: Value = serde_json::from_str(EVENT).ok()?;
        event["id"] = Value::from(event_id);
        event["type"] = Value::from(format!("payment_intent.{}", intent.status));
        event["created"] = Value::from(unix_now());
        event["api_version"] = Value::from(stripe_client_core::VERSION.as_str());
        event["data"] = serde_json::json!({ "object": object });
        serde_json::to_vec(&event).ok()
    }
}

/// Counts accepted TCP connections and turns Nagle off, as a real server would.
struct CountingListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for CountingListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    self.shared
                        .counters
                        .connections
                        .fetch_add(1, Ordering::Relaxed);
                    return (stream, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn render_intent(template: &Value, id: &str, intent: &Intent) -> Value {
    let mut pi = template.clone();
    let succeeded = intent.status == "succeeded";
    pi["id"] = Value::from(id);
    pi["amount"] = Value::from(intent.amount);
    pi["amount_received"] = Value::from(if succeeded { intent.amount } else { 0 });
    pi["currency"] = Value::from(intent.currency.as_str());
    pi["client_secret"] = Value::from(intent.client_secret.as_str());
    pi["metadata"] = Value::Object(intent.metadata.clone());
    pi["status"] = Value::from(intent.status);
    pi["customer"] = intent.customer.clone().map_or(Value::Null, Value::from);
    pi["description"] = intent.description.clone().map_or(Value::Null, Value::from);
    pi["created"] = Value::from(intent.created);
    pi["canceled_at"] = Value::Null;
    pi["last_payment_error"] = Value::Null;
    pi["next_action"] = Value::Null;
    pi["processing"] = Value::Null;
    pi
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such payment_intent"}}"#.to_vec(),
    )
}

async fn counted(shared: &Shared, counter: &AtomicU64) {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    counter.fetch_add(1, Ordering::Relaxed);
    if !shared.latency.is_zero() {
        tokio::time::sleep(shared.latency).await;
    }
}

async fn create_intent(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    counted(&shared, &shared.counters.creates).await;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(key) = &key {
        let replay = shared.keys.lock().unwrap().get(key).cloned();
        if let Some(id) = replay {
            let intent = shared.intents.lock().unwrap().get(&id).cloned();
            if let Some(intent) = intent {
                let body = render_intent(&shared.template, &id, &intent);
                return json(
                    StatusCode::OK,
                    serde_json::to_vec(&body).unwrap_or_default(),
                );
            }
        }
    }
    let mut intent = Intent {
        amount: 0,
        currency: String::new(),
        metadata: Map::new(),
        status: "requires_payment_method",
        client_secret: String::new(),
        customer: None,
        description: None,
        created: unix_now(),
    };
    for (name, value) in url::form_urlencoded::parse(&body) {
        match name.as_ref() {
            "amount" => intent.amount = value.parse().unwrap_or(0),
            "currency" => intent.currency = value.into_owned(),
            "customer" => intent.customer = Some(value.into_owned()),
            "description" => intent.description = Some(value.into_owned()),
            other => {
                if let Some(meta) = other
                    .strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                {
                    intent
                        .metadata
                        .insert(meta.to_owned(), Value::from(value.into_owned()));
                }
            }
        }
    }
    let n = shared.counters.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("pi_bench{n:010}");
    intent.client_secret = format!("{id}_secret_b{n:08x}");
    let answer = render_intent(&shared.template, &id, &intent);
    shared.intents.lock().unwrap().insert(id.clone(), intent);
    if let Some(key) = key {
        shared.keys.lock().unwrap().insert(key, id);
    }
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).unwrap_or_default(),
    )
}

async fn retrieve_intent(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    counted(&shared, &shared.counters.retrieves).await;
    let intent = shared.intents.lock().unwrap().get(&id).cloned();
    match intent {
        Some(intent) => json(
            StatusCode::OK,
            serde_json::to_vec(&render_intent(&shared.template, &id, &intent)).unwrap_or_default(),
        ),
        None => not_found(),
    }
}

async fn cancel_intent(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    counted(&shared, &shared.counters.other).await;
    let intent = {
        let mut intents = shared.intents.lock().unwrap();
        intents.get_mut(&id).map(|intent| {
            if intent.status != "succeeded" {
                intent.status = "canceled";
            }
            intent.clone()
        })
    };
    match intent {
        Some(intent) => json(
            StatusCode::OK,
            serde_json::to_vec(&render_intent(&shared.template, &id, &intent)).unwrap_or_default(),
        ),
        None => not_found(),
    }
}

async fn create_customer(State(shared): State<Arc<Shared>>) -> Response {
    counted(&shared, &shared.counters.other).await;
    json(StatusCode::OK, shared.customer.clone())
}
