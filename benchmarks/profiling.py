"""Peak-memory probes shared by the benchmarks (CUDA's allocator stats, or Linux's VmHWM on CPU); kept here, not in
photochat_lib, because only the benchmarks measure memory."""
from __future__ import annotations

from pathlib import Path

import torch


def rss_bytes(field: str = "VmRSS") -> int | None:
    """Return VmRSS / VmHWM of this process in bytes from /proc/self/status, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); return whether it worked."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so the baseline is live memory
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: `.peak` = bytes allocated above the level at entry (CUDA) or peak RSS above it (CPU)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.peak: int | None = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.ok = reset_peak_rss()
            self.base = rss_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            hwm = rss_bytes("VmHWM")
            self.peak = hwm - self.base if (self.ok and hwm is not None and self.base is not None) else None
        return False

    @property
    def what(self) -> str:
        """What `peak` measures, for table headers."""
        return ("torch.cuda.max_memory_allocated above the start" if self.cuda
                else "peak resident memory (Linux VmHWM, reset at the start) above the start")


def fmt_bytes(n: float | None) -> str:
    """Return n bytes as a human-readable string ("n/a" for None)."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return ""
