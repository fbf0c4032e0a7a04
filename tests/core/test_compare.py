"""Model comparison, leave-one-class-out and the `benchmark` command (compare.py, cli.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cellannot_core.compare import COMPARE_COLUMNS, EVAL_QUERY, EVAL_VAL, compare_models, leave_one_class_out, \
    without_class
from cellannot_core.errors import Cancelled, ConfigError
from conftest import make_prepared, make_synthetic

TABNET = {"n_d": 8, "n_a": 8, "batch_size": 32}


@pytest.fixture(scope="module")
def prep():
    return make_prepared(4)  # type4 of the query is novel


def test_compare_models_on_a_labelled_query(prep):
    events = []

    class Spy:
        def on_progress(self, frac, text):
            events.append(frac)

        def on_model_end(self, name, row):
            events.append(name)

    df = compare_models(prep, ["logreg", "knn", "tabnet"], seed=0, device="cpu",
                        hparams_by_model={"tabnet": TABNET}, max_epochs=3, callbacks=[Spy()])
    assert list(df.columns) == list(COMPARE_COLUMNS)
    assert df["model"].tolist() == ["logreg", "knn", "tabnet"]
    assert (df["status"] == "ok").all(), df["status"].tolist()
    assert (df["evaluated_on"] == EVAL_QUERY).all()
    assert (df["n_novel"] > 0).all() and df["novelty_auroc"].between(0, 1).all()
    for c in ("accuracy", "balanced_accuracy", "median_f1", "ece"):
        assert df[c].between(0, 1).all(), c
    assert df.loc[df["model"] == "logreg", "accuracy"].item() > 0.9
    # the final labels' figures beside "accuracy" (before the Unknown call), which alone ranked a model that
    # rejected 8% of the novel cells first (found 2026-12-07): a known cell counts only right and not Unknown
    for c in ("acc_open", "reject_in", "reject_novel"):
        assert df[c].between(0, 1).all(), c
    bound = (df["n_cells"] * np.minimum(df["accuracy"], 1 - df["reject_in"]) + df["n_novel"] * df["reject_novel"]) \
        / (df["n_cells"] + df["n_novel"])
    assert (df["acc_open"] <= bound + 1e-9).all() and (df["acc_open"] > 0).all()
    assert df.loc[df["model"] == "tabnet", "n_epochs"].item() <= 3  # max_epochs reaches models with epochs only
    assert (df["train_seconds"] > 0).all()
    assert events[-1] == 1.0 and "knn" in events


def test_compare_without_query_labels_uses_validation_and_reports_failures(prep):
    unlabelled = replace(prep, query=replace(prep.query, labels=None))
    df = compare_models(unlabelled, ["knn", "seurat", "logreg"], device="cpu",
                        hparams_by_model={"logreg": {"C": -1}})
    by = df.set_index("model")
    assert by.loc["knn", "status"] == "ok" and by.loc["knn", "evaluated_on"] == EVAL_VAL
    assert by.loc["knn", "n_cells"] == prep.val.n_obs and np.isnan(by.loc["knn", "novelty_auroc"])
    assert np.isnan(by.loc["knn", "acc_open"]) and by.loc["knn", "reject_in"] == by.loc["knn", "unknown_fraction"]
    if by.loc["seurat", "status"] != "ok":
        assert "unavailable" in by.loc["seurat", "status"] and np.isnan(by.loc["seurat", "accuracy"])
    assert "C" in by.loc["logreg", "status"] and np.isnan(by.loc["logreg", "accuracy"])
    with pytest.raises(ConfigError, match="unknown model"):
        compare_models(prep, ["knn", "nope"])


@pytest.mark.parametrize("score", ["knn_graph", "knn_class"])
def test_validation_cells_are_judged_by_the_threshold_taken_on_them(prep, score):
    """Found 2026-12-07 (a methods review): without query labels the validation cells were scored in the
    query's graph form, which smooths them over each other: knn_graph called none Unknown, where the
    threshold taken on their own validation scores calls 1 - accept of them."""
    from cellannot_core.compare import _train, evaluate

    unlabelled = replace(prep, query=replace(prep.query, labels=None))
    model = _train(unlabelled, "logreg", hparams={"ood_score": score}, seed=0, device="cpu", max_epochs=None,
                   callbacks=(), accept=0.9)
    row = evaluate(model, unlabelled)
    assert row["evaluated_on"] == EVAL_VAL
    assert row["reject_in"] == pytest.approx(0.1, abs=1.5 / prep.val.n_obs + 0.02)


def test_compare_can_be_cancelled(prep):
    from cellannot_core.training import CancelToken

    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        compare_models(prep, ["knn"], callbacks=[tok])


def test_without_class_reindexes(prep):
    sub, held = without_class(prep, "type1")
    assert sub.classes == ["type0", "type2", "type3"]
    assert set(np.unique(sub.train.y)) == {0, 1, 2} and set(np.unique(sub.val.y)) == {0, 1, 2}
    assert len(held) == (prep.val.y == 1).sum() and sub.train.n_obs == (prep.train.y != 1).sum()
    # labels follow: old class 2 (type2) is now 1
    np.testing.assert_array_equal(sub.val.X, prep.val.X[prep.val.y != 1])
    with pytest.raises(ConfigError):
        without_class(prep, "not_a_class")


def test_leave_one_class_out(prep):
    df = leave_one_class_out(prep, "knn", ["type0", "type2"], device="cpu")
    assert df["held_out"].tolist() == ["type0", "type2"]
    for k in ("knn", "mahalanobis", "maxprob", "energy"):
        assert df[f"auroc_{k}"].between(0, 1).all()
    assert (df["model_score"] == "mahalanobis").all()  # the knn model's default novelty score
    assert (df["acc_known"] > 0.9).all() and (df["n_held_out"] > 0).all()
    # distinct synthetic types: the distance scores flag the unseen class well
    assert df["auroc_mahalanobis"].min() > 0.8


def test_leave_one_class_out_with_a_batch_key_trains_a_batch_aware_model():
    """The self-check crashed with a batch key: the held-out split kept every cell's batch code
    (a size mismatch in the decoder) and the model lost the batch levels (codes out of range)."""
    from cellannot_core.pipeline import AnnotateOptions, prepare_data

    ref, q = make_synthetic(300, 80, 3, seed=1), make_synthetic(200, 80, 3, seed=2)
    ref.obs["sample"] = np.where(np.arange(300) % 2, "a", "b")
    q.obs["sample"] = "c"
    prep = prepare_data(ref, q, AnnotateOptions(label_key="cell_type", n_top_genes=60, min_shared_genes=20,
                                                device="cpu", batch_key="sample"))
    sub, _ = without_class(prep, "type0")
    assert sub.batches == prep.batches and len(sub.val.batch) == sub.val.n_obs == (prep.val.y != 0).sum()
    df = leave_one_class_out(prep, "scanvi", ["type0"], device="cpu", hparams={"n_hidden": 16, "n_latent": 4},
                             max_epochs=2)
    assert df["held_out"].tolist() == ["type0"] and df["n_held_out"].iloc[0] > 0


# ------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    ref = make_synthetic(240, 60, 3, seed=1)
    q = make_synthetic(90, 60, 4, seed=2)
    ref.write_h5ad(d / "ref.h5ad")
    q.write_h5ad(d / "query.h5ad")
    return d


def test_cli_benchmark_writes_the_table(files, capsys):
    from cellannot_core.cli import main

    out = files / "table.csv"
    rc = main(["benchmark", "--reference", str(files / "ref.h5ad"), "--query", str(files / "query.h5ad"),
               "--label-key", "cell_type", "--query-label-key", "cell_type", "--models", "logreg", "knn",
               "--hparam", "knn.n_neighbors=5", "--n-top-genes", "50", "--min-shared-genes", "20",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df.columns) == list(COMPARE_COLUMNS) and df["model"].tolist() == ["logreg", "knn"]
    assert (df["evaluated_on"] == EVAL_QUERY).all()
    cap = capsys.readouterr()
    assert "logreg" in cap.out and "metrics on: query" in cap.err


def test_cli_benchmark_reads_the_data_as_annotate_does(files, capsys, monkeypatch):
    """--layer, --hvg-flavor and the orientations, as annotate has them (benchmark lacked them until 2026-12-07)."""
    import cellannot_core.pipeline as pipeline
    from cellannot_core.cli import main

    seen = {}
    real = pipeline.prepare_data

    def spy(ref, qry, opts):
        seen["flavor"] = opts.hvg_flavor
        return real(ref, qry, opts)

    monkeypatch.setattr(pipeline, "prepare_data", spy)
    base = ["benchmark", "--reference", str(files / "ref.h5ad"), "--query", str(files / "query.h5ad"),
            "--label-key", "cell_type", "--models", "logreg", "--n-top-genes", "50", "--min-shared-genes", "20",
            "--device", "cpu"]
    assert main([*base, "--hvg-flavor", "seurat", "--layer", "counts"]) == 2  # no such layer: one line, no table
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "counts" in err and "\n" not in err
    assert main([*base, "--hvg-flavor", "seurat"]) == 0 and seen["flavor"] == "seurat"


@pytest.mark.parametrize("extra, msg", [
    (["--models", "knn", "--hparam", "n_neighbors=5"], "MODEL.NAME=VALUE"),
    (["--models", "knn", "--out", "table.txt"], ".csv"),
    (["--models", "nope"], "unknown model"),
])
def test_cli_benchmark_bad_input_is_one_line(files, capsys, extra, msg):
    from cellannot_core.cli import main

    rc = main(["benchmark", "--reference", str(files / "ref.h5ad"), "--query", str(files / "query.h5ad"),
               "--label-key", "cell_type", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and msg in err and "\n" not in err and "Traceback" not in err


def test_compare_runs_from_cards_and_predictions():
    import pandas as pd

    from cellannot_core.compare import compare_runs

    cells = [f"c{i}" for i in range(4)]
    a = pd.DataFrame({"cell": cells, "cellannot_label": ["B", "T", "Unknown", "T"],
                      "cellannot_label_raw": ["B", "T", "T", "T"], "cellannot_is_unknown": [False, False, True, False]})
    b = pd.DataFrame({"cell": cells[1:], "cellannot_label": ["T", "T", "B"],
                      "cellannot_label_raw": ["T", "T", "B"], "cellannot_is_unknown": [False, False, False]})
    card_a = {"model": "m1", "n_query": 4, "unknown_fraction": 0.25, "validation": {"val_accuracy": 0.9},
              "query_metrics": {"acc_in": 0.8, "acc_open": 0.7}}
    card_b = {"model": "m2", "n_query": 3, "unknown_fraction": 0.0, "validation": {"val_accuracy": 1.0}}
    res = compare_runs([("ra", card_a, a), ("rb", card_b, b)])
    t = res["table"].set_index("run")
    assert t.loc["ra", "acc_open"] == 0.7 and pd.isna(t.loc["rb", "acc_open"])  # only labelled runs have query metrics
    assert not res["labelled"] and t.loc["rb", "val_accuracy_reference"] == 1.0
    ag = res["agreement"]
    assert ag.loc["ra", "ra"] == 1.0 and ag.loc["ra", "rb"] == pytest.approx(1 / 3)  # c1 agrees; c2 Unknown vs T; c3 T vs B
    assert res["unknown_by_label"].loc["T", "ra"] == pytest.approx(1 / 3)
