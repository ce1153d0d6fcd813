"""A multilayer perceptron: the sparse-parity and MNIST models of Hu et al. 2023 (§4.1; spec
training-maps.md §2.2-2.3), and Omnigrok's MNIST MLP (init_scale)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class MLPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    d_in: PositiveInt  # input features (set from the task; images are flattened)
    d_out: PositiveInt  # outputs (set from the task: classes, or 1 for a hinge loss)
    hidden: tuple[PositiveInt, ...] = (1000,)
    act: Literal["relu", "gelu"] = "relu"
    norm: Literal["none", "batchnorm", "layernorm"] = "none"
    bias: bool = True
    init: Literal["xavier", "pytorch"] = "xavier"  # xavier: Xavier-uniform weights, zero biases (Hu et al.)
    init_scale: float = Field(1.0, gt=0.0)


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        sizes = [cfg.d_in, *cfg.hidden, cfg.d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=cfg.bias) for a, b in zip(sizes, sizes[1:]))
        norm = {"none": lambda d: nn.Identity(), "batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm}[cfg.norm]
        self.norms = nn.ModuleList(norm(d) for d in cfg.hidden)
        self.act = {"relu": F.relu, "gelu": F.gelu}[cfg.act]
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.layers:
                if cfg.init == "xavier":
                    nn.init.xavier_uniform_(layer.weight, generator=gen)
                    if layer.bias is not None:
                        layer.bias.zero_()
                else:  # torch.nn.Linear's own init, drawn from the seeded generator
                    bound = layer.in_features**-0.5
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    if layer.bias is not None:
                        layer.bias.uniform_(-bound, bound, generator=gen)
                layer.weight.mul_(cfg.init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (batch, d_in)
        for layer, norm in zip(self.layers[:-1], self.norms):
            x = self.act(norm(layer(x)))
        return self.layers[-1](x)  # (batch, d_out)
