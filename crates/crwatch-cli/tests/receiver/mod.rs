//! A local HTTP receiver for webhook tests: records CloudEvents, can be taken "down" (503) and
//! slowed down; and a helper that waits for a condition with a timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<Value>>,
    down: AtomicBool,
    delay_ms: AtomicU64,
}

/// The receiver; stops with the test's runtime.
pub struct Receiver {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

async fn receive(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> StatusCode {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            s.events.lock().unwrap().push(v);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

#[allow(dead_code)]
impl Receiver {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().route("/", post(receive)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn set_up(&self, up: bool) {
        self.shared.down.store(!up, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn events(&self) -> Vec<Value> {
        self.shared.events.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.shared.events.lock().unwrap().clear();
    }

    pub fn len(&self) -> usize {
        self.shared.events.lock().unwrap().len()
    }

    pub fn has_id(&self, id: &str) -> bool {
        self.shared.events.lock().unwrap().iter().any(|e| e["id"] == id)
    }
}

/// Wait until `cond` holds, failing the test after 30 s with `what`.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
