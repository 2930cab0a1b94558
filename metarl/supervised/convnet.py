"""The MAML paper's few-shot image classifier, with weights in a dict applied functionally.

Four blocks of ``3x3 conv (64 filters) -> batch norm -> ReLU -> 2x2 down-sampling`` (a stride-2
convolution, as the paper's Omniglot code, or a 2x2 max-pool), a spatial mean, then a linear
layer to the N classes.

Batch norm always normalises with the statistics of the batch it is given (as the MAML code,
at training and at test time) and keeps no running statistics, so a task's output depends on
that task's images only, also under :func:`torch.func.vmap`, where every task is its own batch.
Its scale and shift are ordinary weights in the dict, so the inner loop adapts them too. The
convolutions carry no bias: batch norm subtracts any per-channel constant, so a bias could not
change the output and would only cost time.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Params = dict[str, Tensor]
Downsample = Literal["stride", "max_pool"]
BN_EPS = 1e-5


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = BN_EPS) -> Tensor:
    """Normalise ``x`` ``[B, C, H, W]`` per channel with its own batch statistics, then scale/shift.

    Plain tensor maths (no running statistics, no buffers), so it composes with ``vmap`` (each
    task normalised by its own statistics) and with double backward. The means are taken over
    the contiguous spatial dimensions first, which is several times faster under ``vmap``.
    """
    mean = x.mean(dim=(2, 3)).mean(dim=0)[:, None, None]
    centred = x - mean
    var = centred.square().mean(dim=(2, 3)).mean(dim=0)
    scale = weight * torch.rsqrt(var + eps)
    return torch.addcmul(bias[:, None, None], centred, scale[:, None, None])


def fused_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = BN_EPS) -> Tensor:
    """The same function with PyTorch's fused kernel: faster, but not for use under ``vmap``.

    Under ``vmap`` its second-order gradient is wrong in torch 2.13 (see
    ``tests/test_omniglot_model.py``), so vmapped code must use :func:`batch_norm`.
    """
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


class ConvNet(nn.Module):
    """The paper's 4-block conv net for ``[B, channels, H, W]`` images -> ``[B, ways]`` logits.

    The module fixes the structure and holds one set of weights (so it also works as an ordinary
    ``nn.Module``); training code keeps its weights as a dict and calls :meth:`forward_with`.
    """

    def __init__(
        self,
        *,
        ways: int,
        in_channels: int = 1,
        hidden: int = 64,
        blocks: int = 4,
        downsample: Downsample = "stride",
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "max_pool"):
            raise ValueError(f"ConvNet: downsample {downsample!r} not in ['max_pool', 'stride']")
        self.blocks = blocks
        self.downsample = downsample
        for i in range(blocks):
            fan_in = in_channels if i == 0 else hidden
            self.register_parameter(f"conv{i}", nn.Parameter(torch.empty(hidden, fan_in, 3, 3)))
            self.register_parameter(f"bn{i}_scale", nn.Parameter(torch.ones(hidden)))
            self.register_parameter(f"bn{i}_shift", nn.Parameter(torch.zeros(hidden)))
        self.head = nn.Linear(hidden, ways)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with(dict(self.named_parameters()), x)

    def forward_with(self, params: Params, x: Tensor, *, fused_bn: bool = False) -> Tensor:
        """Logits of ``x`` ``[B, C, H, W]`` with the weights in ``params``.

        ``fused_bn``: PyTorch's fused batch-norm kernel (faster; never under ``vmap``).
        """
        stride = 2 if self.downsample == "stride" else 1
        norm = fused_batch_norm if fused_bn else batch_norm
        for i in range(self.blocks):
            x = F.conv2d(x, params[f"conv{i}"], stride=stride, padding=1)
            x = torch.relu(norm(x, params[f"bn{i}_scale"], params[f"bn{i}_shift"]))
            if self.downsample == "max_pool":
                x = F.max_pool2d(x, 2)
        return F.linear(x.mean(dim=(2, 3)), params["head.weight"], params["head.bias"])


def init_convnet_params(model: ConvNet, generator: torch.Generator, dtype: torch.dtype) -> Params:
    """Fresh weights drawn from ``generator``: Glorot-uniform convolutions and head (as the MAML
    code), batch-norm scale 1 and shift 0, head bias 0. The module's own weights are untouched."""
    params: Params = {}
    for name, p in model.named_parameters():
        if name.startswith("conv") or name == "head.weight":
            receptive = p[0, 0].numel() if p.dim() == 4 else 1
            bound = math.sqrt(6.0 / ((p.shape[0] + p.shape[1]) * receptive))
            value = (torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        elif name.endswith("_scale"):
            value = torch.ones(p.shape, dtype=torch.float64)
        else:
            value = torch.zeros(p.shape, dtype=torch.float64)
        params[name] = value.to(dtype)
    return params


def output_size(size: int, *, blocks: int, downsample: Downsample) -> int:
    """Spatial size after the blocks; an error when the image is too small for them."""
    for i in range(blocks):
        size = (size + 1) // 2 if downsample == "stride" else size // 2
        if size < 1:
            raise ValueError(
                f"ConvNet: the image is too small for {blocks} blocks of {downsample} "
                f"down-sampling (nothing left after block {i + 1})"
            )
    return size
