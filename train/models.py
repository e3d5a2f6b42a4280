"""Encoder/decoder pairs of SALAD, registered by name (timm-style) so configs and CLIs can list them.

`cxr` is the paper's chest auto-encoder (docs/architecture.md §2); `resnet18` the musculoskeletal one. A width
multiplier scales every channel count (0.25 makes CPU-sized models); the embedding stays 200-d. The activation of the
conv blocks is chosen by name too (`ACTIVATIONS`): the paper's LeakyReLU(0.1), or ReLU, which int8 runtimes fuse.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salad.errors import ConfigError, DataError
from salad.registry import Registry
from salad.scoring import NORM_EPS
from salad.train.tilt import CentreTilt

EMBEDDING_DIM = 200


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network: stored in config.json, the checkpoint and the bundle."""

    encoder: str = "cxr"
    size: int = 256
    width: float = 1.0
    embedding_dim: int = EMBEDDING_DIM
    #: Side of the `cxr` encoder's last feature map, which the projection convolves to 200 values. The paper's
    #: 256² network ends at 4×4; keeping 4×4 at every input size keeps the film's spatial layout in the
    #: embedding (a 64² input through six pooling stages would end at 1×1 and lose it).
    head: int = 4
    #: Weight of the centre-density tilt (train/tilt.py; 0: none). With a tilt the scoring embedding has one more
    #: value than the learned one: `output_dim`.
    centre_tilt: float = 0.0
    #: Standard deviations above the training normals' mean centre density at which the tilt starts.
    centre_offset: float = 2.0
    #: Activation of the conv blocks (`ACTIVATIONS`; resnet18's encoder body is ReLU whatever this says): the paper's
    #: `leaky_relu`, or `relu`, which ONNX Runtime fuses into its int8 convolution (QLinearConv) and LeakyReLU it does
    #: not. Runs from before the field are leaky_relu.
    activation: str = "leaky_relu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def output_dim(self) -> int:
        """Width of the scoring embedding (encoder.onnx's output, the bank's rows): the learned one, + 1 if tilted."""
        return self.embedding_dim + (1 if self.centre_tilt > 0 else 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        fields = ("encoder", "size", "width", "embedding_dim", "head", "centre_tilt", "centre_offset", "activation")
        known = {k: data[k] for k in fields if k in data}
        if "head" not in known and known.get("encoder", "cxr") == "cxr":  # runs from before `head`: six stages always
            known["head"] = max(1, int(known.get("size", 256)) // 64)
        return cls(**known)

    @property
    def stages(self) -> int:
        """Pooling stages of the `cxr` encoder: size / 2**stages == head."""
        return int(math.log2(self.size // self.head))


Builder = Callable[[ModelConfig], tuple[nn.Module, nn.Module]]
#: Encoder/decoder builders by name (salad.registry): `salad train --encoder` choices.
ENCODERS: Registry[Builder] = Registry("encoder", sort=True)


def register_encoder(name: str) -> Callable[[Builder], Builder]:
    """Register an (encoder, decoder) builder under `name` for configs and CLI choices (a second one of a name is refused)."""
    return ENCODERS.decorator(name)


Activation = Callable[[], nn.Module]
#: Activations of the conv blocks by name (salad.registry): `salad train --activation` choices. Parameter-free, so
#: checkpoints of one load into the other's network; the exported graph holds LeakyRelu or Relu nodes accordingly.
ACTIVATIONS: Registry[Activation] = Registry("activation")
ACTIVATIONS.register("leaky_relu", partial(nn.LeakyReLU, 0.1, inplace=True))  # the paper's
ACTIVATIONS.register("relu", partial(nn.ReLU, inplace=True))  # fused into QLinearConv by ONNX Runtime's int8 graphs


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def _conv_bn(cin: int, cout: int, act: Activation, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), act()]


def _double_conv(cin: int, cout: int, act: Activation) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cout, act), *_conv_bn(cout, cout, act))


CXR_WIDTHS = (16, 32, 64, 128, 256, 512, 1024)


def _check_cxr(cfg: ModelConfig) -> list[int]:
    """The channel widths of the `cxr` stages for this config; an error if size is not head·2^n (1 ≤ n ≤ 6)."""
    ratio = cfg.size // cfg.head if cfg.head > 0 else 0
    if cfg.head < 1 or cfg.size % cfg.head or ratio & (ratio - 1) or not 2 <= ratio <= 2 ** (len(CXR_WIDTHS) - 1):
        raise ConfigError(
            f"the cxr encoder needs an input size of head·2^n with 1 ≤ n ≤ 6 (head {cfg.head}): received {cfg.size}; "
            f"try {', '.join(str(cfg.head * 2**n) for n in (4, 5, 6))}."
        )
    return [_ch(c, cfg.width) for c in CXR_WIDTHS[: cfg.stages + 1]]


class CxrEncoder(nn.Module):
    """Stem double conv at full resolution, (max-pool, double conv) stages down to head×head, a head×head conv to 200."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = _check_cxr(cfg)
        act = ACTIVATIONS.get(cfg.activation)
        layers: list[nn.Module] = [_double_conv(1, w[0], act)]
        for cin, cout in zip(w[:-1], w[1:], strict=True):
            layers.append(nn.Sequential(nn.MaxPool2d(2), _double_conv(cin, cout, act)))
        self.features = nn.Sequential(*layers)
        self.project = nn.Conv2d(w[-1], cfg.embedding_dim, cfg.head, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x)).flatten(1)


class CxrDecoder(nn.Module):
    """The encoder mirrored: transposed conv 200 → C×head², (bilinear ×2, conv) stages, 1×1 conv to 1 channel, tanh."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = list(reversed(_check_cxr(cfg)))
        act = ACTIVATIONS.get(cfg.activation)
        self.expand = nn.Sequential(
            nn.ConvTranspose2d(cfg.embedding_dim, w[0], cfg.head, bias=False),
            nn.BatchNorm2d(w[0]),
            act(),
        )
        ups: list[nn.Module] = []
        for cin, cout in zip(w[:-1], w[1:], strict=True):
            ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv_bn(cin, cout, act)))
        self.up = nn.Sequential(*ups)
        self.out = nn.Conv2d(w[-1], 1, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(self.up(self.expand(h[:, :, None, None]))))


@register_encoder("cxr")
def build_cxr(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    return CxrEncoder(cfg), CxrDecoder(cfg)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.down(x), inplace=True)


class ResNet18Encoder(nn.Module):
    """ResNet-18 body on 1 channel without the max-pool, average pool, linear → 200.

    Written out (40 lines) because torchvision's wheels do not import beside the CPU build of torch
    used here; layer names follow torchvision's, and `load_weights` folds an RGB first conv to grey.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.size % 32 != 0:
            raise ConfigError(f"the resnet18 encoder needs an input size divisible by 32, received {cfg.size}.")
        w = [_ch(c, cfg.width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(1, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        stages = []
        cin = w[0]
        for i, cout in enumerate(w):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(w[-1], cfg.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class ResNet18Decoder(nn.Module):
    """Mirror of the ResNet body: 200 → 512w×(S/16)², four (bilinear ×2, conv) stages to S, tanh."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = [_ch(c, cfg.width) for c in (512, 256, 128, 64, 32)]
        act = ACTIVATIONS.get(cfg.activation)
        self.expand = nn.Sequential(
            nn.ConvTranspose2d(cfg.embedding_dim, w[0], cfg.size // 16, bias=False),
            nn.BatchNorm2d(w[0]),
            act(),
        )
        self.up = nn.Sequential(
            *[
                nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv_bn(cin, cout, act))
                for cin, cout in zip(w[:-1], w[1:], strict=True)
            ]
        )
        self.out = nn.Conv2d(w[-1], 1, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(self.up(self.expand(h[:, :, None, None]))))


@register_encoder("resnet18")
def build_resnet18(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    return ResNet18Encoder(cfg), ResNet18Decoder(cfg)


class SaladAutoencoder(nn.Module):
    """Encoder + decoder; `embed` gives the unit embedding the bank and the score use (tilted once fitted)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder, self.decoder = ENCODERS.get(cfg.encoder)(cfg)
        self.tilt = CentreTilt(cfg.centre_tilt, cfg.centre_offset) if cfg.centre_tilt > 0 else None

    @property
    def tilted(self) -> bool:
        """Whether `embed` carries the centre-density tilt (configured and fitted after training)."""
        return self.tilt is not None and self.tilt.fitted

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(self.encoder(x), dim=1, eps=NORM_EPS)
        return self.tilt(x, e) if self.tilt is not None and self.tilt.fitted else e

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return F.normalize(h, dim=1, eps=NORM_EPS), self.decoder(h)


class EmbeddingNet(nn.Module):
    """The exported encoder graph: image [b,1,S,S] → unit embedding [b,200] (201 with the centre-density tilt)."""

    def __init__(self, model: SaladAutoencoder) -> None:
        super().__init__()
        self.encoder = model.encoder  # the same module names as before the tilt: untilted graphs are unchanged
        self.tilt = model.tilt if model.tilted else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e = F.normalize(self.encoder(image), dim=1, eps=NORM_EPS)
        return self.tilt(image, e) if self.tilt is not None else e


def load_weights(model: nn.Module, path: str) -> None:
    """Load a local weights file (state dict, `weights_only=True`); no download is ever attempted.

    A file that is not a state dict of tensors (a pickle of other objects, a whole pickled model, a damaged
    file) is a DataError naming it: weights_only refuses to run a pickle's code, and this says why.
    """
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message wraps the reason in advice (retry with weights_only=False) that must not be followed: keep the reason
        parts = [" ".join(part.split()) for part in re.split(r"\n\s*\n", str(exc))]
        reason = "; ".join(part for part in parts if part and "weights_only" not in part and "Check the documentation" not in part)
        reason = reason[:200] or "it holds objects other than tensors"
        raise DataError(
            f"{path}: not a plain state dict of tensors; torch.load(weights_only=True) refused it ({reason}). Loading it "
            "would run code stored in the pickle, which this toolkit never does. Save the weights as "
            "torch.save(model.state_dict(), PATH) and pass that file."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: cannot read these weights ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                        "expected a file written by torch.save(model.state_dict(), PATH). Is it complete?") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kinds = sorted({type(v).__name__ for v in state.values()}) if isinstance(state, dict) else [type(state).__name__]
        raise DataError(f"{path}: holds {', '.join(kinds)}, not a state dict of tensors (name → tensor); expected a file "
                        "written by torch.save(model.state_dict(), PATH).")
    own = model.state_dict()
    for key, value in list(state.items()):
        if key in own and value.ndim == 4 and value.shape[1] == 3 and own[key].shape[1] == 1:
            state[key] = value.sum(dim=1, keepdim=True)  # RGB-pretrained first conv → one grey channel
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not state:
        raise DataError(f"{path}: none of its tensors match the model's names and shapes; is it the right architecture?")
    model.load_state_dict(state, strict=False)
