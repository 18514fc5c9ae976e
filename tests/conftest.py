import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# The triton backend's kernels run on the CPU through Triton's interpreter; it is read
# when Triton is first imported, so it is set here, before any test imports it.
if not torch.cuda.is_available():
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")
