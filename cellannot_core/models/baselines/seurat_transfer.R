# cellannot: Seurat v4 label transfer (FindTransferAnchors + TransferData).
# Usage: Rscript seurat_transfer.R <dir>   (reads ref.mtx, query.mtx [genes x cells, log-normalised],
#        genes.txt, ref_labels.txt, params.txt; writes predictions.csv)
suppressPackageStartupMessages({library(Seurat); library(Matrix)})
args <- commandArgs(trailingOnly = TRUE)
d <- args[1]
genes <- readLines(file.path(d, "genes.txt"))
labels <- readLines(file.path(d, "ref_labels.txt"))
p <- read.table(file.path(d, "params.txt"), header = FALSE, row.names = 1)
dims <- 1:as.integer(p["dims", 1])
k_anchor <- as.integer(p["k_anchor", 1]); k_weight <- as.integer(p["k_weight", 1])
read_data <- function(f, prefix) {
  m <- as(readMM(file.path(d, f)), "CsparseMatrix")
  rownames(m) <- genes; colnames(m) <- paste0(prefix, seq_len(ncol(m)))
  m
}
make <- function(m) {
  o <- CreateSeuratObject(counts = m)
  # already log-normalised by cellannot ("layer" in Seurat v5, "slot" in v4)
  o <- tryCatch(SetAssayData(o, layer = "data", new.data = m),
                error = function(e) SetAssayData(o, slot = "data", new.data = m))
  o <- FindVariableFeatures(o, nfeatures = min(2000, nrow(m)), verbose = FALSE)
  o
}
ref <- make(read_data("ref.mtx", "r")); ref$label <- labels
qry <- make(read_data("query.mtx", "q"))
ref <- ScaleData(ref, verbose = FALSE)
ref <- RunPCA(ref, npcs = max(dims), verbose = FALSE)
anchors <- FindTransferAnchors(reference = ref, query = qry, dims = dims, k.anchor = k_anchor,
                               reference.reduction = "pca", verbose = FALSE)
# few query cells give few anchors: k.weight must not exceed the anchor cells it searches
k_weight <- max(2, min(k_weight, length(unique(anchors@anchors[, "cell2"])) - 1))
pred <- TransferData(anchorset = anchors, refdata = ref$label, dims = dims, k.weight = k_weight,
                     verbose = FALSE)
write.csv(pred, file.path(d, "predictions.csv"))
