"""PyFlink internals Flywheel needs to put Java operators between PyFlink streams. Checked against
apache-flink 2.3.0."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flywheel.compat import require

if TYPE_CHECKING:
    from pyflink.datastream import DataStream

CHECKED = "2.3.0"


def _checked() -> None:
    require("apache-flink", CHECKED, __name__)


def jvm() -> Any:
    """The py4j view of the JVM (Flywheel's operators are under jvm().io.flywheel.flink)."""
    _checked()
    from pyflink.java_gateway import get_gateway

    return get_gateway().jvm


def java_stream(stream: DataStream) -> Any:
    """The Java DataStream behind a PyFlink one (PyFlink has no public accessor)."""
    _checked()
    return stream._j_data_stream


def python_stream(java: Any) -> DataStream:
    """A PyFlink DataStream around a Java one, e.g. the output of a Java operator."""
    _checked()
    from pyflink.datastream.data_stream import DataStream

    return DataStream(java)


def transform(stream: DataStream, name: str, type_info: Any, operator: Any) -> DataStream:
    """`stream` through a Java one-input operator (PyFlink exposes no `transform`), at the parallelism of
    `stream`: a forward edge, so each upstream subtask's records reach one operator subtask in their order."""
    java = java_stream(stream)
    return python_stream(java.transform(name, type_info, operator).setParallelism(java.getParallelism()))
