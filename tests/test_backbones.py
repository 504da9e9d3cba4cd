"""FR backbones: the registry contract for every registered backbone, and the official checkpoint loaders.

The loader tests save randomly initialised models in each code base's *own* file layout (plain
``backbone.pth``, DataParallel, MagFace's wrapped training checkpoint, an AdaFace Lightning ``.ckpt``, CR-FIQA
with its ``qs`` head) and check that loading restores every tensor and the exact outputs.
"""

from __future__ import annotations

import argparse
import collections
import math
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from aikd.models.backbones import FaceBackbone, create_backbone, list_backbones
from aikd.models.backbones import checkpoints as ck

#: Above this many parameters a CPU forward takes seconds here (iResNet-50: ~6 GFLOPs per face, iResNet-100 /
#: IR-101: ~12), so the contract test runs one face once and skips the repeated forwards. Eval-mode determinism
#: and batch independence are properties of the block types, which the smaller members of the same families
#: (iresnet18, ir_18) exercise with the same code.
BIG_NET_PARAMS = 30_000_000


def _faces(spec_size: tuple[int, int], n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *spec_size, generator=g)


# --------------------------------------------------------------------------------------------------------------
# Contract of every registered backbone (new plug-ins are picked up automatically).
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list_backbones())
def backbone(request: pytest.FixtureRequest) -> FaceBackbone:
    return create_backbone(request.param, weights=None).eval()


def test_forward_gives_finite_raw_embeddings(backbone: FaceBackbone) -> None:
    big = sum(p.numel() for p in backbone.parameters()) > BIG_NET_PARAMS
    x = _faces(backbone.input_spec.size, 1 if big else 2)
    with torch.inference_mode():
        y = backbone(x)
        assert y.shape == (x.shape[0], backbone.embedding_dim)
        assert torch.isfinite(y).all()
        # The raw embedding is returned, not its L2-normalised direction (norm-based teachers need the norm).
        assert not torch.allclose(y.norm(dim=1), torch.ones(len(y)), atol=1e-3)
        if big:
            return
        # forward() is forward_features() on the spec-normalised faces, and eval mode is deterministic.
        assert torch.equal(backbone.forward_features(backbone.input_spec.normalize(x)), y)
        # Eval mode must not use batch statistics: a face's embedding does not depend on its batch mates.
        torch.testing.assert_close(backbone(x[1:]), y[1:], rtol=1e-4, atol=1e-4 * y.abs().max().item())


def test_input_spec_normalize_matches_hand_computation(backbone: FaceBackbone) -> None:
    spec = backbone.input_spec
    x = _faces(spec.size, 2, seed=1)
    net_in = x[:, [2, 1, 0]] if spec.colour == "BGR" else x.clone()
    net_in = net_in * spec.value_range
    if spec.standardize == "prewhiten":
        n = net_in[0].numel()
        mean = net_in.mean(dim=(1, 2, 3), keepdim=True)
        std = net_in.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1 / math.sqrt(n))
        expected = (net_in - mean) / std
    else:
        expected = (net_in - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    got = spec.normalize(x)
    torch.testing.assert_close(got, expected)
    if spec.standardize == "none":  # invert: undo mean/std, scale and channel order -> canonical RGB faces
        back = got * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
        back = back / spec.value_range
        torch.testing.assert_close(back.flip(1) if spec.colour == "BGR" else back, x)
    with pytest.raises(ValueError, match="expects"):
        spec.normalize(x[..., :-1, :-1])


@pytest.mark.parametrize(
    ("name", "colour", "mean", "std"),
    [
        ("iresnet50", "RGB", (0.5,) * 3, (0.5,) * 3),  # insightface: RGB, (x - 0.5) / 0.5
        ("ir_50", "BGR", (0.5,) * 3, (0.5,) * 3),  # AdaFace: BGR, (x - 0.5) / 0.5
    ],
)
def test_official_input_conventions(name: str, colour: str, mean: tuple, std: tuple) -> None:
    spec = create_backbone(name).input_spec
    assert (spec.colour, spec.mean, spec.std, spec.value_range) == (colour, mean, std, 1.0)
    assert spec.size == (112, 112) and spec.geometry.template == "arcface"


@pytest.mark.parametrize(
    ("name", "blocks", "present", "absent"),
    [
        # insightface arcface_torch: 18 tensors per block (bn1, conv1, bn2, prelu, conv2, bn3), a conv+BN
        # ``downsample`` (6) on the first block of every stage, stem conv1/bn1/prelu (7), bn2 + fc + features (12).
        (
            "iresnet50",
            (3, 4, 14, 3),
            {
                "layer1.0.downsample.0.weight": (64, 64, 1, 1),
                "layer3.13.bn3.running_var": (256,),
                "layer4.0.conv2.weight": (512, 512, 3, 3),
                "fc.weight": (512, 25088),
                "features.weight": (512,),
                "prelu.weight": (64,),
            },
            ["layer1.1.downsample.0.weight", "qs.weight"],
        ),
        # AdaFace net.py: the same 18 per block in ``res_layer``; conv+BN shortcuts (6) only where the width
        # changes (stages 2-4); input_layer (7); output_layer BN2d + Linear + BN1d(affine=False) (5 + 2 + 3).
        (
            "ir_50",
            (3, 4, 14, 3),
            {
                "input_layer.2.weight": (64,),
                "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
                "body.23.res_layer.5.running_mean": (512,),
                "output_layer.3.weight": (512, 25088),
                "output_layer.4.running_var": (512,),
            },
            ["body.0.shortcut_layer.0.weight", "output_layer.4.weight"],
        ),
    ],
)
def test_official_key_layout(name: str, blocks: tuple, present: dict, absent: list) -> None:
    model = create_backbone(name)
    state = model.state_dict()
    # Both put a stage's stride on the block's *second* 3x3 convolution (and on the shortcut).
    if name.startswith("iresnet"):
        expected = 18 * sum(blocks) + 6 * 4 + 7 + 12
        first = model.layer2[0]
        assert (first.conv1.stride, first.conv2.stride, first.downsample[0].stride) == ((1, 1), (2, 2), (2, 2))
    else:
        expected = 18 * sum(blocks) + 6 * 3 + 7 + 10
        first = model.body[blocks[0]]
        assert (first.res_layer[1].stride, first.res_layer[4].stride) == ((1, 1), (2, 2))
        assert isinstance(model.body[0].shortcut_layer, nn.MaxPool2d) and model.body[0].shortcut_layer.stride == 2
    assert len(state) == expected
    assert {k: tuple(state[k].shape) for k in present} == present
    assert not set(absent) & set(state)


# --------------------------------------------------------------------------------------------------------------
# Official checkpoint formats.
# --------------------------------------------------------------------------------------------------------------


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Perturb every tensor (weights, BN statistics, counters) so that any key loaded wrongly shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.add_(torch.randn(t.shape, generator=g) * 0.1 * (t.abs().mean() + 0.01))
    return model.eval()


def _assert_same(loaded: nn.Module, original: nn.Module, check_output: bool = False) -> None:
    """Every tensor restored; with ``check_output`` also the same embedding (same eps, preset, colour order)."""
    a, b = loaded.state_dict(), original.state_dict()
    assert list(a) == list(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after loading: {different[:5]}"
    if check_output:
        x = _faces(original.input_spec.size, 1, seed=7)
        with torch.inference_mode():
            assert torch.equal(loaded.eval()(x), _reference_output(original, x))


_OUTPUTS: weakref.WeakKeyDictionary[nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()


def _reference_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The original model's output on ``x`` (always the same seed-7 faces), computed once per model: CPU forwards
    are the slow part of these tests."""
    if model not in _OUTPUTS:
        _OUTPUTS[model] = model.eval()(x)
    return _OUTPUTS[model]


class _MagLinear(nn.Module):
    """MagFace's classifier layer as saved: one ``weight`` of shape (embedding, classes)."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(512, classes))


class _MagFaceBuilder(nn.Module):
    """MagFace's ``SoftmaxBuilder``: the iResNet as ``features`` and the MagLinear as ``fc``."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.fc = _MagLinear()


class _AdaFaceHead(nn.Module):
    """AdaFace's margin head as saved: ``kernel`` plus the EMA buffers of the feature-norm statistics."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(512, classes))
        self.register_buffer("t", torch.zeros(1))
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)


class _Opaque:
    """A class a weights-only load refuses."""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Random iResNet-18 / IR-18 models and their checkpoints in every official format."""
    d = tmp_path_factory.mktemp("fr_ckpts")
    res = _randomize(create_backbone("iresnet18"), seed=1)
    ir = _randomize(create_backbone("ir_18"), seed=2)
    mag = create_backbone("iresnet18", preset="magface")
    mag.load_state_dict(res.state_dict())
    qs = nn.Linear(512, 1)
    paths: dict[str, Path] = {
        k: d / v
        for k, v in {
            "plain": "backbone.pth",
            "dataparallel": "dp_backbone.pth",
            "safetensors": "backbone.safetensors",
            "crfiqa": "32572backbone.pth",
            "magface": "00024.pth",
            "magface_dist": "dist_00024.pth",
            "adaface_pl1": "adaface_ir18_pl1.ckpt",
            "adaface_plain": "ir18_state.pth",
        }.items()
    }

    torch.save(res.state_dict(), paths["plain"])
    torch.save(nn.DataParallel(res).state_dict(), paths["dataparallel"])
    save_file({k: v.contiguous() for k, v in res.state_dict().items()}, str(paths["safetensors"]))
    # CR-FIQA: ``backbone.module.state_dict()`` of an IResNet owning ``qs``, which comes after ``features``.
    torch.save({**res.state_dict(), "qs.weight": qs.weight.detach(), "qs.bias": qs.bias.detach()}, paths["crfiqa"])
    # MagFace: DataParallel(SoftmaxBuilder) state dict, plus epoch/arch/optimizer, as run/trainer.py saves it.
    builder = nn.DataParallel(_MagFaceBuilder(mag))
    opt = torch.optim.SGD(builder.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.save(
        {"epoch": 25, "arch": "iresnet18", "state_dict": builder.state_dict(), "optimizer": opt.state_dict()},
        paths["magface"],
    )
    # MagFace distributed training wraps only the backbone: ``features.module.*`` and ``fc.weight``.
    dist = {f"features.module.{k}": v for k, v in mag.state_dict().items()} | {"fc.weight": torch.randn(512, 7)}
    torch.save({"epoch": 25, "arch": "iresnet18", "state_dict": dist}, paths["magface_dist"])
    # AdaFace, PyTorch-Lightning-1.x layout: the LightningModule holds ``model`` (the IR net) and ``head``.
    trainer = nn.Module()
    trainer.model, trainer.head = ir, _AdaFaceHead()
    opt = torch.optim.SGD(trainer.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[12, 20, 24], gamma=0.1)  # pickles a Counter
    torch.save(
        {
            "epoch": 25,
            "global_step": 170000,
            "pytorch-lightning_version": "1.4.4",
            "state_dict": collections.OrderedDict(trainer.state_dict()),
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.97), "best_model_path": "x.ckpt"}},
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [sched.state_dict()],
            "hparams_name": "kwargs",
            "hyper_parameters": {
                "arch": "ir_18",
                "head": "adaface",
                "m": 0.4,
                "h": 0.333,
                "lr_milestones": [12, 20, 24],
                "args": argparse.Namespace(data_root="/data"),
            },
        },
        paths["adaface_pl1"],
    )
    torch.save(ir.state_dict(), paths["adaface_plain"])
    return {"res": res, "ir": ir, "mag": mag, "qs": qs, "dir": d, **paths}


def test_plain_insightface_checkpoint(ckpts: dict) -> None:
    info = ck.detect_format(ckpts["plain"])
    assert (info.format, info.family, info.arch, info.prefix) == ("insightface", "iresnet", "iresnet18", "")
    loaded = create_backbone("iresnet18", weights=ckpts["plain"])
    assert loaded.preset == "arcface"
    _assert_same(loaded, ckpts["res"], check_output=True)


@pytest.mark.parametrize("fmt", ["dataparallel", "safetensors"])
def test_dataparallel_and_safetensors_checkpoints(ckpts: dict, fmt: str) -> None:
    assert ck.detect_format(ckpts[fmt]).prefix == ("module." if fmt == "dataparallel" else "")
    model = create_backbone("iresnet18")
    report = ck.load_state_dict_flexible(model, ckpts[fmt])
    assert report.source == str(ckpts[fmt]) and report.ignored == () and report.filled == ()
    _assert_same(model, ckpts["res"], check_output=True)


def test_crfiqa_checkpoint_gives_backbone_and_quality_head(ckpts: dict) -> None:
    assert ck.detect_format(ckpts["crfiqa"]).format == "crfiqa"
    backbone, head = ck.load_crfiqa(ckpts["crfiqa"], arch="iresnet18")
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (512, 1)
    assert backbone.preset == "crfiqa" and backbone.input_spec.colour == "RGB"
    _assert_same(backbone, ckpts["res"])
    x = _faces((112, 112), 1, seed=7)
    with torch.inference_mode():
        expected = ckpts["qs"](_reference_output(ckpts["res"], x))  # CR-FIQA: quality = qs(features(x))
        assert torch.equal(head(backbone(x)), expected)
    # arch=None infers the depth; a bare backbone can still be built from the file (the head is skipped).
    assert ck.load_crfiqa(ckpts["crfiqa"], arch=None)[0].arch == "iresnet18"
    _assert_same(create_backbone("iresnet18", weights=ckpts["crfiqa"]), ckpts["res"])


@pytest.mark.parametrize("fmt", ["magface", "magface_dist"])
def test_magface_checkpoint(ckpts: dict, fmt: str) -> None:
    info = ck.detect_format(ckpts[fmt])
    assert info.format == "magface"
    assert info.prefix == ("module.features." if fmt == "magface" else "features.module.")
    loaded = ck.load_magface(ckpts[fmt], arch=None)
    spec = loaded.input_spec
    assert (spec.colour, spec.mean, spec.std) == ("BGR", (0.0,) * 3, (1.0,) * 3)  # cv2 image, ToTensor
    assert loaded.bn1.eps == 2e-5
    _assert_same(loaded, ckpts["mag"], check_output=True)
    # The factory picks the MagFace preset by itself, so MagFace weights never see ArcFace preprocessing.
    assert create_backbone("iresnet18", weights=ckpts[fmt]).input_spec == spec


def test_adaface_lightning_checkpoint(ckpts: dict) -> None:
    info = ck.detect_format(ckpts["adaface_pl1"])
    assert (info.format, info.family, info.arch, info.prefix) == ("adaface", "ir", "ir_18", "model.")
    loaded = ck.load_adaface(ckpts["adaface_pl1"], arch="ir_18")
    assert loaded.input_spec.colour == "BGR"
    _assert_same(loaded, ckpts["ir"], check_output=True)
    _assert_same(create_backbone("ir_18", weights=ckpts["adaface_plain"]), ckpts["ir"])


def test_adaface_checkpoint_written_by_pytorch_lightning(ckpts: dict, tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class AdaFaceTrainer(pl.LightningModule):  # the attributes of AdaFace's train_val.Trainer
        def __init__(self, **kwargs: object) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = ckpts["ir"]
            self.head = _AdaFaceHead()

    module = AdaFaceTrainer(arch="ir_18", head="adaface", m=0.4, h=0.333)
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        max_epochs=0,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    _assert_same(ck.load_adaface(tmp_path / "last.ckpt", arch=None), ckpts["ir"])


@pytest.mark.parametrize(
    ("fmt", "cls_arch", "preset"),
    [
        ("plain", "iresnet18", "arcface"),
        ("crfiqa", "iresnet18", "crfiqa"),
        ("magface", "iresnet18", "magface"),
        ("adaface_pl1", "ir_18", None),
    ],
)
def test_load_backbone_detects_format(ckpts: dict, fmt: str, cls_arch: str, preset: str | None) -> None:
    model = ck.load_backbone(ckpts[fmt])
    assert model.arch == cls_arch and getattr(model, "preset", None) == preset and not model.training
    _assert_same(model, ckpts["ir" if cls_arch == "ir_18" else "res"])


def test_wrong_architecture_fails_naming_file_and_keys(ckpts: dict) -> None:
    model = create_backbone("iresnet34")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        ck.load_state_dict_flexible(model, ckpts["plain"])
    msg = str(err.value)
    assert str(ckpts["plain"]) in msg and "iresnet34" in msg
    assert "missing keys" in msg and "layer1.2." in msg  # iResNet-34 has 3 blocks in stage 1, the file 2
    assert "create_backbone('iresnet18'" in msg  # the detected architecture is suggested
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "model modified by a failed load"
    with pytest.raises(ValueError, match="not an iResNet"):
        create_backbone("iresnet18", weights=ckpts["adaface_pl1"])
    with pytest.raises(ValueError, match="not an AdaFace IR"):
        create_backbone("ir_18", weights=ckpts["plain"])


def test_shape_mismatch_and_unexpected_keys_are_reported(ckpts: dict, tmp_path: Path) -> None:
    state = torch.load(ckpts["plain"], weights_only=True)
    narrow = tmp_path / "r18_256.pth"
    torch.save(state | {"fc.weight": torch.zeros(256, 512 * 49), "fc.bias": torch.zeros(256)}, narrow)
    with pytest.raises(ValueError, match=r"fc\.weight \(256, 25088\) in file vs \(512, 25088\)") as err:
        create_backbone("iresnet18", weights=narrow)
    assert str(narrow) in str(err.value)
    with pytest.raises(ValueError, match=r"unexpected keys: qs\.weight.*load_crfiqa"):
        ck.load_state_dict_flexible(create_backbone("iresnet18"), ckpts["crfiqa"])


def test_missing_tensor_fails_but_missing_bn_counters_are_tolerated(ckpts: dict, tmp_path: Path) -> None:
    state = torch.load(ckpts["plain"], weights_only=True)
    no_counters = tmp_path / "no_counters.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, no_counters)
    model = create_backbone("iresnet18")
    report = ck.load_state_dict_flexible(model, no_counters)
    assert len(report.filled) == sum(k.endswith("num_batches_tracked") for k in state) > 0
    with torch.inference_mode():
        x = _faces((112, 112), 1, seed=7)
        assert torch.equal(model.eval()(x), _reference_output(ckpts["res"], x))
    partial = tmp_path / "no_fc.pth"
    torch.save({k: v for k, v in state.items() if k != "fc.weight"}, partial)
    with pytest.raises(ValueError, match=r"1 missing keys: fc\.weight\b.*Nothing was loaded"):
        create_backbone("iresnet18", weights=partial)


def test_truncated_and_unreadable_files(ckpts: dict, tmp_path: Path) -> None:
    data = Path(ckpts["plain"]).read_bytes()
    for name, payload in [
        ("cut.pth", data[: len(data) // 2]),
        ("text.pth", b"not a checkpoint"),
        ("cut.safetensors", Path(ckpts["safetensors"]).read_bytes()[:1000]),
    ]:
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError) as err:
            create_backbone("iresnet18", weights=path)
        assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        create_backbone("iresnet18", weights=tmp_path / "no_such.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "cfg": _Opaque()}, unsafe)
    with pytest.raises(ValueError, match=r"unsafe\.pth.*_Opaque.*weights_only"):
        ck.read_checkpoint(unsafe)


def test_unknown_format_and_wrong_loader_give_helpful_errors(ckpts: dict, tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3), "decoder.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"other\.pth.*not a face recognition checkpoint.*encoder\.weight"):
        ck.detect_format(other)
    with pytest.raises(ValueError, match=r"no state dict found.*epoch"):
        ck.detect_format({"epoch": 3, "note": "nothing here"}, source="run.ckpt")
    with pytest.raises(ValueError, match=r"backbone\.pth: not a CR-FIQA checkpoint.*insightface"):
        ck.load_crfiqa(ckpts["plain"])
    with pytest.raises(ValueError, match=r"not a MagFace checkpoint.*adaface"):
        ck.load_magface(ckpts["adaface_pl1"])
    with pytest.raises(ValueError, match=r"not an AdaFace checkpoint.*magface"):
        ck.load_adaface(ckpts["magface"])


def test_several_copies_of_a_network_are_ambiguous(ckpts: dict) -> None:
    state = ckpts["res"].state_dict()
    both = {f"module.{k}": v for k, v in state.items()} | {f"backbone.{k}": v for k, v in state.items()}
    with pytest.raises(ValueError, match="several"):
        ck.load_state_dict_flexible(create_backbone("iresnet18"), both)
    model = create_backbone("iresnet18")
    ck.load_state_dict_flexible(model, both, strip_prefixes=("backbone.",))
    _assert_same(model, ckpts["res"])


# --------------------------------------------------------------------------------------------------------------
# timm backbones.
# --------------------------------------------------------------------------------------------------------------


def test_timm_backbone_uses_the_trunks_own_normalisation() -> None:
    model = create_backbone("timm/resnet18")
    spec = model.input_spec
    assert model.trunk.pretrained_cfg["mean"] == spec.mean == IMAGENET_DEFAULT_MEAN
    assert model.trunk.pretrained_cfg["std"] == spec.std == IMAGENET_DEFAULT_STD
    assert spec.size == (112, 112) and spec.geometry.template == "arcface" and spec.colour == "RGB"
    # A trunk pretrained with other statistics gets those (timm's test_resnet: mean = std = 0.5), at any size.
    other = create_backbone("timm/test_resnet", input_size=96, embedding_dim=128).eval()
    assert other.input_spec.mean == other.trunk.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert other.input_spec.size == (96, 96)
    with torch.inference_mode():
        y = other(_faces((96, 96), 2))
    assert y.shape == (2, 128) and torch.isfinite(y).all()
    assert isinstance(model.embedding[0], nn.Linear) and isinstance(model.embedding[1], nn.BatchNorm1d)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_timm_backbone_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    original = _randomize(create_backbone("timm/test_resnet", embedding_dim=64), seed=5)
    path = tmp_path / f"student{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    else:
        torch.save(original.state_dict(), path)
    loaded = create_backbone("timm/test_resnet", weights=path, embedding_dim=64)
    _assert_same(loaded, original, check_output=True)
    with pytest.raises(ValueError, match=r"student.*timm/test_resnet.*embedding"):
        create_backbone("timm/test_resnet", weights=path, embedding_dim=32)
