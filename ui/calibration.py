"""Calibration & novelty view: reliability before/after temperature scaling, novelty scores,
threshold exploration, ROC and accuracy-coverage (arrays from the run, maths from the core)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cellannot_core._constants import OutKeys
from cellannot_core.calibration import FAR_QUERY_FACTOR
from ui.results import Run
from ui.state import md


def reliability(run: Run) -> tuple[dict[str, Any], dict[str, float]]:
    """Reliability curves + ECE: reference validation before/after temperature scaling, query."""
    from cellannot_core.calibration import softmax
    from cellannot_core.metrics import ece, reliability_curve

    logits, y = run.arrays["val_logits"], run.arrays["val_y"]
    curves, eces = {}, {}
    for name, t in (("validation, before scaling (T=1)", 1.0),
                    (f"validation, after scaling (T={run.temperature:.2f})", run.temperature)):
        p = softmax(logits, t)
        conf, correct = p.max(1), p.argmax(1) == y
        curves[name], eces[name] = reliability_curve(conf, correct), ece(conf, correct)
    truth = run.query_labels
    if truth is not None:
        known = np.isin(truth, run.classes)
        if known.any():
            conf = run.obs[OutKeys.CONFIDENCE].to_numpy(float)[known]
            correct = run.obs[OutKeys.LABEL_RAW].astype(str).to_numpy()[known] == truth[known]
            name = "query, known types"
            curves[name], eces[name] = reliability_curve(conf, correct), ece(conf, correct)
    return curves, eces


def threshold_range(run: Run, method: str) -> tuple[float, float]:
    """The slider's range: every score, and the run's own threshold where it lies beyond them (a threshold widened
    for the query's shift above every cell's score was shown at the highest score, under a text naming it, found
    2026-12-07)."""
    from ui.results import default_threshold

    val, q = run.scores(method)
    pooled = np.concatenate([val[np.isfinite(val)], q[np.isfinite(q)]])
    own = default_threshold(run, method)
    if np.isfinite(own):
        pooled = np.append(pooled, own)
    lo, hi = float(pooled.min()), float(pooled.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def unknown_summary(run: Run, method: str, threshold: float) -> dict[str, float]:
    val, q = run.scores(method)
    n_unknown = int((q > threshold).sum())
    return {"n_unknown": n_unknown, "share_unknown": n_unknown / max(1, len(q)),
            "val_accepted": float((val <= threshold).mean()) if len(val) else float("nan")}


def novel_mask(run: Run) -> np.ndarray | None:
    """Query cells whose true type the reference lacks (needs query labels)."""
    truth = run.query_labels
    return None if truth is None else ~np.isin(truth, run.classes)


def roc_pairs(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    novel = novel_mask(run)
    if novel is None or novel.all() or not novel.any():
        return None
    return {m: (run.scores(m)[1], novel) for m in run.score_methods()}


def coverage_pairs(run: Run, method: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Accuracy vs coverage when rejecting by the novelty score: validation, and query with labels
    (a novel cell counts as wrong whatever it is called, so rejecting it helps)."""
    val, q = run.scores(method)
    logits, y = run.arrays["val_logits"], run.arrays["val_y"]
    pairs = {"reference validation": (val, logits.argmax(1) == y)}
    truth = run.query_labels
    if truth is not None:
        raw = run.obs[OutKeys.LABEL_RAW].astype(str).to_numpy()
        pairs["query"] = (q, raw == truth)
    return pairs


def threshold_parts(run: Run) -> tuple[str, str]:
    """The Unknown threshold in two parts: what it is and what stands out about this run (the page
    shows it), and how the score and its threshold are made (the page folds it away)."""
    rej = run.rejection
    accept = float(rej.get("accept_fraction_on_validation", 0.95))
    val_thr = rej.get("validation_threshold", rej.get("threshold"))
    text = (f"The model calls a cell **Unknown** when its **{rej.get('method')}** novelty score is above "
            f"**{float(rej.get('threshold', float('nan'))):.4g}**. "
            + (f"That is the model's own rule: {md(str(rej['rule']))}" if rej.get("rule") else
               f"On held-out reference validation cells, {float(val_thr):.4g} accepts {100 * accept:.3g}% of them "
               f"(so about {100 * (1 - accept):.3g}% of cells of *known* types are expected to be called Unknown)"))
    factor = float(rej.get("shift_factor", 1.0) or 1.0)
    if factor != 1.0:
        text += (f"; it was then scaled by {factor:.3f} = median(query score) / median(validation score) to "
                 "allow for the shift between the studies")
        if float(rej.get("query_far_factor") or factor) > factor:
            text += (f" (at most {FAR_QUERY_FACTOR:g}-fold, the shifts between studies of one tissue: that ratio is "
                     f"{float(rej['query_far_factor']):.2f} here)")
    text += "."
    if rej.get("query_shift_not_estimated"):
        text += f" **Not estimated here:** {rej['query_shift_not_estimated']}."
    if rej.get("threshold_overridden"):
        text += " (The threshold was set by hand for this run.)"
    summary, text = text, ""
    from cellannot_core.novelty import GRAPH_K, score_help

    method = str(rej.get("method"))
    if score_help(method):
        text += f"{method}: {score_help(method)}."
    if method in ("knn_graph", "knn_class"):
        text += (f" Its validation scores are smoothed the same way, over each validation cell's {GRAPH_K} "
                 "nearest reference cells (those scored leave-one-out), so the threshold is set on the "
                 "same kind of score.")
    if method == "knn_class":
        text += (" A query cell's distance counts (2 - confidence) times: a cell the labeller cannot place "
                 "counts up to twice as far (the validation cells' distances do not: the threshold is the "
                 "distance a cell the labeller is sure of may have).")
        study = rej.get("study_shift") or {}
        if study.get("removed"):
            text += (" Before the distances were measured, the shift the query's predicted types share (per gene, "
                     "the median over the types of the query's expression against that of the reference cells it "
                     f"is nearest to; {study.get('n_genes_moved_2x', 0)} genes moved more than twofold) was divided "
                     "out of the query: a technology, culture or stimulation effect moves every type's genes the "
                     "same way, a novel type differs from its predicted type in its own genes.")
        elif study:
            text += f" The shift the query's types share was {study.get('how', 'not removed')}."
        far = float(rej.get("query_far_factor") or 1.0)
        text += (" The score also allows for the shift between the studies (one factor for the whole query, "
                 "from its lower quartile, so a large novel population cannot raise it, and at most "
                 f"{FAR_QUERY_FACTOR:g}-fold, the shifts between studies of one tissue"
                 + (f": this query lies {far:.1f}-fold as far, so its shift factor below is that bound, not what was "
                    "measured" if far > FAR_QUERY_FACTOR and not rej.get("query_shift_not_estimated") else "")
                 + "), so the threshold is not scaled again. Cells are judged in groups: a cluster of query cells whose typical cell is beyond "
                 "the threshold is Unknown as a whole, while a single cell in an accepted cluster is Unknown only "
                 "beyond the reference's 99th percentile. A class none of whose query cells is near the reference "
                 "(the other study moved it as a whole) is measured against its own shift instead. The table below "
                 "gives each class's numbers.")
        by_sample = rej.get("sample_shifts") or {}
        if by_sample.get("factors"):
            each = ", ".join(f"{name} {float(f):.2f}" for name, f in by_sample["factors"].items())
            if by_sample.get("kept_note"):
                each += f"; {md(str(by_sample['kept_note']))}"
            some = "samples with enough cells were measured against their own" if by_sample.get("kept_note") else \
                "samples was measured against its own"
            summary += (f" Each of the query's **{by_sample.get('column')}** {some} "
                        f"shift (the whole query's: {float(by_sample.get('query_shift', 1.0)):.2f}; {each}): samples "
                        "in another condition or of another depth are farther from the reference as a whole, and one "
                        "factor would call their known cells Unknown as a group. A sample's factor is the median over "
                        "its predicted types, so a novel population that lands on one type cannot raise it.")
            if by_sample.get("at_bound_note"):
                summary += f" **At the bound:** {md(str(by_sample['at_bound_note']))}."
    return summary, text.strip()


CLASS_TABLE_COLUMNS = {
    "class": "Predicted class",
    "n_predicted": "Query cells",
    "n_unknown": "Called Unknown",
    "share_unknown": "Share Unknown",
    "n_reference": "Reference cells",
    "unit": "Reference 95th percentile",
    "shift": "Query shift factor",
    "shifted_as_a_whole": "Shifted as a whole",
    "threshold_knn_graph": "Threshold (kNN distance x (2 - confidence))",
}


def class_table_text(run: Run) -> str:
    """What the per-class table says, with the run's threshold: the table's thresholds are the class's 95th
    percentile times the shift factor times it (a reader multiplying the first two got 2.08 for 2.19 shown,
    the threshold of 1.054 left unsaid: found 2026-12-07)."""
    t = float(run.rejection.get("threshold", float("nan")))
    if run.rejection.get("method") != "knn_class":  # one threshold for every class (found 2026-12-07: the knn_class
        return ("**Unknown calls by predicted class**: every class has the one threshold above "  # text for all)
                + (f"({t:.4g}) " if np.isfinite(t) else "") + "on the model's novelty score; the table counts the "
                "cells given each class (before the Unknown call) that scored above it.")
    return ("**Why cells were called Unknown, by predicted class**: a cell is measured against the reference cells "
            "of the class it looks most like; its distance counts (2 - confidence) times, so a cell the labeller "
            "cannot place counts up to twice as far; the threshold is that class's 95th percentile in the reference, "
            "times the query's shift factor, times the score's threshold"
            + (f" ({t:.4g}, set on held-out reference cells)" if np.isfinite(t) else "") + ".")


def class_table(run: Run) -> pd.DataFrame | None:
    """The run card's Unknown calls per predicted class, with how each class's threshold was made
    (``knn_class``), as a display table; None for runs made before the card kept it."""
    rows = run.card.get("unknown_by_class")
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df["share_unknown"] = df["n_unknown"] / df["n_predicted"].where(df["n_predicted"] > 0)
    cols = [c for c in CLASS_TABLE_COLUMNS if c in df.columns]
    return df[cols].rename(columns=CLASS_TABLE_COLUMNS)


def shifted_class_notes(run: Run) -> list[str]:
    """The run card's notes on classes whose cells were accepted against the class's own shift
    (``pipeline.shifted_classes_of``: the rule's blind spot, with the genes that tell); [] for runs
    made before the card kept them."""
    return _notes(run, "accepted_on_class_shift")


def few_reference_notes(run: Run) -> list[str]:
    """The run card's notes on classes with too few reference cells to bound their threshold whose
    query cells were called Unknown (``pipeline.few_reference_classes``); [] for runs made before
    the card kept them."""
    return _notes(run, "few_reference_cells")


def _notes(run: Run, key: str) -> list[str]:
    return [str(r["note"]) for r in run.card.get(key) or [] if r.get("note")]


def unknown_groups_table(run: Run) -> pd.DataFrame | None:
    """The run card's Unknown groups (:func:`cellannot_core.evidence.unknown_groups`) as a
    display table; None when the card has none (runs made before it, streamed queries, nothing
    Unknown)."""
    rows = run.card.get("unknown_groups")
    if not rows:
        return None

    def genes(names, by):
        return ", ".join(f"{n} {v:+.2f}" for n, v in zip(names, by))

    from cellannot_core.pipeline import samples_note

    empty = {"Cells without counts on the model's genes": [r.get("n_without_counts", 0) for r in rows]} \
        if any(r.get("n_without_counts") for r in rows) else {}
    where = {"Samples": [samples_note(r).removeprefix("; ") for r in rows]} \
        if any(r.get("absent_from") for r in rows) else {}
    # the type's top reference markers the group keeps: what tells a state of that type from another type (the
    # far-query warning points to it; the table did not show it, found 2026-12-07)
    kept = {"Its markers kept": [f"{int(r['markers_kept'])} of {int(r['n_markers'])}" if r.get("n_markers") else ""
                                 for r in rows]} if any(r.get("n_markers") for r in rows) else {}
    return pd.DataFrame({"Cells": [r["n_cells"] for r in rows], **empty, "Looks most like": [r["predicted_as"] for r in rows],
                         **kept,
                         "Genes up (log-expression difference)": [genes(r["genes_up"], r["up_by"]) for r in rows],
                         "State programs among the genes up": [", ".join(r.get("state_programs", [])) for r in rows],
                         "Genes down": [genes(r["genes_down"], r["down_by"]) for r in rows],
                         "Compared with": [r["compared_with"] for r in rows], **where,
                         "Accepted by the rule (handling state)": [bool(r.get("accepted")) for r in rows]})


def rule_accepted_groups(run: Run) -> list[int]:
    """The card's Unknown groups the rule itself accepted as their type (``handling_state``: heat-shock
    or immediate-early genes up, the type's markers kept; ``pipeline.accept_handling_states``)."""
    rows = run.card.get("unknown_groups") or []
    return [j for j in group_choices(run) if rows[j].get("accepted")]


def group_choices(run: Run) -> list[int]:
    """The card's Unknown groups a visitor can accept as their type: those whose cells the run's
    arrays mark (runs made before 2026-12-04 have none)."""
    rows = run.card.get("unknown_groups") or []
    members = run.arrays.get("query_unknown_group")
    if members is None or len(members) != len(run.obs):
        return []
    return [j for j in range(len(rows)) if (members == j).any()]


def group_name(run: Run, j: int) -> str:
    r = run.card["unknown_groups"][j]
    programs = f" ({', '.join(r['state_programs'])})" if r.get("state_programs") else ""
    return f"{r['n_cells']:,} cells looking like {r['predicted_as']}{programs}: {', '.join(r['genes_up'][:3])}"


def short_class_choices(run: Run) -> list[int]:
    """The card's Unknown groups a visitor can accept as the type their samples point to
    (``short_class``: absent from some query samples, that type's cells missing where it is;
    :func:`cellannot_core.evidence.sample_evidence`)."""
    rows = run.card.get("unknown_groups") or []
    return [j for j in group_choices(run) if rows[j].get("short_class")]


def short_group_name(run: Run, j: int) -> str:
    r = run.card["unknown_groups"][j]
    return (f"{r['n_cells']:,} cells looking like {r['predicted_as']}, absent from {', '.join(r['absent_from'])}: "
            f"as {r['short_class']}")


def accept_groups(run: Run, labels: np.ndarray, accepted: list[int], as_short: list[int] = ()) -> np.ndarray:
    """``labels`` with the cells of the ``accepted`` Unknown groups given the type each looks most
    like (their raw label), and those of the ``as_short`` groups the type their samples point to
    (:func:`short_class_choices`; it wins where a group is in both): the biologist's call that a
    group is a state of a known type."""
    from cellannot_core.evidence import accepted_labels

    if not accepted and not as_short:
        return labels
    rows = run.card["unknown_groups"]
    return accepted_labels(labels, run.obs[OutKeys.LABEL_RAW].astype(str).to_numpy(), run.arrays["query_unknown_group"],
                           accepted, {j: rows[j]["short_class"] for j in as_short})


DECISIONS_FILE = "decisions.json"  # in the run's folder: the visitor's choices on this page


def decisions(run: Run) -> dict[str, Any]:
    """The choices a visitor made on this page for ``run`` (novelty score, threshold, Unknown groups
    accepted as their type or as the type their samples point to), kept in the run's folder so that
    a reload or another day opens the page as it was left; only valid entries are returned."""
    from cellannot_core.runs import read_json

    rec = read_json(run.rd.file(DECISIONS_FILE))
    if not isinstance(rec, dict):
        return {}
    out: dict[str, Any] = {}
    if rec.get("method") in run.score_methods():
        out["method"] = rec["method"]
        if isinstance(rec.get("threshold"), (int, float)) and np.isfinite(rec["threshold"]):
            out["threshold"] = float(rec["threshold"])
    for key, valid in (("accepted", group_choices(run)), ("as_short", short_class_choices(run))):
        if isinstance(rec.get(key), list):
            out[key] = [j for j in rec[key] if isinstance(j, int) and j in valid]
    return out


def _own_decisions(run: Run) -> dict[str, Any]:
    """The run's own calls in the form :func:`decisions` keeps them: its score and threshold (as
    the page's slider starts) and the groups the rule accepted."""
    from ui.results import default_threshold

    own = run.rejection.get("method")
    if own not in run.score_methods():
        own = (run.score_methods() or [None])[0]
    lo, hi = threshold_range(run, own) if own else (None, None)
    return {"method": own, "threshold": min(max(default_threshold(run, own), lo), hi) if own else None,
            "accepted": sorted(rule_accepted_groups(run)), "as_short": []}


def decisions_note(run: Run) -> str | None:
    """For the Label transfer page: what the visitor changed on the Calibration page, which that
    page's figures (the run's own calls) do not follow; None when nothing was changed."""
    kept = decisions(run)
    if not kept:  # (the usual case: nothing else is computed on the page's reruns)
        return None
    own = _own_decisions(run)
    said = []
    n = len(set(kept.get("accepted", own["accepted"])) ^ set(own["accepted"])) + len(kept.get("as_short", []))
    if n:
        said.append(f"changed which Unknown groups are accepted ({n} group{'s' if n != 1 else ''})")
    if kept.get("method", own["method"]) != own["method"] or (
            "threshold" in kept and not np.isclose(kept["threshold"], own["threshold"], rtol=1e-6, atol=0)):
        said.append(f"set the {kept.get('method', own['method'])} threshold to {kept.get('threshold', own['threshold']):.4g}")
    if not said:
        return None
    return ("On the Calibration page you " + " and ".join(said) + ". This page shows the run's own calls; the "
            "Calibration page's heatmap and downloads (the predictions and the annotated query) follow your choices.")


def keep_decisions(run: Run, method: str, threshold: float, accepted: list[int], as_short: list[int]) -> None:
    """Write the page's choices for ``run`` when they differ from what is kept (or, with nothing
    kept, from the run's own: its score, threshold and the groups the rule accepted)."""
    from cellannot_core.runs import write_json_atomic

    now = {"method": method, "threshold": float(threshold), "accepted": sorted(int(j) for j in accepted),
           "as_short": sorted(int(j) for j in as_short)}
    kept = decisions(run)
    if kept:
        before = {"method": kept.get("method"), "threshold": kept.get("threshold"),
                  "accepted": sorted(kept.get("accepted", [])), "as_short": sorted(kept.get("as_short", []))}
    else:
        before = _own_decisions(run)
    if now != before:
        try:
            write_json_atomic(run.rd.file(DECISIONS_FILE), now)
        except OSError:  # a read-only runs folder: the choices last as long as the page
            pass
