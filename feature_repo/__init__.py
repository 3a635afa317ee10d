"""Flywheel's Feast feature repository. `spec.py` is the single definition of every feature; the Feast
objects (entities, data sources, feature views, feature services), the Flink feature job, the GE suites
and training all read it."""
