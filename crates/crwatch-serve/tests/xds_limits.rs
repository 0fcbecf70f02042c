//! The server's stream limit: beyond `max_streams` subscribers a new stream is refused with
//! `RESOURCE_EXHAUSTED` (and a message saying what to do), and the place is free again once a
//! subscriber leaves, so memory cannot grow with the number of connections.

use std::time::Duration;

use crwatch::xds::discovery::DeltaDiscoveryRequest;
use crwatch::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crwatch_serve::xds::{Limits, ServerOptions, XdsServer};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// Open a delta stream; `Err` carries the status the server answered with.
async fn open(
    addr: std::net::SocketAddr,
) -> Result<
    (
        tokio::sync::mpsc::Sender<DeltaDiscoveryRequest>,
        tonic::Streaming<crwatch::xds::discovery::DeltaDiscoveryResponse>,
    ),
    tonic::Status,
> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        type_url: "core/v1/ConfigMap".into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    })
    .await
    .expect("request");
    let stream = client
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused_until_one_leaves() {
    let xds = XdsServer::new(ServerOptions {
        limits: Limits {
            max_streams: 2,
            ..Limits::default()
        },
        ..ServerOptions::default()
    });
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let addr = listener.local_addr().expect("address");
    let serving = cancel.clone();
    tokio::spawn(async move { xds.serve(listener, None, serving).await });

    let first = open(addr).await.expect("the first stream");
    let _second = open(addr).await.expect("the second stream");
    let refused = open(addr).await.expect_err("the third is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("already serves 2 streams"),
        "{}",
        refused.message()
    );

    // The first subscriber leaves: its place is free once the server sees the stream end.
    drop(first);
    let start = std::time::Instant::now();
    loop {
        match open(addr).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::ResourceExhausted && start.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("a place never became free: {s}"),
        }
    }
}
