"""Evaluation of a run: Inception score, FID, KID, the demo judge, the verdict."""
