import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Anything a test writes to the workspace without choosing one (e.g. the fingerprint cache) lands in a
# throwaway home, never in the repository's ./workspace.
os.environ.setdefault("MERGELAB_HOME", tempfile.mkdtemp(prefix="mergelab-test-home-"))


def pytest_collection_modifyitems(config, items):
    """Skip gpu-marked tests where no CUDA device exists (CI never has one)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_family(tmp_path_factory):
    from tests.tiny_models import make_family

    return make_family(tmp_path_factory.mktemp("tiny-llama"), arch="llama", n=3)


@pytest.fixture(scope="session")
def tiny_qwen3_family(tmp_path_factory):
    from tests.tiny_models import make_family

    return make_family(tmp_path_factory.mktemp("tiny-qwen3"), arch="qwen3", n=3)
