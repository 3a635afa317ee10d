"""The only places that touch private APIs of other libraries, one module per library, each naming the version
it was checked against and refusing another: an upgrade fails at once with a message, never subtly."""

from __future__ import annotations

from functools import cache
from importlib.metadata import version

from flywheel.errors import FlywheelError


@cache
def require(distribution: str, checked: str, module: str) -> None:
    """Fail unless the installed `distribution` is the version `module` was checked against."""
    found = version(distribution)
    if found != checked:
        raise FlywheelError(
            f"{module} uses private APIs of {distribution} checked against {checked}, but {found} is installed: "
            f"re-check them (and the pin in pyproject.toml) before upgrading"
        )
