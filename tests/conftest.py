import os

import pytest

TESTBED_HINT = 'start the real local pool first: eval "$(testbed/up)"'


def pytest_collection_modifyitems(config, items):
    """Integration tests need the testbed. Skipped without it, unless WARMBUILD_REQUIRE_TESTBED=1 (CI)."""
    if os.environ.get("WARMBUILD_BUILDER") and os.environ.get("WARMBUILD_REGISTRY"):
        return
    if os.environ.get("WARMBUILD_REQUIRE_TESTBED") == "1":
        raise pytest.UsageError(f"WARMBUILD_REQUIRE_TESTBED=1 but the testbed is not set up: {TESTBED_HINT}")
    skip = pytest.mark.skip(reason=TESTBED_HINT)
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
