"""A candidate measured for issue 12 and not kept: remove the query's per-gene shift that its
predicted classes share, then measure the default rule on the re-encoded query.

The idea: a study or condition effect (technology, culture, IFN-beta stimulation) moves every
cell type's expression the same way, a novel type differs from its predicted class in its own
genes. Per predicted class with ``--min-cells`` cells in the query and in the reference's training
cells, the log ratio of the query's and the reference's mean normalised expression of each gene
(``--eps`` added to both means); the shared shift of a gene is the median over those classes (at
least three, so one class a novel population lands on cannot move it). The query's normalised
expression is divided by it, re-encoded by the same trained model, and ``knn_class`` (with the
doubt factor, threshold 1, the labels unchanged) is measured on the new latent coordinates.

Modes: ``ratio`` (as above), ``up`` (only genes higher in the query), ``down`` (only lower),
``half`` (half the shift), ``minabs`` (genes shifted the same way in every class, by the smallest
shift), ``logdiff`` (median difference of mean log1p expression, subtracted from non-zero entries).

Uses the stress suite's cached ``scanvi_svm`` models (``bench/novelty_stress.py --models
scanvi_svm`` trains them first)::

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/novelty_shared_shift.py            # ~2 min
    .venv/bin/python bench/novelty_shared_shift.py --mode up --eps 0.3 --min-cells 50
    .venv/bin/python bench/novelty_shared_shift.py --mode matched --model-threshold --full-pbmc   # 5 seeds, ~25 min
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import novelty_stress as ns  # noqa: E402

MODES = ("ratio", "up", "down", "half", "minabs", "logdiff", "matched")


def shared_shift(Xr: np.ndarray, ry: np.ndarray, Xq: np.ndarray, qpred: np.ndarray, *, mode: str,
                 eps: float, min_cells: int, nn: np.ndarray | None = None) -> np.ndarray:
    """Per gene, the shift (log scale) shared by the classes with ``min_cells`` cells on both sides;
    zeros when fewer than three classes qualify. ``matched``: each class's reference mean is that of
    the reference cells of the class among the query cells' nearest reference neighbours ``nn``
    (so a reference of two conditions is compared condition by condition)."""
    er, eq = np.expm1(Xr), np.expm1(Xq)
    rows = []
    for c in np.unique(ry):
        qm, rm = qpred == c, ry == c
        if qm.sum() >= min_cells and rm.sum() >= min_cells:
            if mode == "logdiff":
                rows.append(Xq[qm].mean(0) - Xr[rm].mean(0))
            elif mode == "matched":
                idx = nn[qm].ravel()
                idx = idx[ry[idx] == c]
                if len(idx) >= min_cells:
                    rows.append(np.log((eq[qm].mean(0) + eps) / (er[idx].mean(0) + eps)))
            else:
                rows.append(np.log((eq[qm].mean(0) + eps) / (er[rm].mean(0) + eps)))
    if len(rows) < 3:
        return np.zeros(Xq.shape[1])
    r = np.stack(rows)
    if mode == "minabs":
        same = (np.sign(r) == np.sign(r[0])).all(0)
        return np.where(same, np.sign(r[0]) * np.abs(r).min(0), 0.0)
    shift = np.median(r, axis=0)
    return {"up": np.maximum(shift, 0), "down": np.minimum(shift, 0), "half": shift / 2}.get(mode, shift)


def corrected(Xq: np.ndarray, shift: np.ndarray, mode: str) -> np.ndarray:
    if mode == "logdiff":
        return np.where(Xq > 0, np.maximum(Xq - shift, 0), 0).astype(np.float32)
    return np.log1p(np.expm1(Xq) / np.exp(shift)).astype(np.float32)


def compare(m, prep, args) -> dict[str, dict]:
    """The default rule's metrics on the query as the model encodes it and with the shared shift
    removed (labels unchanged)."""
    from cellannot_core._constants import UNKNOWN
    from cellannot_core.data import dense
    from cellannot_core.metrics import label_transfer_metrics
    from cellannot_core.pipeline import predict

    Xq = np.asarray(dense(prep.query.X), dtype=np.float32)
    p = predict(m, Xq)
    pred = p.logits.argmax(1)
    nn = None
    if args.mode == "matched":  # the reference rows are the training cells, in order
        assert len(m.reference.latent) == prep.train.n_obs
        m.reference.knn(p.latent[:1])
        nn = m.reference._nn.kneighbors(p.latent, return_distance=False)
    shift = shared_shift(np.asarray(dense(prep.train.X), dtype=np.float32), prep.train.y, Xq, pred,
                         mode=args.mode, eps=args.eps, min_cells=args.min_cells, nn=nn)
    labels = np.asarray(prep.query.labels)
    known = labels != ""
    out = {}
    for name, z in (("as trained", p.latent), ("shared shift removed", m.latent(corrected(Xq, shift, args.mode)))):
        thr = m.threshold if args.model_threshold and np.isfinite(m.threshold) else 1.0
        s = m.reference.knn_class(z, pred, threshold=thr, confidence=p.confidence)
        if args.model_threshold:
            thr = m.query_threshold(s)[0]
        final = np.where(s > thr, UNKNOWN, p.label_raw)
        out[name] = label_transfer_metrics(labels[known], p.label_raw[known], final[known], p.confidence[known],
                                           s[known], m.classes)
    return out


def _line(out: dict[str, dict]) -> str:
    return " | ".join(f"{n[:10]:10s} auroc {r['auroc_ood']:.3f} acc_open {r['acc_open']:.3f} reject_in "
                      f"{r['reject_in']:.3f} reject_novel {r['reject_novel']:.3f}" for n, r in out.items())


def full_pbmc(args) -> None:
    """kang_ctrl -> pbmc3k and kang_sce -> pbmc3k at full size, ``--seeds`` seeds, trained here."""
    import label_transfer as lt
    from cellannot_core.data import read_dataset
    from cellannot_core.pipeline import AnnotateOptions, prepare_data, train_model

    for task in ("kang_ctrl", "kang_sce"):
        ref_f, q_f = lt.TASKS[task]
        ref, q = read_dataset(ns.DATA / ref_f, name="reference"), read_dataset(ns.DATA / q_f, name="query")
        per = {}
        for seed in range(args.seeds):
            opts = AnnotateOptions(label_key=ns.LABEL_KEY, query_label_key=ns.LABEL_KEY, model="scanvi_svm", seed=seed,
                                   device="auto")
            prep = prepare_data(ref, q, opts)
            out = compare(train_model(prep, opts), prep, args)
            print(f"{task} seed {seed}: {_line(out)}", flush=True)
            for name, r in out.items():
                per.setdefault(name, []).append(r)
        for name, rs in per.items():
            cells = []
            for k in ("auroc_ood", "acc_open", "reject_in", "reject_novel"):
                v = np.array([r[k] for r in rs], dtype=float)
                cells.append(f"{k} {np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]")
            print(f"{task} {name}: " + ", ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default="ratio")
    ap.add_argument("--eps", type=float, default=0.05, help="added to both means (normalised to 1e4 per cell)")
    ap.add_argument("--min-cells", type=int, default=20)
    ap.add_argument("--model-threshold", action="store_true",
                    help="decide at the model's own (validation) threshold, as the app does, instead of 1")
    first_six = [p for p in ns.PAIRS if p not in ns.LATER_PAIRS]
    ap.add_argument("--pairs", nargs="+", default=first_six, choices=list(ns.PAIRS),
                    help="default: the six pairs its BENCHMARKS.md figures were measured on")
    ap.add_argument("--full-pbmc", action="store_true",
                    help="instead of the suite: kang_ctrl / kang_sce -> pbmc3k at full size, trained here")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of --full-pbmc")
    args = ap.parse_args()
    if args.full_pbmc:
        full_pbmc(args)
        return
    from cellannot_core.pipeline import AnnotateOptions, prepare_data

    rows = []
    for pair in args.pairs:
        ref0, q0 = ns._load(ns.DATA / ns.PAIRS[pair][0], 4000, 0), ns._load(ns.DATA / ns.PAIRS[pair][1], 3000, 0)
        for exp in ns.experiments(pair, ref0, q0, min_drop=50, rare_n=25):
            ref, qry = ns.make_data(exp, ref0, q0, 0)
            prep = prepare_data(ref, qry, AnnotateOptions(label_key=ns.LABEL_KEY, query_label_key=ns.LABEL_KEY, seed=0))
            m, _ = ns.train_or_load(exp, "scanvi_svm", prep, 0, False)
            out = compare(m, prep, args)
            share = float((~np.isin(np.asarray(prep.query.labels), m.classes)).mean())
            rows += [{"model": n, "novel_share": share, "kind": exp.kind, **r} for n, r in out.items()]
            print(f"{exp.name:42s} {share:6.1%} {_line(out)}", flush=True)
    ns.summarise(rows, lambda r: (r["model"], r),
                 f"knn_class at {'the model threshold' if args.model_threshold else 'threshold 1'}, mode {args.mode}, "
                 f"eps {args.eps}, min cells {args.min_cells}")


if __name__ == "__main__":
    main()
