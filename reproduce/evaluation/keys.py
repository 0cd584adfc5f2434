"""The keys of an evaluation row in ``metrics.jsonl`` (torch-fidelity's names), torch-free so
that ``status`` and the report read them without importing torch."""

IS_MEAN, IS_STD = "inception_score_mean", "inception_score_std"
FID = "frechet_inception_distance"
KID_MEAN, KID_STD = "kernel_inception_distance_mean", "kernel_inception_distance_std"
