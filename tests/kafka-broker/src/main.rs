//! `soma-kafka-broker PORT`: tansu's Kafka-protocol broker with in-memory
//! storage on `127.0.0.1:PORT`, for the analytics sink's tests
//! (`tests/src/kafka.rs` starts and kills it).

use tansu_broker::{NODE_ID, broker::Broker, coordinator::group::administrator::Controller};
use tansu_storage::StorageContainer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or("usage: soma-kafka-broker PORT")?
        .parse()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOMA_BROKER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(false)
        .init();
    let url: url::Url = format!("tcp://127.0.0.1:{port}").parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
            .node_id(NODE_ID)
            .cluster_id("soma-tests")
            .incarnation_id(uuid::Uuid::now_v7())
            .advertised_listener(url.clone())
            .storage("memory://tansu/".parse()?)
            .listener(url)
            .silent(true)
            .build()
            .await?;
        broker.main(tokio::time::Instant::now()).await?;
        Ok(())
    })
}
