"""Calibration & novelty: reliability, novelty scores, the Unknown threshold, ROC, coverage."""
import streamlit as st

from cellannot_core._constants import UNKNOWN
from cellannot_core.novelty import score_help
from cellannot_core.plots import (accuracy_coverage_figure, label_heatmap, reliability_diagram,
                                  roc_curve_figure, score_histogram)
from ui import calibration as cal
from ui import results as res
from ui.state import WidgetKeys, init_state, md
from ui.widgets import plot

init_state()
st.title("Calibration & novelty")
run = res.require_run()
res.rejection_warnings(run, "calibration")

st.subheader("Are the confidences honest?")
curves, eces = cal.reliability(run)
plot(reliability_diagram(curves, eces, title=None), key="reliability")
st.caption("Temperature scaling divides the logits by one number T fitted on reference validation cells; "
           "ECE = expected calibration error (15 bins), lower is better.")

st.subheader("Unknown calls")
summary, details = cal.threshold_parts(run)
st.markdown(summary)
if details:
    with st.expander("How the score and its threshold are made"):
        st.markdown(details)
table = cal.class_table(run)
if table is not None:
    st.markdown(cal.class_table_text(run))
    st.dataframe(table, hide_index=True, key="unknown_by_class",
                 column_config={"Share Unknown": st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                                 max_value=1)})
for note in cal.shifted_class_notes(run) + cal.few_reference_notes(run):
    st.warning(md(note), icon=":material/help:")
groups = cal.unknown_groups_table(run)
kept = cal.decisions(run)  # the choices made here before (kept with the run)
if groups is not None:
    st.markdown("**What sets each Unknown group apart**: the query cells called Unknown together, the type they look "
                "most like, and the genes they express more and less than that type's accepted query cells (or its "
                "reference cells, when few were accepted). A group that keeps its type's genes and adds stress, "
                "activation or interferon genes (e.g. heat-shock and ubiquitin genes, FOS / JUN / NFKBIA, ISG15 / "
                "IFIT) is probably a *state* of a known type that the reference lacks; a group expressing another "
                "lineage's genes is probably a type the reference lacks. The rule cannot tell these apart; the genes "
                "can. *State programs* names the stress, immediate-early, interferon, cell-cycle, mitochondrial or "
                "ribosomal genes found among the genes up (two or more of one program). A group with heat-shock or "
                "immediate-early genes up that keeps at least 8 of its type's 10 reference markers is a known type "
                "after a rougher dissociation: the rule has already given it that type (ticked below; untick it to "
                "see it as Unknown). *Samples* (a query with samples) names those a group is absent from and, "
                "where a known type's accepted cells are missing by about the group's size in the samples it is "
                "in, that type: perhaps the type in a condition of those samples (a treated state), though a type "
                "the reference lacks whose untreated cells were accepted as a known type can look the same.")
    st.dataframe(groups, hide_index=True, key="unknown_groups")
accepted = st.multiselect("Accept these Unknown groups as the type they look most like (your call: e.g. a known type "
                          "in a state the reference lacks); the heatmap and the download below follow",
                          cal.group_choices(run), default=kept.get("accepted", cal.rule_accepted_groups(run)),
                          format_func=lambda j: cal.group_name(run, j),
                          key=WidgetKeys.ACCEPT_GROUPS.format(run=run.run_id)) if groups is not None else []
shorts = cal.short_class_choices(run) if groups is not None else []
as_short = st.multiselect("Accept these Unknown groups as the type their samples point to (its cells missing where "
                          "the group is; your call, after reading the group's genes)", shorts,
                          default=kept.get("as_short", []),
                          format_func=lambda j: cal.short_group_name(run, j),
                          key=WidgetKeys.ACCEPT_SHORT.format(run=run.run_id)) if shorts else []
methods = run.score_methods()
card_method = run.rejection.get("method")
first = kept.get("method", card_method)
method = st.selectbox("Novelty score", methods, index=methods.index(first) if first in methods else 0,
                      key=WidgetKeys.SCORE_METHOD, format_func=lambda m: f"{m}" + (" (used by the model)" if m == card_method else ""))
st.caption(score_help(method))
lo, hi = cal.threshold_range(run, method)
start = min(max(kept["threshold"] if kept.get("method") == method and "threshold" in kept
                else res.default_threshold(run, method), lo), hi)
thr = st.slider("Threshold (cells scoring above it are called Unknown)", lo, hi, start, (hi - lo) / 500,
                format="%.4g", key=WidgetKeys.THRESHOLD.format(run=run.run_id, method=method))
summ = cal.unknown_summary(run, method, thr)
labels = cal.accept_groups(run, res.relabel(run, method, thr), accepted, as_short)  # (the counts: after your calls)
n_unk, m = int((labels == UNKNOWN).sum()), st.columns(3)
m[0].metric("Unknown query cells", f"{n_unk:,}", help=f"{summ['n_unknown']:,} score above the threshold, before the "
            "groups accepted below")
m[1].metric("Share of the query", f"{n_unk / max(1, len(labels)):.1%}")
val, q = run.scores(method)
m[2].metric("Reference validation accepted", f"{summ['val_accepted']:.1%}", help="Of the held-out reference cells, "
            "the share at or below this threshold. The run's own is their quantile, which falls between two cells, so "
            f"at it the share can be a cell short of the one named above (one cell: {1 / max(1, len(val)):.1%})")
plot(score_histogram({"reference validation": val, "query": q}, thr, title=None,
                     x_title=f"{method} novelty score (higher = more novel)"), key="novelty_hist")

cal.keep_decisions(run, method, thr, accepted, as_short)
if accepted or as_short:
    picked = sorted(set(accepted) | set(as_short))
    n_acc = int(sum(run.card["unknown_groups"][j]["n_cells"] for j in picked))
    st.caption(f"{n_acc:,} cells of {len(picked)} accepted group(s) carry the type they look most like or, where "
               f"chosen, the type their samples point to; {int((labels == UNKNOWN).sum()):,} cells stay Unknown. "
               "These choices and the threshold are kept with the run.")
cols_labels, col_title = res.comparison_columns(run)
plot(label_heatmap(labels, cols_labels, row_title="Predicted label", col_title=col_title,
                   row_order=run.classes + [UNKNOWN], title="Label transfer at this threshold"), key="cal_heatmap")
d1, d2 = st.columns(2)
d1.download_button("Predictions at this threshold (.csv)", lambda: res.relabelled_csv(run, method, thr, labels),
                   file_name=f"{run.run_id}_predictions_{method}.csv", mime="text/csv", key="dl_thr", on_click="ignore")
choices = {"method": method, "threshold": thr, "accepted_groups": list(accepted), "as_samples_point": list(as_short)}
res.prepared_download(d2, "Annotated query with these choices (.h5ad)", file_name=f"{run.run_id}_annotated_chosen.h5ad",
                      make=lambda: res.annotated_with_choices(run.root, run.run_id, labels, choices),
                      mime="application/octet-stream", key=f"dl_h5ad_chosen_{run.run_id}")

c1, c2 = st.columns(2)
with c1:
    pairs = cal.roc_pairs(run)
    if pairs:
        plot(roc_curve_figure(pairs, title="Novel vs known query cells"), key="roc")
    else:
        st.info("The ROC of novel vs known cells needs query labels with both reference and novel types.")
with c2:
    plot(accuracy_coverage_figure(cal.coverage_pairs(run, method), threshold=thr, higher_is_confident=False,
                                  title="Accuracy vs coverage (rejecting by novelty)"), key="coverage")
