"""Latent space page: PCA (fast) of reference + query + generated cells, every colouring."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from test_app_results import make_run  # noqa: E402  (tests/app is on sys.path under pytest)
from ui.state import StateKeys, WidgetKeys
from ui import latent as lat

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, make_run(root, query_labels=True, model="clams", n_generate=5)


@pytest.fixture(autouse=True)
def _env(run, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(run[0]))


def test_latent_page_pca_all_colourings(run):
    root, run_id = run
    at = _latent_page(run_id)
    assert not at.exception
    assert at.toggle(key=WidgetKeys.SHOW_GENERATED).value is True
    shown = {m.label: m.value for m in at.metric}  # latent quality from the run card
    assert set(shown) == {"Label ASW, reference", "Label ASW, query", "Active latent dimensions"}
    assert 0.0 <= float(shown["Label ASW, reference"]) <= 1.0
    assert shown["Active latent dimensions"].endswith(f"of {int(make_card_latent_dim(root, run_id))}")
    for color in lat.COLOR_BY:
        at.selectbox(key=WidgetKeys.COLOR_BY).set_value(color).run()
        assert not at.exception, color
    at.toggle(key=WidgetKeys.SHOW_GENERATED).set_value(False).run()
    assert not at.exception
    assert at.radio(key=WidgetKeys.EMBED_LAYOUT).value == "reference"  # the default: the reference map
    # its Unknown cells are said to sit beside the reference cells they resemble (found 2026-12-07)
    from cellannot_core._constants import OutKeys
    from ui.results import load_run

    r = load_run(str(root), run_id)
    n_unknown = int(r.obs[OutKeys.IS_UNKNOWN].sum())
    every = len(r.arrays["ref_latent"]) >= int(r.card.get("n_train") or 0)  # what the caption says of the reference
    assert any(("the training cells, all stored" if every else "a random subset of the training cells") in c.value
               for c in at.caption)
    assert n_unknown > 0 and any(f"{n_unknown:,} query cells are called Unknown" in i.value for i in at.info)
    at.radio(key=WidgetKeys.EMBED_LAYOUT).set_value("joint").run()
    assert not at.exception
    assert not any("are called Unknown" in i.value for i in at.info)
    caches = {p.name for p in (root / run_id / "embeddings").glob("*.npy")}
    assert caches == {f"{lat.cache_path_key('pca', g, lay)}.npy" for g, lay in
                      ((True, "reference"), (False, "reference"), (False, "joint"))}


def test_point_table_has_generated_cells_as_markers(run):
    from ui.results import load_run

    root, run_id = str(run[0]), run[1]
    r = load_run(root, run_id)
    coords = lat.coordinates(root, run_id, "pca", True)
    df = lat.point_table(r, coords, True)
    assert df["marker"].value_counts().to_dict() == {"real": len(r.arrays["ref_y"]) + 250, "generated": 25}
    assert df["dataset"].value_counts()["query"] == 250
    assert df.loc[df["dataset"] == "reference", "confidence"].isna().all()
    fig = lat.figure(df, "predicted", "pca", r.classes)
    assert all(t.type == "scattergl" for t in fig.data)
    # coloured by dataset, the reference is drawn first (underneath), the query over it
    names = [t.name for t in lat.figure(df, "dataset", "pca", r.classes).data]
    assert names.index("reference") < names.index("query"), names


def _latent_page(run_id: str) -> AppTest:
    """The Latent space page of ``run_id`` (PCA, the fast embedding), rendered once."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state[StateKeys.RUN_ID] = run_id
    at.session_state[WidgetKeys.EMBED_METHOD] = "pca"
    return at.switch_page("pages/latent.py").run()


def _copy_run(root, run_id: str, tag: str) -> str:
    """A copy of the run under another id (ending in ``tag``), without its cached embeddings."""
    import shutil

    copy_id = run_id[:-4] + tag
    shutil.copytree(root / run_id, root / copy_id)
    for f in (root / copy_id / "embeddings").glob("*.npy"):
        f.unlink()
    return copy_id


def make_card_latent_dim(root, run_id) -> int:
    from ui.results import load_run

    return load_run(str(root), run_id).arrays["query_latent"].shape[1]


def test_the_page_says_when_generated_cells_sit_apart(run, tmp_path):
    """Issue 13: generated cells formed one blob away from every real cluster and the page did not
    say so. Here the run's generated latents are moved far from every real cell."""
    import numpy as np

    from cellannot_core.runs import RunDir

    root, run_id = run
    copy_id = _copy_run(root, run_id, "beef")
    rd = RunDir.open(root, copy_id)
    arrays = rd.load_arrays()
    arrays["gen_latent"] = arrays["gen_latent"] + 100.0 * np.abs(arrays["ref_latent"]).max()
    rd.save_arrays(arrays)
    at = _latent_page(copy_id)
    assert not at.exception
    assert any("sit apart from every real cluster" in w.value for w in at.warning)
    at.session_state[StateKeys.RUN_ID] = run_id  # the real run: a plain note, whatever its quality
    at.run()
    assert any("Generated cells:" in c.value for c in at.caption) or any("Generated cells" in w.value for w in at.warning)


def test_a_query_the_latent_space_keeps_apart_is_mapped_onto_the_reference_and_the_page_says_so(run):
    """Issue 13: after the demo run the reference and query did not overlap at all in the latent
    view. The default layout is now the reference map (query cells placed by their nearest reference
    cells), and the page measures the latent space's mixing and says when it keeps the datasets apart."""
    import numpy as np

    from cellannot_core.metrics import generated_placement
    from cellannot_core.runs import RunDir
    from ui.results import load_run

    root, run_id = run
    copy_id = _copy_run(root, run_id, "a9a9")
    rd = RunDir.open(root, copy_id)
    arrays = rd.load_arrays()
    spread = float(np.ptp(arrays["ref_latent"], axis=0).max())
    arrays["query_latent"] = arrays["query_latent"] + 0.5 * spread  # a study effect the model kept
    rd.save_arrays(arrays)

    at = _latent_page(copy_id)
    assert not at.exception
    assert any("Reference-query mixing" in c.value and "places each query cell" in c.value for c in at.caption)
    at.radio(key=WidgetKeys.EMBED_LAYOUT).set_value("joint").run()
    assert any("keeps the two datasets apart" in w.value for w in at.warning)

    r = load_run(str(root), copy_id)
    ref_y = r.arrays["ref_y"]
    index = {c: i for i, c in enumerate(r.classes)}
    pred = np.array([index[c] for c in r.obs["cellannot_label_raw"].astype(str)])
    joint = lat.coordinates(str(root), copy_id, "pca", False, "joint")
    mapped = lat.coordinates(str(root), copy_id, "pca", False, "reference")
    n = len(ref_y)
    on_map = generated_placement(mapped[n:], pred, mapped[:n], ref_y)
    beside = generated_placement(joint[n:], pred, joint[:n], ref_y)
    # the package's own line for "apart" (APART_RATIO): 2.6 on the map with the demo's seurat_v3 genes, 130 beside
    assert not on_map["apart"] and beside["apart"] and beside["distance_ratio"] > 10 * on_map["distance_ratio"]


def test_a_large_query_is_drawn_as_a_documented_subsample(run, monkeypatch):
    """Issue 15: the views of a run with a very large query embed and draw a seeded subsample of its
    cells and say so (here the limit is lowered to 100 of the run's 250 query cells)."""
    from ui.results import load_run

    root, run_id = run
    copy_id = _copy_run(root, run_id, "b1b1")
    monkeypatch.setattr(lat, "QUERY_VIEW_MAX", 100)
    at = _latent_page(copy_id)
    assert not at.exception
    assert any("100 query cells (a seeded random subsample of the query's 250" in c.value for c in at.caption)
    r = load_run(str(root), copy_id)
    df = lat.point_table(r, lat.coordinates(str(root), copy_id, "pca", False, "reference"), False)
    assert (df["dataset"] == "query").sum() == 100
    view = lat.query_view(250)
    assert list(df.loc[df["dataset"] == "query", "predicted"]) == list(r.obs["cellannot_label"].astype(str).iloc[view])


def test_the_query_is_drawn_where_the_unknown_rule_measured_it(tmp_path, monkeypatch):
    """Issue 12: knn_class measures the query re-encoded without the study shift its types share,
    while the page drew the model's own encoding, so a group called Unknown need not look far from
    the reference there. The run keeps the measured codes; the page draws them by default (a toggle
    goes back to the encoding the labels come from) and says so; a run whose rule removed no shift
    has the toggle off and disabled."""
    import json

    import numpy as np

    from cellannot_core.runs import RunDir

    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path))
    run_id = make_run(tmp_path, query_labels=True, hparams={"ood_score": "knn_class"})
    card = json.loads((tmp_path / run_id / "run_card.json").read_text())
    assert card["rejection"]["study_shift"]["removed"]  # the demo's two studies: the shift is removed
    arrays = RunDir.open(tmp_path, run_id).load_arrays()
    assert lat.has_measured(arrays) and arrays[lat.MEASURED].shape == arrays["query_latent"].shape
    assert np.abs(arrays[lat.MEASURED] - arrays["query_latent"]).max() > 1e-3

    at = _latent_page(run_id)
    assert not at.exception
    assert at.toggle(key=WidgetKeys.SHOW_MEASURED).value is True
    assert any("as the Unknown rule measured them" in c.value for c in at.caption)
    n = len(arrays["ref_y"])
    shown = lat.coordinates(str(tmp_path), run_id, "pca", False, "joint", True)
    encoded = lat.coordinates(str(tmp_path), run_id, "pca", False, "joint", False)
    assert shown.shape == encoded.shape and np.abs(shown[n:] - encoded[n:]).max() > 1e-3
    at.toggle(key=WidgetKeys.SHOW_MEASURED).set_value(False).run()
    assert not at.exception
    assert not any("as the Unknown rule measured them" in c.value for c in at.caption)
    names = {p.name for p in (tmp_path / run_id / "embeddings").glob("*.npy")}
    assert f"{lat.cache_path_key('pca', False, 'reference', True)}.npy" in names
    assert f"{lat.cache_path_key('pca', False, 'reference', False)}.npy" in names

    copy_id = _copy_run(tmp_path, run_id, "c0de")  # a run whose rule measured the query as encoded
    rd = RunDir.open(tmp_path, copy_id)
    del arrays[lat.MEASURED]
    rd.save_arrays(arrays)
    at = _latent_page(copy_id)
    assert not at.exception
    toggle = at.toggle(key=WidgetKeys.SHOW_MEASURED)
    assert toggle.value is False and toggle.disabled


def test_a_far_query_kept_apart_is_not_called_a_study_effect():
    """A query the run found far from the reference (its far-query warning) lies apart in the latent space because
    its cells are unlike the reference's: the joint map's note blamed the studies (found 2026-12-07)."""
    from ui.latent import mixing_note

    level, text = mixing_note(0.05, "joint")
    assert level == "warning" and "studies differ" in text
    level, text = mixing_note(0.05, "joint", far=True)
    assert level == "caption" and "studies differ" not in text and "far from the reference" in text
    assert mixing_note(0.9, "joint", far=True) == mixing_note(0.9, "joint")  # mixed: nothing to explain


def test_the_unknown_colouring_draws_the_unknown_cells_on_top_in_a_colour_of_their_own(run):
    """Found 2026-12-07: under "Unknown or not" the Unknown cells were grey, read as "no value", and drawn under the
    reference cells."""
    import numpy as np

    from ui.results import load_run

    root, run_id = run
    r = load_run(str(root), run_id)
    n = len(r.arrays["ref_y"]) + len(lat.query_view(len(r.arrays["query_latent"])))
    df = lat.point_table(r, np.zeros((n, 2)), False)
    fig = lat.figure(df, "unknown", "pca", r.classes)
    names = [t.name for t in fig.data if t.x is not None and len(t.x)]
    assert names[0] == "reference" and names[-1] == lat.CALLED_UNKNOWN
    assert fig.data[len(names) - 1].marker.color == lat.UNKNOWN_COLOURS[lat.CALLED_UNKNOWN]


def test_a_type_has_the_colour_of_the_runs_other_figures_and_the_reference_stays_underneath(run):
    """Found 2026-12-07 (a probe of the results pages): each figure resolved its own clashes of the palette, so a
    type was green on the Label transfer page's bars and orange here where a type of the query alone took its
    colour; under *Predicted label* the reference cells, "(reference)", were drawn in a type's colour over the
    query's cells."""
    import numpy as np

    from ui.results import load_run

    root, run_id = run
    r = load_run(str(root), run_id)
    n = len(r.arrays["ref_y"]) + len(lat.query_view(len(r.arrays["query_latent"])))
    df = lat.point_table(r, np.zeros((n, 2)), False)
    for by in ("true", "predicted"):
        fig = lat.figure(df, by, "pca", r.classes, type_colours=r.colours)
        drawn = {t.name: t.marker.color for t in fig.data if t.x is not None and len(t.x)}
        assert all(drawn[c] == r.colours[c] for c in drawn if c in r.colours), by
    names = [t.name for t in fig.data if t.x is not None and len(t.x)]
    assert names.index("(reference)") == names.index("Unknown") + 1 == 1  # under every type (the grey Unknown lowest)
    assert drawn["(reference)"] == lat.OTHER_CELLS["(reference)"]
    fig = lat.figure(df, "dataset", "pca", r.classes)  # colours of their own, far apart (two olive greens before)
    assert {t.name: t.marker.color for t in fig.data if t.x is not None and len(t.x)} == {
        k: v for k, v in lat.DATASET_COLOURS.items() if k != "generated"}


def test_the_novelty_colouring_is_centred_on_the_unknown_threshold(run):
    """Found 2026-12-07: the novelty colour bar marked no threshold, so which cells were beyond it could not be
    read off the map. The scale is diverging around the run's threshold, and its title says the value."""
    import numpy as np

    from ui.results import load_run

    root, run_id = run
    r = load_run(str(root), run_id)
    n = len(r.arrays["ref_y"]) + len(lat.query_view(len(r.arrays["query_latent"])))
    df = lat.point_table(r, np.zeros((n, 2)), False)
    thr = float(r.rejection["threshold"])
    fig = lat.figure(df, "novelty", "pca", r.classes, thr)
    assert fig.layout.coloraxis.cmid == thr and f"Unknown above {thr:.3g}" in fig.layout.coloraxis.colorbar.title.text
    plain = lat.figure(df, "confidence", "pca", r.classes, thr)
    assert plain.layout.coloraxis.cmid is None  # no threshold on the confidence


def test_a_class_whose_generated_cells_land_elsewhere_is_named():
    """Found 2026-12-07 (a browser probe): a gmvae's generated cells, 93% among their own class over all, 62% for
    its 14-cell macrophages, got a grey caption. A class whose samples mostly land elsewhere is now named."""
    import numpy as np

    from cellannot_core.metrics import generated_placement
    from ui.latent import placement_note

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ref_y, gen_y = np.repeat(np.arange(3), 200), np.repeat(np.arange(3), 20)
    ref = centres[ref_y] + rng.normal(size=(600, 2))
    one = generated_placement(centres[np.where(gen_y == 2, 0, gen_y)] + rng.normal(size=(60, 2)), gen_y, ref, ref_y)
    level, text = placement_note(one, 3, ["a", "b", "c"])
    assert level == "warning" and "most generated cells of c (0% among its own) land among real cells of other classes: that class's" in text
    good = generated_placement(centres[gen_y] + rng.normal(size=(60, 2)), gen_y, ref, ref_y)
    assert placement_note(good, 3, ["a", "b", "c"])[0] == "caption"
