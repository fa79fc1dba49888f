//! Two `soma daemon`s on one PostgreSQL database (`[store] backend =
//! "postgres"`, issue 17): an API token created with `soma token create`
//! on either node is accepted by both, and a token revoked through one
//! daemon's API is refused by the other within its refresh (~1 s).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use soma_tests::{
    daemon::{self as harness, DaemonProcess as Daemon},
    postgres::Postgres,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// `soma --config CONFIG token create …` (on the shared store): the token.
fn token(data: &Path, config: &Path, tenant: &str, scopes: &str) -> (String, String) {
    let out = harness::soma(bin(), data)
        .arg("--config")
        .arg(config)
        .args([
            "token", "create", "--tenant", tenant, "--scopes", scopes, "--json",
        ])
        .output()
        .expect("run soma token create");
    assert!(
        out.status.success(),
        "soma token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        doc["token"].as_str().expect("token").to_owned(),
        doc["id"].as_str().expect("id").to_owned(),
    )
}

#[test]
fn two_daemons_on_one_postgres_share_api_tokens() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let store = format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n");
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut configs = Vec::new();
    for dir in [&a_dir, &b_dir] {
        let config = dir.path().join("soma.toml");
        std::fs::write(&config, harness::config_text("", &store)).expect("config");
        configs.push(config);
    }
    // Tokens made on node A's data directory, before any daemon runs.
    let (ops, _) = token(a_dir.path(), &configs[0], "ops", "operator");
    let (reader, reader_id) = token(a_dir.path(), &configs[0], "acme", "read");
    let a = Daemon::spawn(bin(), a_dir.path(), &configs[0]);
    let b = Daemon::spawn(bin(), b_dir.path(), &configs[1]);
    for d in [&a, &b] {
        assert_eq!(d.get("/v1/capsules", &reader).0, 200, "{}", d.url);
    }
    // Revoked through A's API: B refuses it within about a second.
    let (status, body, _) = a.request(
        reqwest::Method::DELETE,
        &format!("/v1/tokens/{reader_id}"),
        Some(&ops),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.get("/v1/capsules", &reader).0, 401, "at once on A");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = b.get("/v1/capsules", &reader).0;
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "B still accepts a revoked token");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A token made on B's node (while both run) works on A.
    let (second, _) = token(b_dir.path(), &configs[1], "acme", "read");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("/v1/capsules", &second).0 != 200 {
        assert!(Instant::now() < deadline, "A never saw B's token");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.get("/v1/tokens", &ops).0, 200);
}
