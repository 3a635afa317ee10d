"""`flywheel`: the one command line. Each module is one command group; commands parse, call and print.

Nothing outside this package imports it (tests/unit/test_architecture.py checks).
"""

from flywheel.cli.app import app

__all__ = ["app"]
