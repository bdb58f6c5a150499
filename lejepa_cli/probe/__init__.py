"""Frozen-backbone probe: a linear head and a kNN vote on cached features, with few-shot seeds.

Protocol (kept fixed so numbers compare across checkpoints and runs):

- features: `features.probe_features` (for ViTs pooled by their class token the last two blocks'
  CLS tokens and the last block's average patch token, the pooled output otherwise), eval
  transform, cached on disk;
- validation: `--val` or a stratified split of the labels, 20% per class (at least 1), seed 0;
- linear head: LayerNorm + Linear, AdamW (weight decay 1e-6), cross-entropy (with `balanced`,
  each class weighted by n / (classes * n_class), so every class counts alike), linear warmup then
  cosine, 100 epochs of minibatches of 1024 (at least 2000 and at most 4000 steps); the learning
  rate is picked from LR_GRID by 5-fold stratified cross-validation of the training set (all grid
  heads of a fold train in one batched pass), or DEFAULT_LR when a class has fewer than 2
  training examples;
- kNN: cosine similarity on L2-normalised features, k=20 (at most the training set), votes
  weighted by exp(similarity / 0.07) as in DINO;
- shots: k examples per class drawn per seed (a class with fewer uses all it has, and the result
  says so); 'all' uses every training example, seeds then vary only the head's initialisation;
- metrics: top-1, balanced accuracy (mean recall over classes in the validation set), macro-F1
  (over classes that are true or predicted), per-class accuracy, confusion matrix.
"""

from lejepa_cli.probe.heads import (
    BATCH_SIZE,
    DEFAULT_LR,
    EPOCHS,
    KNN_K,
    KNN_T,
    LR_GRID,
    MAX_STEPS,
    METRICS,
    MIN_STEPS,
    SELECT_FOLDS,
    WARMUP_SHARE,
    WEIGHT_DECAY,
    class_weights,
    classification_metrics,
    knn_predict,
    probe_arrays,
    probe_protocol,
    protocol_record,
    select_lr,
    stratified_folds,
)
from lejepa_cli.probe.labels import (
    ALL,
    SPLIT_SEED,
    VAL_FRACTION,
    _sort_classes,
    check_labels,
    parse_shots,
    read_labels,
    sample_shots,
    stratified_split,
)
from lejepa_cli.probe.results import RESULT_FILES, ProbeResult, _save_confusion
from lejepa_cli.probe.run import MAX_SEEDS, StageProgress, probe_backbone_on_csv, run_probe

__all__ = [
    "ALL",
    "BATCH_SIZE",
    "DEFAULT_LR",
    "EPOCHS",
    "KNN_K",
    "KNN_T",
    "LR_GRID",
    "MAX_SEEDS",
    "MAX_STEPS",
    "METRICS",
    "MIN_STEPS",
    "RESULT_FILES",
    "SELECT_FOLDS",
    "SPLIT_SEED",
    "VAL_FRACTION",
    "WARMUP_SHARE",
    "WEIGHT_DECAY",
    "StageProgress",
    "ProbeResult",
    "_save_confusion",
    "_sort_classes",
    "check_labels",
    "class_weights",
    "classification_metrics",
    "knn_predict",
    "parse_shots",
    "probe_arrays",
    "probe_backbone_on_csv",
    "probe_protocol",
    "protocol_record",
    "read_labels",
    "run_probe",
    "sample_shots",
    "select_lr",
    "stratified_folds",
    "stratified_split",
]
