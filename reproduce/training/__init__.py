"""One run: the loop, the trainer, the step engines, bookkeeping, stopping, FLOPs, TensorBoard
and the toy runs."""
