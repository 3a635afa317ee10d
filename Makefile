# Flywheel: the commands a newcomer needs. `make setup` is idempotent and runs first everywhere.
.PHONY: setup demo test test-unit bench lint down

setup:
	@bash infra/setup.sh

demo: setup
	.venv/bin/flywheel demo

test: setup
	.venv/bin/pytest -q tests

test-unit: setup
	.venv/bin/pytest -q tests/unit

# The feature benchmark's stretch figure runs Feast's Spark processor: pyspark comes with the bench.
bench:
	@SETUP_GROUPS=spark bash infra/setup.sh
	.venv/bin/flywheel bench trainset
	.venv/bin/flywheel infra up -s kafka,redis
	.venv/bin/flywheel bench features

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

down:
	.venv/bin/flywheel infra down
