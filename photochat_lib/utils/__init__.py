"""Utilities every layer may use: atomic writes (`atomic`), the CLIs' shared helpers and quiet progress bars
(`cliutil`), the GPU/torch-build check (`doctor`) and memory measurements (`profiling`)."""
