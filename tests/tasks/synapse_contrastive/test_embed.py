"""`connecto embed run | map | similar` on the real server with an untrained width-8
contrastive model: one document per synapse, resume, refusal, maps, neighbours."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from typer.testing import CliRunner

from cli.main import app
from connecto import ConnectoError
from connecto.tasks.synapse_contrastive.embed import embed, embed_synapses, list_embedding_runs
from connecto.tasks.synapse_contrastive.explore import embedding_map, similar
from tests.tasks.synapse_contrastive.embed_fixtures import WIDTH, Setup, setup, tracking

__all__ = ["setup", "tracking"]  # fixtures


def documents(client: MongoClient, setup: Setup, collection: str) -> dict[int, dict]:
    found = client[setup.embeddings_db][collection].find({})
    by_id: dict[int, dict] = {}
    for doc in found:
        assert doc["synapse_id"] not in by_id, "two documents for one synapse"
        by_id[doc["synapse_id"]] = doc
    return by_id


def test_embed_every_synapse_once_then_refuse_then_overwrite(setup: Setup, mongo_client):
    run = embed(setup.train.base, "clr", 0, progress=False)
    assert (run.collection, run.iteration, run.dimension) == ("clr_t0_i0", 0, 8 * WIDTH)
    assert (run.expected, run.resumed_from, run.written) == (len(setup.all_ids), 0, run.expected)
    written = documents(mongo_client, setup, run.collection)
    assert set(written) == setup.all_ids
    first = next(iter(written.values()))
    assert len(first["embedding"]) == 8 * WIDTH and first["iteration"] == 0
    assert first["checkpoint"] == str(setup.train.checkpoint(0).resolve())

    [tracked] = [r for r in list_embedding_runs(mongo_client[setup.tracking_db])
                 if r["collection"] == run.collection]  # fmt: skip
    assert tracked["state"] == "done" and tracked["expected"] == tracked["written"] == run.expected

    refusal = f"{setup.embeddings_db}.clr_t0_i0 already.*--overwrite"
    with pytest.raises(ConnectoError, match=refusal):
        embed(setup.train.base, "clr", 0, progress=False)
    again = embed_synapses(setup.train.checkpoint(0), overwrite=True, progress=False)
    assert (again.resumed_from, again.written) == (0, len(setup.all_ids))
    rewritten = documents(mongo_client, setup, run.collection)
    assert set(rewritten) == setup.all_ids
    some = min(setup.all_ids)  # the same model embeds a synapse the same way again
    assert rewritten[some]["embedding"] == pytest.approx(written[some]["embedding"], abs=1e-5)


def test_resume_writes_only_the_missing_synapses(setup: Setup, mongo_client):
    checkpoint = setup.train.checkpoint(0)
    first = embed_synapses(checkpoint, "skeleton", "validation", projection=True, progress=False)
    assert first.collection == "clr_t0_i0_proj" and first.dimension == 128
    assert set(documents(mongo_client, setup, first.collection)) == setup.parts["validation"]

    # an interrupted run leaves some synapses without a document: only those are written
    collection = mongo_client[setup.embeddings_db][first.collection]
    kept = {d["synapse_id"]: d["_id"] for d in collection.find({}, {"synapse_id": 1})}
    lost = sorted(kept)[::3]
    collection.delete_many({"synapse_id": {"$in": lost}})
    whole = embed_synapses(checkpoint, projection=True, batch_size=5, progress=False)
    expected_new = len(setup.all_ids) - len(kept) + len(lost)
    assert (whole.resumed_from, whole.written) == (len(kept) - len(lost), expected_new)
    after = documents(mongo_client, setup, first.collection)
    assert set(after) == setup.all_ids
    assert all(after[i]["_id"] == kept[i] for i in kept if i not in lost)  # left alone


def test_refusals_name_what_is_wrong(setup: Setup):
    with pytest.raises(ConnectoError, match="no split 'nope'"):
        embed_synapses(setup.train.checkpoint(0), "nope", progress=False)
    with pytest.raises(ConnectoError, match="no checkpoint for iteration 7"):
        embed(setup.train.base, "clr", 0, iteration=7, progress=False)
    with pytest.raises(ConnectoError, match="--part 'middle'"):
        embed_synapses(setup.train.checkpoint(0), "skeleton", "middle", progress=False)


def test_map_similar_and_the_cli(setup: Setup, tmp_path):
    embed_synapses(setup.train.checkpoint(0), overwrite=True, progress=False)
    result = embedding_map("neurotransmitter", setup.data_db, "clr_t0_i0", tmp_path)
    assert [p.name for p in result.plots] == [
        "clr_t0_i0_neurotransmitter_umap.png", "clr_t0_i0_neurotransmitter_pca.png"
    ]  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in result.plots)

    target = sorted(setup.parts["test"])[2]
    rows = similar(target, 5, setup.data_db, "clr_t0_i0")
    assert len(rows) == 5 and rows[0]["synapse_id"] == target
    assert rows[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)
    assert rows[0]["neurotransmitter"] in ("gaba", "acetylcholine", "glutamate")
    assert "skeleton=test" in rows[0]["splits"]

    runner = CliRunner()
    # without --db/--collection: the latest tracked embeddings
    shown = runner.invoke(app, ["embed", "similar", str(target), "-k", "3"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.strip().splitlines()
    assert lines[0].split()[:2] == ["synapse_id", "similarity"] and len(lines) == 4
    assert lines[1].split()[0] == str(target)
    mapped = runner.invoke(app, [
        "embed", "map", "--db", setup.data_db, "-c", "clr_t0_i0", "--color-by",
        "splits.skeleton", "--method", "pca", "--out", str(tmp_path),
    ])  # fmt: skip
    assert mapped.exit_code == 0, mapped.output
    assert (tmp_path / "clr_t0_i0_splits-skeleton_pca.png").is_file()
    listed = runner.invoke(app, ["embed", "list"])
    assert f"{setup.embeddings_db}.clr_t0_i0: done, 60/60 synapses" in listed.output
    ran = runner.invoke(app, ["embed", "run", "-d", str(setup.train.base), "-e", "clr",
                              "-t", "0", "--split", "skeleton", "--part", "train"])  # fmt: skip
    assert ran.exit_code != 0 and "already holds embeddings" in str(ran.exception)
