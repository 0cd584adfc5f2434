"""Reproduction harness for "Improved Training of Wasserstein GANs" (Gulrajani et al., 2017)."""

__version__ = "0.1.0"
