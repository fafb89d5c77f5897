"""Evaluation (§3.1.3): `evaluate` generates for a split and scores it (`photochat evaluate`), with the text
and intent metrics of `metrics` and the image metrics of `fidelity` (FID and IS through torch-fidelity)."""
