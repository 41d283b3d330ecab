"""The seg trainer's options for small lesions and transfer learning: the class-weighted loss by hand, and
initialising from a checkpoint of a network with other input channels and classes."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from lesiongen.models.checkpoint import FORMAT_VERSION, save_checkpoint
from lesiongen.models.networks import build_network
from lesiongen.planning.plans import NetworkPlan
from lesiongen.training.base import Trainer, load_fitting_weights
from lesiongen.training.losses import balanced_cross_entropy, blended_cross_entropy, generalized_dice_loss
from lesiongen.training.trainers.seg import SEG_LOSSES, SegTrainer, balanced_ce_share
from lesiongen.utilities.errors import LesiongenError

LN3 = math.log(3)
# four voxels, labels 0 0 0 1; class-1 logit minus class-0 logit -ln3, 0, -ln3, ln3: p1 = 1/4, 1/2, 1/4, 3/4
LOGITS = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [-LN3, 0.0, -LN3, LN3]]])
LABELS = torch.tensor([[0, 0, 0, 1]])


def test_balanced_cross_entropy_by_hand():
    background = (2 * math.log(4 / 3) + math.log(2)) / 3  # mean of -ln p0 over the three background voxels
    lesion = math.log(4 / 3)  # -ln 3/4 at the one lesion voxel
    assert float(balanced_cross_entropy(LOGITS, LABELS)) == pytest.approx((background + lesion) / 2, abs=1e-6)
    plain = (3 * background + lesion) / 4  # unweighted: the three background voxels outvote the lesion
    assert float(torch.nn.functional.cross_entropy(LOGITS, LABELS)) == pytest.approx(plain, abs=1e-6)


def test_generalized_dice_by_hand():
    # weights 1/3^2 (background), 1/1^2 (lesion); intersections 2 and 3/4; sums p + g 5.25 and 2.75
    expected = 1 - 2 * (2 / 9 + 3 / 4) / (5.25 / 9 + 2.75)
    assert expected == pytest.approx(5 / 12)
    assert float(generalized_dice_loss(LOGITS, LABELS)) == pytest.approx(expected, abs=1e-6)


def test_generalized_dice_gives_an_absent_class_the_largest_weight():
    # labels 0 0, p1 = 1/4, 1/2: background weight 1/2^2, the absent lesion class takes it too
    logits = torch.tensor([[[0.0, 0.0], [-LN3, 0.0]]])
    expected = 1 - 2 * 1.25 / ((1.25 + 2) + 0.75)
    assert float(generalized_dice_loss(logits, torch.tensor([[0, 0]]))) == pytest.approx(expected, abs=1e-6)


def test_weighted_loss_option_names_its_terms():
    assert set(SEG_LOSSES) == {"dice_ce", "weighted"}
    target = LABELS[:, None]  # (b, 1, ...) as the trainer hands them over
    values = {name: float(term(LOGITS, target)) for name, term in SEG_LOSSES["weighted"].items()}
    assert values == pytest.approx({"balanced_ce": float(balanced_cross_entropy(LOGITS, LABELS)),
                                    "generalized_dice": 5 / 12})


BALANCED_CE = (2 * math.log(4 / 3) + math.log(2)) / 3 / 2 + math.log(4 / 3) / 2  # by hand, as above
PLAIN_CE = (2 * math.log(4 / 3) + math.log(2) + math.log(4 / 3)) / 4


def test_blended_cross_entropy_by_hand():
    assert float(blended_cross_entropy(LOGITS, LABELS, 0.25)) == pytest.approx(0.25 * BALANCED_CE + 0.75 * PLAIN_CE,
                                                                             abs=1e-6)
    assert float(blended_cross_entropy(LOGITS, LABELS, 1.0)) == pytest.approx(BALANCED_CE, abs=1e-6)
    assert float(blended_cross_entropy(LOGITS, LABELS, 0.0)) == pytest.approx(PLAIN_CE, abs=1e-6)


def test_balanced_ce_share_falls_linearly_to_0_at_its_fraction_of_the_steps():
    assert [balanced_ce_share(step, 1000, 0.5) for step in (0, 100, 250, 499, 500, 900)] == pytest.approx(
        [1.0, 0.8, 0.5, 0.002, 0.0, 0.0])
    assert balanced_ce_share(0, 1000, 0.0) == 0.0  # nnU-Net's plain cross-entropy throughout


@pytest.mark.parametrize(("loss", "step", "until", "expected"), [
    ("dice_ce", 0, 0.5, {"ce": BALANCED_CE}), ("dice_ce", 250, 0.5, {"ce": (BALANCED_CE + PLAIN_CE) / 2}),
    ("dice_ce", 500, 0.5, {"ce": PLAIN_CE}), ("dice_ce", 0, 0.0, {"ce": PLAIN_CE}),
    ("weighted", 0, 0.0, {"balanced_ce": BALANCED_CE, "generalized_dice": 5 / 12})])
def test_seg_loss_at_a_step_blends_dice_ce_cross_entropy_from_balanced_to_plain(loss, step, until, expected):
    trainer = SimpleNamespace(loss=loss, step=step, total_steps=1000, balanced_ce_until=until)
    terms = SegTrainer.loss_terms(trainer)
    values = {name: float(term(LOGITS, LABELS[:, None])) for name, term in terms.items()}
    if loss == "dice_ce":  # the Dice term is nnU-Net's whatever the step
        assert values.pop("dice") == pytest.approx(float(SEG_LOSSES["dice_ce"]["dice"](LOGITS, LABELS[:, None])))
    assert values == pytest.approx(expected, abs=1e-6)


def _unet(in_channels: int, n_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    plan = NetworkPlan("dynamic_network_architectures.architectures.unet.PlainConvUNet", {
        "input_channels": in_channels, "n_stages": 3, "features_per_stage": [4, 8, 16],
        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2] * 3,
        "num_classes": n_classes, "n_conv_per_stage_decoder": [2] * 2, "conv_bias": True, "conv_op": "Conv2d",
        "norm_op": "InstanceNorm2d", "nonlin": "LeakyReLU", "deep_supervision": True})
    return build_network(plan)


def test_pretrained_weights_load_what_fits_and_name_what_was_skipped(tmp_path, caplog):
    source = _unet(in_channels=3, n_classes=4, seed=1)  # "another dataset": three channels, three lesion classes
    target = _unet(in_channels=2, n_classes=2, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    path = tmp_path / "checkpoint_final.pt"
    save_checkpoint({"format": FORMAT_VERSION, "networks": {"unet": source.state_dict()}}, path)
    holder = SimpleNamespace(networks={"unet": target}, ema={"unet": AveragedModel(target)}, models_used={}, extra={})
    with caplog.at_level(logging.INFO, logger="lesiongen.training"):
        Trainer.load_pretrained_weights(holder, path)

    given, own = source.state_dict(), target.state_dict()
    differing = sorted(k for k in own if given[k].shape != own[k].shape)
    # the first conv's weight (input channels; PlainConvUNet lists it under four names) and both segmentation heads
    # (classes), weight and bias
    first = [f"{prefix}encoder.stages.0.0.convs.0.{part}.weight" for prefix in ("", "decoder.")
             for part in ("conv", "all_modules.0")]
    assert differing == sorted(first + [f"decoder.seg_layers.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")])
    for name, value in own.items():
        if name in differing:
            torch.testing.assert_close(value, before[name], rtol=0, atol=0)  # kept its initialisation
        else:
            torch.testing.assert_close(value, given[name], rtol=0, atol=0)  # the source's
    for name, value in holder.ema["unet"].module.state_dict().items():
        torch.testing.assert_close(value, own[name], rtol=0, atol=0)  # the EMA starts from the same weights
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].rsplit(": ", 1)[1].split(", ") == differing  # those and nothing else
    assert holder.extra["pretrained_weights"]["skipped"] == {"unet": differing}
    assert holder.models_used["pretrained_weights"]["checkpoint"] == str(path)


def test_pretrained_weights_of_which_nothing_fits_are_refused(tmp_path):
    source = build_network(NetworkPlan("dynamic_network_architectures.architectures.unet.PlainConvUNet", {
        "input_channels": 1, "n_stages": 2, "features_per_stage": [3, 5], "kernel_sizes": [[3, 3, 3]] * 2,
        "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [2] * 2, "num_classes": 3,
        "n_conv_per_stage_decoder": [2], "conv_bias": True, "norm_op": "InstanceNorm3d", "nonlin": "LeakyReLU",
        "deep_supervision": True}))
    path = tmp_path / "other.pt"
    save_checkpoint({"format": FORMAT_VERSION, "networks": {"unet": source.state_dict()}}, path)
    target = _unet(2, 2, 0)
    holder = SimpleNamespace(networks={"unet": target}, ema={"unet": AveragedModel(target)}, models_used={}, extra={})
    with pytest.raises(LesiongenError, match="no weights of 'unet' fit"):
        Trainer.load_pretrained_weights(holder, path)


def test_load_fitting_weights_reports_loaded_and_skipped():
    target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    source = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
    loaded, skipped = load_fitting_weights(target, source.state_dict())
    assert loaded == ["0.bias", "0.weight"] and skipped == ["1.bias", "1.weight"]
    torch.testing.assert_close(target[0].weight, source[0].weight)
