"""InsightFace backend: SCRFD detector and ArcFace recogniser from a local model pack.

Usage::

    from vcn_assets.models.insightface_backend import InsightFaceConfig, build_insightface_models
    models = build_insightface_models(InsightFaceConfig(pack_dir=Path("~/.insightface/models/buffalo_l")))
    dets = models.detector.detect(frame_bgr)                          # Detections
    crops = align_faces(frame_bgr, dets.kps, models.embedder.alignment)
    emb = models.embedder.embed(crops)                                # (N, 512) float32
    emb, samples = models.embedder.embed_with_samples(crops, 100, np.random.default_rng(0))  # (N, 100, D)

Nothing is downloaded: the ONNX files must already be in a pack folder (``buffalo_l`` holds
``det_10g.onnx`` + ``w600k_r50.onnx``; ``antelopev2`` holds ``scrfd_10g_bnkps.onnx`` +
``glintr100.onnx``). ONNX Runtime and insightface are imported only when a model is loaded.

SER-FIQ (Terhoerst et al., CVPR 2020) needs dropout in the embedding head, which the exported
ArcFace graphs no longer contain. :func:`split_embedding_head` cuts the graph at the input of its
final fully connected layer: the trunk runs in ONNX Runtime once per crop, and the head
(dropout -> FC -> BatchNormalization) runs in numpy, deterministically for :meth:`ArcFaceEmbedder.embed`
and ``T`` times with fresh dropout masks for :meth:`ArcFaceEmbedder.embed_with_samples`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from vcn_assets.core.files import file_sha256
from vcn_assets.models.base import (
    ARCFACE_ALIGNMENT,
    AlignmentSpec,
    Detections,
    FaceModels,
    ModelFileError,
    short_reason,
)

if TYPE_CHECKING:
    import onnx
    import onnxruntime

logger = logging.getLogger(__name__)

DEFAULT_PACKS = ("buffalo_l", "antelopev2")
PACK_ENV = "VCN_INSIGHTFACE_PACK"
DETECTOR_PATTERNS = ("det_*.onnx", "scrfd*.onnx")
RECOGNIZER_PATTERNS = ("w600k_*.onnx", "glintr100.onnx", "*arcface*.onnx")
SCRFD_OUTPUT_COUNTS = (9, 15)  # scores, boxes, landmarks for 3 or 5 strides (SCRFD "bnkps" models)
_FC_OPS = ("Gemm", "MatMul", "Add")
_PASS_THROUGH_OPS = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class InsightFaceConfig:
    """Where the model pack is and how the two models run.

    Attributes:
        pack_dir: folder holding the ONNX files. ``None`` -> ``$VCN_INSIGHTFACE_PACK`` if set, else
            the first of ``{$INSIGHTFACE_HOME or ~/.insightface}/models/{buffalo_l,antelopev2}``
            (or ``antelopev2/antelopev2``, as its zip unpacks) that contains ``.onnx`` files.
        detector_file: detector file name inside the pack; ``None`` -> the single file matching
            ``det_*.onnx`` / ``scrfd*.onnx`` (several matches are an error, not a choice).
        recognizer_file: recogniser file name; ``None`` -> the single match of ``w600k_*.onnx``,
            ``glintr100.onnx`` or ``*arcface*.onnx``.
        det_size: square detector input in pixels (multiple of 32). Larger finds smaller faces;
            cost grows with its square.
        det_threshold: minimum SCRFD score (insightface's 0.5). Lower finds more faces and more
            false positives.
        nms_threshold: IoU above which the lower-scoring of two boxes is dropped (insightface's 0.4).
        min_face_px: faces whose shorter box side is below this are dropped (0 keeps all).
        providers: ONNX Runtime execution providers; ``("auto",)`` -> CUDA when ONNX Runtime offers
            it, else CPU. Named providers that are not available are an error.
        num_threads: ONNX Runtime intra-op CPU threads; 0 lets ONNX Runtime use all cores.
        serfiq_dropout: SER-FIQ dropout rate on the pre-FC feature (the paper's 0.5). Higher spreads
            the stochastic embeddings more.
        batch_size: crops per trunk run. Larger is faster until memory runs out.
    """

    pack_dir: Path | None = None
    detector_file: str | None = None
    recognizer_file: str | None = None
    det_size: int = 640
    det_threshold: float = 0.5
    nms_threshold: float = 0.4
    min_face_px: int = 0
    providers: tuple[str, ...] = ("auto",)
    num_threads: int = 0
    serfiq_dropout: float = 0.5
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.det_size <= 0 or self.det_size % 32:
            raise ValueError(f"det_size must be a positive multiple of 32, got {self.det_size}")
        for name in ("det_threshold", "nms_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.serfiq_dropout < 1.0:
            raise ValueError(f"serfiq_dropout must be in [0, 1), got {self.serfiq_dropout}")
        if self.batch_size < 1 or self.num_threads < 0 or self.min_face_px < 0:
            raise ValueError(
                f"need batch_size >= 1, num_threads >= 0, min_face_px >= 0; got {self.batch_size}, "
                f"{self.num_threads}, {self.min_face_px}"
            )
        if not self.providers:
            raise ValueError("providers must name at least one provider (or be ('auto',))")


# ----------------------------------------------------------------------------- pack discovery


def _default_pack_candidates() -> list[Path]:
    """Default pack folders in order; ``antelopev2/antelopev2`` is how that pack's zip unpacks."""
    home = os.environ.get("INSIGHTFACE_HOME")
    root = Path(home).expanduser() if home else Path("~/.insightface").expanduser()
    return [root / "models" / name for name in DEFAULT_PACKS] + [
        root / "models" / "antelopev2" / "antelopev2"
    ]


def find_pack(config: InsightFaceConfig | None = None) -> Path | None:
    """The pack folder to use, or ``None`` when none is configured and no default pack exists.

    An explicitly named folder (``config.pack_dir`` or ``$VCN_INSIGHTFACE_PACK``) that does not
    exist raises ``FileNotFoundError`` instead of falling back to another pack. Default folders
    count only when they contain ``.onnx`` files (a failed download can leave an empty one).
    """
    config = config or InsightFaceConfig()
    explicit = config.pack_dir or (Path(os.environ[PACK_ENV]) if os.environ.get(PACK_ENV) else None)
    if explicit is not None:
        pack = Path(explicit).expanduser()
        if not pack.is_dir():
            raise FileNotFoundError(f"InsightFace model pack folder does not exist: {pack}")
        return pack
    for candidate in _default_pack_candidates():
        if candidate.is_dir() and any(candidate.glob("*.onnx")):
            return candidate
    return None


def _require_pack(config: InsightFaceConfig) -> Path:
    pack = find_pack(config)
    if pack is None:
        searched = ", ".join(str(p) for p in _default_pack_candidates())
        raise FileNotFoundError(
            f"no InsightFace model pack found (searched {searched}); set pack_dir or ${PACK_ENV}"
        )
    return pack


def _pick_file(pack: Path, name: str | None, patterns: Sequence[str], role: str, field: str) -> Path:
    if name is not None:
        path = pack / name
        if not path.is_file():
            raise FileNotFoundError(f"{role} file not found: {path}")
        return path
    matches = sorted({p for pattern in patterns for p in pack.glob(pattern) if p.is_file()})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        present = sorted(p.name for p in pack.glob("*.onnx"))
        raise FileNotFoundError(
            f"no {role} in {pack}: expected one file matching {', '.join(str(pack / p) for p in patterns)}; "
            f"found .onnx files {present}. Copy the pack's {role} there, or set InsightFaceConfig.{field}."
        )
    names = [p.name for p in matches]
    raise ModelFileError(f"ambiguous {role} in {pack}: {names} all match; set InsightFaceConfig.{field}.")


def detector_file(config: InsightFaceConfig) -> Path:
    """The detector ONNX file ``config`` names; raises if the pack or the file is missing."""
    return _pick_file(
        _require_pack(config), config.detector_file, DETECTOR_PATTERNS, "detector", "detector_file"
    )


def recognizer_file(config: InsightFaceConfig) -> Path:
    """The recogniser ONNX file ``config`` names; raises if the pack or the file is missing."""
    return _pick_file(
        _require_pack(config), config.recognizer_file, RECOGNIZER_PATTERNS, "recogniser", "recognizer_file"
    )


def resolve_model_files(config: InsightFaceConfig | None = None) -> tuple[Path, Path]:
    """``(detector_path, recognizer_path)`` for ``config``."""
    config = config or InsightFaceConfig()
    return detector_file(config), recognizer_file(config)


# ----------------------------------------------------------------------------- ONNX Runtime


def resolve_providers(requested: Sequence[str]) -> list[str]:
    """Execution providers for ONNX Runtime: ``("auto",)`` -> CUDA (+CPU) if available, else CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if tuple(requested) == ("auto",):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    missing = [p for p in requested if p not in available]
    if not requested or missing:
        raise ValueError(
            f"ONNX Runtime providers {missing or list(requested)} are not usable; available: {available}"
        )
    return list(requested)


def _make_session(source: str | bytes, config: InsightFaceConfig, path: Path) -> onnxruntime.InferenceSession:
    """A session on ``config.providers``; a provider that fails to start raises (warns under auto)."""
    import onnxruntime

    providers = resolve_providers(config.providers)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = config.num_threads
    try:
        session = onnxruntime.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, InvalidGraph)
        raise _not_onnx(path, exc) from exc
    active = session.get_providers()
    if providers[0] not in active:
        message = f"{path}: ONNX Runtime could not start {providers[0]}; running on {active}"
        if tuple(config.providers) != ("auto",):
            raise RuntimeError(message)
        logger.warning(message)
    return session


def _not_onnx(path: Path, exc: BaseException) -> ModelFileError:
    return ModelFileError(f"{path}: not a usable ONNX model ({short_reason(exc)}); the file is damaged or "
                          "incomplete: copy it again from the model pack")


def _require_file(path: Path | str, role: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{role} ONNX file not found: {path}")
    return path


# ----------------------------------------------------------------------------- detector


class InsightFaceDetector:
    """SCRFD with five landmarks (insightface's ``SCRFD`` decoder) -> :class:`Detections`.

    ``model_path`` overrides the pack lookup of ``config``. Boxes are in frame pixels and may reach
    past the frame edges, as SCRFD predicts them.
    """

    def __init__(
        self, config: InsightFaceConfig | None = None, *, model_path: Path | str | None = None
    ) -> None:
        from insightface.model_zoo.scrfd import SCRFD

        self.config = config or InsightFaceConfig()
        self.model_path = _require_file(model_path or detector_file(self.config), "detector")
        session = _make_session(str(self.model_path), self.config, self.model_path)
        self._check_signature(session)
        self.providers = session.get_providers()
        self._scrfd = SCRFD(model_file=str(self.model_path), session=session)
        size = self.config.det_size
        self._scrfd.prepare(
            0,
            input_size=(size, size),
            det_thresh=self.config.det_threshold,
            nms_thresh=self.config.nms_threshold,
        )
        self._sha256: str | None = None
        logger.info("SCRFD detector %s on %s", self.model_path.name, self.providers)

    def _check_signature(self, session: onnxruntime.InferenceSession) -> None:
        n_out = len(session.get_outputs())
        if n_out not in SCRFD_OUTPUT_COUNTS:
            raise ModelFileError(
                f"{self.model_path}: expected an SCRFD detector with landmarks ({SCRFD_OUTPUT_COUNTS} "
                f"outputs: scores, boxes and 5-point landmarks per stride), found {n_out} outputs: is this the "
                "pack's detector file?"
            )
        shape = session.get_inputs()[0].shape
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed and fixed != [self.config.det_size] * 2:
            raise ModelFileError(f"{self.model_path}: the input is fixed at {shape[2:]}; set det_size to match")

    def detect(self, frame_bgr: NDArray[np.uint8]) -> Detections:
        """Faces in one BGR ``uint8`` frame (H, W, 3), sorted by decreasing score."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"frame_bgr must be (H, W, 3) uint8, got {frame_bgr.shape} {frame_bgr.dtype}")
        det, kps = self._scrfd.detect(frame_bgr)
        if det.shape[0] == 0:
            return Detections.empty()
        dets = Detections(
            np.ascontiguousarray(det[:, :4], np.float32),
            np.ascontiguousarray(det[:, 4], np.float32),
            np.ascontiguousarray(kps, np.float32).reshape(-1, 5, 2),
        )
        side = np.minimum(dets.xyxy[:, 2] - dets.xyxy[:, 0], dets.xyxy[:, 3] - dets.xyxy[:, 1])
        return dets.select(side >= self.config.min_face_px) if self.config.min_face_px else dets

    def identity(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.model_path)
        c = self.config
        return {
            "detector": "scrfd_onnx",
            "file": self.model_path.name,
            "sha256": self._sha256,
            "providers": list(self.providers),
            "det_size": c.det_size,
            "det_threshold": c.det_threshold,
            "nms_threshold": c.nms_threshold,
            "min_face_px": c.min_face_px,
        }


# ----------------------------------------------------------------------------- ArcFace graph surgery


@dataclass(frozen=True)
class EmbeddingHead:
    """The head cut from an ArcFace graph: ``y = (x @ weight + bias) * scale + shift``.

    ``feature_name`` is the pre-FC tensor (the trunk's output, (N, F)); ``weight`` is (F, D);
    ``bias``, ``scale`` and ``shift`` are (D,) (``scale``/``shift`` fold the trailing
    BatchNormalization, or are 1/0 when the graph has none).
    """

    feature_name: str
    weight: NDArray[np.float32]
    bias: NDArray[np.float32]
    scale: NDArray[np.float32]
    shift: NDArray[np.float32]

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """(..., F) pre-FC features -> (..., D) embeddings."""
        return ((features @ self.weight + self.bias) * self.scale + self.shift).astype(np.float32)


class HeadModule(torch.nn.Module):
    """:class:`EmbeddingHead` in torch, every part trainable: ``(x @ weight + bias) * scale + shift``."""

    def __init__(self, head: EmbeddingHead) -> None:
        super().__init__()
        for name in ("weight", "bias", "scale", "shift"):
            setattr(self, name, torch.nn.Parameter(torch.from_numpy(np.array(getattr(head, name), np.float32))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight + self.bias) * self.scale + self.shift


class _GraphIndex:
    """Producers and constant values of one ONNX graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = {t.name: t for t in graph.initializer}

    def constant(self, name: str) -> NDArray[Any] | None:
        """The value of ``name`` if it is an initializer, a Constant, or an Identity of one."""
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":
            return self.constant(node.input[0])
        if node is not None and node.op_type == "Constant":
            attrs = {a.name: a for a in node.attribute}
            return numpy_helper.to_array(attrs["value"].t) if "value" in attrs else None
        return None

    def require(self, name: str, what: str, path: Path) -> NDArray[np.float32]:
        value = self.constant(name)
        if value is None:
            raise _head_error(path, f"{what} {name!r} is not a constant")
        return np.asarray(value, np.float32)


def _head_error(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(
        f"{path}: cannot split the ArcFace embedding head for SER-FIQ: expected the graph to end in "
        f"Gemm (or MatMul [+ Add]) [-> BatchNormalization] -> output; {problem}: is this the pack's "
        "recogniser file?"
    )


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _batchnorm_affine(
    node: onnx.NodeProto, index: _GraphIndex, path: Path
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    attrs = _attrs(node)
    if attrs.get("training_mode", 0) or len(node.output) != 1:
        raise _head_error(path, f"BatchNormalization {node.name!r} is in training mode")
    gamma, beta, mean, var = (
        index.require(name, "BatchNormalization parameter", path).astype(np.float64)
        for name in node.input[1:5]
    )
    scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _vector(value: NDArray[Any] | float, dim: int, what: str, path: Path) -> NDArray[np.float32]:
    arr = np.asarray(value, np.float32)
    if arr.size not in (1, dim):
        raise _head_error(path, f"{what} has shape {arr.shape}, expected ({dim},)")
    return np.ascontiguousarray(np.broadcast_to(arr.reshape(-1), (dim,)))


def _gemm(
    node: onnx.NodeProto, index: _GraphIndex, path: Path
) -> tuple[str, NDArray[np.float32], NDArray[np.float32]]:
    attrs = _attrs(node)
    if attrs.get("transA", 0):
        raise _head_error(path, f"Gemm {node.name!r} transposes its input")
    weight = index.require(node.input[1], "Gemm weight", path)
    weight = (weight.T if attrs.get("transB", 0) else weight) * np.float32(attrs.get("alpha", 1.0))
    has_bias = len(node.input) > 2 and node.input[2]
    bias = index.require(node.input[2], "Gemm bias", path) if has_bias else np.float32(0.0)
    bias = np.float32(attrs.get("beta", 1.0)) * bias
    return node.input[0], weight, _vector(bias, weight.shape[1], "Gemm bias", path)


def _fully_connected(
    node: onnx.NodeProto | None, index: _GraphIndex, path: Path
) -> tuple[str, NDArray[np.float32], NDArray[np.float32]]:
    """``(feature_name, weight (F, D), bias (D,))`` of the final FC layer ending at ``node``."""
    if node is None or node.op_type not in _FC_OPS:
        found = "a graph input" if node is None else f"{node.op_type} node {node.name!r}"
        raise _head_error(path, f"found {found} before the output")
    if node.op_type == "Gemm":
        return _gemm(node, index, path)
    bias: NDArray[Any] | float = 0.0
    if node.op_type == "Add":
        consts = [index.constant(name) for name in node.input]
        producers = [_producer(index, name) for name in node.input]
        k = 0 if consts[0] is not None else 1
        matmul = producers[1 - k]
        if consts[k] is None or matmul is None or matmul.op_type != "MatMul":
            raise _head_error(path, f"Add {node.name!r} is not a MatMul plus a constant bias")
        node, bias = matmul, np.asarray(consts[k], np.float32)
    weight = index.require(node.input[1], "MatMul weight", path)
    if weight.ndim != 2:
        raise _head_error(path, f"MatMul weight has shape {weight.shape}, expected (F, D)")
    return node.input[0], weight, _vector(bias, weight.shape[1], "MatMul bias", path)


def _producer(index: _GraphIndex, name: str) -> onnx.NodeProto | None:
    """The node computing ``name``, looking through value-preserving reshapes and Identity.

    Exporters may wrap the head's BatchNormalization in Unsqueeze/Squeeze or end with a Reshape;
    the (D,) parameter checks in :func:`split_embedding_head` catch a reshape that moves channels.
    """
    node = index.producer.get(name)
    while node is not None and node.op_type in _PASS_THROUGH_OPS:
        node = index.producer.get(node.input[0])
    return node


def split_embedding_head(model: onnx.ModelProto, path: Path) -> EmbeddingHead:
    """Find the final FC (+ BatchNormalization) of an ArcFace graph and read its parameters."""
    graph = model.graph
    if len(graph.output) != 1:
        raise _head_error(path, f"the graph has {len(graph.output)} outputs, expected one")
    index = _GraphIndex(graph)
    node = _producer(index, graph.output[0].name)
    bn: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
    if node is not None and node.op_type == "BatchNormalization":
        bn = _batchnorm_affine(node, index, path)
        node = _producer(index, node.input[0])
    feature, weight, bias = _fully_connected(node, index, path)
    if index.constant(feature) is not None:
        raise _head_error(path, f"the FC input {feature!r} is a constant")
    dim = weight.shape[1]
    if bn is not None and bn[0].shape != (dim,):
        raise _head_error(path, f"FC output {dim} does not match BatchNormalization {bn[0].shape}")
    scale, shift = bn if bn is not None else (np.ones(dim, np.float32), np.zeros(dim, np.float32))
    return EmbeddingHead(feature, np.ascontiguousarray(weight, np.float32), bias, scale, shift)


def trunk_model(model: onnx.ModelProto, feature_name: str) -> onnx.ModelProto:
    """A copy of ``model`` cut to the nodes and weights that ``feature_name`` depends on."""
    from onnx import TensorProto, helper

    graph = model.graph
    needed, nodes = {feature_name}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    nodes.reverse()
    trunk_graph = helper.make_graph(
        nodes,
        f"{graph.name}_trunk",
        [v for v in graph.input if v.name in needed],
        [helper.make_tensor_value_info(feature_name, TensorProto.FLOAT, None)],
        initializer=[t for t in graph.initializer if t.name in needed],
    )
    trunk = helper.make_model(
        trunk_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    trunk.functions.extend(model.functions)
    return trunk


def _input_normalisation(graph: onnx.GraphProto) -> tuple[float, float]:
    """``(mean, std)`` for the input, by insightface's rule (``model_zoo/arcface_onnx.py``).

    MXNet-converted graphs start with their own Sub and Mul nodes and take raw pixels; the
    PyTorch-exported ones (w600k_r50, glintr100) expect ``(x - 127.5) / 127.5``.
    """
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _data_input(graph: onnx.GraphProto, path: Path, size: int) -> tuple[str, int | None]:
    """The image input's name and its fixed batch size (``None`` when dynamic)."""
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    if len(inputs) != 1:
        raise ModelFileError(f"{path}: expected one image input, found {[v.name for v in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    shape_ok = len(dims) == 4 and dims[1] in (3, None) and all(d in (size, None) for d in dims[2:])
    if not shape_ok or dims[0] not in (1, None):
        raise ModelFileError(f"{path}: expected an input of shape (N, 3, {size}, {size}), found {dims}")
    return inputs[0].name, dims[0]


# ----------------------------------------------------------------------------- embedder


class ArcFaceEmbedder:
    """ArcFace embeddings (raw, not normalised) with SER-FIQ dropout sampling of the head.

    ``model_path`` overrides the pack lookup of ``config``.

    Attributes:
        dim: embedding size ``D``.
        alignment: the ArcFace 112x112 five-point template.
        head: the :class:`EmbeddingHead` cut from the graph.
        quality_method: what :meth:`embed_with_samples` perturbs.
    """

    alignment: AlignmentSpec = ARCFACE_ALIGNMENT

    def __init__(
        self, config: InsightFaceConfig | None = None, *, model_path: Path | str | None = None
    ) -> None:
        import onnx

        self.config = config or InsightFaceConfig()
        self.model_path = _require_file(model_path or recognizer_file(self.config), "recogniser")
        try:
            model = onnx.load(str(self.model_path))
        except Exception as exc:  # protobuf's DecodeError, onnx's own errors for damaged files
            raise _not_onnx(self.model_path, exc) from exc
        self.head = split_embedding_head(model, self.model_path)
        self.input_mean, self.input_std = _input_normalisation(model.graph)
        self._input_name, fixed_batch = _data_input(model.graph, self.model_path, self.alignment.size)
        self.batch_size = fixed_batch or self.config.batch_size
        self.dim, self.dropout = self.head.dim, self.config.serfiq_dropout
        trunk = trunk_model(model, self.head.feature_name).SerializeToString()
        del model
        self._session = _make_session(trunk, self.config, self.model_path)
        self.providers = self._session.get_providers()
        self.quality_method = (
            f"SER-FIQ: ONNX trunk once, then dropout(p={self.dropout}) on the {self.head.in_dim}-d pre-FC "
            "feature -> FC -> BatchNorm in numpy, T times with the given Generator"
        )
        self._sha256: str | None = None
        logger.info("ArcFace embedder %s (D=%d) on %s", self.model_path.name, self.dim, self.providers)

    def _blob(self, aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
        """BGR uint8 (N, 112, 112, 3) -> normalised RGB float32 (N, 3, 112, 112)."""
        rgb = aligned_bgr[..., ::-1].astype(np.float32)
        blob = (rgb - np.float32(self.input_mean)) * np.float32(1.0 / self.input_std)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def _batches(self, aligned_bgr: NDArray[np.uint8]) -> Iterator[tuple[int, NDArray[np.float32]]]:
        """``(start, pre-FC features (B, F))`` for consecutive batches of ``batch_size`` crops."""
        size = self.alignment.size
        shape_ok = aligned_bgr.ndim == 4 and aligned_bgr.shape[1:] == (size, size, 3)
        if not shape_ok or aligned_bgr.dtype != np.uint8:
            got = f"{aligned_bgr.shape} {aligned_bgr.dtype}"
            raise ValueError(f"aligned_bgr must be (N, {size}, {size}, 3) uint8, got {got}")
        for start in range(0, len(aligned_bgr), self.batch_size):
            blob = self._blob(aligned_bgr[start : start + self.batch_size])
            feats = self._session.run([self.head.feature_name], {self._input_name: blob})[0]
            yield start, np.asarray(feats, np.float32).reshape(len(blob), -1)

    def features(self, aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Pre-FC trunk features (N, F) float32."""
        out = np.zeros((len(aligned_bgr), self.head.in_dim), np.float32)
        for start, feats in self._batches(aligned_bgr):
            out[start : start + len(feats)] = feats
        return out

    def embed(self, aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, 112, 112, 3) BGR uint8 -> (N, D) float32, equal to the full graph's output."""
        return self.head.apply(self.features(aligned_bgr))

    def _samples(
        self, feature: NDArray[np.float32], n_samples: int, rng: np.random.Generator
    ) -> NDArray[np.float32]:
        """(T, D): the head on ``n_samples`` inverted-dropout copies of one (F,) feature."""
        keep = rng.random((n_samples, feature.shape[0]), dtype=np.float32) >= self.dropout
        kept = feature * np.float32(1.0 / (1.0 - self.dropout))
        return self.head.apply(np.where(keep, kept, np.float32(0.0)))

    def embed_with_samples(
        self, aligned_bgr: NDArray[np.uint8], n_samples: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings (N, D) and SER-FIQ samples (N, T, D) float32 from one trunk pass.

        Masks are drawn crop by crop in order, so a seed gives the same samples whatever the
        batch size.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        emb = np.zeros((len(aligned_bgr), self.dim), np.float32)
        samples = np.zeros((len(aligned_bgr), n_samples, self.dim), np.float32)
        for start, feats in self._batches(aligned_bgr):
            emb[start : start + len(feats)] = self.head.apply(feats)
            for i, feature in enumerate(feats):
                samples[start + i] = self._samples(feature, n_samples, rng)
        return emb, samples

    def trunk_views(self, aligned_bgr: NDArray[np.uint8], n_views: int, rng: np.random.Generator) -> NDArray[np.float32]:
        """For ``train_last_block``: pre-FC features (N, V, F) of the crop (view 0) and ``n_views - 1``
        inverted-dropout copies of it (the SER-FIQ perturbation, masks drawn crop by crop)."""
        feats = self.features(aligned_bgr)
        keep = rng.random((len(feats), n_views, feats.shape[1]), dtype=np.float32) >= self.dropout
        keep[:, 0] = True
        scale = np.ones(n_views, np.float32)
        scale[1:] = 1.0 / (1.0 - self.dropout)
        return np.where(keep, feats[:, None] * scale[None, :, None], np.float32(0.0))

    def tail(self) -> HeadModule:
        """The network's last block as a trainable torch module: the embedding layer (fully connected,
        its trailing BatchNorm folded in) over the pre-FC features; equal to :meth:`embed` until trained."""
        return HeadModule(self.head)

    def embed_stochastic(
        self, aligned_bgr: NDArray[np.uint8], n_samples: int, rng: np.random.Generator
    ) -> NDArray[np.float32]:
        """Only the SER-FIQ samples (N, T, D) of :meth:`embed_with_samples`."""
        return self.embed_with_samples(aligned_bgr, n_samples, rng)[1]

    def identity(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.model_path)
        return {
            "embedder": "arcface_onnx",
            "file": self.model_path.name,
            "sha256": self._sha256,
            "providers": list(self.providers),
            "dim": self.dim,
            "input_mean": self.input_mean,
            "input_std": self.input_std,
            "quality_method": self.quality_method,
        }


# ----------------------------------------------------------------------------- assembly


def build_insightface_models(config: InsightFaceConfig | None = None) -> FaceModels:
    """Load the detector and recogniser named by ``config`` as a :class:`FaceModels`."""
    config = config or InsightFaceConfig()
    detector, embedder = InsightFaceDetector(config), ArcFaceEmbedder(config)
    identity = {
        "backend": "insightface",
        "pack": detector.model_path.parent.name,
        "detector": detector.identity(),
        "embedder": embedder.identity(),
    }
    return FaceModels("insightface", detector, embedder, identity)
