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


# ------------------------------------------------------------------------------------ conditional GAN (ganmask)
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's non-saturating GAN loss, halved as in pix2pix so it learns no faster than the generator:
    ``(BCE(real, 1) + BCE(fake, 0)) / 2``, each the mean over every patch verdict."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating adversarial loss ``BCE(D(fake), 1)`` = mean softplus(-logit): strong gradients
    while the discriminator still rejects its masks (log(1 - D) would vanish there)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def mask_reconstruction_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + batch soft Dice of sigmoid channels against the real (b, K, ...) mask; and each term."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = sigmoid_dice_loss(logits, target)
    return bce + dice, {"bce": float(bce.detach()), "dice": float(dice.detach())}


def generator_loss(verdicts: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, adversarial_weight: float,
                   reconstruction_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """ganmask's generator objective: ``adversarial_weight x BCE(D(fake), 1) + reconstruction_weight x (BCE + Dice)``
    from the discriminator's verdicts on the generated mask and the generator's logits; and each term."""
    adversarial = generator_adversarial_loss(verdicts)
    reconstruction, parts = mask_reconstruction_loss(logits, target)
    loss = adversarial_weight * adversarial + reconstruction_weight * reconstruction
    return loss, {"adversarial": float(adversarial.detach()), **parts}
