"""Segmentation from pixel embeddings (issue #16, model 2): VOI/ARAND on a held-out
region of synthetic barcoded data, affinities alone against affinities + fragments' mean
embeddings, and affinities made from the embeddings alone.

Data: `connecto.data.barcodes` renders 18 barcode channels from the NeuroProof neurons
(10 nm voxels), crop BENCH_EMBEDDING_CROP (default z 0:250, y 0:128, x 0:128 voxels).
The first 60 % in z trains the embedding network, the next 20 % (validation) chooses
the threshold and feature weight (lowest VOI), the last 20 % (test) is reported.

Embedding network (fixed CPU budget): a pixel-embedding model (U-Net of one level, 8
feature maps, a 32-wide MLP head, D = 24) trained from scratch for
BENCH_EMBEDDING_TRAIN_SECONDS (default 360) wall seconds with 2 torch threads and no
cache workers, batch 1, Adam lr 1e-3, PRISM's contrastive loss with its defaults, on
BENCH_EMBEDDING_INPUT (default `raw`; `average_barcode`: a perfect enhancement, the
upper bound; or `<container>.zarr/<dataset>`, e.g. the enhancement task's `enhanced`
over the same crop); or, with BENCH_EMBEDDING_CHECKPOINT (a `pixel-embedding`
model_checkpoint_<N> whose train config fits the data), that model. Its unit embeddings
are predicted over the validation and test regions.

Affinities: from the ground truth, degraded as predictions are (`connecto.data.degrade`:
BENCH_EMBEDDING_DEGRADATIONS, default "mild,strong"; part 1's affinity-only baseline),
plus `embedding`: nearest-neighbour affinities made from the predicted embeddings
(cosine similarity, `connecto.tasks.pixel_embedding.segment`), no affinity network.
Per affinity source one graph (fragments and edges in MongoDB), then per variant:
- `affinities`: mean-affinity agglomeration alone,
- `+ embedding`: + fragment means of the embeddings (cosine distance),
- `+ raw barcodes`: + fragment means of the raw channels (part 1's reference),
feature weights BENCH_EMBEDDING_FEATURE_WEIGHTS (default 0.25,0.5,0.75; affinity weight
= 1 - feature weight). About 10-15 minutes on 2 cores with the defaults.

The MongoDB server is the configured one (CONNECTO_MONGO_URI), else the embedded one.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import gunpowder as gp
import numpy as np
import torch
from funlib.geometry import Coordinate, Roi

from connecto import ConnectoError
from connecto.checkpoints import read_checkpoint
from connecto.data.barcodes import BarcodeParameters, parse_crop, synthesize_barcodes_from_file
from connecto.data.volumes import open_raw
from connecto.db.graph import process_client
from connecto.postprocess.blockwise import apply_lut
from connecto.tasks.barcode_enhancement.pipeline import barcode_channels
from connecto.tasks.pixel_embedding.config import PixelEmbeddingTrainConfig
from connecto.tasks.pixel_embedding.model import build_loss, build_model
from connecto.tasks.pixel_embedding.pipeline import (
    LABELS,
    RAW,
    batch_request,
    data_pipeline,
    open_embedding_data,
)
from connecto.tasks.pixel_embedding.predict import predict_embedding_volume
from connecto.tasks.pixel_embedding.segment import write_embedding_affinities
from connecto.tasks.segmentation.config import SegmentConfig, load_segment_config
from connecto.tasks.segmentation.evaluate import score_segmentation
from connecto.tasks.segmentation.feature_agglomeration import (
    feature_edge_scores,
    store_fragment_features,
)
from connecto.tasks.segmentation.steps import open_graph, open_volume
from connecto.tasks.segmentation.workflow import (
    EdgeScores,
    gt_affinities,
    lookup_table,
    read_edge_scores,
    run_steps,
)

CROP = os.environ.get("BENCH_EMBEDDING_CROP", "0:250,0:128,0:128")
TRAIN_SECONDS = float(os.environ.get("BENCH_EMBEDDING_TRAIN_SECONDS", "360"))
CHECKPOINT = os.environ.get("BENCH_EMBEDDING_CHECKPOINT")
# the network's input: a dataset of the synthesized container (raw, or average_barcode:
# a perfect enhancement), or <container>.zarr/<dataset> (e.g. the enhancement's output)
INPUT = os.environ.get("BENCH_EMBEDDING_INPUT", "raw")
DEGRADATIONS = os.environ.get("BENCH_EMBEDDING_DEGRADATIONS", "mild,strong").split(",")
FEATURE_WEIGHTS = [
    float(w) for w in os.environ.get("BENCH_EMBEDDING_FEATURE_WEIGHTS", "0.25,0.5,0.75").split(",")
]  # affinity_weight = 1 - feature_weight
THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
THREADS = 2
WORKERS = 2
NETWORK = {
    "in_channels": 18, "input_shape": (28, 52, 52), "fmaps": 8, "fmap_inc_factor": 3,
    "downsample_factors": [(1, 2, 2)], "embedding_dims": 24, "head_fmaps": 32,
    "head_layers": 1, "learning_rate": 1e-3, "min_masked": 0.05, "batch_size": 1,
    "augment": True, "seed": 0,
}  # fmt: skip  # 16 x 36 x 36 out


def toml_value(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", '"')


def write_config(path: Path, values: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path


def synthesize(work: Path) -> Path:
    out = work / "barcodes.zarr"
    start = time.perf_counter()
    report = synthesize_barcodes_from_file(
        out, None, BarcodeParameters(synapses=0), crop=parse_crop(CROP), progress=False
    )
    print(f"synthesized {out.name}: {report} ({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def regions(data: Path) -> tuple[Roi, Roi, Roi]:
    """Train, validation and test slabs along z: 60 %, 20 %, 20 % (on the voxel grid)."""
    roi = open_volume(data, "labels").roi
    voxel = open_volume(data, "labels").voxel_size[0]
    depth = roi.shape[0] // voxel
    cuts = [0, depth * 3 // 5, depth * 4 // 5, depth]
    slabs = [
        Roi((roi.offset[0] + a * voxel, *roi.offset[1:]), ((b - a) * voxel, *roi.shape[1:]))
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    return slabs[0], slabs[1], slabs[2]


def as_list(roi: Roi) -> list[list[int]]:
    return [list(roi.offset), list(roi.shape)]


def network_input(data: Path) -> tuple[str, str]:
    """(container, dataset) of the network's input (INPUT)."""
    if ".zarr/" in INPUT:
        container, dataset = INPUT.split(".zarr/", 1)
        return container + ".zarr", dataset
    return str(data), INPUT


def train_embedding(data: Path, train_roi: Roi) -> tuple[PixelEmbeddingTrainConfig, object]:
    """The embedding model: trained for TRAIN_SECONDS, or loaded from CHECKPOINT."""
    container, dataset = network_input(data)
    config = PixelEmbeddingTrainConfig(
        container=str(data), raw_container=container, raw_dataset=dataset,
        train_roi=as_list(train_roi), **NETWORK,  # type: ignore[arg-type]
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config)
    if CHECKPOINT:
        model.load_state_dict(read_checkpoint(Path(CHECKPOINT), "cpu")["model_state_dict"])
        print(f"embedding model: {CHECKPOINT}", flush=True)
        return config, model.eval()
    loss_function = build_loss(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    pipeline = data_pipeline(config, open_embedding_data(config, "bench"))
    request = batch_request(config, Coordinate(open_volume(data, "labels").voxel_size),
                            predictions=False)  # fmt: skip
    losses: list[float] = []
    start = time.perf_counter()
    with gp.build(pipeline):
        while time.perf_counter() - start < TRAIN_SECONDS:
            batch = pipeline.request_batch(request)
            output = model(torch.from_numpy(batch[RAW].data))
            loss = loss_function(output, torch.from_numpy(batch[LABELS].data))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    window = max(1, len(losses) // 10)
    print(f"embedding model: {len(losses)} iterations in {time.perf_counter() - start:.0f} s; "
          f"loss {np.mean(losses[:window]):.3f} (first 10 %) -> "
          f"{np.mean(losses[-window:]):.3f} (last 10 %)", flush=True)  # fmt: skip
    return config, model.eval()


def predict(work: Path, data: Path, config: PixelEmbeddingTrainConfig, model: object,
            roi: Roi) -> Path:  # fmt: skip
    container, dataset = network_input(data)
    raw = barcode_channels(open_raw(container, dataset), container)
    start = time.perf_counter()
    result = predict_embedding_volume(model, config, raw, work / "embedding.zarr" / "embedding",
                                      roi)  # type: ignore[arg-type]  # fmt: skip
    print(f"predicted embeddings: {result.tiles} tiles over {roi} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return work / "embedding.zarr"


def best(scores: EdgeScores, frags: list[np.ndarray], truth: list[np.ndarray]) -> tuple:
    """(validation (VOI, ARAND), threshold, test scores) at the lowest validation VOI."""
    found = []
    for threshold in THRESHOLDS:
        lut = lookup_table(scores, threshold)
        test, validation = (score_segmentation(apply_lut(f, lut), t)
                            for f, t in zip(frags, truth, strict=True))  # fmt: skip
        found.append(((validation.voi, validation.arand), threshold, test))
    return min(found, key=lambda item: item[0])


def score_variant(
    config: SegmentConfig, graph: object, features: dict | None, frags: list[np.ndarray],
    truth: list[np.ndarray],
) -> tuple:  # fmt: skip
    """The best (validation, threshold, test, feature weight) of one variant: affinities
    alone (`features` None) or with the fragments' mean `features` at every weight."""
    if features is None:
        return (*best(read_edge_scores(graph, "mean"), frags, truth), None)  # type: ignore[arg-type]
    with_features = config.model_copy(update=features)
    store_fragment_features(with_features, overwrite=True)
    candidates = []
    for weight in FEATURE_WEIGHTS:
        weighted = with_features.model_copy(
            update={"affinity_weight": 1 - weight, "feature_weight": weight}
        )
        scores = EdgeScores(*feature_edge_scores(graph, weighted))  # type: ignore[arg-type]
        candidates.append((*best(scores, frags, truth), weight))
    return min(candidates, key=lambda item: item[0])


def run_source(work: Path, data: Path, embedding: Path, source: str, rois: tuple[Roi, Roi],
               db_name: str) -> list[tuple[str, tuple]]:  # fmt: skip
    """One affinity source: fragments and edges once, then every variant (and feature
    weight) on the same graph; threshold and weight chosen on validation, test reported."""
    validation_roi, test_roi = rois
    values = {
        "labels_container": str(data), "labels_dataset": "labels",
        "output_container": str(work / source / "segment.zarr"),
        "roi": as_list(test_roi), "validation_roi": as_list(validation_roi),
        "neighborhood": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "block_size": [64, 64, 64], "context": [8, 8, 8], "num_workers": WORKERS,
        "min_seed_distance": 4, "merge_function": "mean", "db_name": db_name,
        "graph": f"embedding_{source}", "thresholds": THRESHOLDS,
        "features_container": str(embedding), "features_dataset": "embedding",
    }  # fmt: skip
    path = write_config(work / source / "segment_config.toml", values)
    start = time.perf_counter()
    config, _ = load_segment_config(path)
    if source == "embedding":
        write_embedding_affinities(config)
    else:
        gt_affinities(config, degradation=source, seed=0)
    run_steps(path, ["fragments", "agglomerate"])  # stores the embeddings' means too
    print(f"  {source}: affinities, fragments, edges ({time.perf_counter() - start:.0f} s)",
          flush=True)  # fmt: skip
    fragments = open_volume(config.output_container, config.fragments_dataset)
    labels = open_volume(data, "labels")
    frags = [fragments.to_ndarray(test_roi), fragments.to_ndarray(validation_roi)]
    truth = [labels.to_ndarray(test_roi), labels.to_ndarray(validation_roi)]
    graph = open_graph(config)
    variants = [
        ("affinities", None),
        ("+ embedding", {}),
        ("+ raw barcodes", {"features_container": str(data), "features_dataset": "raw"}),
    ]
    results = []
    for name, features in variants:
        start = time.perf_counter()
        try:
            chosen = score_variant(config, graph, features, frags, truth)
        except ConnectoError as error:  # e.g. an untrained model: one fragment, no edges
            print(f"  {source:>10} | {name:<14} | not scored: {error}", flush=True)
            continue
        _, threshold, test, weight = chosen
        print(f"  {source:>10} | {name:<14} | feature weight {weight} threshold "
              f"{threshold:.2f} | VOI split {test.voi_split:.3f} merge {test.voi_merge:.3f} "
              f"total {test.voi:.3f} | ARAND {test.arand:.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        results.append((name, chosen))
    return results


def main() -> None:
    torch.set_num_threads(THREADS)
    db_name = f"bench_embedding_{uuid.uuid4().hex[:8]}"
    sources = [*DEGRADATIONS, "embedding"]
    print(f"crop {CROP}; input {INPUT}; training budget {TRAIN_SECONDS:.0f} s on {THREADS} "
          f"threads; affinities {', '.join(sources)}; "
          f"feature weights {FEATURE_WEIGHTS}")  # fmt: skip
    table: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp:
        work = Path(tmp)
        data = synthesize(work)
        train_roi, validation_roi, test_roi = regions(data)
        config, model = train_embedding(data, train_roi)
        embedding = predict(work, data, config, model, validation_roi.union(test_roi))
        try:
            for source in sources:
                table[source] = run_source(work, data, embedding, source,
                                           (validation_roi, test_roi), db_name)  # fmt: skip
        finally:
            process_client().drop_database(db_name)
    print(
        f"\nVOI (lower is better) and ARAND on the test slab {test_roi}; "
        "ratio = variant / affinities of the same source"
    )
    for source, results in table.items():
        if not results or results[0][0] != "affinities":
            print(f"  {source:>10} | no affinity-only result")
            continue
        baseline = results[0][1][2]
        for name, (_, threshold, test, weight) in results:
            ratio = test.voi / baseline.voi if baseline.voi else float("nan")
            print(f"  {source:>10} | {name:<14} | VOI {test.voi:.3f} (x{ratio:.2f}) | "
                  f"ARAND {test.arand:.3f} | threshold {threshold} weight {weight}")  # fmt: skip


if __name__ == "__main__":
    main()
