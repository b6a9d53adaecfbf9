"""A tiny model saved in HF format with its tokenizer (what training writes to runs/.../hf), and images."""
from __future__ import annotations

import pytest

from xgenmm_fast.inference.cli import load_model_and_tokenizer

from ._setup import save_tiny_model_dir, write_images


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="session")
def image_paths(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def loaded(model_dir):
    return load_model_and_tokenizer(model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine every parallel region
    can wait a scheduler tick (~10 ms per op): run these tests on one thread, then restore."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
