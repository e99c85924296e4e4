"""Tests for the InsightFace backend on tiny ONNX models with the real models' signatures."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from vcn_assets.models.base import FaceDetector, FaceEmbedder, StochasticEmbedder
from vcn_assets.models.insightface_backend import (
    ArcFaceEmbedder,
    InsightFaceConfig,
    InsightFaceDetector,
    build_insightface_models,
    find_pack,
    resolve_model_files,
    resolve_providers,
)

CPU = ("CPUExecutionProvider",)
STRIDES = (8, 16, 32)
SCORE_GAIN = 10.0  # score logit = gain * mean normalised pixel of a stride-32 cell
BOX_DIST = np.array([1.0, 1.0, 2.0, 2.0], np.float32)  # left, top, right, bottom in strides
KPS_OFFSETS = np.array([[0.25, 0.5], [0.75, 0.5], [0.5, 0.75], [0.3, 1.0], [0.7, 1.0]], np.float32)
FEATURE_DIM = 4 * 28 * 28


# ----------------------------------------------------------------------------- model builders


def _save(graph: onnx.GraphProto, path: Path, opset: int = 13) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _scrfd_head(kind: str, width: int, stride: int) -> tuple[list, list, onnx.ValueInfoProto]:
    """Conv (kernel = stride) -> [Sigmoid] -> NHWC -> (H/s * W/s * 2, width), as SCRFD lays it out."""
    w = np.zeros((2 * width, 3, stride, stride), np.float32)
    b = np.zeros(2 * width, np.float32)
    if kind == "score":
        b[:] = -10.0  # every anchor off ...
        if stride == 32:  # ... except anchor 0 at stride 32, which follows the cell's brightness
            w[0] = SCORE_GAIN / (3 * stride * stride)
            b[0] = 0.0
    elif kind == "bbox":
        b[:] = np.tile(BOX_DIST, 2)
    else:
        b[:] = np.tile(KPS_OFFSETS.ravel(), 2)
    name = f"{kind}_{stride}"
    inits = [
        numpy_helper.from_array(w, f"{name}_w"),
        numpy_helper.from_array(b, f"{name}_b"),
        numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_shape"),
    ]
    conv_out = f"{name}_conv"
    nodes = [
        helper.make_node(
            "Conv",
            ["input.1", f"{name}_w", f"{name}_b"],
            [conv_out],
            kernel_shape=[stride, stride],
            strides=[stride, stride],
        )
    ]
    if kind == "score":
        nodes.append(helper.make_node("Sigmoid", [conv_out], [f"{name}_sig"]))
        conv_out = f"{name}_sig"
    nodes.append(helper.make_node("Transpose", [conv_out], [f"{name}_nhwc"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [name]))
    out = helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{stride}", width])
    return nodes, inits, out


def make_tiny_scrfd(path: Path) -> Path:
    """det_10g's signature: input (1, 3, H, W); 9 outputs, scores/boxes/landmarks for strides 8, 16, 32."""
    nodes, inits, outputs = [], [], []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in STRIDES:
            n, i, o = _scrfd_head(kind, width, stride)
            nodes += n
            inits += i
            outputs.append(o)
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    return _save(helper.make_graph(nodes, "tiny_scrfd", [image], outputs, initializer=inits), path)


def make_tiny_arcface_torch(path: Path) -> Path:
    """input.1 (N, 3, 112, 112) -> conv -> BN -> flatten -> Gemm(512) -> BatchNormalization -> (N, 512)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=4, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.4),  # as in insightface's iresnet; the export drops it in eval mode
        torch.nn.Linear(FEATURE_DIM, 512),
        torch.nn.BatchNorm1d(512),
    )
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_(0.0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net.eval(),
            torch.zeros(2, 3, 112, 112),
            str(path),
            dynamo=False,
            input_names=["input.1"],
            output_names=["fc1"],
            dynamic_axes={"input.1": {0: "N"}, "fc1": {0: "N"}},
        )
    return path


def make_tiny_arcface_matmul(path: Path, bn: str = "2d", tail_op: str | None = None) -> Path:
    """Flatten -> MatMul + Add (bias from a Constant) -> BatchNormalization ("2d"), the same wrapped
    in Unsqueeze/Squeeze ("3d") or none (""). One BatchNormalization parameter comes through an
    Identity node, as the PyTorch exporter writes deduplicated initializers.

    ``tail_op`` appends e.g. a Relu after the head, which makes the graph unsplittable.
    """
    rng = np.random.default_rng(1)
    d_in, dim = 3 * 8 * 8, 64
    inits = [
        numpy_helper.from_array(rng.normal(size=(d_in, dim)).astype(np.float32) * 0.05, "W"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, dim).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=dim).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=dim).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, dim).astype(np.float32), "var"),
    ]
    bias = numpy_helper.from_array(rng.normal(size=dim).astype(np.float32), "b_value")
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Constant", [], ["b"], value=bias),
        helper.make_node("Add", ["mm", "b"], ["fc"]),
        helper.make_node("Identity", ["var"], ["var_copy"]),
    ]
    last = "fc"
    if bn == "2d":
        nodes.append(
            helper.make_node("BatchNormalization", ["fc", "gamma", "beta", "mean", "var_copy"], ["bn"])
        )
        last = "bn"
    elif bn == "3d":  # as some exporters write BatchNorm1d: Unsqueeze -> BatchNormalization -> Squeeze
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
        nodes += [
            helper.make_node("Unsqueeze", ["fc", "axis2"], ["fc3d"]),
            helper.make_node("BatchNormalization", ["fc3d", "gamma", "beta", "mean", "var_copy"], ["bn3d"]),
            helper.make_node("Squeeze", ["bn3d", "axis2"], ["bn"]),
        ]
        last = "bn"
    if tail_op:
        nodes.append(helper.make_node(tail_op, [last], ["tail"]))
        last = "tail"
    nodes.append(helper.make_node("Identity", [last], ["output"]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", dim])
    return _save(helper.make_graph(nodes, "tiny_arcface_mm", [image], [out], initializer=inits), path)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_scrfd(root / "det_10g.onnx")
    make_tiny_arcface_torch(root / "w600k_r50.onnx")
    return root


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> InsightFaceDetector:
    return InsightFaceDetector(
        InsightFaceConfig(providers=CPU, num_threads=1), model_path=models_dir / "det_10g.onnx"
    )


@pytest.fixture(scope="module")
def embedder(models_dir: Path) -> ArcFaceEmbedder:
    config = InsightFaceConfig(pack_dir=models_dir, serfiq_dropout=0.5, batch_size=4, providers=CPU)
    return ArcFaceEmbedder(config)


@pytest.fixture
def crops() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty INSIGHTFACE_HOME and no pack override, so the user's real packs are not seen."""
    home = tmp_path / "ifhome"
    monkeypatch.setenv("INSIGHTFACE_HOME", str(home))
    monkeypatch.delenv("VCN_INSIGHTFACE_PACK", raising=False)
    return home


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def _reference(path: Path, aligned_bgr: np.ndarray) -> np.ndarray:
    """The full graph in ONNX Runtime, preprocessed as insightface's ArcFaceONNX.get_feat does."""
    blob = cv2.dnn.blobFromImages(list(aligned_bgr), 1.0 / 127.5, (112, 112), (127.5,) * 3, swapRB=True)
    session = onnxruntime.InferenceSession(str(path), providers=list(CPU))
    return session.run(None, {session.get_inputs()[0].name: blob})[0]


# ----------------------------------------------------------------------------- pack discovery


def test_find_pack_explicit_dir(tmp_path: Path, no_env: Path) -> None:
    pack = _touch(tmp_path / "mypack", "det_10g.onnx", "w600k_r50.onnx")
    assert find_pack(InsightFaceConfig(pack_dir=pack)) == pack
    det, rec = resolve_model_files(InsightFaceConfig(pack_dir=pack))
    assert (det.name, rec.name) == ("det_10g.onnx", "w600k_r50.onnx")


def test_find_pack_missing_explicit_dir_names_path(tmp_path: Path, no_env: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        find_pack(InsightFaceConfig(pack_dir=missing))


def test_find_pack_env_override(tmp_path: Path, no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = _touch(tmp_path / "envpack", "scrfd_10g_bnkps.onnx", "glintr100.onnx")
    monkeypatch.setenv("VCN_INSIGHTFACE_PACK", str(pack))
    assert find_pack() == pack
    monkeypatch.setenv("VCN_INSIGHTFACE_PACK", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="gone"):
        find_pack()


def test_find_pack_defaults_skip_empty_folders(no_env: Path) -> None:
    assert find_pack() is None
    with pytest.raises(FileNotFoundError, match="no InsightFace model pack found"):
        resolve_model_files()
    (no_env / "models" / "buffalo_l").mkdir(parents=True)  # what a failed download leaves
    antelope = _touch(no_env / "models" / "antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx")
    assert find_pack() == antelope
    _touch(no_env / "models" / "buffalo_l", "det_10g.onnx", "w600k_r50.onnx")
    assert find_pack() == no_env / "models" / "buffalo_l"


def test_find_pack_nested_antelopev2(no_env: Path) -> None:
    nested = _touch(no_env / "models" / "antelopev2" / "antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx")
    assert find_pack() == nested


def test_ambiguous_detector_is_an_error(tmp_path: Path, no_env: Path) -> None:
    pack = _touch(tmp_path / "p", "det_10g.onnx", "scrfd_500m.onnx", "w600k_r50.onnx", "2d106det.onnx")
    with pytest.raises(
        ValueError, match=r"ambiguous detector.*det_10g\.onnx.*scrfd_500m\.onnx.*detector_file"
    ):
        resolve_model_files(InsightFaceConfig(pack_dir=pack))
    det, _ = resolve_model_files(InsightFaceConfig(pack_dir=pack, detector_file="scrfd_500m.onnx"))
    assert det.name == "scrfd_500m.onnx"


def test_missing_files_are_named(tmp_path: Path, no_env: Path) -> None:
    pack = _touch(tmp_path / "p", "det_10g.onnx", "genderage.onnx")
    with pytest.raises(FileNotFoundError, match=r"no recogniser in .*p.*genderage\.onnx"):
        resolve_model_files(InsightFaceConfig(pack_dir=pack))
    with pytest.raises(FileNotFoundError, match=r"p/glintr100\.onnx"):
        resolve_model_files(InsightFaceConfig(pack_dir=pack, recognizer_file="glintr100.onnx"))


def test_providers() -> None:
    auto = resolve_providers(("auto",))
    assert auto[-1] == "CPUExecutionProvider"
    assert resolve_providers(CPU) == list(CPU)
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        resolve_providers(("NoSuchExecutionProvider",))


# ----------------------------------------------------------------------------- detector


def test_detector_finds_the_bright_cell(detector: InsightFaceDetector) -> None:
    # A 320x320 frame is scaled x2 to 640: the white block fills stride-32 cell (row 4, col 6),
    # whose anchor centre (top-left of the cell in insightface's decoding) is (192, 128).
    frame = np.zeros((320, 320, 3), np.uint8)
    frame[64:80, 96:112] = 255
    dets = detector.detect(frame)
    assert len(dets) == 1
    assert dets.xyxy.dtype == dets.score.dtype == dets.kps.dtype == np.float32
    anchor = np.array([192.0, 128.0], np.float32)
    expected_box = np.concatenate([anchor - BOX_DIST[:2] * 32, anchor + BOX_DIST[2:] * 32]) / 2
    np.testing.assert_allclose(dets.xyxy[0], expected_box, atol=1e-3)
    np.testing.assert_allclose(dets.kps[0], (anchor + KPS_OFFSETS * 32) / 2, atol=1e-3)
    assert dets.score[0] > 0.99


def test_detector_empty_when_scores_are_low(detector: InsightFaceDetector) -> None:
    dets = detector.detect(np.zeros((240, 320, 3), np.uint8))
    assert len(dets) == 0
    assert (dets.xyxy.shape, dets.score.shape, dets.kps.shape) == ((0, 4), (0,), (0, 5, 2))


def test_detector_rejects_bad_frames_and_models(detector: InsightFaceDetector, models_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        detector.detect(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"w600k_r50\.onnx: expected an SCRFD detector"):
        InsightFaceDetector(InsightFaceConfig(providers=CPU), model_path=models_dir / "w600k_r50.onnx")
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        InsightFaceDetector(InsightFaceConfig(providers=CPU), model_path=models_dir / "missing.onnx")


@pytest.mark.parametrize(
    "bad",
    [
        {"det_size": 100},
        {"det_threshold": 1.5},
        {"serfiq_dropout": 1.0},
        {"batch_size": 0},
        {"providers": ()},
    ],
    ids=["det_size", "threshold", "dropout", "batch", "providers"],
)
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        InsightFaceConfig(**bad)


def test_detector_min_face_px(models_dir: Path) -> None:
    frame = np.zeros((320, 320, 3), np.uint8)
    frame[64:80, 96:112] = 255  # the detected box is 48 x 48 frame pixels
    for min_px, expected in ((48, 1), (49, 0)):
        config = InsightFaceConfig(pack_dir=models_dir, providers=CPU, min_face_px=min_px)
        dets = InsightFaceDetector(config).detect(frame)
        assert len(dets) == expected and dets.kps.shape == (expected, 5, 2)


# ----------------------------------------------------------------------------- embedder


def test_embed_equals_full_graph(embedder: ArcFaceEmbedder, models_dir: Path, crops: np.ndarray) -> None:
    emb = embedder.embed(crops)  # 5 crops in batches of 4
    assert emb.shape == (5, 512) and emb.dtype == np.float32
    assert embedder.dim == 512 and embedder.head.in_dim == FEATURE_DIM
    np.testing.assert_allclose(emb, _reference(models_dir / "w600k_r50.onnx", crops), rtol=1e-4, atol=1e-4)


def test_embed_empty(embedder: ArcFaceEmbedder) -> None:
    assert embedder.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 512)
    assert embedder.embed_stochastic(
        np.zeros((0, 112, 112, 3), np.uint8), 3, np.random.default_rng()
    ).shape == (
        0,
        3,
        512,
    )


@pytest.mark.parametrize("bn", ["2d", "3d", ""], ids=["bn", "bn-unsqueezed", "no-bn"])
def test_matmul_add_head_equals_full_graph(tmp_path: Path, crops: np.ndarray, bn: str) -> None:
    path = make_tiny_arcface_matmul(tmp_path / "arcface_mm.onnx", bn=bn)
    emb = ArcFaceEmbedder(InsightFaceConfig(providers=CPU), model_path=path)
    assert emb.dim == 64 and emb.head.feature_name == "flat"
    np.testing.assert_allclose(emb.embed(crops), _reference(path, crops), rtol=1e-4, atol=1e-4)


def test_unsplittable_graph_is_a_clear_error(tmp_path: Path) -> None:
    path = make_tiny_arcface_matmul(tmp_path / "odd_arcface.onnx", tail_op="Relu")
    with pytest.raises(ValueError, match=r"odd_arcface\.onnx: cannot split .*Relu"):
        ArcFaceEmbedder(InsightFaceConfig(providers=CPU), model_path=path)


def test_embedder_rejects_bad_crops(embedder: ArcFaceEmbedder) -> None:
    with pytest.raises(ValueError, match=r"\(N, 112, 112, 3\) uint8"):
        embedder.embed(np.zeros((2, 96, 96, 3), np.uint8))


# ----------------------------------------------------------------------------- SER-FIQ sampling


def test_stochastic_shape_and_seed_determinism(embedder: ArcFaceEmbedder, crops: np.ndarray) -> None:
    a = embedder.embed_stochastic(crops, 6, np.random.default_rng(3))
    b = embedder.embed_stochastic(crops, 6, np.random.default_rng(3))
    c = embedder.embed_stochastic(crops, 6, np.random.default_rng(4))
    assert a.shape == (5, 6, 512) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # the T samples of one crop differ from each other (p = 0.5)
    assert np.all(np.abs(a[:, 1:] - a[:, :1]).max(axis=-1) > 1e-3)


def test_embed_with_samples_matches_embed_and_stochastic(
    embedder: ArcFaceEmbedder, crops: np.ndarray
) -> None:
    emb, samples = embedder.embed_with_samples(crops, 4, np.random.default_rng(5))
    np.testing.assert_allclose(emb, embedder.embed(crops), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(samples, embedder.embed_stochastic(crops, 4, np.random.default_rng(5)))
    assert samples.shape == (5, 4, 512) and emb.dtype == samples.dtype == np.float32


def test_stochastic_does_not_depend_on_batch_size(models_dir: Path, crops: np.ndarray) -> None:
    one = ArcFaceEmbedder(InsightFaceConfig(pack_dir=models_dir, batch_size=1, providers=CPU))
    many = ArcFaceEmbedder(InsightFaceConfig(pack_dir=models_dir, batch_size=32, providers=CPU))
    np.testing.assert_allclose(
        one.embed_stochastic(crops, 4, np.random.default_rng(0)),
        many.embed_stochastic(crops, 4, np.random.default_rng(0)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_zero_dropout_gives_the_deterministic_embedding(models_dir: Path, crops: np.ndarray) -> None:
    emb = ArcFaceEmbedder(InsightFaceConfig(pack_dir=models_dir, serfiq_dropout=0.0, providers=CPU))
    samples = emb.embed_stochastic(crops, 3, np.random.default_rng(0))
    np.testing.assert_allclose(samples, np.repeat(emb.embed(crops)[:, None], 3, axis=1), rtol=1e-5, atol=1e-5)


def test_dropout_is_unbiased(embedder: ArcFaceEmbedder, crops: np.ndarray) -> None:
    # Inverted dropout keeps the expectation: the head is affine, so the sample mean -> embed().
    samples = embedder.embed_stochastic(crops[:1], 400, np.random.default_rng(0))[0]
    err = np.abs(samples.mean(0) - embedder.embed(crops[:1])[0])
    assert np.all(err < 6 * samples.std(0) / np.sqrt(len(samples)) + 1e-5)


# ----------------------------------------------------------------------------- assembly


def test_build_models_from_pack(models_dir: Path, no_env: Path) -> None:
    models = build_insightface_models(InsightFaceConfig(pack_dir=models_dir, providers=CPU, det_size=320))
    assert models.backend == "insightface"
    assert isinstance(models.detector, FaceDetector) and isinstance(models.embedder, FaceEmbedder)
    assert isinstance(models.embedder, StochasticEmbedder) and models.stochastic is models.embedder
    assert models.embedder.alignment.size == 112
    sha = hashlib.sha256((models_dir / "w600k_r50.onnx").read_bytes()).hexdigest()
    assert models.identity["embedder"]["sha256"] == sha
    assert models.identity["embedder"]["file"] == "w600k_r50.onnx"
    assert models.identity["detector"]["providers"] == list(CPU)
    assert models.identity["detector"]["det_size"] == 320


def test_arcface_last_block_is_its_embedding_layer_in_torch(embedder: ArcFaceEmbedder, crops: np.ndarray) -> None:
    """train_last_block on ArcFace: the trunk's pre-FC features and the embedding layer as a trainable
    torch module, equal to the ONNX graph's output before training; views 1.. are dropout copies."""
    import torch

    from vcn_assets.models.base import TrainableTail

    assert isinstance(embedder, TrainableTail)
    trunk = embedder.trunk_views(crops, 3, np.random.default_rng(0))
    assert trunk.shape == (5, 3, FEATURE_DIM) and trunk.dtype == np.float32
    np.testing.assert_array_equal(trunk[:, 0], embedder.features(crops))
    dropped = trunk[:, 1:] == 0
    assert 0.3 < dropped.mean() < 0.7  # p = 0.5 in the fixture's config
    kept = ~dropped & (trunk[:, :1] != 0)
    np.testing.assert_allclose(trunk[:, 1:][kept], (2 * np.repeat(trunk[:, :1], 2, axis=1))[kept], rtol=1e-6)
    tail = embedder.tail()
    with torch.no_grad():
        out = tail(torch.from_numpy(trunk[:, 0])).numpy()
    np.testing.assert_allclose(out, embedder.embed(crops), rtol=1e-4, atol=1e-4)
    assert all(p.requires_grad for p in tail.parameters())
