//! The Kafka sink: every event to a topic (default `soma.events`), key =
//! the tenant (so one tenant's events keep their order in one partition),
//! value = the event's JSON (schema v1), headers `soma-event-id` and
//! `soma-schema`. Partitions are chosen as Kafka's default partitioner
//! does (murmur2 of the key), so a Java or librdkafka producer keyed by
//! the same tenant lands in the same partition.
//!
//! The client is `rskafka` (pure Rust, acks = all, no compression); it runs
//! on a current-thread runtime owned by the sink's thread. Plaintext only:
//! TLS and SASL are not wired yet.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rskafka::{
    client::{
        Client, ClientBuilder,
        partition::{Compression, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};
use serde::{Deserialize, Serialize};

use super::{Pace, Sink, SinkError};
use crate::analytics::outbox::Held;

/// `[analytics.kafka]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic. Default `soma.events`.
    pub topic: String,
    /// Create the topic when it does not exist. Default true.
    pub create_topic: bool,
    /// Partitions of a topic the sink creates. Default 3.
    pub partitions: u32,
    /// Replication factor of a topic the sink creates. Default 1.
    pub replication: u16,
    /// Most events per delivery (split into produce requests of at most
    /// `max_request_bytes`). Default 10,000.
    pub batch: u32,
    /// Most bytes of one produce request (under the broker's
    /// `message.max.bytes`, 1 MiB by default). Default 900,000.
    pub max_request_bytes: u32,
    /// How long one delivery may take, ms. Default 10,000.
    pub timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            topic: "soma.events".into(),
            create_topic: true,
            partitions: 3,
            replication: 1,
            batch: 10_000,
            max_request_bytes: 900_000,
            timeout_ms: 10_000,
        }
    }
}

impl KafkaConfig {
    /// Refuse what cannot work (`soma config check`).
    pub fn check(&self) -> Result<(), String> {
        if self.brokers.is_empty() {
            return Err("analytics.kafka.brokers lists no broker (host:port)".into());
        }
        if let Some(b) = self.brokers.iter().find(|b| !b.contains(':')) {
            return Err(format!(
                "analytics.kafka.brokers: `{b}` is not host:port (e.g. 127.0.0.1:9092)"
            ));
        }
        if self.topic.is_empty()
            || self.topic.len() > 249
            || !self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "analytics.kafka.topic `{}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
                self.topic
            ));
        }
        if self.partitions == 0 || self.replication == 0 || self.batch == 0 {
            return Err(
                "analytics.kafka.partitions, replication and batch must be positive".into(),
            );
        }
        if self.max_request_bytes < 16_384 || self.timeout_ms == 0 {
            return Err(
                "analytics.kafka.max_request_bytes must be at least 16384 and timeout_ms positive"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The sink: a client and the topic's partitions, made on the first
/// delivery and again after a failure.
#[derive(Debug)]
pub struct KafkaSink {
    config: KafkaConfig,
    runtime: Option<tokio::runtime::Runtime>,
    connected: Option<(Client, Vec<Arc<PartitionClient>>)>,
}

impl KafkaSink {
    /// A sink for `config` (checked). Connects on the first delivery, so a
    /// broker that is down does not stop the daemon.
    pub fn new(config: KafkaConfig) -> Self {
        Self {
            config,
            runtime: None,
            connected: None,
        }
    }

    async fn connect(
        config: &KafkaConfig,
    ) -> Result<(Client, Vec<Arc<PartitionClient>>), SinkError> {
        let client = ClientBuilder::new(config.brokers.clone())
            .client_id("soma")
            .max_message_size(config.max_request_bytes as usize * 2)
            .build()
            .await
            .map_err(SinkError::Kafka)?;
        let topics = client.list_topics().await.map_err(SinkError::Kafka)?;
        let partitions: Vec<i32> = match topics.iter().find(|t| t.name == config.topic) {
            Some(t) => t.partitions.iter().copied().collect(),
            None if config.create_topic => {
                client
                    .controller_client()
                    .map_err(SinkError::Kafka)?
                    .create_topic(
                        config.topic.clone(),
                        i32::try_from(config.partitions).unwrap_or(i32::MAX),
                        i16::try_from(config.replication).unwrap_or(i16::MAX),
                        i32::try_from(config.timeout_ms).unwrap_or(i32::MAX),
                    )
                    .await
                    .map_err(SinkError::Kafka)?;
                (0..i32::try_from(config.partitions).unwrap_or(i32::MAX)).collect()
            }
            None => return Err(SinkError::NoTopic(config.topic.clone())),
        };
        let mut clients = Vec::with_capacity(partitions.len());
        for p in partitions {
            clients.push(Arc::new(
                client
                    .partition_client(config.topic.clone(), p, UnknownTopicHandling::Retry)
                    .await
                    .map_err(SinkError::Kafka)?,
            ));
        }
        Ok((client, clients))
    }
}

/// The fields a record needs from an event.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    tenant: std::borrow::Cow<'a, str>,
    time_ms: u64,
    v: u32,
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn pace(&self) -> Pace {
        Pace {
            max: self.config.batch as usize,
            min: 1,
            linger: Duration::ZERO,
        }
    }

    fn deliver(&mut self, events: &[Held]) -> Result<(), SinkError> {
        if self.runtime.is_none() {
            self.runtime = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(SinkError::Runtime)?,
            );
        }
        let Some(runtime) = &self.runtime else {
            return Ok(());
        };
        let config = &self.config;
        let timeout = Duration::from_millis(config.timeout_ms);
        let connected = &mut self.connected;
        let result = runtime.block_on(async {
            let work = async {
                if connected.is_none() {
                    *connected = Some(Self::connect(config).await?);
                }
                let Some((_, partitions)) = connected.as_ref() else {
                    return Ok(());
                };
                let batches = batches(events, partitions.len(), config.max_request_bytes)?;
                // Partitions in parallel; one partition's requests in order.
                let sends = batches.into_iter().map(|(p, requests)| {
                    let client = Arc::clone(&partitions[p]);
                    async move {
                        for records in requests {
                            client
                                .produce(records, Compression::NoCompression)
                                .await
                                .map_err(SinkError::Kafka)?;
                        }
                        Ok::<(), SinkError>(())
                    }
                });
                for r in futures::future::join_all(sends).await {
                    r?;
                }
                Ok(())
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::KafkaTimeout(config.timeout_ms)),
            }
        });
        if result.is_err() {
            // Reconnect (and re-read the topic's partitions) next time.
            self.connected = None;
        }
        result
    }
}

/// One partition's produce requests, in order (each a batch of records).
type Requests = Vec<Vec<Record>>;

/// The events as produce requests: per partition (murmur2 of the tenant),
/// in order, each request at most `max_bytes`.
fn batches(
    events: &[Held],
    partitions: usize,
    max_bytes: u32,
) -> Result<Vec<(usize, Requests)>, SinkError> {
    let mut per: BTreeMap<usize, Vec<Vec<Record>>> = BTreeMap::new();
    let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
    for h in events {
        let head: Head<'_> = serde_json::from_slice(&h.json)
            .map_err(|source| SinkError::Corrupt { seq: h.seq, source })?;
        let key = head.tenant.as_bytes().to_vec();
        let p = partition(&key, partitions);
        let record = Record {
            key: Some(key),
            value: Some(h.json.clone()),
            headers: BTreeMap::from([
                ("soma-event-id".to_owned(), head.id.as_bytes().to_vec()),
                ("soma-schema".to_owned(), head.v.to_string().into_bytes()),
            ]),
            timestamp: chrono::DateTime::from_timestamp_millis(
                i64::try_from(head.time_ms).unwrap_or(i64::MAX),
            )
            .unwrap_or_default(),
        };
        let size = record.approximate_size() + 64;
        let requests = per.entry(p).or_default();
        let used = sizes.entry(p).or_default();
        if requests.is_empty() || *used + size > max_bytes as usize {
            requests.push(Vec::new());
            *used = 0;
        }
        *used += size;
        if let Some(last) = requests.last_mut() {
            last.push(record);
        }
    }
    Ok(per.into_iter().collect())
}

/// Kafka's default partitioner: `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The Java client's test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_the_java_client() {
        for (key, want) in [
            (&b"21"[..], -973_932_308_i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn a_tenant_keeps_one_partition_and_requests_stay_under_the_cap() {
        let events: Vec<Held> = (0..200)
            .map(|i| Held {
                seq: i + 1,
                json: format!(
                    r#"{{"id":"call:r/{i}","v":1,"tenant":"t{}","time_ms":1,"type":"x","pad":"{}"}}"#,
                    i % 3,
                    "p".repeat(200)
                )
                .into_bytes(),
            })
            .collect();
        let out = batches(&events, 4, 16_384).unwrap();
        let mut seen = BTreeMap::new();
        let mut order = BTreeMap::new();
        let mut total = 0;
        let records = out
            .iter()
            .flat_map(|(p, requests)| requests.iter().map(move |r| (p, r)));
        for (p, records) in records {
            let bytes: usize = records.iter().map(|r| r.approximate_size() + 64).sum();
            assert!(bytes <= 16_384, "{bytes}");
            for r in records {
                let tenant = r.key.clone().unwrap();
                assert_eq!(*seen.entry(tenant.clone()).or_insert(*p), *p);
                assert_eq!(*p, partition(&tenant, 4));
                // A tenant's events stay in their outbox order.
                let id = String::from_utf8(r.headers["soma-event-id"].clone()).unwrap();
                let n: u64 = id.trim_start_matches("call:r/").parse().unwrap();
                let last = order.entry(tenant).or_insert(n);
                assert!(*last <= n);
                *last = n;
                total += 1;
            }
        }
        assert_eq!(total, 200);
        let bad = [Held {
            seq: 9,
            json: b"not json".to_vec(),
        }];
        assert!(matches!(
            batches(&bad, 4, 16_384),
            Err(SinkError::Corrupt { seq: 9, .. })
        ));
    }
}
