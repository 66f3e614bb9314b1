"""ODEON's hand-written U-Nets: ``unet`` (64..1024, batch norm) and
``lightunet``.

Module and attribute names follow ODEON's code (``inc``, ``down1``.., ``up1``.., ``outc`` and the
inner ``double_conv``/``maxpool_conv``/``up``/``conv``), so the state dict keys of an ODEON U-Net
checkpoint load unchanged. Unlike the 2015 paper, convolutions are padded: the output has the
input's size, which must be a multiple of 16 (four 2x2 poolings).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DecoderMode = Literal["bilinear", "transposed"]
DECODER_MODES: tuple[str, ...] = ("bilinear", "transposed")
#: Four 2x2 max-poolings: input height and width must be multiples of 2**4.
UNET_SIZE_MULTIPLE = 16


class DoubleConv(nn.Module):
    """(3x3 conv -> [batch norm] -> ReLU) twice; padded so the size is kept."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for conv_in in (in_ch, out_ch):
            layers.append(nn.Conv2d(conv_in, out_ch, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        self.double_conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class InputConv(nn.Module):
    """First stage: a double conv at full resolution."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = False):
        super().__init__()
        self.double_conv = DoubleConv(in_ch, out_ch, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class EncoderConv(nn.Module):
    """Encoder stage: 2x2 max-pool (half size) then a double conv."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = False):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class DecoderConv(nn.Module):
    """Decoder stage: double the size and halve the channels, concat the skip, double conv.

    ``bilinear`` upsamples by interpolation then a 1x1 conv (ODEON's default); ``transposed``
    uses a stride-2 transposed conv (the paper's "up-conv 2x2").
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        batch_norm: bool = False,
        decoder_mode: DecoderMode = "bilinear",
    ):
        super().__init__()
        if decoder_mode not in DECODER_MODES:
            raise ValueError(f"decoder_mode must be one of {DECODER_MODES}, got {decoder_mode!r}")
        self.bilinear = decoder_mode == "bilinear"
        self.up: nn.Module
        if self.bilinear:
            self.up = nn.Conv2d(in_ch, in_ch // 2, kernel_size=1)
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch, out_ch, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class OutputConv(nn.Module):
    """1x1 conv to one logit per class."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """U-Net with four down/up stages of widths ``base_width * (1, 2, 4, 8, 16)``.

    ``base_width=64, batch_norm=True`` is ODEON's ``unet``; ``base_width=8, batch_norm=False`` is
    its ``lightunet``: one implementation, so both behave the same but for their size.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        base_width: int = 64,
        batch_norm: bool = True,
        decoder_mode: DecoderMode = "bilinear",
    ):
        super().__init__()
        self.n_classes = n_classes
        w = [base_width * 2**i for i in range(5)]
        # encoder
        self.inc = InputConv(in_channels, w[0], batch_norm)
        self.down1 = EncoderConv(w[0], w[1], batch_norm)
        self.down2 = EncoderConv(w[1], w[2], batch_norm)
        self.down3 = EncoderConv(w[2], w[3], batch_norm)
        self.down4 = EncoderConv(w[3], w[4], batch_norm)
        # decoder
        self.up1 = DecoderConv(w[4], w[3], batch_norm, decoder_mode)
        self.up2 = DecoderConv(w[3], w[2], batch_norm, decoder_mode)
        self.up3 = DecoderConv(w[2], w[1], batch_norm, decoder_mode)
        self.up4 = DecoderConv(w[1], w[0], batch_norm, decoder_mode)
        # last layer
        self.outc = OutputConv(w[0], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)
