"""Local stack control: real Kafka (KRaft), Redis, a Flink standalone cluster and Airflow on loopback."""
