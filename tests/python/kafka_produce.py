"""Produces usage events straight onto the usage topic with confluent-kafka, as a platform
that would rather write to Kafka than call the HTTP API: the HTTP API's JSON plus an `id`,
with the `schema: usage.v1` header and the tenant as key. Every event is produced twice (a
producer's retry), and two records the processor must refuse are added: one whose
total_tokens disagrees, one without an id.

Prints a JSON summary on stdout: {"ids": [...], "prompt_tokens": N, "completion_tokens": N}.

Usage: kafka_produce.py --bootstrap HOST:PORT --topic usage-events --tenant T --count N
"""

import argparse
import datetime
import json
import sys
import uuid

from confluent_kafka import Producer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args()

    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True,
                         "acks": "all"})
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(str(error))

    def produce(event):
        producer.produce(args.topic, key=args.tenant.encode(),
                         value=json.dumps(event).encode(),
                         headers=[("schema", b"usage.v1")], on_delivery=delivered)

    now = datetime.datetime.now(datetime.timezone.utc)
    events = []
    for n in range(args.count):
        event = {
            "id": str(uuid.uuid4()),
            "created_at": (now - datetime.timedelta(seconds=n)).isoformat(),
            "tenant_id": args.tenant,
            "provider": "openai",
            "model": "gpt-4o-mini",
            "prompt_tokens": 100 + n,
            "completion_tokens": 10,
            "labels": {"producer": "confluent-kafka"},
        }
        if n % 2:
            # Totals are optional; when given they are checked.
            event["total_tokens"] = event["prompt_tokens"] + event["completion_tokens"]
        events.append(event)
    for event in events + events:  # the second pass is a producer's retry
        produce(event)
    wrong_total = dict(events[0], id=str(uuid.uuid4()), total_tokens=1)
    produce(wrong_total)
    without_id = {k: v for k, v in events[1].items() if k != "id"}
    produce(without_id)
    remaining = producer.flush(30)
    if remaining or failures:
        print(f"not delivered: {remaining} queued, failures {failures}", file=sys.stderr)
        return 1
    json.dump({
        "ids": [event["id"] for event in events],
        "prompt_tokens": sum(event["prompt_tokens"] for event in events),
        "completion_tokens": sum(event["completion_tokens"] for event in events),
    }, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
