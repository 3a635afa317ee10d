"""The local-service supervisor: the processes `flywheel infra` starts (Kafka, Redis, Flink, Airflow)."""
