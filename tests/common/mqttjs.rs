//! MQTT.js (npm `mqtt` 5.x, installed in tests/js by `.ci/install`), run under Node with
//! tests/js/mqttjs_check.js: a client no one here wrote, over TCP and WebSocket.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// The whole script (connects, three publishes, a retained message) within this bound.
const SCRIPT_WAIT: Duration = Duration::from_secs(60);

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Runs `node tests/js/mqttjs_check.js ARGS`: whether it exited 0, its stdout (one line per check) and its
/// stderr.
/// Fails the test, never skips it, when MQTT.js is not installed.
pub async fn check(args: &[&str]) -> (bool, String, String) {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/mqtt/package.json").exists(),
        "MQTT.js is not installed in {}: run `bash .ci/install` (it runs `npm ci` there)",
        dir.display()
    );
    let out = tokio::process::Command::new("node")
        .arg(dir.join("mqttjs_check.js"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCRIPT_WAIT, out)
        .await
        .unwrap_or_else(|_| panic!("mqttjs_check.js {args:?} did not finish"))
        .unwrap_or_else(|e| panic!("node must be installed (bash .ci/install): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The full round trip (see mqttjs_check.js) must pass, with the lines it prints.
pub async fn roundtrip(url: &str, version: u8, credentials: Option<(&str, &str)>) {
    let v = version.to_string();
    let mut args = vec!["roundtrip", url, &v];
    if let Some((u, p)) = credentials {
        args.extend([u, p]);
    }
    let (ok, out, err) = check(&args).await;
    let mut want = vec![
        "connected",
        "subscribed qos 1",
        "published and received qos 0",
        "published and received qos 1",
        "published and received qos 2",
        "retained received",
    ];
    if version == 5 {
        want.push("user properties received");
    }
    want.push("ok");
    assert!(ok, "MQTT.js {url} v{version}:\n{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        want,
        "MQTT.js {url} v{version}"
    );
}

/// The connection must be refused with this CONNACK code (3.1.1 return code or MQTT 5 reason code).
pub async fn refused(url: &str, version: u8, credentials: Option<(&str, &str)>, code: u8) {
    let v = version.to_string();
    let mut args = vec!["refused", url, &v];
    if let Some((u, p)) = credentials {
        args.extend([u, p]);
    }
    let (ok, out, err) = check(&args).await;
    assert!(ok, "MQTT.js {url} v{version} {credentials:?}:\n{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![format!("refused {code}").as_str(), "ok"],
        "MQTT.js {url} v{version} {credentials:?}"
    );
}
