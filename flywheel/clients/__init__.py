"""Thin clients of the services Flywheel talks to (Kafka admin, Flink, Airflow REST, Feast): no process control."""
