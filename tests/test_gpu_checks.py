"""benchmarks/gpu_checks.sh refuses what it cannot run before it starts anything (its steps need a GPU machine)."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_usage_and_unknown_steps_are_refused(tmp_path: Path) -> None:
    done = _run()
    assert done.returncode == 2 and "usage: benchmarks/gpu_checks.sh prepare | run OUT" in done.stderr
    done = _run("run", str(tmp_path / "out"), "device", "throughput", "loadr")
    assert done.returncode == 2 and "unknown step 'loadr'" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
