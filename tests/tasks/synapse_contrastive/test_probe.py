"""`connecto embed probe`: a logistic regression on frozen embeddings, scored and stored
like `connecto evaluate` scores the classifier."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from connecto import ConnectoError
from connecto.tasks.synapse_contrastive.embed import embed_synapses
from connecto.tasks.synapse_contrastive.probe import few_labels, linear_probe
from tests.tasks.synapse_contrastive.embed_fixtures import CLASSES, Setup, setup, tracking

__all__ = ["setup", "tracking"]  # fixtures


@pytest.fixture(scope="module")
def embedded(setup: Setup) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONNECTO_TRACKING_DB", setup.tracking_db)
        return embed_synapses(setup.train.checkpoint(0), progress=False).collection


def test_few_labels_per_class_are_seeded_and_capped():
    labels = ["a"] * 5 + ["b"] * 2 + ["c"] * 4
    chosen = few_labels(labels, 3, seed=1)
    assert sorted(labels[i] for i in chosen) == ["a"] * 3 + ["b"] * 2 + ["c"] * 3
    assert list(chosen) == list(few_labels(labels, 3, seed=1))
    assert list(few_labels(labels, None)) == list(range(len(labels)))


def test_probe_scores_are_stored_like_evaluate(setup: Setup, embedded: str, mongo_client, tmp_path):
    result = linear_probe("skeleton", labels_per_class=4, seed=3, database=setup.data_db,
                          collection=embedded, out_dir=tmp_path)  # fmt: skip
    assert result.class_names == sorted(CLASSES)
    assert result.trained_on == {name: 4 for name in sorted(CLASSES)}
    assert set(result.evaluations) == {"validation", "test"}
    scores = mongo_client[setup.tracking_db]["scores"]
    for part, evaluation in result.evaluations.items():
        assert evaluation.synapse.count == len(setup.parts[part])
        document = scores.find_one({"key": result.keys[part]})
        assert document["kind"] == "synapse-classification" and document["method"] == "linear-probe"
        assert document["split_part"] == part and document["labels_per_class"] == 4
        assert document["synapse"]["count"] == len(setup.parts[part])
        assert sum(map(sum, document["synapse"]["confusion_matrix"])) == len(setup.parts[part])
        assert 0 <= document["synapse"]["balanced_accuracy"] <= 1
        assert document["skeleton"]["count"] > 0
        assert all(tmp_path.joinpath(p).is_file() for p in document["plots"])

    # the CLI, on the latest tracked embeddings, every train label
    shown = CliRunner().invoke(app, ["embed", "probe", "--split", "skeleton", "--part", "test",
                                     "--out", str(tmp_path)])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "per synapse" in shown.output and "per skeleton" in shown.output
    stored = scores.find_one({"method": "linear-probe", "labels_per_class": None})
    assert stored["split_part"] == "test"
    assert sum(stored["trained_on"].values()) == len(setup.parts["train"])


def test_probe_refuses_a_field_without_two_classes(setup: Setup, embedded: str):
    with pytest.raises(ConnectoError, match="needs two classes"):
        linear_probe("skeleton", "splits.skeleton", database=setup.data_db, collection=embedded,
                     plots=False)  # fmt: skip
