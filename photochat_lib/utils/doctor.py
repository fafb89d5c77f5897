"""Does this machine's torch build fit its GPU?

A torch wheel carries GPU kernels only for the compute capabilities it was compiled for
(``torch.cuda.get_arch_list()``). PyTorch dropped Volta (sm_70, the V100) from its CUDA 12.8 and 13.x builds
in release 2.11; only the CUDA 12.6 builds keep it. The Makefile's pinned torch, installed from PyPI, is a CUDA
13.0 build, so on a lab V100 torch imports, says ``cuda.is_available()``, and then fails at the first kernel
launch with "no kernel image is available for execution on the device" — far from the cause, after the model
has loaded. torch itself only warns once, and the warning is easily lost in a log.

This module turns that into a verdict and the one command that fixes it: ``photochat doctor`` prints it, and
``require_supported_gpu()`` lets a command stop with it before any work starts. CPU-only machines always pass.
"""
from __future__ import annotations

import argparse
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

INDEX = "https://download.pytorch.org/whl"

# The CUDA builds of a torch release and the capabilities each was compiled for, by host, the default (PyPI's)
# build first. From PYTORCH_RELEASES_CODE_CC in torch 2.14.1's torch/cuda/__init__.py.
BUILDS: dict[str, dict[str, tuple[int, ...]]] = {
    "x86_64": {"cu130": (75, 80, 86, 90, 100, 120), "cu126": (50, 60, 70, 75, 80, 86, 90)},
    "aarch64": {"cu130": (80, 90, 100, 110, 120), "cu126": (80, 90)},
}

# Exceptions to "kernels for X.Z run on any X.Y with Y >= Z", as torch's DEVICE_REQUIREMENT (torch/cuda/__init__.py)
# lists them: the Jetson iGPUs (5.3, 6.2, 7.2, 8.7) run only their own kernels and not their major's dGPU ones,
# and 10.1 was renamed 11.0.
_ONLY = {53: {53}, 62: {62}, 72: {72}, 87: {87}, 101: {101, 110}, 110: {101, 110}}
_EXCLUDED = {50: {53}, 52: {53}, 60: {62}, 61: {62}, 70: {72}, 80: {87}, 86: {87}, 100: {101}}
# From CUDA 13.2 these server kernels run on the Jetsons too (torch's DEVICE_REQUIREMENT_POST_JETSON_SBSA_UNIFICATION).
_JETSON_UNIFIED = (70, 80, 86)


def _arch_cc(entry: str) -> int | None:
    """``sm_90a`` / ``compute_80`` -> 90 / 80, as torch's ``_extract_arch_version``; None for other entries (gfx...)."""
    kind, _, number = entry.partition("_")
    if kind not in ("sm", "compute"):
        return None
    return int(number.split("_")[0].removesuffix("a").removesuffix("f"))


def _code_runs_on(code_cc: int, device_cc: int, cuda: tuple[int, ...] | None) -> bool:
    """Whether kernels compiled for `code_cc` run on a `device_cc` GPU (torch's `_code_compatible_with_device`)."""
    if code_cc in _ONLY:
        return device_cc in _ONLY[code_cc]
    unified = cuda is not None and cuda >= (13, 2) and code_cc in _JETSON_UNIFIED
    if device_cc in _EXCLUDED.get(code_cc, set()) and not unified:
        return False
    # binary compatibility holds within a major only: sm_80 code runs on 8.6, not on 9.0
    return device_cc // 10 == code_cc // 10 and device_cc >= code_cc


def supported(capability: tuple[int, int], arch_list: list[str], cuda_version: str | None = None) -> bool:
    """Whether a GPU of ``capability`` (major, minor) runs a torch build compiled for ``arch_list``.

    The rule of torch's own start-up check, ``_check_capability`` in torch/cuda/__init__.py (torch 2.14.1): some
    entry's capability must be the GPU's, or a lower minor of the same major. It treats ``compute_XY`` (PTX)
    entries like ``sm_XY`` — no JIT onto a newer major — and so do we, so our verdict never contradicts its
    warning. ``cuda_version`` (``torch.version.cuda``) matters only for Jetsons.
    """
    device_cc = 10 * capability[0] + capability[1]
    cuda = tuple(int(x) for x in cuda_version.split(".")) if cuda_version else None
    codes = [cc for cc in map(_arch_cc, arch_list) if cc is not None]
    return any(_code_runs_on(code, device_cc, cuda) for code in codes)


def _host() -> str:
    return "aarch64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


def _installed_pins() -> list[str]:
    """``torch==V`` and ``torchvision==W`` for what is installed now, local tag dropped.

    The fix reinstalls these same versions from another build, changing nothing else; in a venv from
    ``make install`` they are the Makefile's TORCH_PINS_X86_64, the one place the pins are kept.
    """
    pins = []
    for name in ("torch", "torchvision"):
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:  # torchvision is optional to this check
            pass
    return pins


def build_for(capability: tuple[int, int]) -> str | None:
    """The first CUDA build (``cu130``, ``cu126``, ...) whose kernels run on ``capability``; None if there is none."""
    for tag, ccs in BUILDS[_host()].items():
        if supported(capability, [f"sm_{cc}" for cc in ccs]):
            return tag
    return None


def install_hint(capability: tuple[int, int]) -> str:
    """The command that installs a torch build with kernels for a GPU of ``capability``.

    The local tag (``+cu126``) is part of the pins because pip counts an installed ``2.14.1+cu130`` as satisfying a
    plain ``torch==2.14.1`` and would keep it.
    """
    tag = build_for(capability)
    if tag is None:
        major, minor = capability
        return (f"none: no CUDA build of torch {version('torch').split('+')[0]} has kernels for sm_{major}{minor}; "
                "run on the CPU (CUDA_VISIBLE_DEVICES=) or pick an older torch at "
                "https://pytorch.org/get-started/previous-versions/")
    pins = " ".join(f"{pin}+{tag}" for pin in _installed_pins())
    return f"pip install {pins} --index-url {INDEX}/{tag}"


def gpu_report() -> dict:
    """torch's version and CUDA, the architectures it has kernels for, and each visible GPU with its verdict.

    A device's ``supported`` is None where torch itself does not check (ROCm, or a build that lists no
    architectures).
    """
    available = torch.cuda.is_available()
    arch_list = list(torch.cuda.get_arch_list())
    judged = torch.version.cuda is not None and bool(arch_list)  # torch's _check_capability skips the same cases
    devices = []
    for i in range(torch.cuda.device_count() if available else 0):
        capability = tuple(torch.cuda.get_device_capability(i))
        devices.append({"index": i, "name": torch.cuda.get_device_name(i), "capability": capability,
                        "supported": supported(capability, arch_list, torch.version.cuda) if judged else None})
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": available,
            "arch_list": arch_list, "devices": devices}


def _mismatch(report: dict) -> dict | None:
    """The first GPU the installed build has no kernels for, or None."""
    return next((d for d in report["devices"] if d["supported"] is False), None)


def _fix(capability: tuple[int, int]) -> str:
    tag = build_for(capability)
    make = f" (in a checkout: make install TORCH_CUDA={tag})" if tag else ""
    return install_hint(capability) + make


class UnsupportedGPUError(RuntimeError):
    """The installed torch build has no kernels for a visible GPU; the message names the fix."""


def require_supported_gpu() -> None:
    """Raise UnsupportedGPUError, in one line with the fix, if torch has no kernels for a visible GPU.

    Does nothing on a CPU-only machine or when every GPU is supported. Call it before loading a model: without it
    the mismatch surfaces as "no kernel image is available" at the first kernel launch.
    """
    report = gpu_report()
    bad = _mismatch(report)
    if bad is None:
        return
    major, minor = bad["capability"]
    raise UnsupportedGPUError(
        f"GPU {bad['index']} {bad['name']} (compute capability {major}.{minor}, sm_{major}{minor}) has no kernels in "
        f"torch {report['torch']}, built for {' '.join(report['arch_list'])}; fix: {_fix(bad['capability'])}")


def _describe(report: dict) -> list[str]:
    """The report in a few lines."""
    build = f"CUDA {report['cuda']}" if report["cuda"] else (f"ROCm {torch.version.hip}" if torch.version.hip
                                                            else "CPU-only build")
    lines = [f"torch {report['torch']} ({build}), kernels for: {' '.join(report['arch_list']) or '-'}"]
    if not report["devices"]:
        lines.append("GPU: none visible (runs on the CPU)")
    for d in report["devices"]:
        major, minor = d["capability"]
        fits = {True: "supported", False: "NOT supported by this build", None: "not checked"}[d["supported"]]
        lines.append(f"GPU {d['index']}: {d['name']}, compute capability {major}.{minor} (sm_{major}{minor}): {fits}")
    return lines


def register(subparsers) -> None:
    """Add the `doctor` sub-command to the `photochat` parser."""
    p = subparsers.add_parser(
        "doctor", help="check that the installed torch has kernels for this machine's GPU",
        description="Print torch's version and CUDA build, the GPU architectures it was compiled for and each "
                    "visible GPU's compute capability; exit 1, with the command that fixes it, if a GPU has no "
                    "kernels in this build (a V100 with a CUDA 12.8/13.x torch).")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Print the report and the verdict; 0 when torch fits every GPU, 1 on a mismatch."""
    report = gpu_report()
    print("\n".join(_describe(report)))
    bad = _mismatch(report)
    if bad is None:
        print("verdict: ok")
        return 0
    print('verdict: mismatch; the first GPU kernel would fail with "no kernel image is available"')
    print(f"fix: {_fix(bad['capability'])}")
    return 1
