//! Test support shared by certreg's crates, never shipped: the harness that runs a Playwright
//! script (Node.js + Debian's Chromium) for the browser tests of the agent and the web service.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts Chromium; `CERTREG_CHROMIUM` overrides it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Checks node and Chromium and runs `npm ci` in `dir` when its node_modules is missing.
/// Fails with the Debian package names instead of skipping: a silently skipped browser test is
/// a browser test that never runs in CI. `what` names the test in the messages.
pub fn require_tools(dir: &Path, what: &str) -> PathBuf {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "{what} needs Node.js: install the Debian packages `nodejs` and `npm` \
         (apt-get install nodejs npm); `node --version` gave {node:?}"
    );
    let chromium = std::env::var_os("CERTREG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    assert!(
        chromium.is_file(),
        "{what} needs Chromium at {}: install the Debian package `chromium` \
         (apt-get install chromium), or set CERTREG_CHROMIUM",
        chromium.display()
    );
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("running npm failed ({e}): install the Debian package `npm`")
            });
        assert!(
            out.status.success(),
            "npm ci --prefix {} failed (it needs the npm registry):\n{}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    chromium
}

/// Runs `node script` in `dir` with `envs`, calling `tick` about every 100 ms while it runs
/// (tests use it to answer the script), and kills it after `deadline` — the backstop if node
/// itself hangs. Returns (exit code, stdout, stderr); the code is `None` when it was killed.
pub fn run_node(
    script: &Path,
    dir: &Path,
    envs: &[(&str, String)],
    deadline: Duration,
    tick: &mut dyn FnMut(),
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start node");
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    // Read both pipes on their own threads so a chatty script never blocks on a full pipe.
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tick();
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status.and_then(|s| s.code()),
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
    )
}
