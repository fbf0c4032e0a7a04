"""Gene matching across naming schemes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellannot_core.data import match_genes
from cellannot_core.data.genes import strip_ensembl_version
from cellannot_core.errors import DataError

SYMBOLS = [f"GENE{j}" for j in range(300)]
ENSEMBL = [f"ENSG{j:011d}" for j in range(300)]


def _var(index, **cols) -> pd.DataFrame:
    return pd.DataFrame(cols, index=pd.Index(index))


def _check_pairs(m, ref_var, q_var, ref_key=None, q_key=None):
    """Every matched pair names the same gene."""
    r = ref_var.index if ref_key is None else ref_var[ref_key]
    q = q_var.index if q_key is None else q_var[q_key]
    assert len(m.ref_idx) == len(m.query_idx) == len(m.names)
    for i, j in zip(m.ref_idx, m.query_idx):
        assert str(r[i]).split(".")[0].upper() == str(q[j]).split(".")[0].upper()
    assert list(m.names) == [str(ref_var.index[i]) for i in m.ref_idx]


def test_exact_match_subset_and_order():
    ref = _var(SYMBOLS)
    q = _var(SYMBOLS[::-1][:250] + ["OTHER1", "OTHER2"])  # shuffled order, some missing
    m = match_genes(ref, q)
    assert m.mode == "exact" and not m.approximate
    assert m.n_shared == 250 and m.n_ref == 300 and m.n_query == 252
    assert m.message == "250 of 300 reference genes found in the query (exact symbols)"
    assert np.all(np.diff(m.ref_idx) > 0)  # reference order
    _check_pairs(m, ref, q)


def test_ensembl_version_stripped():
    ref = _var([f"{e}.{j % 7 + 1}" for j, e in enumerate(ENSEMBL)])
    q = _var(ENSEMBL)
    m = match_genes(ref, q)
    assert m.mode == "ensembl" and m.n_shared == 300
    assert m.names[0] == "ENSG00000000000.1"  # reference spelling kept
    assert strip_ensembl_version(["ENSG00000141510.12", "TP53", "ENSMUSG00000059552.3"]).tolist() == [
        "ENSG00000141510", "TP53", "ENSMUSG00000059552"
    ]
    _check_pairs(m, ref, q)


def test_ensembl_vs_symbols_through_var_column():
    ref = _var(SYMBOLS)  # symbols only
    perm = np.random.default_rng(0).permutation(300)
    q = _var([ENSEMBL[k] + ".5" for k in perm], gene_symbols=[SYMBOLS[k] for k in perm])
    m = match_genes(ref, q)
    assert m.n_shared == 300 and m.mode == "exact"
    assert m.query_key == "var['gene_symbols']"
    assert "query var['gene_symbols']" in m.message
    _check_pairs(m, ref, q, q_key="gene_symbols")
    # the other way round: reference symbols with an Ensembl column vs an Ensembl query
    ref2 = _var(SYMBOLS, ensembl=ENSEMBL)
    q2 = _var(ENSEMBL[:250])
    m2 = match_genes(ref2, q2)
    assert m2.n_shared == 250 and m2.mode == "ensembl" and m2.names[:2] == ["GENE0", "GENE1"]


def test_case_insensitive_mouse_vs_human():
    human = ["CD3E", "CD19", "LYZ", "MS4A1"] + [f"HG{j}" for j in range(296)]
    mouse = [g.capitalize() for g in human]
    m = match_genes(_var(mouse), _var(human))
    assert m.approximate and m.mode == "case-insensitive symbols"
    assert m.n_shared == 300 and m.names[0] == "Cd3e"
    assert "approximate" in m.message


def test_few_case_differences_stay_exact():
    ref = SYMBOLS[:290] + [f"C{j}orf1" for j in range(10)]
    q = SYMBOLS[:290] + [f"C{j}ORF1" for j in range(10)]
    m = match_genes(_var(ref), _var(q))
    assert m.mode == "exact" and not m.approximate and m.n_shared == 290


def test_duplicates_keep_first():
    ref = _var(["A", "B", "A"] + SYMBOLS)
    q = _var(["B", "A", "B"] + SYMBOLS)
    m = match_genes(ref, q, min_shared=10)
    assert m.n_shared == 302
    pairs = dict(zip(m.ref_idx.tolist(), m.query_idx.tolist()))
    assert pairs[0] == 1 and pairs[1] == 0 and 2 not in pairs
    assert len(set(m.query_idx.tolist())) == m.n_shared


def test_too_few_shared_genes():
    ref = _var([f"G{j}" for j in range(2000)])
    q = _var([f"G{j}" for j in range(12)] + [f"X{j}" for j in range(2000)])
    with pytest.raises(DataError) as e:
        match_genes(ref, q)
    msg = str(e.value)
    assert msg.startswith("only 12 of 2000 reference genes found in the query")
    assert "symbols vs Ensembl IDs" in msg and "species" in msg


def test_small_panels_that_match_fully_pass():
    m = match_genes(_var(SYMBOLS[:120]), _var(SYMBOLS[:120]))  # the default is eased for a small panel
    assert m.n_shared == 120


def test_a_number_of_shared_genes_asked_for_is_required_as_given():
    """Found 2026-12-07 (a scanpy user's probe): min_shared_genes=1000 passed a pair sharing 689 genes with
    a warning only, every value being eased to half the smaller gene count as the default is."""
    ref, q = _var(SYMBOLS), _var(SYMBOLS[:150] + [f"X{j}" for j in range(150)])
    assert match_genes(ref, q).n_shared == 150  # the default, eased: half of 300
    assert match_genes(ref, q, min_shared=100).n_shared == 150
    with pytest.raises(DataError, match=r"^only 150 of 300 reference genes found in the query \(need at least 160\)"):
        match_genes(ref, q, min_shared=160)


def test_accepts_anndata(synthetic_pair):
    ref, q = synthetic_pair
    m = match_genes(ref, q)
    assert m.n_shared == ref.n_vars


def test_few_shared_genes_name_the_likeliest_reason():
    # both cut to their own 1,000 highly variable genes: 103 shared, the cut named with what to do
    ref = _var([f"G{j}" for j in range(1000)])
    q = _var([f"G{j}" for j in range(897, 1897)])
    with pytest.raises(DataError, match=r"highly variable genes .*adata\.raw\.to_adata\(\)"):
        match_genes(ref, q)
    # anndata's default names (0, 1, 2 ...) on one side: named, not taken for another species
    with pytest.raises(DataError, match="the query's gene names are numbers") as e:
        match_genes(_var([f"G{j}" for j in range(2000)]), _var([str(j) for j in range(2000)]))
    assert "species" not in str(e.value)
    # the symbols in a var column of a name not known for them: the column named, with what to do (found
    # 2026-12-07: "only 0 of 2000 genes", nothing more)
    q = _var([f"ENSG{j:011d}" for j in range(2000)])
    q["my_syms"] = [f"G{j}" for j in range(2000)]
    with pytest.raises(DataError, match=r"the query's var column 'my_syms' holds 2,000 of the reference's gene names: "
                                        r"set its var_names to them \(adata\.var_names = adata\.var\['my_syms'\]"):
        match_genes(_var([f"G{j}" for j in range(2000)]), q)
    # ... but not a column that matches fewer than the names do (found 2026-12-07: 1,166 offered against 1,251)
    q = _var([f"G{j}" for j in range(1900)] + [f"X{j}" for j in range(100)])
    q["my_syms"] = [f"G{j}" for j in range(1500)] + [f"Y{j}" for j in range(500)]
    with pytest.raises(DataError) as e:
        match_genes(_var([f"G{j}" for j in range(2000)]), q, min_shared=1950)
    assert "only 1900 of 2000" in str(e.value) and "my_syms" not in str(e.value)
    # a saved model's genes are the model's, not a reference's
    with pytest.raises(DataError, match="only 0 of 2000 model genes found in the query"):
        match_genes(_var([f"G{j}" for j in range(2000)]), _var([f"X{j}" for j in range(2000)]), ref_name="model")


def test_a_mixed_genome_file_and_ids_against_symbols_are_named_as_such():
    """Found 2026-12-07 (a barnyard / xenograft sample counted against GRCh38 + mm10, and a query of Ensembl IDs
    against a reference of symbols): both got "check both use the same gene identifiers ... highly variable genes"."""
    ref = _var([f"G{j}" for j in range(2000)])
    barnyard = _var([f"GRCh38_G{j}" for j in range(1000)] + [f"mm10___g{j}" for j in range(1000)])
    with pytest.raises(DataError, match=r"the query's gene names begin with a genome's name \((GRCh38|mm10), "
                                        r"(GRCh38|mm10)\).*Keep one genome's genes") as e:
        match_genes(ref, barnyard)
    assert "highly variable" not in str(e.value)
    with pytest.raises(DataError, match="the query names its genes by Ensembl IDs and the reference by symbols, and "
                                        "neither holds the other kind in a var column"):
        match_genes(ref, _var([f"ENSG{j:011d}" for j in range(2000)]))
