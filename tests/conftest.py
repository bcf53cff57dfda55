"""Fixtures of the app's tests: one tiny random-weight model folder per session (tests/tiny_model.py) and its
pipeline. INFINITY_APP_TEST_MODEL names another model folder or released model to run them on instead (e.g. the
embedded model, to refresh the README's screenshots)."""
import os

import pytest


@pytest.fixture(scope="session")
def app_model_dir(tmp_path_factory):
    if os.environ.get("INFINITY_APP_TEST_MODEL"):
        return os.environ["INFINITY_APP_TEST_MODEL"]
    from tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-app-model"))


@pytest.fixture(scope="session")
def app_pipe(app_model_dir):
    from infinity.pipeline import InfinityPipeline

    return InfinityPipeline.from_pretrained(app_model_dir, device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: the tiny models' ops are far too small to share, and on a busy 2-core
    machine a second OpenMP thread makes every op wait for a core (a 2 ms decode takes 500 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
