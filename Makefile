# Flywheel: the commands a newcomer needs. `make setup` is idempotent and runs first everywhere.
.PHONY: setup demo test test-e2e test-faults test-unit test-jvm test-integration bench lint down

PYTEST = .venv/bin/pytest -q --durations=15

setup:
	@bash infra/setup.sh

demo: setup
	.venv/bin/flywheel demo

# The Java operators' tests and the unit tests first (seconds to a minute), then the integration tests on
# the real local stack.
test: setup
	bash tests/jvm/run.sh
	$(PYTEST) tests/unit
	$(PYTEST) tests/integration -m "not faults and not e2e"

# The DAGs and the closed loop end to end on the real stack (minutes each): CI runs them after `make test`.
test-e2e: setup
	$(PYTEST) tests/integration -m e2e

# The fault matrix's slow rows (kills and outages on the real stack, minutes each): CI runs them after `make test-e2e`.
test-faults: setup
	$(PYTEST) tests/integration -m faults

# The fast unit tests only (the slow ones train models or compare against Feast): a few seconds.
test-unit: setup
	$(PYTEST) tests/unit -m "not slow"

# Flywheel's Java operators under Flink's operator test harnesses (tests/jvm/).
test-jvm: setup
	bash tests/jvm/run.sh

test-integration: setup
	$(PYTEST) tests/integration

# The feature benchmark's stretch figure runs Feast's Spark processor: pyspark comes with the bench.
bench:
	@SETUP_GROUPS=spark bash infra/setup.sh
	.venv/bin/flywheel bench trainset
	.venv/bin/flywheel bench drift
	.venv/bin/flywheel infra up -s kafka,redis
	.venv/bin/flywheel bench features
	.venv/bin/flywheel bench serving
	.venv/bin/flywheel bench loop
	.venv/bin/flywheel infra up -s flink
	.venv/bin/flywheel bench soak

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

down:
	.venv/bin/flywheel infra down
