"""Typed, frozen configuration for every stage, each knob documented as a trade-off.

Usage::

    from vcn_assets.core.config import TrackConfig
    cfg = TrackConfig(detect_stride=3)          # override one knob, keep the documented rest
    describe(cfg)                               # {"detect_stride": 3, ...} for logs and lineage

The paper publishes few numbers; every default below is ours, chosen by measurement on the dev
cases where noted, and is logged with every run (``describe``). The Dagster layer exposes the same
fields, with these docs, as run config of the matching asset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def knob(default: Any, doc: str) -> Any:
    """A config field with its explanation attached (shown in the Dagster launchpad)."""
    return field(default=default, metadata={"doc": doc})


def describe(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (for logs, metadata and fingerprints)."""
    return dataclasses.asdict(cfg)


@dataclass(frozen=True)
class VideoConfig:
    min_frames: int = knob(
        2, "A movie needs at least this many frames; one frame is a still picture, not a movie."
    )


@dataclass(frozen=True)
class ShotConfig:
    detector: str = knob(
        "adaptive",
        "PySceneDetect algorithm: 'adaptive' (AdaptiveDetector: robust to fast camera motion, the "
        "library's recommended default) or 'content' (ContentDetector: one fixed threshold).",
    )
    threshold: float = knob(
        3.0,
        "Cut threshold. For 'adaptive' the ratio of a frame's content change to its neighbours' "
        "(library default 3.0); for 'content' the HSV-change score (library default 27). Lower finds "
        "more cuts and more false cuts.",
    )
    min_shot_frames: int = knob(
        8, "Shortest shot in frames; shorter cuts are flashes, not shots (library default 15 is 0.6 s)."
    )
    analysis_width: int = knob(
        320, "Frames are downscaled to this width before cut detection: cuts survive, cost drops ~10x."
    )


@dataclass(frozen=True)
class TrackConfig:
    detect_stride: int = knob(
        4,
        "Run the face detector on every n-th frame of a shot (and on its last frame) and interpolate "
        "boxes in between. Larger is faster but misses brief faces and follows fast motion worse. "
        "Measured on tbbt_s01e01_open: GT box recall 0.904 / 0.877 / 0.849 at stride 3 / 4 / 5.",
    )
    min_face_px: int = knob(
        20, "Smallest face (box height, pixels of the original frame) the detector looks for."
    )
    detect_max_side: int = knob(
        960,
        "Frames whose longer side exceeds this are downscaled before detection (boxes mapped back): "
        "cost falls with the square of the scale. Measured MTCNN on 1280x720: 120 ms/frame at full size, "
        "52 ms at 960, 30 ms at 640. At 960 a 720p frame is searched for faces down to ~27 px (dlib backend).",
    )
    min_score: float = knob(
        0.0,
        "Detections below this detector confidence are dropped; 0 = the backend's own default "
        "(MTCNN 0.9, SCRFD 0.5: scores of different detectors are not comparable).",
    )
    iou_weight: float = knob(
        0.6, "Association cost = 1 - (w * IoU + (1 - w) * appearance similarity); w trades geometry for looks."
    )
    min_iou: float = knob(
        0.15, "A detection may continue a track only if their boxes overlap at least this much."
    )
    max_cost: float = knob(0.75, "Hungarian assignments costlier than this start a new track instead.")
    max_missed: int = knob(
        2, "A track survives this many detection steps without a match (occlusion, missed detection)."
    )
    min_detections: int = knob(
        2, "Tracks with fewer detections are dropped as likely false positives or flickers."
    )


@dataclass(frozen=True)
class CropConfig:
    crop_interval: int = knob(
        9,
        "Sample a crop every n frames of a track (only on frames where the detector ran). Smaller gives "
        "more views per track and costs embedding time linearly.",
    )
    max_crops_per_track: int = knob(
        10, "Long tracks are subsampled evenly to this many crops: bounds cost per track."
    )
    min_face_px: int = knob(
        24, "Slides' minimum-area filter, as sqrt(box area) in pixels; smaller faces embed poorly."
    )
    top_k_per_frame: int = knob(
        6, "Slides' filter: keep only the K largest faces of a frame (crowds add noise, not cast)."
    )
    min_sharpness: float = knob(
        8.0,
        "Slides' blur filter: variance of the Laplacian of the 112x112 grey aligned crop; crops below "
        "are dropped. Measured on the dev cases: motion-blurred faces score 2-6, sharp ones 20-600.",
    )
    quality_samples: int = knob(
        2,
        "SER-FIQ stochastic passes per crop (reference: 100). The dlib backend's passes are input "
        "perturbations costing one network pass each; ArcFace's are cheap dropout heads.",
    )
    mad_k: float = knob(
        3.0,
        "A track is a low-quality outlier ('unknown') when its quality is below median - k * 1.4826 * "
        "MAD of all track qualities (k=3 is the usual robust-outlier cut).",
    )
    mad_min_gap: float = knob(
        0.05,
        "A track is an outlier only if it is also at least this far below the median quality: when "
        "qualities are tightly packed the MAD shrinks and would flag ordinary tracks (measured on "
        "tbbt_s01e01_open: all 14 track qualities within 0.873-0.920, and k*MAD flagged the 0.873 one).",
    )
    mad_min_tracks: int = knob(
        5, "With fewer tracks the distribution is too thin to call outliers; none are marked."
    )
    jpeg_quality: int = knob(90, "JPEG quality of stored 112x112 crop images (UI and exports).")
    seed: int = knob(0, "Seed of the stochastic quality passes (results are deterministic per seed).")


@dataclass(frozen=True)
class ModelConfig:
    backend: str = knob(
        "auto",
        "'auto' (insightface when a local model pack is found, else dlib), 'insightface', 'dlib' or 'fake'.",
    )
    insightface_pack: str = knob(
        "", "Folder with SCRFD + ArcFace ONNX files; empty = ~/.insightface/models/{buffalo_l,antelopev2}."
    )
    device: str = knob("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'.")
    num_threads: int = knob(
        0, "Torch CPU threads (and ONNX Runtime's when set); 0 = the usable CPUs (affinity mask and cgroup "
        "CPU quota, so a container limited to 2 CPUs on a 32-core node uses 2), ONNX Runtime its own default.")
    detect_workers: int = knob(
        0,
        "Frames the face detector works on at once (threads sharing torch's CPU threads), for the dlib "
        "backend's MTCNN; 0 = one per usable CPU (the process's affinity mask) on the CPU, 1 on a GPU. Measured on 2 cores: 48 ms per "
        "720p frame with 2 workers vs 68 ms with 1. The insightface backend uses 1 (ONNX Runtime "
        "already spreads one call over its threads) unless this is set.",
    )
    dlib_runtime: str = knob(
        "torch",
        "How the dlib backend runs dlib's descriptor network: 'torch' reads it from dlib's own model file "
        "and runs it in torch (same descriptors to float32 rounding; measured 6 ms vs 87 ms per chip on "
        "2 cores, and it uses the GPU when the device is cuda); 'dlib' runs dlib's C++ (the reference).",
    )
    embed_workers: int = knob(
        0,
        "Processes for dlib_runtime='dlib' (dlib-bin holds the GIL and has no BLAS, so processes are "
        "its only way to use several cores); 0 = one per CPU core, 1 = in this process.",
    )
    serfiq_dropout: float = knob(
        0.5, "SER-FIQ dropout rate of the ArcFace head (the paper's 0.5); unused by dlib (no dropout)."
    )


@dataclass(frozen=True)
class FinetuneConfig:
    rounds: int = knob(
        3,
        "Finetune -> soft-match rounds (not published). Round 1 trains on same-track pairs only; later "
        "rounds also on soft-matched tracks. More rounds spread identity evidence further and cost time.",
    )
    steps_per_round: int = knob(
        150,
        "Optimiser steps per round. With same-track positives DINO learns to tell tracks apart: longer "
        "training split identities more (measured on the dev cases: 400 steps/round gave PCR 4.9 on "
        "lfw10_episode, 150 gave 3.0, both at WCP 1.0).",
    )
    warmup_steps: int = knob(
        50,
        "Slides: the head is first trained with the encoder frozen. Here the 'encoder' part that is "
        "trainable is the residual adapter on the frozen backbone; it is frozen for these first steps.",
    )
    batch_tracks: int = knob(128, "Tracks per step (two views each); larger is smoother, slower per step.")
    hidden_dim: int = knob(512, "Width of the adapter and head MLPs.")
    bottleneck_dim: int = knob(128, "DINO head bottleneck (L2-normalised before the prototype layer).")
    out_dim: int = knob(
        64,
        "Prototypes of the DINO head (DINO uses 65536 for ImageNet). Fewer prototypes than tracks make "
        "the head share prototypes between similar tracks instead of giving each track its own; a movie "
        "has tens of identities. Measured on the dev cases: 64 beat 16, 32 and 256 on B-cubed F.",
    )
    teacher_temp: float = knob(0.04, "DINO teacher temperature (DINO default; above 0.07 is unstable).")
    student_temp: float = knob(0.1, "DINO student temperature (DINO default).")
    center_momentum: float = knob(0.9, "EMA momentum of the teacher-output centre (DINO default).")
    ema_start: float = knob(0.996, "Teacher EMA momentum at the start; rises to 1 on a cosine (DINO).")
    lr: float = knob(1e-3, "AdamW learning rate (head-sized network, short schedule).")
    weight_decay: float = knob(0.04, "AdamW weight decay (DINO's starting value).")
    match_prob: float = knob(
        0.8,
        "From round 2: chance that a pair's second crop comes from a soft-matched track instead (the rest "
        "stay same-track pairs). Chosen on the 12 held-out cases of Stage 3's max_neighbours: mean B-cubed "
        "F 0.964 at 0.5, 0.970 at 0.8, 0.971 at 1.0 (1.0 would drop same-track pairs for matched tracks), "
        "WCP 1.0 at all three.",
    )
    feature_noise: float = knob(
        0.02,
        "Light augmentation in feature space on top of the stored augmented views (mirror / jitter or "
        "dropout samples): Gaussian noise of this std on the unit-norm backbone embedding.",
    )
    seed: int = knob(0, "Seed of initialisation and sampling: the checkpoint is deterministic per seed.")
    members: int = knob(
        3,
        "Students trained independently (each all rounds of finetune -> soft-match) at seeds seed, seed+1, "
        "...; Stage 4 clusters with each and keeps together the tracks that a majority of them put "
        "together (never two tracks sharing a frame). One student's result depends on its seed: on 12 "
        "held-out cases, 2 of 60 single-seed runs (seeds 0-4) merged two people and lfw10_episode scored "
        "B-cubed F 0.977 at seed 0 but 1.000 at seeds 1-4; majorities of 3 (all 10 triples of seeds 0-4) "
        "merged no one, scored 1.000 on lfw10_episode at every triple and a held-out mean of 0.967-0.972 "
        "(the same seeds alone: 0.964-0.970). Costs members x the finetuning time. 1 = one student (the paper).",
    )
    train_last_block: bool = knob(
        False,
        "Also train the backbone's last block: dlib's last residual block + final layer (1.2 M weights, "
        "dlib_runtime 'torch'), or ArcFace's embedding layer (its fully connected layer over the "
        "512x7x7 trunk output). Off by default: on the dev and held-out cases it did not beat the frozen "
        "backbone (README, 'Training the last backbone block'). The finetuning step then re-reads the "
        "movie for each crop view's features before that block, kept in memory as float16 (dlib: 8 kB "
        "per view; ArcFace: 50 kB per view, meant for a GPU), and trains on them.",
    )
    last_block_lr_scale: float = knob(
        0.1,
        "Learning rate of the last backbone block relative to lr: pretrained weights are moved gently "
        "(the adapter and head start from scratch or from the identity).",
    )
    device: str = knob(
        "auto",
        "Where Stage 2 trains (and embeds for its between-round soft matching): 'auto' (CUDA when torch "
        "sees a GPU), 'cpu' or 'cuda' ('cuda' on a machine without one fails the step). The networks are "
        "small (an adapter and a head over stored embeddings), so a GPU pays off mainly for movies with "
        "many tracks. Initialisation and sampling stay on the CPU, "
        "but CUDA kernels round differently: a GPU-trained checkpoint is close to, not byte-identical "
        "with, a CPU-trained one. The returned networks, and Stages 3-4, are on the CPU.",
    )


@dataclass(frozen=True)
class MatchConfig:
    dims: int = knob(
        4,
        "Low-rank regularisation: Normals are fitted in the top principal subspace (of the track means) "
        "of this many dimensions. In all 128 dimensions no other track's mean ever falls inside a "
        "track's own-crop threshold (measured on the dev cases); at 4 the matches were still all "
        "correct and 2-4x as many as at 8 (mean B-cubed F of the final clusters 0.80 vs 0.74).",
    )
    use_views: bool = knob(
        True,
        "Fit each track's Normal on its crops' stored augmented views too (mirror, jitter): a static "
        "track's spread then covers at least the variation of a mirrored face. Measured in dlib space "
        "on bbt_faceapi_episode: 22 matches instead of 2, precision 1.0 in both.",
    )
    prior_weight: float = knob(
        10.0,
        "Covariance regularisation: a track's per-dimension variances (in the space whitened by the "
        "pooled within-track covariance) are shrunk toward 1 with this many pseudo-crops. With 2-10 "
        "crops in 128 dimensions an unregularised covariance is singular.",
    )
    ridge: float = knob(1e-3, "Ridge added to the pooled covariance (relative to its mean eigenvalue).")
    low_quantile: float = knob(
        0.25, "Track threshold = mean pdf of its lowest-scoring share of own crops (paper: lowest 25%)."
    )
    max_neighbours: int = knob(
        12,
        "Beyond the paper: also match two tracks that are each in the other's neighbour set: its nearest "
        "tracks (cosine of mean student embeddings; never one sharing a frame) up to the largest drop in "
        "similarity among its max_neighbours + 1 nearest. 0 = the paper's Normal rule only. The Normal "
        "rule finds few same-person pairs, because a track's crops are far more alike than two tracks of "
        "one person (measured round-1 recall: 3-16% on three dev cases), and without those pairs Stage 4 "
        "leaves each person in 2-3 clusters. The drop adapts the set to each person's number of tracks; a "
        "fixed k does not: k=3 merged two people on the generated demo sample (2 tracks per person). "
        "Chosen on 12 held-out cases (generated demo samples and vcn make-case LFW episodes with 2, 4-8 "
        "and ~11 tracks per person), never on the dev cases: the smallest cap with the best held-out "
        "scores. Caps 12 and 20 scored the same on all 12 (WCP 1.0 everywhere); 5 and 8 left people "
        "with ~11 tracks split (B-cubed F 0.67-0.75 vs 0.89 at 12). Each track is compared with every "
        "other in row blocks; the cap bounds the pairs per track.",
    )
    max_matches_per_track: int = knob(
        50,
        "Each track keeps at most its this many best matches (largest log-pdf above its threshold); 0 = "
        "no cap. Without a cap the matches of a long movie grow with the square of the tracks per person: "
        "measured on the 20-minute repeated sample (fake backend, 5,500 tracks), 1.5 million pairs per "
        "round and a peak of 858 MB, against 148,000 pairs and 548 MB at 50. Training draws one partner "
        "per pair, so 50 candidates keep variety; the dev cases' clusters are the same with and without it.",
    )


@dataclass(frozen=True)
class ClusterConfig:
    max_iterations: int = knob(
        50, "Safety cap on merge iterations (the loop stops earlier, when nothing changes)."
    )
    use_views: bool = knob(
        True,
        "Treat each crop's stored augmented views (mirror, jitter) as crops of its track in Stage 4: a "
        "still or static track then has a threshold that admits the variation of a mirrored face.",
    )
    respect_cooccurrence: bool = knob(
        True, "Never merge two tracks that share a frame (two faces in one frame are two people)."
    )
