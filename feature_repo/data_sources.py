"""Data sources: the Flink feature job's Parquet output, one folder per feature group, partitioned
dt=YYYY-MM-DD/hr=HH, committed on checkpoint (readers only ever see complete files)."""

from pathlib import Path

from feast import FileSource
from feast.data_format import ParquetFormat

from feature_repo.spec import GROUPS
from flywheel.settings import settings


def offline_path(group_name: str) -> Path:
    return settings().offline_dir / group_name


SOURCES: dict[str, FileSource] = {
    g.name: FileSource(
        name=f"{g.name}_parquet",
        path=str(offline_path(g.name) / "dt=*" / "hr=*" / "part-*"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=f"Flink feature job output for {g.name} (timestamp = window end).",
    )
    for g in GROUPS
}

# `feast apply` discovers objects bound at module level, so bind each source to a name of its own.
globals().update({source.name: source for source in SOURCES.values()})
