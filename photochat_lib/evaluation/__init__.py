"""Evaluation (§3.1.3): `evaluate` (`photochat evaluate`), `metrics` (text, intent) and `fidelity` (FID, IS)."""
