"""A small PyTorch network on scikit-learn's bundled 8x8 digits (no download).

The time unit is the epoch. The same file runs three ways:
- under resolute: ``resolute experiment create configs/digits-asha.yaml``
- on its own, with a local context: ``python examples/digits/train.py --lr 0.01``
- data-parallel: set ``resources.slots_per_trial`` > 1; ``ctx.prepare_*`` does the rest.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_EVERY = 4  # epochs; rung and PBT generation ends are multiples of it


def load_digits_split(seed: int = 0) -> dict[str, torch.Tensor]:
    """Digits as float tensors, a fixed 80/20 split (the same for every trial)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, val = order[:cut], order[cut:]
    return {
        "x_train": torch.from_numpy(x[train]),
        "y_train": torch.from_numpy(y[train]),
        "x_val": torch.from_numpy(x[val]),
        "y_val": torch.from_numpy(y[val]),
    }


def build_model(width: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(width, 10),
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    model.train()
    return loss, accuracy


def train(ctx: Any) -> None:
    hp = ctx.hparams
    data = ctx.cache.get_or_create("digits", load_digits_split)
    torch.set_num_threads(1)  # one slot = one core; more threads only contend

    model = ctx.prepare_model(build_model(int(hp["width"]), float(hp["dropout"])))
    optimizer = ctx.prepare_optimizer(
        torch.optim.AdamW(
            model.parameters(), lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"])
        )
    )
    epoch = 0
    checkpoint = ctx.load_checkpoint()
    if checkpoint is not None:  # resumed after a pause, restarted, or cloned by PBT
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        epoch = int(checkpoint["epoch"])
        ctx.log.info("resumed from epoch %d", epoch)

    dataset = torch.utils.data.TensorDataset(data["x_train"], data["y_train"])
    loader = ctx.prepare_loader(dataset, batch_size=int(hp["batch_size"]), shuffle=True)
    max_epochs = int(hp.get("max_epochs", 10_000))
    saved_at = epoch

    def save() -> None:
        nonlocal saved_at
        if saved_at != epoch:
            ctx.save_checkpoint(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                step=epoch,
            )
            saved_at = epoch

    while epoch < max_epochs and not ctx.should_stop():
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total, batches = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        epoch += 1
        val_loss, val_accuracy = evaluate(model, data["x_val"], data["y_val"])
        if epoch % CHECKPOINT_EVERY == 0:
            save()  # before the report: a PBT clone of this trial starts from here
        ctx.report(
            epoch,
            {
                "train_loss": total / max(batches, 1),
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
            },
        )
    save()


def main() -> None:
    parser = argparse.ArgumentParser(description="Train on digits without a cluster.")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=16)
    args = parser.parse_args()

    from resolute.context import local_context

    hparams = {
        "lr": args.lr,
        "width": args.width,
        "dropout": args.dropout,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "max_epochs": args.epochs,
    }
    ctx = local_context(hparams)
    train(ctx)
    for report in ctx.local_reports:
        print(
            f"epoch {report.step:3d}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in report.metrics.items())
        )


if __name__ == "__main__":
    main()
