"""Networks built from the plans' ``NetworkPlan`` entries (class path + JSON keyword arguments)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lesiongen.planning.planner import PATCH_DISCRIMINATOR
from lesiongen.planning.plans import NetworkPlan

PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
DIFFUSION_UNET = "monai.networks.nets.DiffusionModelUNet"


class InstanceNorm3dViaGroupNorm(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that, in CPU inference, computes the same normalisation with ``F.group_norm`` and one
    group per channel.

    ATen's ``instance_norm`` reshapes the input into a batch norm over ``n * c`` channels, which on CPU is several
    times slower than ``group_norm``'s own kernel for the same result (to float32 rounding). Parameters and state dict
    are those of ``nn.InstanceNorm3d``; with gradients enabled (training), with running statistics or off the CPU it
    is ``nn.InstanceNorm3d`` unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.dim() != 5 or input.device.type != "cpu" or self.track_running_stats
                or torch.is_grad_enabled()):
            return super().forward(input)
        return F.group_norm(input, self.num_features, self.weight, self.bias, self.eps)


class ConvTranspose3dAsPointwiseConv(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` that, in CPU inference with kernel == stride (a U-Net's upsampling), runs as a 1x1x1
    convolution and one rearranging copy.

    With kernel == stride every input voxel feeds its own ``kd x kh x kw`` block of the output, so the layer is a
    1x1x1 convolution to ``cout * kd * kh * kw`` channels whose values per voxel are then put in place in its block.
    oneDNN's transposed convolution on contiguous CPU tensors is several times slower (its 1x1x1 convolution is also
    faster than torch's matrix product on the CPUs measured). With other geometry, gradients enabled (training) or
    off the CPU it is ``nn.ConvTranspose3d`` unchanged.
    """

    def _is_block_upsampling(self, input: torch.Tensor, output_size: list[int] | None) -> bool:
        return (input.dim() == 5 and input.device.type == "cpu" and not torch.is_grad_enabled()
                and output_size is None and self.groups == 1 and self.padding_mode == "zeros"
                and tuple(self.kernel_size) == tuple(self.stride) and not any(self.padding)
                and not any(self.output_padding) and all(d == 1 for d in self.dilation))

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not self._is_block_upsampling(input, output_size):
            return super().forward(input, output_size)
        n, cin, d, h, w = input.shape
        kd, kh, kw = self.kernel_size
        cout = self.out_channels
        block = kd * kh * kw
        # channel co * block + offset of `columns` holds output channel co at that offset within each voxel's block
        columns = F.conv3d(input, self.weight.permute(1, 2, 3, 4, 0).reshape(cout * block, cin, 1, 1, 1),
                           None if self.bias is None else self.bias.repeat_interleave(block))
        output = torch.empty((n, cout, d * kd, h * kh, w * kw), dtype=columns.dtype, device=input.device)
        output.view(n, cout, d, kd, h, kh, w, kw).copy_(
            columns.view(n, cout, kd, kh, kw, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4))
        return output


# plans store layer types by name so they stay JSON; these are the ones the planner writes
_NORMS = {"InstanceNorm3d": (InstanceNorm3dViaGroupNorm, {"eps": 1e-5, "affine": True}),
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
        network = PlainConvUNet(conv_op=conv, norm_op=norm, norm_op_kwargs=norm_kwargs,
                                nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, **kwargs)
        # The decoder makes its own nn.ConvTranspose3d (no argument selects the class). Changing the class of the
        # built modules keeps their parameters, and draws no random numbers as building new ones would.
        for module in network.modules():
            if type(module) is nn.ConvTranspose3d:
                module.__class__ = ConvTranspose3dAsPointwiseConv
        return network
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
