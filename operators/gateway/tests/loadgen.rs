//! Tests of the load generator and the local backends against each other (no nginx): counts are
//! exact, failures are counted rather than panicking, and backends echo what they were sent
//! without echoing credentials.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gateway_operator::backend::{Backend, sha256_hex};
use gateway_operator::loadgen::{
    Expect, LoadConfig, LoadError, LoadGen, RequestSpec, first_success_after, request, wait_until,
};
use serde_json::Value;

/// Generous bound for anything that should take well under a second on an idle machine.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_rate_is_counted_exactly() -> anyhow::Result<()> {
    let a = Backend::start("a").await?;
    let cfg = LoadConfig {
        total: Some(400),
        ..LoadConfig::new(a.addr(), "shop.example", "/api", 200)
    };
    let stats = LoadGen::start(cfg)?.finish(PATIENCE).await;
    assert_eq!(stats.sent, 400, "{stats}");
    assert_eq!(stats.ok, 400, "{stats} {:?}", stats.failures);
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    assert_eq!(stats.skipped, 0, "{stats}");
    assert_eq!(stats.in_flight, 0, "{stats}");
    assert_eq!(stats.by_status.get(&200), Some(&400), "{stats}");
    assert_eq!(stats.by_backend.get("a"), Some(&400), "{stats}");
    assert_eq!(a.requests(), 400);
    // 400 requests at 200/s: the last is due at 1.995 s, so the run cannot be faster than that.
    assert!(stats.elapsed >= Duration::from_millis(1990), "{stats}");
    assert!(stats.latency_p50 <= stats.latency_p99 && stats.latency_p99 <= stats.latency_max);
    assert!(stats.latency_max > Duration::ZERO, "{stats}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_ended_run_sends_rate_times_elapsed() -> anyhow::Result<()> {
    let a = Backend::start("a").await?;
    let b = Backend::start("b").await?;
    let load_a = LoadGen::start(LoadConfig::new(a.addr(), "h", "/", 200))?;
    let load_b = LoadGen::start(LoadConfig::new(b.addr(), "h", "/", 100))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sa, sb) = (load_a.stop().await, load_b.stop().await);
    for (stats, rate) in [(&sa, 200.0), (&sb, 100.0)] {
        // Counting starts at t = 0 with one request, so sent = floor(elapsed * rate) + 1 for
        // the elapsed time up to the last scheduling wake-up: within 10% of rate * elapsed.
        let expected = rate * stats.elapsed.as_secs_f64();
        let sent = stats.sent as f64;
        assert!(
            (sent - expected).abs() <= expected * 0.1 + 2.0,
            "{stats}: expected about {expected}"
        );
        assert_eq!(stats.failed, 0, "{:?}", stats.failures);
        assert_eq!(stats.sent, stats.ok + stats.failed + stats.in_flight, "{stats}");
        assert_eq!(stats.in_flight, 0, "{stats}");
    }
    assert_eq!(sa.by_backend.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(sb.by_backend.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(sa.backend_share("a"), 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_backend_failures_are_counted() -> anyhow::Result<()> {
    let a = Backend::start("a").await?;
    let addr = a.addr();
    let load = LoadGen::start(LoadConfig::new(addr, "h", "/", 200))?;
    // Wait for successes (by count, not by sleeping).
    wait_for(|| load.snapshot().ok >= 50, "50 successes").await;
    a.shutdown().await;
    // Once shut down, new connections are refused: wait for failures to be counted.
    wait_for(|| load.snapshot().connect_errors >= 20, "20 connect errors").await;
    let stats = load.stop().await;
    assert!(stats.ok >= 50, "{stats}");
    assert!(stats.failed >= 20, "{stats}");
    assert_eq!(stats.sent, stats.ok + stats.failed, "{stats}");
    assert!(stats.connect_errors <= stats.failed, "{stats}");
    assert_eq!(
        stats.failures.len(),
        20,
        "the first 20 failures are kept: {stats:?}"
    );
    assert!(
        stats.failures.iter().any(|f| f.contains("cannot connect")),
        "{:?}",
        stats.failures
    );

    // A one-shot request to the dead address is an error value, not a panic.
    let error = request(addr, &RequestSpec::get("h", "/")).await.unwrap_err();
    assert!(matches!(error, LoadError::Connect { .. }), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_counts_timeouts() -> anyhow::Result<()> {
    let a = Backend::start("slow").await?;
    a.set_delay(Duration::from_secs(2))?;
    assert!(a.set_delay(Duration::from_secs(61)).is_err());
    let cfg = LoadConfig {
        timeout: Duration::from_millis(200),
        total: Some(20),
        ..LoadConfig::new(a.addr(), "h", "/", 100)
    };
    let stats = LoadGen::start(cfg)?.finish(PATIENCE).await;
    assert_eq!(stats.sent, 20, "{stats}");
    assert_eq!(stats.failed, 20, "{stats}");
    assert_eq!(stats.timeouts, 20, "{stats}");
    assert_eq!(stats.ok, 0, "{stats}");
    assert!(stats.failures[0].contains("timeout"), "{:?}", stats.failures);

    let error = request(
        a.addr(),
        &RequestSpec::get("h", "/").timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, LoadError::Timeout { .. }), "{error}");

    a.set_delay(Duration::ZERO)?;
    let response = request(a.addr(), &RequestSpec::get("h", "/")).await?;
    assert_eq!(response.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_statuses_are_failures_and_expect_is_honoured() -> anyhow::Result<()> {
    let a = Backend::start("a").await?;
    let big = Bytes::from(vec![b'x'; 2 << 20]);
    // Default expectation: a 413 is a failure.
    let cfg = LoadConfig {
        method: http::Method::POST,
        body: Some(big.clone()),
        total: Some(5),
        ..LoadConfig::new(a.addr(), "h", "/upload", 50)
    };
    let stats = LoadGen::start(cfg.clone())?.finish(PATIENCE).await;
    assert_eq!(stats.failed, 5, "{stats} {:?}", stats.failures);
    assert_eq!(stats.unexpected_status, 5, "{stats}");
    assert_eq!(stats.by_status.get(&413), Some(&5), "{stats}");
    assert!(stats.failures[0].contains("413"), "{:?}", stats.failures);
    // Expecting 413 makes the same run all ok.
    let cfg = LoadConfig {
        expect: Expect::any_of([413]),
        ..cfg
    };
    let stats = LoadGen::start(cfg)?.finish(PATIENCE).await;
    assert_eq!((stats.ok, stats.failed), (5, 0), "{stats} {:?}", stats.failures);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_body_gets_413_and_small_body_is_echoed() -> anyhow::Result<()> {
    let a = Backend::start("a").await?;
    let big = RequestSpec::post("h", "/upload", vec![b'x'; (1 << 20) + 1]);
    let response = request(a.addr(), &big).await?;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.backend(), Some("a"));

    let exact = RequestSpec::post("h", "/upload", vec![b'y'; 1 << 20]);
    let response = request(a.addr(), &exact).await?;
    assert_eq!(response.status, 200);
    let echo: Value = response.json()?;
    assert_eq!(echo["body_bytes"], 1 << 20);

    let small = RequestSpec::post("h", "/upload?x=1", "hello");
    let echo: Value = request(a.addr(), &small).await?.json()?;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/upload");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body"], "hello");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_describes_the_request_without_credentials() -> anyhow::Result<()> {
    let a = Backend::start("a").await?;
    let spec = RequestSpec::get("shop.example", "/v1/things")
        .header("authorization", "Bearer sk-very-secret")
        .header("x-api-key", "key-123")
        .header("x-request-id", "r1");
    let response = request(a.addr(), &spec).await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("a"));
    let text = response.text();
    assert!(!text.contains("sk-very-secret"), "{text}");
    assert!(!text.contains("key-123"), "{text}");
    let echo: Value = response.json()?;
    assert_eq!(echo["backend"], "a");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/v1/things");
    assert_eq!(echo["host"], "shop.example");
    let headers = &echo["headers"];
    assert_eq!(headers["x-request-id"], "r1");
    assert_eq!(headers["authorization"], "present");
    assert_eq!(
        headers["authorization_sha256"],
        sha256_hex(b"Bearer sk-very-secret")
    );
    assert_eq!(headers["x-api-key"], "present");
    assert_eq!(headers["x-api-key_sha256"], sha256_hex(b"key-123"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reuses_connections_and_retries_once() -> anyhow::Result<()> {
    let a = Backend::start("a").await?;
    let cfg = LoadConfig {
        keepalive: true,
        total: Some(200),
        ..LoadConfig::new(a.addr(), "h", "/", 200)
    };
    let stats = LoadGen::start(cfg)?.finish(PATIENCE).await;
    assert_eq!(
        (stats.sent, stats.ok, stats.failed),
        (200, 200, 0),
        "{stats} {:?}",
        stats.failures
    );
    assert_eq!(stats.by_backend.get("a"), Some(&200));

    Ok(())
}

/// A raw HTTP/1.1 server that answers the first request on each connection (keep-alive) and
/// closes the connection, without a response, when a second request arrives on it: exactly
/// the race where a client reuses a connection the server has just given up.
async fn one_request_per_connection_server() -> anyhow::Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // First request head: answer it and keep the connection open.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend: raw\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                // Any byte of a second request: close without answering.
                let _ = stream.read(&mut chunk).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_retries_a_request_the_reused_connection_dropped() -> anyhow::Result<()> {
    let addr = one_request_per_connection_server().await?;
    let cfg = LoadConfig {
        keepalive: true,
        total: Some(20),
        ..LoadConfig::new(addr, "h", "/", 40)
    };
    let stats = LoadGen::start(cfg)?.finish(PATIENCE).await;
    assert_eq!(
        (stats.sent, stats.ok, stats.failed),
        (20, 20, 0),
        "{stats} {:?}",
        stats.failures
    );
    assert_eq!(stats.by_backend.get("raw"), Some(&20));
    // Every reuse fails before a response and is retried once on a new connection (unless the
    // client noticed the close first and did not reuse at all): at least one retry happened.
    assert!(stats.retried >= 1, "{stats}");

    // Without keep-alive nothing is reused, so nothing is retried.
    let stats = LoadGen::start(LoadConfig {
        total: Some(10),
        ..LoadConfig::new(addr, "h", "/", 40)
    })?
    .finish(PATIENCE)
    .await;
    assert_eq!(
        (stats.ok, stats.failed, stats.retried),
        (10, 0, 0),
        "{stats} {:?}",
        stats.failures
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_success_after_waits_for_the_named_backend() -> anyhow::Result<()> {
    // Nothing listens yet on this address: reserve one by starting and stopping a backend.
    let probe = Backend::start("probe").await?;
    let addr: SocketAddr = probe.addr();
    probe.shutdown().await;

    let waiter = tokio::spawn(async move {
        first_success_after(
            addr,
            "h",
            "/",
            &[("x-test".to_owned(), "1".to_owned())],
            Some("late"),
            Duration::from_millis(5),
            PATIENCE,
        )
        .await
    });
    // Start "late" only once the waiter has been polling for a while (it keeps failing).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = Backend::start_on("late", addr).await?;
    let took = waiter.await??;
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(late.requests() >= 1);

    // A backend that never matches: NoMatch with the last outcome, after the timeout.
    let error = first_success_after(
        addr,
        "h",
        "/",
        &[],
        Some("other"),
        Duration::from_millis(10),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, LoadError::NoMatch { last, .. } if last.contains("late")),
        "{error}"
    );

    let (_, response) = wait_until(
        addr,
        &RequestSpec::get("h", "/"),
        Duration::from_millis(5),
        PATIENCE,
        |r| r.status == 200,
    )
    .await?;
    assert_eq!(response.backend(), Some("late"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_mode_answers_models_and_chat_completions() -> anyhow::Result<()> {
    let ai = Backend::start_openai("llm-a").await?;
    let models: Value = request(ai.addr(), &RequestSpec::get("h", "/v1/models"))
        .await?
        .json()?;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "llm-a");
    assert_eq!(models["data"][0]["object"], "model");
    let bare: Value = request(ai.addr(), &RequestSpec::get("h", "/models"))
        .await?
        .json()?;
    assert_eq!(bare["data"][0]["id"], "llm-a");

    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"say hi"}]}"#;
    let spec = RequestSpec::post("h", "/openai/v1/chat/completions", body)
        .header("content-type", "application/json")
        .header("authorization", "Bearer upstream-key");
    let response = request(ai.addr(), &spec).await?;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(!response.text().contains("upstream-key"));
    let completion: Value = response.json()?;
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gpt-test");
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(content.contains("llm-a"), "{content}");
    assert_eq!(completion["usage"]["prompt_tokens"], 2);
    assert_eq!(
        completion["headers"]["authorization_sha256"],
        sha256_hex(b"Bearer upstream-key")
    );

    let stream = RequestSpec::post(
        "h",
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"messages":[]}"#,
    );
    let response = request(ai.addr(), &stream).await?;
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert!(
        response.text().ends_with("data: [DONE]\n\n"),
        "{}",
        response.text()
    );

    let missing = RequestSpec::post("h", "/v1/chat/completions", "{}");
    assert_eq!(request(ai.addr(), &missing).await?.status, 400);

    // Other paths are echoed as by a plain backend.
    let echo: Value = request(ai.addr(), &RequestSpec::get("h", "/healthz"))
        .await?
        .json()?;
    assert_eq!(echo["backend"], "llm-a");
    Ok(())
}

#[tokio::test]
async fn invalid_configurations_are_rejected() {
    let addr = SocketAddr::from(([127, 0, 0, 1], 9));
    let error = LoadGen::start(LoadConfig::new(addr, "h", "/", 0)).unwrap_err();
    assert!(matches!(error, LoadError::InvalidConfig(_)), "{error}");
    assert!(Backend::start("").await.is_err());
    assert!(Backend::start("has space").await.is_err());
    let error = wait_until(
        addr,
        &RequestSpec::get("h", "/"),
        Duration::ZERO,
        PATIENCE,
        |_| true,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, LoadError::InvalidConfig(_)), "{error}");
}

/// Waits (polling every 5 ms, at most [`PATIENCE`]) for `condition`.
async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
