"""The seed project's pipeline, as a baseline for `scripts/bench.sh --seed`.

A faithful replica of the "Kafka + S3 + Glue + Athena" stock-market tutorial ticklake grew from:
- the producer reads `indexProcessed.csv` with pandas and sends `df.sample(1).to_dict(orient="records")[0]`
  as JSON with kafka-python, in a loop (the tutorial sleeps one second per message; this replica does
  not, so it measures the code, not the sleep);
- the consumer is a kafka-python consumer that writes every message to S3 as its own JSON object,
  `stock_market_<n>.json` (the tutorial uses s3fs; boto3 here, on the same moto S3 as ticklake).

Usage (the bench's venv, with pandas, kafka-python and boto3):
    bench_seed.py produce <brokers> <topic> <csv> <count>      prints a JSON line: records, seconds, close_sum
    bench_seed.py consume <brokers> <topic> <bucket> <count>   prints a JSON line: records, seconds
    bench_seed.py verify  <bucket> <count>                     prints a JSON line: objects, close_sum

The consumer reads from the earliest offset (the tutorial's consumer ran beside its producer and read
from the latest); it stops after <count> messages.
"""

import json
import sys
import time


def produce(brokers, topic, csv, count):
    import pandas as pd
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    # The tutorial creates its topic by hand first (kafka-topics.sh, one partition).
    admin = KafkaAdminClient(bootstrap_servers=[brokers])
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=[brokers], value_serializer=lambda x: json.dumps(x).encode("utf-8")
    )
    df = pd.read_csv(csv)
    close_sum = 0.0
    start = time.perf_counter()
    for _ in range(count):
        dict_stock = df.sample(1).to_dict(orient="records")[0]
        producer.send(topic, value=dict_stock)
        close_sum += dict_stock["Close"]
    producer.flush()
    seconds = time.perf_counter() - start
    producer.close()
    print(json.dumps({"records": count, "seconds": seconds, "close_sum": close_sum}))


def consume(brokers, topic, bucket, count):
    import boto3
    from kafka import KafkaConsumer

    s3 = boto3.client("s3")
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[brokers],
        auto_offset_reset="earliest",
        consumer_timeout_ms=60_000,
        value_deserializer=lambda x: json.loads(x.decode("utf-8")),
    )
    start = None
    written = 0
    for n, message in enumerate(consumer):
        if start is None:
            start = time.perf_counter()
        s3.put_object(Bucket=bucket, Key=f"stock_market_{n}.json", Body=json.dumps(message.value))
        written += 1
        if written == count:
            break
    seconds = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    print(json.dumps({"records": written, "seconds": seconds}))


def verify(bucket, count):
    import boto3

    s3 = boto3.client("s3")
    objects = 0
    close_sum = 0.0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="stock_market_"):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            close_sum += json.loads(body)["Close"]
            objects += 1
    print(json.dumps({"objects": objects, "expected": count, "close_sum": close_sum}))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        produce(args[0], args[1], args[2], int(args[3]))
    elif command == "consume":
        consume(args[0], args[1], args[2], int(args[3]))
    elif command == "verify":
        verify(args[0], int(args[1]))
    else:
        sys.exit(f"unknown command {command!r}: produce, consume or verify")
