"""ResNet-18 for 32x32 images (He et al. 2016; the CIFAR variant used by Hu et al. 2023, spec
training-maps.md §2.3): torchvision's BasicBlock layout [2, 2, 2, 2] with a 3x3 stride-1 stem and
no max-pool. Flags switch BatchNorm and the residual connections off; as in Hu et al.'s code the
downsample branch keeps its BatchNorm even with batchnorm off, unless `fix_downsample_bn`.
Parameter names follow torchvision (conv1, layer1.0.conv1, ..., fc)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class ResNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: PositiveInt = 3  # set from the task
    num_classes: PositiveInt = 100  # set from the task
    batchnorm: bool = True
    residual: bool = True
    fix_downsample_bn: bool = False
    init_scale: float = Field(1.0, gt=0.0)


def _bn(on: bool, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if on else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, cfg: ResNetConfig, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.residual = cfg.residual
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _bn(cfg.batchnorm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _bn(cfg.batchnorm, c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            bn = cfg.batchnorm or not cfg.fix_downsample_bn
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(bn, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


class ResNet18(nn.Module):
    def __init__(self, cfg: ResNetConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(cfg.in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = _bn(cfg.batchnorm, 64)
        widths, c_in = [64, 128, 256, 512], 64
        for i, (width, stride) in enumerate(zip(widths, [1, 2, 2, 2]), start=1):
            setattr(
                self, f"layer{i}", nn.Sequential(BasicBlock(cfg, c_in, width, stride), BasicBlock(cfg, width, width, 1))
            )
            c_in = width
        self.fc = nn.Linear(512, cfg.num_classes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # torchvision's init, from the seeded generator
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                    m.weight.mul_(cfg.init_scale)
                elif isinstance(m, nn.Linear):
                    bound = m.in_features**-0.5
                    m.weight.uniform_(-bound, bound, generator=gen).mul_(cfg.init_scale)
                    m.bias.uniform_(-bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (batch, 64, 32, 32)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (batch, 512, 4, 4)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # (batch, classes)
