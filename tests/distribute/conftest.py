"""The single-process reference run shared by the distribute tests."""

import pytest

from tests.distribute._cluster import TRAINING, Process, expect_success


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """A callable returning the result of plain `fit` in one process.

    The process starts when the first test asks for the fixture and runs
    while that test's own processes start; later tests reuse its result.
    """
    tmp_path = tmp_path_factory.mktemp("reference")
    single = Process(tmp_path, "single", {**TRAINING, "mode": "single"})
    results = []

    def get():
        if not results:
            results.extend(expect_success([single]))
        return results[0]

    yield get
    single.kill()
