//! Each real test service round-trips data through the clients Strata uses: rdkafka against
//! nisshi, object_store against moto.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{path::Path, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    config::ClientConfig,
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};
use strata_e2e::{NisshiBroker, S3Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_round_trips_a_message_through_a_consumer_group() {
    let broker = NisshiBroker::start().await.unwrap();
    let bootstrap = broker.bootstrap_servers();
    let topic = "strata.smoke.v1";

    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let created = admin.create_topics([&NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("enable.idempotence", "true").create().unwrap();
    let payload = br#"{"schema_version":1,"hello":"nisshi"}"#;
    let delivery = producer
        .send(FutureRecord::to(topic).key("scene-1").payload(&payload[..]), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!((delivery.partition, delivery.offset), (0, 0));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "strata-smoke")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
    assert_eq!(message.payload(), Some(&payload[..]));
    assert_eq!(message.key(), Some(&b"scene-1"[..]));
    consumer.commit_message(&message, CommitMode::Sync).unwrap();

    // The broker remembers the group's position: the next message to read is offset 1.
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, 0);
    let committed = consumer.committed_offsets(wanted, Duration::from_secs(10)).unwrap();
    let position = committed.find_partition(topic, 0).unwrap().offset();
    assert_eq!(position, Offset::Offset(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_round_trips_objects_and_serves_ranges() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("scenes").await.unwrap();
    let store = server.store("scenes").unwrap();

    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let path = Path::from("landsat/L7_ETMs.tif");
    store.put(&path, PutPayload::from(data.clone())).await.unwrap();

    let whole = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(whole, Bytes::from(data.clone()));
    let range = store
        .get_opts(&path, GetOptions { range: Some(GetRange::Bounded(1000..1010)), ..Default::default() })
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&range[..], &data[1000..1010]);

    let listed: Vec<_> = store.list(Some(&Path::from("landsat"))).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, 100_000);

    let missing = store.get(&Path::from("landsat/nope.tif")).await.unwrap_err();
    assert!(matches!(missing, object_store::Error::NotFound { .. }), "{missing}");
}
