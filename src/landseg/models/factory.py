"""Networks built from segmentation-models-pytorch (smp) for ODEON's model names and ``smp:*``.

smp already adapts the first convolution to any number of bands; what it lacks is ODEON's
transposed-conv decoder option, added here. Every network is built with random weights (smp
is never asked to download any): pretrained encoder weights are read from a local file and
loaded into ``model.encoder`` at the start of a run (:mod:`landseg.models.pretrained`).
Names, defaults and checks live in :mod:`landseg.models.registry`.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base.initialization import initialize_decoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoderBlock
from torch import nn


def smp_architectures() -> dict[str, type[nn.Module]]:
    """smp's architectures by lower-case class name (``unet``, ``fpn``, ``segformer``...)."""
    return dict(smp.MODEL_ARCHITECTURES_MAPPING)


def smp_model(arch: str, in_channels: int, n_classes: int, **params: Any) -> nn.Module:
    """An smp architecture returning logits, with random weights: smp never downloads;
    pretrained encoder weights are loaded from a file afterwards
    (:mod:`landseg.planning.pretrained`)."""
    model_class = smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()]
    params = {**params, "encoder_weights": None}
    return model_class(in_channels=in_channels, classes=n_classes, **params)


class TransposedUpBlock(nn.Module):
    """An smp U-Net decoder block whose 2x upsampling is a stride-2 transposed conv.

    The transposed conv halves the channels (the U-Net paper's "up-conv 2x2"); the wrapped
    block then interpolates to the skip's size, a no-op when the input size is a multiple of
    the encoder's stride.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, use_norm: Any = "batchnorm"
    ):
        super().__init__()
        half = max(in_channels // 2, 1)
        self.up = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        self.block = UnetDecoderBlock(half, skip_channels, out_channels, use_norm=use_norm)

    def forward(
        self,
        feature_map: torch.Tensor,
        target_height: int,
        target_width: int,
        skip_connection: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.block(self.up(feature_map), target_height, target_width, skip_connection)


def use_transposed_upsampling(model: smp.Unet, decoder_channels: tuple[int, ...]) -> None:
    """Replace the decoder blocks of an smp U-Net by :class:`TransposedUpBlock` ones."""
    encoder_channels = list(model.encoder.out_channels[1:])[::-1]  # deepest first, as smp
    in_channels = [encoder_channels[0], *decoder_channels[:-1]]
    skip_channels = [*encoder_channels[1:], 0]
    model.decoder.blocks = nn.ModuleList(
        TransposedUpBlock(i, s, o)
        for i, s, o in zip(in_channels, skip_channels, decoder_channels, strict=True)
    )
    initialize_decoder(model.decoder)


def resnet_unet(
    in_channels: int,
    n_classes: int,
    *,
    depth: int,
    decoder_mode: str = "bilinear",
) -> nn.Module:
    """ODEON's ``resnet18`` .. ``resnet152``: a U-Net with a ResNet encoder."""
    decoder_channels = (256, 128, 64, 32, 16)  # smp's default
    model = smp_model(
        "unet",
        in_channels,
        n_classes,
        encoder_name=f"resnet{depth}",
        decoder_channels=decoder_channels,
        decoder_interpolation="bilinear",
    )
    if decoder_mode == "transposed":
        use_transposed_upsampling(model, decoder_channels)
    return model


def deeplab(
    in_channels: int,
    n_classes: int,
    *,
    output_stride: int = 8,
) -> nn.Module:
    """ODEON's ``deeplab``: DeepLabV3+ on MobileNetV2, with ODEON's (torchvision) plain ASPP.

    The atrous rates follow ODEON: (12, 24, 36) at output stride 8, (6, 12, 18) at 16.
    """
    return smp_model(
        "deeplabv3plus",
        in_channels,
        n_classes,
        encoder_name="mobilenet_v2",
        encoder_output_stride=output_stride,
        decoder_atrous_rates=(12, 24, 36) if output_stride == 8 else (6, 12, 18),
        decoder_aspp_separable=False,
    )
