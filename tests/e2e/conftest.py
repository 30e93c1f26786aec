"""Everything in tests/e2e/ launches an entry point as a subprocess: marked `e2e`, so the fast subset leaves it out."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the mark plugin reads the markers in the same hook
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
