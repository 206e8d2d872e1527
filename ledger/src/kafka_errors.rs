//! Which Kafka producer errors mean the broker refuses the producer itself
//! (its id and epoch), not one record. Both services' idempotent producers
//! replace themselves on these, or every later record would fail alike.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// An idempotent producer whose records timed out bumps its epoch
/// (KIP-360); a broker that refuses the bumped epoch, or has forgotten the
/// producer id (after losing its state), answers every later record of that
/// producer with one of these.
pub fn producer_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_is_told_apart_from_record_errors() {
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::UnknownProducerId,
            RDKafkaErrorCode::InvalidProducerIdMapping,
        ] {
            assert!(
                producer_fenced(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(
                !producer_fenced(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
    }
}
