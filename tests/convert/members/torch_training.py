"""What the torch members' tests share (test_user_torch, test_torch_builtins): a small labelled market of F
features, real training, the real `convert` on a folder, and a module's own probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from convert.cli import main

F, K, SEED = 8, 3, 7
FEATURES = [f"f{i}" for i in range(F)]


def _data(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(n, F)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0.4).astype(np.int64) + (x[:, 2] - x[:, 3] > 0.8).astype(np.int64)
    return x, y


def _train(model: Any, epochs: int = 30) -> Any:
    """Real training: Adam on cross-entropy, full batch, train mode; then eval, as the service runs it."""
    import torch

    torch.manual_seed(SEED)
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return model.eval()


def _convert(folder: Path, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "-q", *extra])


def _probabilities(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(module(torch.from_numpy(x)), dim=-1).double().numpy()
