"""Segmentation losses shared by the UNet trainers: batch soft Dice and nnU-Net's deep-supervision weighting."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LossTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice per channel summed over the whole batch (nnU-Net's batch Dice), averaged over channels."""
    axes = (0, *range(2, probabilities.ndim))
    intersection = (probabilities * target).sum(axes)
    total = probabilities.sum(axes) + target.sum(axes)
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


def sigmoid_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch soft Dice of independent sigmoid channels against a (b, K, ...) binary target."""
    return batch_soft_dice_loss(torch.sigmoid(logits), target)


def softmax_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Batch soft Dice over the foreground classes of softmax outputs (nnU-Net's do_bg=False) for (b, ...) labels."""
    onehot = F.one_hot(labels.long(), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    return batch_soft_dice_loss(torch.softmax(logits, dim=1)[:, 1:], onehot)


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's: halve per resolution, ignore the lowest, normalise to 1."""
    weights = [1 / 2**i if i < n - 1 or n == 1 else 0.0 for i in range(n)]
    total = sum(weights)
    return [w / total for w in weights]


def deep_supervision_loss(outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor,
                          terms: dict[str, LossTerm]) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of ``terms`` at every output resolution with nnU-Net's weights; and each term's weighted value.

    ``target`` is (b, c, ...) at full resolution and is downsampled (nearest) to each output. Zero-weighted outputs
    stay in the graph: DDP expects a gradient for every parameter.
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    loss = torch.zeros((), device=target.device)
    parts = dict.fromkeys(terms, 0.0)
    for weight, logits in zip(deep_supervision_weights(len(outputs)), outputs):
        scaled = target if logits.shape[2:] == target.shape[2:] else \
            F.interpolate(target.float(), size=logits.shape[2:], mode="nearest").to(target.dtype)
        for name, term in terms.items():
            value = term(logits.float(), scaled)
            loss = loss + weight * value
            parts[name] += weight * float(value.detach())
    return loss, parts
