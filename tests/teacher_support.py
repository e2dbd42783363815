"""A real teacher for digits that trains in about a second: logistic regression on the pixels."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from akd_mobile.data import load_dataset
from akd_mobile.distill import TrainConfig, fit


def linear_digits_teacher(path: Path, seed: int = 0, epochs: int = 3) -> Path:
    """Train a linear classifier on digits (about 0.95 validation accuracy) and save it as a
    torch.export program (`.pt2` or any name) or, for a `.ts` path, as TorchScript."""
    data = load_dataset("digits", seed=0)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    fit(model, data, None, TrainConfig(epochs=epochs, batch_size=64, lr=0.05), seed=seed)
    model.eval()
    if Path(path).suffix == ".ts":
        torch.jit.save(torch.jit.trace(model, data.val_x[:2]), str(path))
    else:
        batch = torch.export.Dim("batch")
        torch.export.save(torch.export.export(model, (data.val_x[:4],), dynamic_shapes={"input": {0: batch}}), str(path))
    return Path(path)
