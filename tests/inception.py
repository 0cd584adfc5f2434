"""A randomly initialised weights file of torch-fidelity's exact InceptionV3 architecture.

The real TF-converted weights cannot be downloaded here. torch-fidelity's constructor always
loads weights, so the skeleton is built once with loading switched off; the file it produces
is then used through the real path (``feature_extractor_weights_path``: torch.load and a
strict ``load_state_dict``), exactly as the official file would be.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch


def make_random_inception_weights(path: Path, seed: int = 0) -> Path:
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    # He-normal convolutions keep activations alive through the ~94 layers (PyTorch's default
    # init shrinks them until every image gets the same features); batch norm stays identity
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.weight"] = torch.randn_like(state["fc.weight"]) / 2048**0.5
    torch.save(state, path)
    return path
