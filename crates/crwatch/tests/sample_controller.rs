//! The sample controller example runs, not only compiles: on the embedded server it installs
//! its CRD (group `samplecontroller.k8s.io`, protected: it carries the approval annotation a
//! real server requires) and reconciles Foos into Deployments.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_sample_controller_reconciles_foos_on_the_embedded_server() {
    // `cargo test` builds the examples next to the test binaries' directory.
    let exe = std::env::current_exe().expect("test binary");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
        .join(format!("sample_controller{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing (cargo test builds examples)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args(["--embedded", "--objects", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sample controller");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sample controller did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reconciled 20 Foos (20 Deployments)"), "{stdout}");
}
