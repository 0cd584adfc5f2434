"""The four training procedures: their losses, penalties and TF1-exact optimisers."""
