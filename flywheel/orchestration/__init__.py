"""What the Airflow DAGs call: task bodies (tasks.py) and the shared DAG shape and defaults (dags.py)."""
