//! Attacks on the daemon's edge, as an unfriendly client would make them
//! against a real `soma daemon` process: connection-level DoS without a
//! token (slowloris, a connection flood, a stalled TLS handshake), tokens
//! that should stop working (revoked through the API, expired), a tenant
//! admin reaching for another tenant's tokens, budgets, ledger and the
//! shared catalog, `/metrics` read without a token, and a catalog re-pull
//! under a run that pinned the capsule it replaces.
//!
//! Each test measures what the daemon holds (file descriptors, threads,
//! RSS from /proc) or how long things take, and where it applies times
//! another tenant's ordinary calls during the attack.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::daemon::{
    Bystander, DaemonProcess, ProcessUsage, assert_unharmed, client, time_calls, token,
};

// The tests of this file run alone (`crate::alone`): two of them time
// another tenant's calls, and a hostile capsule burning a core in a test
// next to them would be measured instead of the attack (the machine may
// have 2).
use crate::alone as serial;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// The public id of a token (`soma_<id>_<secret>`).
fn id_of(token: &str) -> String {
    token.split('_').nth(1).expect("token id").to_owned()
}

/// Poll `usage` until `done` holds or `deadline` passes; the last reading.
fn usage_until(
    d: &DaemonProcess,
    deadline: Duration,
    done: impl Fn(&ProcessUsage) -> bool,
) -> ProcessUsage {
    let end = Instant::now() + deadline;
    loop {
        let u = d.usage();
        if done(&u) || Instant::now() >= end {
            return u;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read until the peer closes (EOF or reset) or `until`; `Some(bytes)` if
/// it closed in time.
fn read_until_closed(stream: &mut TcpStream, until: Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= until {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset or aborted: closed.
            Err(_) => return Some(got),
        }
    }
}

#[test]
fn slowloris_half_sent_requests_are_closed_after_the_header_timeout_and_others_keep_working() {
    let _serial = serial();
    const HALF_OPEN: usize = 1200;
    const HEADER_TIMEOUT: Duration = Duration::from_millis(3000);
    let dir = tempfile::tempdir().expect("tempdir");
    let globex = token(bin(), dir.path(), "globex", "run,read");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        &format!(
            "header_read_timeout_ms = {}\nidle_timeout_ms = 30000\n",
            HEADER_TIMEOUT.as_millis()
        ),
        "",
    );
    let idle = time_calls(&d.url, &globex, 40);
    let base = d.usage();
    let bystander = Bystander::start(&d.url, &globex, Duration::from_millis(5));

    // No token, no complete head: HTTP/1 heads cut mid-header, connections
    // that send nothing, and HTTP/2 prefaces cut short.
    let addr = d.addr();
    let attack_start = Instant::now();
    let mut half_open = Vec::with_capacity(HALF_OPEN);
    for k in 0..HALF_OPEN {
        let opened = Instant::now();
        let mut s = TcpStream::connect(&addr).expect("connect");
        let partial = match k % 10 {
            0 => String::new(),
            1 => "PRI * HTTP/2.0\r\n".to_owned(),
            _ => format!(
                "POST /v1/runs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Slow-{k}: "
            ),
        };
        s.write_all(partial.as_bytes())
            .expect("send half a request");
        half_open.push((s, opened));
    }
    let attack_sent = Instant::now();
    // The attack landed: the daemon holds the connections, on no extra threads.
    let peak = usage_until(&d, Duration::from_secs(2), |u| {
        u.fds >= base.fds + HALF_OPEN as u64 * 9 / 10
    });
    eprintln!(
        "idle {base:?}; {HALF_OPEN} half-open connections sent in {:?}: {peak:?}",
        attack_sent.duration_since(attack_start)
    );
    assert!(
        peak.fds >= base.fds + HALF_OPEN as u64 * 9 / 10,
        "the daemon did not accept the connections: {peak:?} (idle {base:?})"
    );
    assert!(
        peak.fds <= base.fds + HALF_OPEN as u64 + 64,
        "file descriptors beyond one per connection: {peak:?} (idle {base:?})"
    );
    assert!(
        peak.threads <= base.threads + 8,
        "threads grew with connections: {peak:?} (idle {base:?})"
    );
    assert!(
        peak.rss_kib <= base.rss_kib + 128 * 1024,
        "memory grew too much with connections: {peak:?} (idle {base:?})"
    );

    // Every one is closed after the header timeout, not before.
    let slack = Duration::from_secs(2);
    let mut closed_after = Vec::with_capacity(HALF_OPEN);
    for (k, (mut s, opened)) in half_open.into_iter().enumerate() {
        let closed = read_until_closed(&mut s, opened + HEADER_TIMEOUT + slack);
        let after = opened.elapsed();
        assert!(
            closed.is_some(),
            "connection {k} was still open {after:?} after it opened"
        );
        assert!(
            after >= HEADER_TIMEOUT,
            "connection {k} closed after {after:?}, before the header timeout"
        );
        closed_after.push(after);
    }
    let during = bystander.finish();
    closed_after.sort();
    eprintln!(
        "{HALF_OPEN} half-open connections sent in {:?}, closed {:?} .. {:?} after opening; bystander median idle {:?}, during {:?} ({} calls)",
        attack_sent.duration_since(attack_start),
        closed_after[0],
        closed_after[closed_after.len() - 1],
        idle.median(),
        during.median(),
        during.ok.len()
    );
    assert_unharmed(&idle, &during, 3.0);
    let after = usage_until(&d, Duration::from_secs(5), |u| u.fds <= base.fds + 16);
    eprintln!("after the attack: {after:?}");
    assert!(
        after.fds <= base.fds + 16,
        "file descriptors were not released: {after:?} (idle {base:?})"
    );
}

#[test]
fn keep_alive_connections_are_closed_after_the_idle_timeout_not_the_header_timeout() {
    let _serial = serial();
    const IDLE: Duration = Duration::from_millis(2500);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "header_read_timeout_ms = 1000\nidle_timeout_ms = 2500\n",
        "",
    );
    let mut s = TcpStream::connect(d.addr()).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut buf).expect("response");
    let answered = Instant::now();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Idle past the header timeout: still open; then closed after the idle one.
    let closed = read_until_closed(&mut s, answered + IDLE + Duration::from_secs(3))
        .expect("the idle keep-alive connection was never closed");
    let after = answered.elapsed();
    assert!(closed.is_empty(), "{closed:?}");
    assert!(
        after >= IDLE - Duration::from_millis(50),
        "closed after {after:?}, before daemon.idle_timeout_ms"
    );
}

#[test]
fn an_oversized_request_head_is_refused_with_431() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = DaemonProcess::start(bin(), dir.path(), "max_header_bytes = 16384\n", "");
    let base = d.usage();
    let mut s = TcpStream::connect(d.addr()).expect("connect");
    let huge = "a".repeat(256 * 1024);
    let asked = Instant::now();
    // The daemon may answer and close before it has read it all.
    let _ = s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n").as_bytes(),
    );
    let answer = read_until_closed(&mut s, asked + Duration::from_secs(5))
        .expect("the oversized head was never answered");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    let after = d.usage();
    assert!(
        after.rss_kib <= base.rss_kib + 16 * 1024,
        "{after:?} (idle {base:?})"
    );
}

#[test]
fn a_connection_flood_past_max_connections_is_refused_at_once_and_the_service_recovers() {
    let _serial = serial();
    const CAP: usize = 64;
    const FLOOD: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let globex = token(bin(), dir.path(), "globex", "run,read");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        &format!(
            "max_connections = {CAP}\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 60000\n"
        ),
        "",
    );
    let idle = time_calls(&d.url, &globex, 40);
    let base = d.usage();
    // The bystander's keep-alive connection holds one slot before the flood.
    let bystander = Bystander::start(&d.url, &globex, Duration::from_millis(5));
    let warm = Instant::now() + Duration::from_secs(5);
    while d.usage().fds < base.fds + 1 && Instant::now() < warm {
        std::thread::sleep(Duration::from_millis(10));
    }

    let addr = d.addr();
    let mut flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // Refused connections are answered at once; held ones stay silent.
    let mut refused = vec![None::<Vec<u8>>; FLOOD];
    let deadline = Instant::now() + Duration::from_secs(3);
    for s in &flood {
        s.set_nonblocking(true).expect("nonblocking");
    }
    while Instant::now() < deadline {
        for (k, s) in flood.iter_mut().enumerate() {
            if refused[k].is_some() {
                continue;
            }
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(n) => refused[k] = Some(buf[..n].to_vec()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => refused[k] = Some(Vec::new()),
            }
        }
        if refused.iter().filter(|r| r.is_some()).count() >= FLOOD - CAP {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = refused.iter().filter(|r| r.is_none()).count();
    let during_flood = d.usage();
    eprintln!(
        "cap {CAP}: {held} of {FLOOD} flood connections held, {} refused; {during_flood:?} (idle {base:?})",
        FLOOD - held
    );
    assert!(
        (CAP - 2..CAP).contains(&held),
        "{held} flood connections held with a cap of {CAP} (one slot is the bystander's)"
    );
    for answer in refused.iter().flatten() {
        let text = String::from_utf8_lossy(answer);
        assert!(
            text.is_empty()
                || (text.starts_with("HTTP/1.1 503") && text.contains("too-many-connections")),
            "a refused connection got: {text}"
        );
    }
    assert!(
        refused
            .iter()
            .flatten()
            .any(|a| String::from_utf8_lossy(a).contains("retry-after: 1")),
        "no refused connection was told when to retry"
    );
    assert!(
        during_flood.fds <= base.fds + CAP as u64 + 16,
        "the daemon holds more connections than its cap: {during_flood:?} (idle {base:?})"
    );
    // The flood goes on for two seconds: every newcomer is refused at
    // once (never left hanging), and the bystander keeps being served.
    let sustained = Instant::now();
    let mut newcomers = 0;
    while sustained.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        let mut newcomer = TcpStream::connect(&addr).expect("connect");
        let answer = read_until_closed(&mut newcomer, asked + Duration::from_secs(2))
            .expect("a newcomer past the cap was left hanging");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503"),
            "{text}"
        );
        newcomers += 1;
        // ~1000 a second: enough of a flood, without running this
        // machine out of ephemeral ports.
        std::thread::sleep(Duration::from_millis(1));
    }
    let during = bystander.finish();
    eprintln!(
        "{newcomers} newcomers refused in 2 s; bystander median idle {:?}, during {:?} ({} calls)",
        idle.median(),
        during.median(),
        during.ok.len()
    );
    assert!(newcomers > 100, "only {newcomers} newcomers in 2 s");
    assert_unharmed(&idle, &during, 3.0);

    // The flood leaves: the slots come back and new clients are served.
    drop(flood);
    let recovered = Instant::now();
    let fresh = client();
    loop {
        let ok = fresh
            .get(format!("{}/v1/capsules", d.url))
            .bearer_auth(&globex)
            .send()
            .is_ok_and(|r| r.status().as_u16() == 200);
        if ok {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(5),
            "the daemon did not serve new clients after the flood left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let calls = time_calls(&d.url, &globex, 20);
    assert!(calls.failed.is_empty(), "{:?}", calls.failed);
    let after = usage_until(&d, Duration::from_secs(5), |u| u.fds <= base.fds + 8);
    assert!(after.fds <= base.fds + 8, "{after:?} (idle {base:?})");
}

#[test]
fn a_stalled_tls_handshake_is_cut_at_its_timeout() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("self-signed certificate");
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, certified.cert.pem()).expect("cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("key");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        &format!(
            "tls_handshake_timeout_ms = 1000\n[daemon.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        "",
    );
    assert!(d.url.starts_with("https://"), "{}", d.url);
    let base = d.usage();
    // 200 connections that never start (or never finish) their handshake.
    let stalled: Vec<(TcpStream, Instant)> = (0..200)
        .map(|k| {
            let opened = Instant::now();
            let mut s = TcpStream::connect(d.addr()).expect("connect");
            if k % 2 == 1 {
                // The first bytes of a ClientHello record, then nothing.
                s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                    .expect("send");
            }
            (s, opened)
        })
        .collect();
    // Meanwhile a real client is served.
    let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).expect("root");
    let https = reqwest::blocking::Client::builder()
        .tls_certs_only([root])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let ok = https
        .get(format!("{}/v1/capsules", d.url))
        .bearer_auth(&acme)
        .send()
        .expect("request during the stall");
    assert_eq!(ok.status().as_u16(), 200);
    for (k, (mut s, opened)) in stalled.into_iter().enumerate() {
        let closed = read_until_closed(&mut s, opened + Duration::from_secs(4));
        assert!(
            closed.is_some(),
            "stalled handshake {k} still open after {:?}",
            opened.elapsed()
        );
        assert!(
            opened.elapsed() >= Duration::from_millis(1000),
            "closed before the handshake timeout"
        );
    }
    let after = usage_until(&d, Duration::from_secs(5), |u| u.fds <= base.fds + 8);
    assert!(after.fds <= base.fds + 8, "{after:?} (idle {base:?})");
}

#[test]
fn tokens_revoked_through_the_api_stop_at_the_next_request_and_expired_ones_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "acme", "admin");
    let victim = token(bin(), dir.path(), "acme", "run,read");
    // `--expires-in` on the CLI (offline): the expiry is recorded.
    let out = soma_tests::daemon::soma(bin(), dir.path())
        .args([
            "token",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "read",
            "--expires-in",
            "30d",
            "--json",
        ])
        .output()
        .expect("soma token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("json");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let expires = created["expires_ms"].as_u64().expect("expires_ms");
    let month = 30 * 86_400_000;
    assert!(
        expires > now_ms + month - 60_000 && expires <= now_ms + month,
        "{created}"
    );
    let cli_token = created["token"].as_str().expect("token").to_owned();
    let d = DaemonProcess::start(bin(), dir.path(), "", "");

    // Revocation through the CLI's --server: at once.
    assert_eq!(d.get("/v1/capsules", &cli_token).0, 200);
    let out = std::process::Command::new(bin())
        .args([
            "--server",
            &d.url,
            "--token",
            &admin,
            "token",
            "revoke",
            &id_of(&cli_token),
        ])
        .env_remove("SOMA_CONFIG")
        .output()
        .expect("soma token revoke --server");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.get("/v1/capsules", &cli_token).0, 401);

    // Revocation: works until the DELETE answers, refused from the very
    // next request on (and the revoked token cannot revoke or read either).
    let call = json!({"capsule": "echo", "input": "hi"});
    assert_eq!(d.post("/v1/runs", &victim, &call).0, 200);
    let (s, v, _) = d.request(
        reqwest::Method::DELETE,
        &format!("/v1/tokens/{}", id_of(&victim)),
        Some(&admin),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked"], true, "{v}");
    let (s, v) = d.post("/v1/runs", &victim, &call);
    assert_eq!(s, 401, "a revoked token still worked: {v}");
    assert_eq!(d.get("/v1/capsules", &victim).0, 401);

    // Expiry: a token created for one second works, then is refused. The
    // clock starts before the request: the daemon counts from when it
    // handles it, and the reply (an fsync'd commit) may take a while.
    let created = Instant::now();
    let (s, v) = d.post(
        "/v1/tokens",
        &admin,
        &json!({"tenant": "acme", "scopes": ["run", "read"], "expires_in_s": 1}),
    );
    assert_eq!(s, 201, "{v}");
    let short = v["token"].as_str().expect("token").to_owned();
    let expires_ms = v["expires_ms"].as_u64().expect("expires_ms");
    assert_eq!(
        d.post("/v1/runs", &short, &call).0,
        200,
        "valid until it expires"
    );
    loop {
        let (s, _) = d.post("/v1/runs", &short, &call);
        if s == 401 {
            break;
        }
        assert_eq!(s, 200);
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "the token did not expire"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        created.elapsed() >= Duration::from_millis(900),
        "refused before its expiry: {:?}",
        created.elapsed()
    );
    // Past expiries and contradictory requests are bad requests.
    let (s, v) = d.post(
        "/v1/tokens",
        &admin,
        &json!({"tenant": "acme", "scopes": ["run"], "expires_at_ms": 1}),
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("expires_at_ms")),
        "{v}"
    );
    let (s, _) = d.post(
        "/v1/tokens",
        &admin,
        &json!({"tenant": "acme", "scopes": ["run"], "expires_in_s": 60, "expires_at_ms": expires_ms}),
    );
    assert_eq!(s, 400);

    // The list shows both, with their state, and no secret or hash.
    let (s, list) = d.get("/v1/tokens", &admin);
    assert_eq!(s, 200, "{list}");
    let text = list.to_string();
    for secret in [&admin, &victim, &short] {
        // `soma_<id>_<secret>`: the secret is base64url and may itself hold `_`.
        let secret_part = secret.splitn(3, '_').nth(2).expect("secret");
        assert!(!text.contains(secret_part), "a secret in the list: {text}");
    }
    assert!(!text.contains("hash"), "{text}");
    let find = |id: &str| {
        list.as_array()
            .expect("list")
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("token {id} not listed: {list}"))
    };
    assert_eq!(find(&id_of(&victim))["revoked"], true);
    let expired = find(&id_of(&short));
    assert_eq!(
        (expired["expired"].clone(), expired["revoked"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(expired["expires_ms"], expires_ms);
}

#[test]
fn a_tenant_admin_cannot_touch_another_tenants_tokens_budgets_ledger_runs_or_the_catalog() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme_admin = token(bin(), dir.path(), "acme", "admin");
    let acme_run = token(bin(), dir.path(), "acme", "run,read");
    let globex_run = token(bin(), dir.path(), "globex", "run,read");
    let operator = token(bin(), dir.path(), "ops", "operator");
    let d = DaemonProcess::start(bin(), dir.path(), "", "");
    let call = json!({"capsule": "echo", "input": "x"});
    let (s, v) = d.post("/v1/runs", &globex_run, &call);
    assert_eq!(s, 200, "{v}");
    let globex_call = v["run"].as_str().expect("run").to_owned();
    let (_, v) = d.post("/v1/runs", &acme_run, &call);
    let acme_call = v["run"].as_str().expect("run").to_owned();
    let delete = |path: &str, token: &str| {
        let (s, v, _) = d.request(reqwest::Method::DELETE, path, Some(token), None);
        (s, v)
    };
    let put = |path: &str, token: &str, body: &Value| {
        let (s, v, _) = d.request(
            reqwest::Method::PUT,
            path,
            Some(token),
            Some(body.to_string()),
        );
        (s, v)
    };

    // Tokens: not for another tenant, not above admin, not another's.
    for body in [
        json!({"tenant": "globex", "scopes": ["run"]}),
        json!({"tenant": "globex", "scopes": ["admin"]}),
        json!({"tenant": "acme", "scopes": ["operator"]}),
        json!({"tenant": "acme", "scopes": ["metrics"]}),
    ] {
        let (s, v) = d.post("/v1/tokens", &acme_admin, &body);
        assert_eq!(s, 403, "{body} → {v}");
    }
    let (s, v) = d.post(
        "/v1/tokens",
        &acme_admin,
        &json!({"tenant": "acme", "scopes": ["run"]}),
    );
    assert_eq!(s, 201, "its own tenant: {v}");
    assert_eq!(d.get("/v1/tokens?tenant=globex", &acme_admin).0, 403);
    let (_, list) = d.get("/v1/tokens", &acme_admin);
    assert!(
        list.as_array()
            .expect("list")
            .iter()
            .all(|t| t["tenant"] == "acme"),
        "{list}"
    );
    let (s, _) = delete(&format!("/v1/tokens/{}", id_of(&globex_run)), &acme_admin);
    assert_eq!(s, 404, "another tenant's token is not even there");
    let (s, _) = delete(&format!("/v1/tokens/{}", id_of(&operator)), &acme_admin);
    assert_eq!(s, 404);
    assert_eq!(d.get("/v1/capsules", &globex_run).0, 200, "still works");
    // Non-admins manage no tokens at all.
    assert_eq!(d.get("/v1/tokens", &acme_run).0, 403);
    let (s, _) = delete(&format!("/v1/tokens/{}", id_of(&acme_run)), &acme_run);
    assert_eq!(s, 403);

    // Budgets: its own runs only; tenant and capsule budgets are the operator's.
    let limit = |scope: &str| json!({"scope": scope, "tokens": 10});
    let digest = {
        let (_, v) = d.get("/v1/capsules", &acme_run);
        v.as_array().expect("catalog")[0]["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    };
    for scope in [
        "tenant:globex".to_owned(),
        "tenant:acme".to_owned(),
        format!("capsule:{digest}"),
    ] {
        let (s, v) = put("/v1/budgets", &acme_admin, &limit(&scope));
        assert_eq!(s, 403, "{scope}: {v}");
    }
    for scope in [
        format!("run:{globex_call}"),
        format!("node:{globex_call}/n"),
    ] {
        let (s, v) = put("/v1/budgets", &acme_admin, &limit(&scope));
        assert_eq!(s, 404, "{scope}: {v}");
    }
    let (s, v) = put(
        "/v1/budgets",
        &acme_admin,
        &limit(&format!("run:{acme_call}")),
    );
    assert_eq!(s, 200, "its own run: {v}");
    let (s, v) = put("/v1/budgets", &operator, &limit("tenant:globex"));
    assert_eq!(s, 200, "the operator: {v}");
    let (s, v) = put(
        "/v1/budgets",
        &operator,
        &limit(&format!("run:{globex_call}")),
    );
    assert_eq!(s, 200, "{v}");
    let (_, budgets) = d.get("/v1/budgets", &acme_admin);
    let scopes: Vec<&str> = budgets
        .as_array()
        .expect("budgets")
        .iter()
        .filter_map(|b| b["scope"].as_str())
        .collect();
    assert_eq!(scopes, [format!("run:{acme_call}")], "{budgets}");
    let (_, all) = d.get("/v1/budgets", &operator);
    assert_eq!(all.as_array().expect("budgets").len(), 3, "{all}");

    // Ledger and runs: its own tenant's only.
    assert_eq!(d.get("/v1/ledger?tenant=globex", &acme_admin).0, 403);
    let (s, entries) = d.get(&format!("/v1/ledger?run={globex_call}"), &acme_admin);
    assert_eq!(s, 200);
    assert_eq!(entries, json!([]), "another tenant's charges: {entries}");
    let (_, own) = d.get(&format!("/v1/ledger?run={acme_call}"), &acme_admin);
    assert!(!own.as_array().expect("entries").is_empty());
    let (s, entries) = d.get(&format!("/v1/ledger?run={globex_call}"), &operator);
    assert_eq!(s, 200);
    assert!(
        !entries.as_array().expect("entries").is_empty(),
        "{entries}"
    );
    assert_eq!(
        d.get(&format!("/v1/runs/{globex_call}"), &acme_admin).0,
        404
    );
    assert_eq!(d.get(&format!("/v1/runs/{globex_call}"), &operator).0, 200);

    // The shared catalog is the operator's (refused before any pull).
    let pull = json!({"name": "echo", "reference": "127.0.0.1:1/acme/evil:1"});
    let (s, v) = d.post("/v1/capsules/pull", &acme_admin, &pull);
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("operator"),
        "{v}"
    );

    // The operator may revoke another tenant's token; it stops at once.
    let (s, _) = delete(&format!("/v1/tokens/{}", id_of(&globex_run)), &operator);
    assert_eq!(s, 200);
    assert_eq!(d.get("/v1/capsules", &globex_run).0, 401);
}

#[test]
fn metrics_need_a_token_or_the_separate_listener_and_name_no_tenant_by_default() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let acme_admin = token(bin(), dir.path(), "acme", "admin");
    let scraper = token(bin(), dir.path(), "ops", "metrics");
    let metrics_addr = format!("127.0.0.1:{}", soma_tests::registry::free_port());
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        &format!("metrics_listen = \"{metrics_addr}\"\n"),
        "",
    );
    let (s, v) = d.post("/v1/runs", &acme, &json!({"capsule": "echo", "input": "x"}));
    assert_eq!(s, 200, "{v}");

    let (s, _, _) = d.request(reqwest::Method::GET, "/metrics", None, None);
    assert_eq!(s, 401, "/metrics without a token");
    assert_eq!(d.get("/metrics", &acme).0, 403, "a tenant's token");
    assert_eq!(
        d.get("/metrics", &acme_admin).0,
        403,
        "a tenant admin's token"
    );
    let (s, text) = d.get("/metrics", &scraper);
    assert_eq!(s, 200);
    let text = text.as_str().expect("exposition text").to_owned();
    assert!(text.contains("soma_calls_total"), "{text}");
    assert!(
        text.contains(r#"soma_cost_micros_total{tenant="all"}"#),
        "{text}"
    );
    assert!(!text.contains("acme"), "a tenant name in /metrics:\n{text}");
    assert_eq!(d.get("/v1/capsules", &scraper).0, 403, "metrics only");

    // The separate listener: /metrics without a token, nothing else.
    let base = format!("http://{metrics_addr}");
    let (s, open, _) = soma_tests::daemon::request(
        &client(),
        &base,
        reqwest::Method::GET,
        "/metrics",
        None,
        None,
    );
    assert_eq!(s, 200);
    let open = open.as_str().expect("text").to_owned();
    assert!(
        open.contains("soma_calls_total") && !open.contains("acme"),
        "{open}"
    );
    let (s, _, _) = soma_tests::daemon::request(
        &client(),
        &base,
        reqwest::Method::GET,
        "/v1/capsules",
        Some(&acme),
        None,
    );
    assert_eq!(s, 404, "the metrics listener serves nothing else");
}

/// A DAG spec (JSON) with one node calling catalog name `name`.
fn one_node(capsule: &str, input: Value, timeout_ms: u64) -> Value {
    json!({
        "version": 1,
        "name": "one-node",
        "capsules": {"c": capsule},
        "nodes": [{"id": "only", "capsule": "c", "input": input, "timeout_ms": timeout_ms, "catch": true}],
    })
}

#[test]
fn a_catalog_re_pull_under_a_queued_run_leaves_it_the_capsule_it_pinned() {
    let _serial = serial();
    let registry = soma_tests::registry::Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let push = |component: &str, reference: &str| {
        let out = soma_tests::daemon::soma(bin(), dir.path())
            .args(["push", component, reference])
            .output()
            .expect("push");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let v1 = format!("{}/acme/tool:1", registry.host());
    let v2 = format!("{}/acme/tool:2", registry.host());
    push(soma_capsules::ECHO_COMPONENT, &v1);
    push(soma_capsules::CALCULATOR_COMPONENT, &v2);
    let operator = token(bin(), dir.path(), "ops", "operator");
    let acme_admin = token(bin(), dir.path(), "acme", "admin");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "dag_drivers = 1\n",
        "[[trust.rules]]\nrepository = \"*/acme/*\"\naccept_unsigned = true\n",
    );
    let (s, v) = d.post(
        "/v1/capsules/pull",
        &operator,
        &json!({"name": "tool", "reference": v1}),
    );
    assert_eq!(s, 201, "{v}");
    let echo_digest = v["digest"].as_str().expect("digest").to_owned();

    // The only driver is busy with a slow run; the next run queues, pinned
    // to `tool` = echo.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"dag": one_node("hostile-loop", json!({}), 4000)}),
    );
    assert_eq!(s, 202, "{v}");
    let slow = v["run"].as_str().expect("run").to_owned();
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"dag": one_node("tool", json!({"said": "pinned"}), 10_000)}),
    );
    assert_eq!(s, 202, "{v}");
    let pinned = v["run"].as_str().expect("run").to_owned();

    // A tenant admin may not replace it; the operator does, while it queues.
    let body = json!({"name": "tool", "reference": v2});
    assert_eq!(d.post("/v1/capsules/pull", &acme_admin, &body).0, 403);
    let (s, v) = d.post("/v1/capsules/pull", &operator, &body);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["replaced"], echo_digest.as_str(), "{v}");
    assert_ne!(v["digest"], echo_digest.as_str());
    let (_, state) = d.get(&format!("/v1/runs/{pinned}"), &acme);
    assert_eq!(
        state["status"], "queued",
        "the re-pull must land while the pinned run waits: {state}"
    );

    // The pinned run finishes with the capsule it pinned (echo), not the
    // replacement (the calculator would fail on this input).
    let done = d.wait_finished(&acme, &pinned, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done.to_string().contains("pinned"), "{done}");
    assert_eq!(
        d.wait_finished(&acme, &slow, Duration::from_secs(30))["status"],
        "succeeded",
        "the slow run's failure is caught"
    );
    // New runs get the replacement.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"capsule": "tool", "input": {"expr": "6*7"}}),
    );
    assert_eq!((s, v["output"]["value"].clone()), (200, json!(42)), "{v}");

    // A run pinned to `tool` whose pull is then removed (`DELETE`), and
    // the daemon killed: after the restart `tool` is in no catalog at all,
    // yet the run still resumes, with the verified component from the
    // blob cache.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"dag": one_node("hostile-loop", json!({}), 3000)}),
    );
    assert_eq!(s, 202, "{v}");
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"dag": one_node("tool", json!({"expr": "1+1"}), 10_000)}),
    );
    assert_eq!(s, 202, "{v}");
    let resumed = v["run"].as_str().expect("run").to_owned();
    let (s, v, _) = d.request(
        reqwest::Method::DELETE,
        "/v1/capsules/tool",
        Some(&operator),
        None,
    );
    assert_eq!((s, v["now"].clone()), (200, Value::Null), "{v}");
    let (_, state) = d.get(&format!("/v1/runs/{resumed}"), &acme);
    assert_eq!(state["status"], "queued", "killed too late: {state}");
    let (data, config) = d.kill9();
    let d = DaemonProcess::spawn(bin(), &data, &config);
    let (_, catalog) = d.get("/v1/capsules", &acme);
    assert!(
        catalog
            .as_array()
            .expect("catalog")
            .iter()
            .all(|c| c["name"] != "tool"),
        "{catalog}"
    );
    let done = d.wait_finished(&acme, &resumed, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done.to_string().contains(r#""value":2"#), "{done}");
}
