//! localstripe behind the project's compat layer (`tests/it/support/localstripe/compat.py`), one
//! process per test, on a free port. It speaks the current Stripe API to the production client,
//! counts requests (`/_test/requests`) and injects faults (`/_test/faults`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SECRET_KEY: &str = "sk_test_paybridge";
pub const CARD_SUCCEEDS: &str = "4242424242424242";
pub const CARD_DECLINED: &str = "4000000000000341";
pub const CARD_NEEDS_AUTHENTICATION: &str = "4000002760003184";

pub struct LocalStripe {
    pub base_url: String,
    http: reqwest::Client,
    _child: Child,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    match std::env::var_os("PAYBRIDGE_TEST_LOCALSTRIPE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => repo_root().join(".tools/localstripe-venv/bin/python"),
    }
}

impl LocalStripe {
    pub async fn start() -> LocalStripe {
        let python = python();
        assert!(
            python.exists(),
            "{} is missing: run scripts/test (or tests/it/support/localstripe/setup.sh) first",
            python.display()
        );
        let quiet = std::env::var_os("TEST_LOG").is_none();
        let mut child = Command::new(&python)
            .arg(repo_root().join("tests/it/support/localstripe/compat.py"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("starting localstripe");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("localstripe did not start within 60 s")
            .expect("reading localstripe's stdout")
            .expect("localstripe exited before listening");
        let addr = line
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line from localstripe: {line}"))
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        LocalStripe {
            base_url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _child: child,
        }
    }

    /// What a test endpoint (`/_test/requests`) answers to GET.
    async fn test_endpoint(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .unwrap_or_else(|error| panic!("localstripe {path}: {error}"))
            .json()
            .await
            .expect("json")
    }

    /// Every `/v1` request localstripe has received, by route.
    /// The stand-in Stripe.js this fake serves (`stripe-js-stand-in.js`): what the hosted
    /// payment page loads in tests instead of Stripe's.
    pub fn stripe_js_url(&self) -> String {
        format!("{}/_test/stripe-js/v3/", self.base_url)
    }

    pub async fn requests(&self) -> Value {
        self.test_endpoint("/_test/requests").await
    }

    /// Every `/v1` request kept that arrived at or after `since_ms` (unix ms), in order.
    pub async fn requests_since(&self, since_ms: u64) -> Vec<Value> {
        let log = self
            .test_endpoint(&format!("/_test/requests?since_ms={since_ms}"))
            .await;
        log["requests"].as_array().cloned().expect("request log")
    }

    /// How many requests a route (`"POST /v1/payment_intents"`) has received.
    pub async fn count(&self, route: &str) -> u64 {
        self.requests().await["by_route"][route]
            .as_u64()
            .unwrap_or(0)
    }

    /// Makes the next matching requests fail (see the compat layer's README).
    pub async fn inject_fault(&self, fault: Value) {
        let response = self
            .http
            .post(format!("{}/_test/faults", self.base_url))
            .json(&fault)
            .send()
            .await
            .expect("localstripe /_test/faults");
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    /// How many requests the injected faults have met so far (a delayed request counts from when
    /// it arrives, before its delay).
    pub async fn fault_hits(&self) -> u64 {
        self.test_endpoint("/_test/faults").await["faults"]
            .as_array()
            .expect("fault list")
            .iter()
            .filter_map(|fault| fault["hits"].as_u64())
            .sum()
    }

    pub async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_test/faults", self.base_url))
            .send()
            .await
            .expect("localstripe /_test/faults");
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        form: &[(&str, &str)],
    ) -> Value {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        // Stripe.js sends the publishable key in the form, the server libraries as a bearer token.
        let request = if key.starts_with("pk_") {
            let mut form = form.to_vec();
            form.push(("key", key));
            request.form(&form)
        } else {
            request.bearer_auth(key).form(form)
        };
        let response = request.send().await.expect("localstripe request");
        let status = response.status();
        let body: Value = response.json().await.expect("json body");
        assert!(
            status.is_success() || body["error"].is_object(),
            "{status}: {body}"
        );
        body
    }

    /// Reads a PaymentIntent as Stripe holds it (counted like any other request).
    pub async fn payment_intent(&self, id: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/payment_intents/{id}"),
            SECRET_KEY,
            &[],
        )
        .await
    }

    /// All PaymentIntents at the fake (every page).
    pub async fn payment_intents(&self) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let path = match all.last() {
                Some(last) => format!(
                    "/v1/payment_intents?limit=100&starting_after={}",
                    last["id"].as_str().expect("id")
                ),
                None => "/v1/payment_intents?limit=100".to_owned(),
            };
            let list = self
                .call(reqwest::Method::GET, &path, SECRET_KEY, &[])
                .await;
            let page = list["data"].as_array().cloned().unwrap_or_default();
            let more = list["has_more"].as_bool().unwrap_or(false) && !page.is_empty();
            all.extend(page);
            if !more {
                return all;
            }
        }
    }

    /// Pays the intent with the card that succeeds ([`CARD_SUCCEEDS`]) and checks that it did;
    /// returns the intent.
    pub async fn pay_succeeding(&self, intent_id: &str, client_secret: &str) -> Value {
        let intent = self.pay(intent_id, client_secret, CARD_SUCCEEDS).await;
        assert_eq!(intent["status"], "succeeded", "{intent}");
        intent
    }

    /// Pays as Stripe.js would in the browser: a card PaymentMethod made with the publishable
    /// key, then confirm with the client secret. Returns the confirmed intent (or the error).
    pub async fn pay(&self, intent_id: &str, client_secret: &str, card_number: &str) -> Value {
        let method = self
            .call(
                reqwest::Method::POST,
                "/v1/payment_methods",
                super::PUBLISHABLE_KEY,
                &[
                    ("type", "card"),
                    ("card[number]", card_number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2034"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        let method_id = method["id"].as_str().expect("payment method id").to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/v1/payment_intents/{intent_id}/confirm"),
            super::PUBLISHABLE_KEY,
            &[
                ("payment_method", &method_id),
                ("client_secret", client_secret),
                ("return_url", super::RETURN_URL),
            ],
        )
        .await
    }

    /// Settles a 3-D Secure authentication the way the bank page would.
    pub async fn authenticate(&self, intent_id: &str, client_secret: &str, success: bool) {
        let response = self
            .http
            .post(format!(
                "{}/v1/payment_intents/{intent_id}/_authenticate",
                self.base_url
            ))
            .form(&[
                ("key", super::PUBLISHABLE_KEY),
                ("client_secret", client_secret),
                ("success", if success { "true" } else { "false" }),
            ])
            .send()
            .await
            .expect("authenticate");
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    /// Every refund of a PaymentIntent at the fake, newest first.
    pub async fn refunds_of(&self, intent_id: &str) -> Vec<Value> {
        let list = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/refunds?payment_intent={intent_id}&limit=100"),
                SECRET_KEY,
                &[],
            )
            .await;
        list["data"].as_array().cloned().unwrap_or_default()
    }

    /// A refund made at Stripe directly (the Dashboard): no paybridge metadata, no key.
    pub async fn refund_directly(&self, intent_id: &str, amount: i64) -> Value {
        let refund = self
            .call(
                reqwest::Method::POST,
                "/v1/refunds",
                SECRET_KEY,
                &[
                    ("payment_intent", intent_id),
                    ("amount", &amount.to_string()),
                ],
            )
            .await;
        assert!(refund["id"].is_string(), "{refund}");
        refund
    }

    /// Moves a refund at the fake to `status` later, as Stripe does (`failure_reason` for
    /// `failed`), sending its events.
    pub async fn set_refund_status(&self, refund_id: &str, status: &str, failure_reason: &str) {
        let mut form = vec![("status", status)];
        if !failure_reason.is_empty() {
            form.push(("failure_reason", failure_reason));
        }
        let refund = self
            .call(
                reqwest::Method::POST,
                &format!("/_test/refunds/{refund_id}/status"),
                SECRET_KEY,
                &form,
            )
            .await;
        assert_eq!(refund["status"], status, "{refund}");
    }

    /// Makes every following refund start in `status` (`pending`, `requires_action`).
    pub async fn start_refunds_as(&self, status: &str) {
        let rule = self
            .call(
                reqwest::Method::POST,
                "/_test/refunds/next_status",
                SECRET_KEY,
                &[("status", status)],
            )
            .await;
        assert_eq!(rule["status"], status, "{rule}");
    }

    /// A charge as the fake holds it.
    pub async fn charge(&self, id: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/charges/{id}"),
            SECRET_KEY,
            &[],
        )
        .await
    }

    /// Lapses the authorization of an intent awaiting capture (Stripe cancels it); returns the
    /// intent.
    pub async fn expire_authorization(&self, intent_id: &str) -> Value {
        let response = self
            .http
            .post(format!(
                "{}/_test/payment_intents/{intent_id}/expire_authorization",
                self.base_url
            ))
            .send()
            .await
            .expect("localstripe expire_authorization");
        assert!(response.status().is_success(), "{response:?}");
        response.json().await.expect("intent JSON")
    }

    /// Opens a dispute (`{"payment_intent": …}`) or changes one (`{"dispute": "dp_…"}`) through
    /// `/_test/disputes`; the fake records the `charge.dispute.*` event. Returns the dispute.
    pub async fn dispute(&self, change: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/_test/disputes", self.base_url))
            .json(&change)
            .send()
            .await
            .expect("localstripe /_test/disputes");
        assert!(response.status().is_success(), "{response:?}");
        response.json().await.expect("dispute JSON")
    }

    /// The events of one type the fake made, newest first.
    pub async fn events_of_type(&self, event_type: &str) -> Vec<Value> {
        let list = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/events?type={event_type}&limit=100"),
                SECRET_KEY,
                &[],
            )
            .await;
        list["data"].as_array().cloned().unwrap_or_default()
    }
}
