"""Utilities every layer may use: atomic writes (`atomic`), the CLIs' shared helpers and quiet progress bars
(`cliutil`), and the GPU/torch-build check (`doctor`)."""
