//! YAML manifests as `crwatch-apiserver --crd FILE` applies them (`ApiServer::apply_file`:
//! serde-saphyr's multi-document reader, then server-side apply of every document), on a
//! fresh server per input, so CRDs in the file define the kinds of later documents and their
//! schemas validate them. Also the YAML/JSON body decoder of apply patches.
//!
//! Input: the manifest. Invariants: no panic; every object the server accepts has a name and
//! a resourceVersion and decodes again with the server's own decoder (a state file holding it
//! must load).
#![no_main]

use std::sync::OnceLock;

use crwatch_apiserver::fuzzing::{Server, manifest_documents};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Documents applied per input: more only repeats what a few already reach.
const MAX_DOCS: usize = 16;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = crwatch_apiserver::decode::json_or_yaml(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = manifest_documents(text) else {
        return;
    };
    runtime().block_on(async {
        let server = Server::new().await.expect("a server with its default namespaces");
        for doc in docs.into_iter().take(MAX_DOCS) {
            let Ok(out) = server.apply(doc).await else {
                continue;
            };
            let meta = &out["metadata"];
            assert!(
                meta["name"].as_str().is_some_and(|n| !n.is_empty()),
                "accepted without a name: {}",
                common::short(&out.to_string())
            );
            assert!(
                meta["resourceVersion"]
                    .as_str()
                    .is_some_and(|rv| rv.parse::<u64>().is_ok()),
                "accepted without a resourceVersion: {}",
                common::short(&out.to_string())
            );
        }
        for obj in server.objects() {
            common::assert_round_trips(&obj);
        }
    });
});
