import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread per module: small models on a busy 2-core machine run faster without a second thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
