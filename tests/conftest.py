import os
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, share the machine's cores between the test processes.

    Each of the ``-n`` workers runs torch (and the subprocesses its tests start, through
    ``OMP_NUM_THREADS``) on ``cores // workers`` threads: on CI's 2 cores, one each, instead of
    two workers of two threads contending for two cores.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # not on macOS
    threads = max(1, cores // int(workers))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


#: Real data shared by the project (never copied into the repo): ../shared/datasets.
DATASETS = (Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets").resolve()


@pytest.fixture(scope="session")
def datasets() -> Path:
    """Path of ../shared/datasets; skips the test when it is absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def aid_subset(datasets: Path, tmp_path_factory: pytest.TempPathFactory):
    """Factory of small labelled folders: ``make(classes, per_class)`` -> root.

    The folder holds ``root/<class>/<file>`` for the first ``per_class`` AID images (by name) of
    each class, as symlinks, or as copies with ``copy=True`` (for tests that add files).
    """
    import shutil

    def make(classes, per_class: int, copy: bool = False) -> Path:
        root = tmp_path_factory.mktemp("aid_subset")
        for name in classes:
            (root / name).mkdir()
            for src in sorted((datasets / "aid" / name).glob("*.jpg"))[:per_class]:
                if copy:
                    shutil.copy(src, root / name / src.name)
                else:
                    (root / name / src.name).symlink_to(src)
        return root

    return make


@pytest.fixture(scope="session")
def aid_histograms(datasets: Path):
    """Factory of real features: ``make(classes, per_class)`` -> ``(x (N, 24) float32, y (N,) int64)``.

    8-bin colour histograms (per RGB channel, as frequencies) of the first ``per_class`` AID
    images of each class; ``y`` is the position of the class in ``classes``.
    """
    import numpy as np
    import torch
    from PIL import Image

    def histogram(path: Path, bins: int = 8):
        a = np.asarray(Image.open(path).convert("RGB"))
        h = [np.histogram(a[..., c], bins=bins, range=(0, 256))[0] for c in range(3)]
        return np.concatenate(h) / a[..., 0].size

    def make(classes, per_class: int):
        feats, labels = [], []
        for ci, name in enumerate(classes):
            files = sorted((datasets / "aid" / name).glob("*.jpg"))[:per_class]
            assert len(files) == per_class
            feats += [histogram(f) for f in files]
            labels += [ci] * len(files)
        return torch.tensor(np.array(feats), dtype=torch.float32), torch.tensor(labels)

    return make


@pytest.fixture(scope="session")
def load_benchmark():
    """Factory of the scripts of ``benchmarks/`` imported as modules: ``load(name)`` -> module.

    Each is imported once per test process as ``bench_<name>`` and registered in ``sys.modules``
    (dataclasses and pickling inside it need that).
    """
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        key = f"bench_{name}"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            spec.loader.exec_module(module)
        return sys.modules[key]

    return load


@pytest.fixture(scope="session")
def damaged_jpeg(datasets: Path):
    """Factory of JPEGs damaged in their middle: ``make(path)`` -> bytes.

    300 bytes of the entropy-coded data from the middle of the file on are overwritten with
    random values without 0xFF (so no marker appears), and the stream still ends with its
    end-of-image marker: the damage a bad sector or a broken transfer leaves. libjpeg-turbo
    decodes such a file with a "Corrupt JPEG data" warning and garbage blocks.
    """

    def make(path: Path) -> bytes:
        data = bytearray(Path(path).read_bytes())
        rng = np.random.default_rng(0)
        middle = len(data) // 2
        data[middle : middle + 300] = rng.integers(0, 255, 300, dtype=np.uint8).tobytes()
        assert data.endswith(b"\xff\xd9")
        return bytes(data)

    return make


@pytest.fixture
def cpu_trainer(tmp_path: Path):
    """Factory of quiet CPU Lightning trainers: no logger, progress bar or model summary."""
    import lightning.pytorch as pl

    def make(**kwargs) -> pl.Trainer:
        kwargs.setdefault("default_root_dir", tmp_path)
        return pl.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs
        )

    return make


def _torch_on_one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Run torch on one CPU thread for the test (a second thread only waits on a busy machine)."""
    yield from _torch_on_one_thread()


#: test folders whose every module runs torch on one thread: their models are small, and on a
#: busy 2-core machine a second thread mostly waits (up to 10x slower)
ONE_THREAD_FOLDERS = ("methods", "metrics", "models", "ops", "tasks")


@pytest.fixture(scope="module", autouse=True)
def _one_thread_per_module(request: pytest.FixtureRequest):
    """One torch thread for the modules of :data:`ONE_THREAD_FOLDERS` and those that set ``ONE_THREAD = True``."""
    if Path(request.path).parent.name in ONE_THREAD_FOLDERS or getattr(request.module, "ONE_THREAD", False):
        yield from _torch_on_one_thread()
    else:
        yield


def _torch_globals() -> dict[str, object]:
    """Process-wide torch settings that change the numbers a later test computes."""
    import torch

    state: dict[str, object] = {
        "default dtype": torch.get_default_dtype(),
        "grad enabled": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "cpu autocast": (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "mkldnn enabled": torch.backends.mkldnn.enabled,
    }
    # oneDNN's fp32 precision ("bf16" runs float32 matmuls in bfloat16 on CPUs that have bf16
    # units); "none" inherits the global setting, and "ieee" is what "none" ends at
    default = getattr(torch.backends, "fp32_precision", "none")
    for name in ("matmul", "conv", "rnn"):
        backend = getattr(torch.backends.mkldnn, name, None)
        if backend is not None and hasattr(backend, "fp32_precision"):
            value = backend.fp32_precision if backend.fp32_precision != "none" else default
            state[f"mkldnn.{name}.fp32_precision"] = "ieee" if value == "none" else value
    return state


@pytest.fixture(autouse=True)
def _no_leaked_torch_globals(request: pytest.FixtureRequest):
    """Fail a test that leaves a process-wide torch setting changed (autocast, precision, dtype ...).

    Tests share a process under pytest-xdist: a leaked setting changes the numbers of whichever
    test runs next in that worker. terratorch's import lowers the float32 matmul precision, the
    one leak this check found; the CI run in which a decoder came out 1.4e-2 off is thought to
    be its doing (not reproduced on another CPU).
    """
    before, raw = _torch_globals(), _backend_precisions()
    yield
    after = _torch_globals()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after.get(k)}
    if changed:
        _restore(before, raw)  # the next tests in this worker run as if the culprit had not
        pytest.fail(f"{request.node.nodeid} changed torch's process-wide settings: {changed}")


def _backend_precisions() -> dict[object, str]:
    """The raw ``fp32_precision`` of torch.backends and its oneDNN matmul, conv and rnn (``none`` included)."""
    import torch

    backends = [torch.backends] + [getattr(torch.backends.mkldnn, n, None) for n in ("matmul", "conv", "rnn")]
    return {b: b.fp32_precision for b in backends if b is not None and hasattr(b, "fp32_precision")}


def _restore(before: dict[str, object], raw: dict[object, str]) -> None:
    """Put back every setting of :func:`_torch_globals` that torch lets a caller set (not inference mode)."""
    import torch

    torch.set_default_dtype(before["default dtype"])  # type: ignore[arg-type]
    torch.set_grad_enabled(bool(before["grad enabled"]))
    enabled, dtype = before["cpu autocast"]  # type: ignore[misc]
    torch.set_autocast_enabled("cpu", bool(enabled))
    torch.set_autocast_dtype("cpu", dtype)
    torch.use_deterministic_algorithms(bool(before["deterministic algorithms"]))
    torch.backends.mkldnn.enabled = bool(before["mkldnn enabled"])
    torch.set_float32_matmul_precision(str(before["float32 matmul precision"]))
    for backend, value in raw.items():  # after the matmul precision, which sets them too
        backend.fp32_precision = value
