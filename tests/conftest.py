import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test nets are tiny: one intra-op thread is faster and steadier than two on a 2-core machine
    (with two, each small matmul hands work to a second thread that competes with every other process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
