"""Whether NF4/int8 can run here, told from package metadata and driver files without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from desktop.engine.quantised_support import QuantisedSupport, cuda_build, detect_quantised_support


@pytest.mark.parametrize(("version", "cuda"), [
    ("2.13.0+cpu", False), ("2.13.0+CPU", False), ("2.6.0+rocm6.2", False), ("2.13.0+cu128", True),
    ("2.13.0", sys.platform != "darwin"),
])  # fmt: skip
def test_a_cpu_wheel_is_no_cuda_build(version: str, cuda: bool) -> None:
    assert cuda_build(version) is cuda


def test_support_needs_the_package_a_cuda_build_and_a_driver() -> None:
    def detect(package: bool, version: str | None, driver: bool) -> QuantisedSupport:
        return detect_quantised_support(find_spec=lambda name: object() if package and name == "bitsandbytes" else None,
                                        torch_version=lambda: version, driver_present=lambda: driver)  # fmt: skip

    assert detect(True, "2.13.0+cu128", True) == QuantisedSupport(bitsandbytes=True, cuda=True)
    assert detect(True, "2.13.0+cu128", True).usable
    assert detect(False, "2.13.0+cu128", True) == QuantisedSupport(bitsandbytes=False, cuda=True)
    assert detect(True, "2.13.0+cpu", True).cuda is False
    assert detect(True, "2.13.0+cu128", False).cuda is False
    assert detect(True, None, True).cuda is False  # no torch at all


def test_detecting_imports_neither_torch_nor_bitsandbytes() -> None:
    code = ("import sys; from desktop.engine.quantised_support import detect_quantised_support as d; s = d(); "
            "print(s.cuda, 'torch' in sys.modules, 'bitsandbytes' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]  # this machine: a CPU wheel of torch, no driver
