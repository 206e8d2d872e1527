//! The topics the processor creates when they are missing (the usage
//! topic and its dead-letter topic): partitions, replication factor and
//! `min.insync.replicas`.

use std::time::Duration;

use infra::kafka::LogContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::stream::consumer::{client_config, ConsumerError};

/// The `min.insync.replicas` of the topics the processor creates: the
/// configured value, else 2 when the replication factor allows it, else
/// none (a single replica is its own quorum).
pub fn min_insync_replicas(kafka: &KafkaConfig) -> Option<i32> {
    kafka
        .topic_min_insync_replicas
        .or_else(|| (kafka.topic_replication > 1).then(|| kafka.topic_replication.min(2)))
}

/// Creates the topic and the dead-letter topic when they are missing;
/// "already exists" is success (an existing topic's settings are left as
/// they are).
pub async fn ensure_topics(kafka: &KafkaConfig, timeout: Duration) -> Result<(), ConsumerError> {
    let admin: AdminClient<LogContext> = client_config(kafka)
        .create_with_context(LogContext::default())
        .map_err(ConsumerError::CreateTopics)?;
    let min_insync = min_insync_replicas(kafka).map(|n| n.to_string());
    let topics = [&kafka.topic, &kafka.dlq_topic].map(|name| {
        let topic = NewTopic::new(
            name,
            kafka.topic_partitions,
            TopicReplication::Fixed(kafka.topic_replication),
        );
        match &min_insync {
            Some(value) => topic.set("min.insync.replicas", value),
            None => topic,
        }
    });
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = tokio::time::timeout(timeout, admin.create_topics(&topics, &options))
        .await
        .map_err(|_| ConsumerError::CreateTopicsTimeout(timeout))?
        .map_err(ConsumerError::CreateTopics)?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(ConsumerError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn kafka(replication: i32, configured: Option<i32>) -> KafkaConfig {
        KafkaConfig {
            topic_replication: replication,
            topic_min_insync_replicas: configured,
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn min_insync_replicas_follows_the_replication_factor_unless_configured() {
        assert_eq!(min_insync_replicas(&kafka(1, None)), None);
        assert_eq!(min_insync_replicas(&kafka(2, None)), Some(2));
        assert_eq!(min_insync_replicas(&kafka(3, None)), Some(2));
        assert_eq!(min_insync_replicas(&kafka(5, None)), Some(2));
        assert_eq!(min_insync_replicas(&kafka(3, Some(3))), Some(3));
        assert_eq!(min_insync_replicas(&kafka(3, Some(1))), Some(1));
        assert_eq!(min_insync_replicas(&kafka(1, Some(1))), Some(1));
    }

    #[test]
    fn a_configured_value_beyond_the_replication_factor_is_refused() {
        let config = |replication, configured| Config {
            kafka: kafka(replication, configured),
            ..Config::default()
        };
        assert!(config(2, Some(3)).validate().is_err());
        assert!(config(2, Some(0)).validate().is_err());
        assert!(config(3, Some(2)).validate().is_ok());
    }
}
