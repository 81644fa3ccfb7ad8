"""``nml export``. Imports stay inside the function: this module is read for --help."""

from __future__ import annotations

import logging

log = logging.getLogger("nml.models")


def export(ckpt_path: str, out: str) -> dict:
    """Write a trained encoder as a plain state dict plus a JSON for the tuning stage.

    ``OUT/encoder.pt`` holds the encoder weights (timm: without the classifier head; open_clip:
    both towers) and ``OUT/encoder.json`` the architecture, feature dimension D, input size and
    normalisation, noise setting, data manifest hash and checkpoint provenance.

    Args:
        ckpt_path: A checkpoint written by ``nml fit`` with SupervisedPretraining or ContrastivePretraining,
            or its run directory (``runs/<name>/<version>``: its ``checkpoints/last.ckpt``).
        out: Output directory.
    """
    from nml.models.export import export_checkpoint

    meta = export_checkpoint(ckpt_path, out)
    log.info("exported %s (D=%d) to %s", meta["backbone"]["name"], meta["feature_dim"], out)
    return {"out": out, **{k: meta[k] for k in ("backbone", "feature_dim", "noise", "weights_sha256")}}
