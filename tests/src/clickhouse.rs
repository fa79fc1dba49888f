//! A real ClickHouse for tests: Debian's `clickhouse-server` (18.16),
//! started on free loopback ports (HTTP and native) with its data in a
//! temporary directory and a `default` user without password on loopback,
//! killed and removed on drop. `cargo xtask test` installs the package.
//! [`ClickHouse::stop`] and [`ClickHouse::resume`] take it down and bring
//! it back on the same ports and data (a sink's outage).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where Debian installs the server.
pub const BINARY: &str = "/usr/sbin/clickhouse-server";

/// How long the server may take to answer `/ping`.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running ClickHouse server. Killed on drop.
#[derive(Debug)]
pub struct ClickHouse {
    child: Option<Child>,
    dir: tempfile::TempDir,
    http_port: u16,
    client: reqwest::blocking::Client,
}

const USERS: &str = r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>1000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#;

impl ClickHouse {
    /// Start a server on free loopback ports. Panics with its log if it
    /// does not answer within 60 s.
    pub fn start() -> Self {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run `cargo xtask test` (it installs Debian's clickhouse-server) \
             or `apt-get install clickhouse-server`"
        );
        let dir = tempfile::Builder::new()
            .prefix("soma-clickhouse-")
            .tempdir()
            .expect("clickhouse tempdir");
        let http_port = crate::registry::free_port();
        let tcp_port = crate::registry::free_port();
        let root = dir.path().display().to_string();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/server.err.log</errorlog><console>0</console></logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>64</max_connections>
    <path>{root}/data/</path>
    <tmp_path>{root}/data/tmp/</tmp_path>
    <user_files_path>{root}/data/user_files/</user_files_path>
    <format_schema_path>{root}/data/format_schemas/</format_schema_path>
    <users_config>{root}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709</mark_cache_size>
    <uncompressed_cache_size>8589934</uncompressed_cache_size>
    <timezone>UTC</timezone>
</yandex>
"#
        );
        std::fs::write(dir.path().join("config.xml"), config).expect("clickhouse config");
        std::fs::write(dir.path().join("users.xml"), USERS).expect("clickhouse users");
        let mut ch = Self {
            child: None,
            dir,
            http_port,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        };
        ch.resume();
        ch
    }

    /// `http://127.0.0.1:PORT`, the HTTP interface.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The server's logs so far.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.root().join(f)).unwrap_or_default();
        format!(
            "{}{}{}",
            read("stdout.log"),
            read("server.err.log"),
            read("server.log")
        )
    }

    /// Start the server (again, after [`ClickHouse::stop`]) and wait for `/ping`.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "clickhouse is already running");
        let out = std::fs::File::create(self.root().join("stdout.log")).expect("log file");
        let child = Command::new(BINARY)
            .arg(format!(
                "--config-file={}",
                self.root().join("config.xml").display()
            ))
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn clickhouse-server");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let ping = self
                .client
                .get(format!("{}/ping", self.url()))
                .timeout(Duration::from_secs(2))
                .send();
            if ping.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("clickhouse-server exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server did not answer within {START_DEADLINE:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill the server (SIGKILL: an outage, not a shutdown); data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Run `sql` and return its output (TabSeparated). Panics on an error
    /// answer, with ClickHouse's message.
    pub fn query(&self, sql: &str) -> String {
        let response = self
            .client
            .post(self.url())
            .body(sql.to_owned())
            .send()
            .expect("clickhouse request");
        let status = response.status();
        let text = response.text().expect("clickhouse answer");
        assert!(status.is_success(), "{sql}: HTTP {status}: {text}");
        text
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
