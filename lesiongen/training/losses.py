"""Segmentation losses shared by the UNet trainers: batch soft Dice, nnU-Net's deep-supervision weighting, and the
class-weighted terms (balanced cross-entropy, generalised Dice) for lesions that fill a tiny fraction of a scan."""

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


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged within each class, then over the classes present in the batch (cross-entropy with
    inverse-frequency class weights): a lesion class of a few voxels weighs as much as the background."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=logits.shape[1]).to(logits.dtype)
    weights = torch.where(counts > 0, 1 / counts.clamp(min=1), torch.zeros_like(counts))
    # torch divides the weighted sum by the summed weights of the voxels: sum over present classes of their means,
    # over their number
    return F.cross_entropy(logits, labels.long(), weight=weights)


def blended_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, balanced_share: float) -> torch.Tensor:
    """``balanced_share`` x class-balanced cross-entropy + (1 - ``balanced_share``) x plain cross-entropy."""
    plain = F.cross_entropy(logits, labels.long())
    return balanced_share * balanced_cross_entropy(logits, labels) + (1 - balanced_share) * plain


def generalized_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Generalised Dice (Sudre et al. 2017) over all classes, background included, for (b, ...) labels: batch-wide
    intersections and sums, each class weighted by 1 / (its reference voxels)^2, so a tiny lesion class counts as
    much as a large one. A class absent from the batch takes the largest weight of the present ones (its false
    positives still cost) instead of an infinite one."""
    n_classes = logits.shape[1]
    probabilities = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels.long(), n_classes).movedim(-1, 1).to(probabilities.dtype)
    axes = (0, *range(2, logits.ndim))
    volumes = onehot.sum(axes)
    present = volumes > 0
    weights = torch.where(present, 1 / volumes.clamp(min=1) ** 2, torch.zeros_like(volumes))
    weights = torch.where(present, weights, weights.max()) / weights.max()  # scale-free; keeps float32 in range
    intersection = (probabilities * onehot).sum(axes)
    total = probabilities.sum(axes) + volumes
    return 1 - 2 * (weights * intersection).sum() / (weights * total).sum()


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
