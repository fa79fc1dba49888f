//! A real Kafka-protocol broker for tests: tansu's broker (the workspace's
//! `soma-kafka-broker` binary, in-memory storage) on a free loopback port,
//! killed on drop; and `kafka-python` (PyPI) as the second client that
//! reads a topic back. `cargo xtask test` builds the broker with the
//! workspace and installs kafka-python. (Debian's kcat 1.7 cannot read
//! tansu's ApiVersions answer; kafka-python can.)

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long the broker may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running broker. Killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    port: u16,
    log: tempfile::NamedTempFile,
}

/// The broker binary: built with the workspace, next to the test binaries'
/// directory (`target/<profile>/soma-kafka-broker`).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("soma-kafka-broker");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (`cargo xtask test` does; by hand: \
         cargo build --profile ci -p soma-kafka-broker)",
        bin.display()
    );
    bin
}

impl Broker {
    /// A broker on a free port that is not started yet: a sink pointed at
    /// it sees a broker that is down until [`Broker::resume`].
    pub fn down() -> Self {
        Self {
            child: None,
            port: crate::registry::free_port(),
            log: tempfile::NamedTempFile::new().expect("broker log"),
        }
    }

    /// Start a broker on a free port and wait until it accepts connections.
    pub fn start() -> Self {
        let mut b = Self::down();
        b.resume();
        b
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Start the broker (it keeps nothing from an earlier run: in-memory
    /// storage) and wait until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let out = self.log.reopen().expect("log");
        let child = Command::new(binary())
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn soma-kafka-broker");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        while TcpStream::connect(self.address()).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the broker exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not listen within {START_DEADLINE:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every record of `topic`, read from the beginning of each partition
    /// by kafka-python (until nothing new comes for 3 s), in each
    /// partition's order; with each
    /// record, the partition kafka-python's default partitioner (its own
    /// port of the Java client's murmur2) picks for its key.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let out = Command::new("python3")
            .args(["-c", READ_ALL, &self.address(), topic])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "kafka-python (cargo xtask test installs it; pip install kafka-python): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8 records")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("record line");
                let field = |k: &str| v[k].as_str().expect("text field").to_owned();
                let number = |k: &str| v[k].as_u64().expect("number field") as u32;
                Record {
                    partition: number("partition"),
                    keyed_partition: number("keyed_partition"),
                    key: field("key"),
                    value: field("value"),
                    event_id_header: field("id_header"),
                }
            })
            .collect()
    }
}

/// One record read back by [`Broker::read_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition it is in.
    pub partition: u32,
    /// The partition kafka-python's default partitioner gives its key.
    pub keyed_partition: u32,
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// Its `soma-event-id` header ("" when absent).
    pub event_id_header: String,
}

/// kafka-python: assign every partition of argv[2], read from the start
/// until nothing new comes for 3 s, print one JSON line per record. (Not
/// "up to the end offsets": tansu 0.6's ListOffsets answers a latest
/// offset below the records it then serves.)
const READ_ALL: &str = r#"
import json, sys
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2
address, topic = sys.argv[1], sys.argv[2]
c = KafkaConsumer(bootstrap_servers=address, enable_auto_commit=False, group_id=None,
                  consumer_timeout_ms=3000)
parts = sorted(c.partitions_for_topic(topic) or [])
tps = [TopicPartition(topic, p) for p in parts]
c.assign(tps)
c.seek_to_beginning(*tps)
for m in c:
    key = m.key or b""
    headers = dict(m.headers or [])
    print(json.dumps({
        "partition": m.partition,
        "keyed_partition": parts[(murmur2(key) & 0x7fffffff) % len(parts)],
        "key": key.decode(),
        "value": m.value.decode(),
        "id_header": headers.get("soma-event-id", b"").decode(),
    }))
c.close()
"#;

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
