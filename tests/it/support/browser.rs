//! A real browser to drive: headless Chromium (Debian's `chromium`, or `PAYBRIDGE_TEST_CHROMIUM`)
//! controlled over the Chrome DevTools Protocol, through a minimal WebSocket client (text frames
//! only; enough for CDP). Tests type, click, wait for conditions and take screenshots as a
//! customer's browser would be used.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::eventually;

/// The browser binary: `PAYBRIDGE_TEST_CHROMIUM`, else Debian's.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("PAYBRIDGE_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is missing at {}: the browser tests need Debian's chromium \
         (`apt-get install -y chromium`), or PAYBRIDGE_TEST_CHROMIUM set to a Chromium binary. \
         These tests never pass without a browser.",
        path.display()
    );
    path
}

/// One headless Chromium with one page, killed on drop.
pub struct Browser {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `about:blank` and connects to its page.
    pub async fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1024,768",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it picked into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = eventually(Duration::from_secs(30), || async {
            let text = tokio::fs::read_to_string(&port_file)
                .await
                .map_err(|e| e.to_string())?;
            text.lines()
                .next()
                .and_then(|line| line.trim().parse().ok())
                .ok_or_else(|| format!("no port yet in {text:?}"))
        })
        .await
        .expect("Chromium's DevTools port within 30 s");
        let page_url: String = eventually(Duration::from_secs(10), || async {
            let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            targets
                .as_array()
                .and_then(|all| all.iter().find(|t| t["type"] == "page"))
                .and_then(|page| page["webSocketDebuggerUrl"].as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("no page yet: {targets}"))
        })
        .await
        .expect("Chromium's page target");
        let path = page_url
            .split_once(&format!("127.0.0.1:{port}"))
            .map(|(_, path)| path.to_owned())
            .expect("a local WebSocket URL");
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connects to DevTools");
        let (read, mut writer) = stream.into_split();
        writer
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: cGF5YnJpZGdlLWJyb3dzZXI=\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("handshake sent");
        let mut reader = BufReader::new(read);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(reader.read_u8().await.expect("handshake answer"));
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "no WebSocket: {head}");
        let mut browser = Browser {
            reader,
            writer,
            next_id: 0,
            _child: child,
            _profile: profile,
        };
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser
    }

    async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        // Client frames are masked (RFC 6455 §5.3); any key will do here.
        let mask = [0x5au8, 0x17, 0xc3, 0x8e];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer.write_all(&frame).await.expect("frame sent");
    }

    /// The next whole text message (continuation frames joined; control frames skipped).
    async fn read_text(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let first = self.reader.read_u8().await.expect("frame");
            let second = self.reader.read_u8().await.expect("frame length");
            let len = match second & 0x7f {
                126 => u64::from(self.reader.read_u16().await.expect("length")),
                127 => self.reader.read_u64().await.expect("length"),
                n => u64::from(n),
            };
            let mask = if second & 0x80 != 0 {
                let mut key = [0u8; 4];
                self.reader.read_exact(&mut key).await.expect("mask");
                Some(key)
            } else {
                None
            };
            let mut payload = vec![0u8; usize::try_from(len).expect("frame size")];
            self.reader.read_exact(&mut payload).await.expect("payload");
            if let Some(key) = mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= key[i % 4];
                }
            }
            match first & 0x0f {
                0x0 | 0x1 => {
                    message.extend_from_slice(&payload);
                    if first & 0x80 != 0 {
                        return String::from_utf8(message).expect("UTF-8 message");
                    }
                }
                0x8 => panic!("DevTools closed the connection"),
                _ => {} // ping, pong: nothing to do for a short-lived test
            }
        }
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.send_text(&command.to_string()).await;
        loop {
            let message: Value =
                serde_json::from_str(&self.read_text().await).expect("JSON message");
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    return json!({"error": error});
                }
                return message["result"].clone();
            }
        }
    }

    /// Opens `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({"url": url})).await;
        assert!(result.get("errorText").is_none(), "navigating: {result}");
    }

    /// The value of a JavaScript expression in the current page (promises awaited); `Err` with
    /// what went wrong (an exception, a page between two documents).
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(error) = result.get("error") {
            return Err(error.to_string());
        }
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits (at most `within`) until `expression` is true in the page; on timeout, panics with
    /// `what`, the last value seen, and what the page shows.
    pub async fn wait_until(&mut self, within: Duration, expression: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.eval(expression).await;
            if seen == Ok(Value::Bool(true)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let page = self
                    .eval("location.href + '\\n' + (document.body ? document.body.innerText : '')")
                    .await;
                panic!("{what} not within {within:?}: {seen:?}; page: {page:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Focuses the element `selector` and types `text` into it, replacing what it held.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let selector = serde_json::to_string(selector).expect("json");
        let focused = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector}); if (!e) return false; \
                 e.value = ''; e.focus(); return document.activeElement === e; }})()"
            ))
            .await;
        assert_eq!(focused, Ok(Value::Bool(true)), "focus on {selector}");
        let result = self.call("Input.insertText", json!({"text": text})).await;
        assert!(result.get("error").is_none(), "typing: {result}");
    }

    /// Clicks the element `selector` (a left click at its centre, as a mouse would).
    pub async fn click(&mut self, selector: &str) {
        let selector_json = serde_json::to_string(selector).expect("json");
        let centre = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await
            .unwrap_or_else(|e| panic!("locating {selector}: {e}"));
        let (x, y) = (
            centre[0]
                .as_f64()
                .unwrap_or_else(|| panic!("no {selector}")),
            centre[1].as_f64().expect("y"),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            let result = self
                .call(
                    "Input.dispatchMouseEvent",
                    json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                )
                .await;
            assert!(
                result.get("error").is_none(),
                "clicking {selector}: {result}"
            );
        }
    }

    /// Sizes the viewport as a device `width` × `height` CSS pixels wide.
    pub async fn set_viewport(&mut self, width: u32, height: u32, mobile: bool) {
        let result = self
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
            )
            .await;
        assert!(result.get("error").is_none(), "viewport: {result}");
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let result = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = result["data"]
            .as_str()
            .unwrap_or_else(|| panic!("no screenshot: {result}"));
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 PNG")
    }
}
