"""Shared test set-up: GPU-only tests are skipped where there is no CUDA device, and wandb can
never reach a server.

wandb reads its base URL once per process (its setup singleton), so a test that sets
WANDB_BASE_URL after another test has started wandb would still talk to wandb's default host.
The whole session therefore points wandb at a closed port on this machine before anything imports
it: a test that makes wandb fail online fails on loopback, and no test sends anything elsewhere.
"""

from __future__ import annotations

import os

import pytest
import torch

# Before wandb is imported or set up by any test (conftest is imported first).
os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"
os.environ["WANDB_INIT_TIMEOUT"] = "2"  # an online attempt fails in seconds, not wandb's 90
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
