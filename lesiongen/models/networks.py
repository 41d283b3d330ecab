"""Networks built from the plans' ``NetworkPlan`` entries (class path + JSON keyword arguments)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lesiongen.planning.planner import PATCH_DISCRIMINATOR
from lesiongen.planning.plans import NetworkPlan

PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
DIFFUSION_UNET = "monai.networks.nets.DiffusionModelUNet"

# plans store layer types by name so they stay JSON; these are the ones the planner writes
_NORMS = {"InstanceNorm3d": (nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}),
          "BatchNorm3d": (nn.BatchNorm3d, {"eps": 1e-5, "affine": True}),
          "InstanceNorm2d": (nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}),
          "BatchNorm2d": (nn.BatchNorm2d, {"eps": 1e-5, "affine": True})}
# plans written before 2D stages existed name no conv_op: their UNets are 3D
_CONVS = {"Conv3d": nn.Conv3d, "Conv2d": nn.Conv2d}
_NONLINS = {"LeakyReLU": (nn.LeakyReLU, {"inplace": True}), "ReLU": (nn.ReLU, {"inplace": True})}


def build_network(plan: NetworkPlan, **overrides: Any) -> nn.Module:
    kwargs = {**plan.kwargs, **overrides}
    if plan.architecture == PLAIN_CONV_UNET:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        conv = _CONVS[kwargs.pop("conv_op", "Conv3d")]
        norm, norm_kwargs = _NORMS[kwargs.pop("norm_op")]
        nonlin, nonlin_kwargs = _NONLINS[kwargs.pop("nonlin")]
        return PlainConvUNet(conv_op=conv, norm_op=norm, norm_op_kwargs=norm_kwargs,
                             nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, **kwargs)
    if plan.architecture == DIFFUSION_UNET:
        from monai.networks.nets import DiffusionModelUNet

        return DiffusionModelUNet(**kwargs)
    if plan.architecture == PATCH_DISCRIMINATOR:
        from monai.networks.nets import PatchDiscriminator

        return PatchDiscriminator(**kwargs)
    raise ValueError(f"unknown network architecture {plan.architecture}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(module: nn.Module) -> str:
    return f"{type(module).__name__} with {count_parameters(module) / 1e6:.2f} M parameters"
