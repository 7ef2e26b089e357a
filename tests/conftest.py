from pathlib import Path

import pytest

#: Real data shared by the project (never copied into the repo): ../shared/datasets.
DATASETS = (Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets").resolve()


@pytest.fixture(scope="session")
def datasets() -> Path:
    """Path of ../shared/datasets; skips the test when it is absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS
