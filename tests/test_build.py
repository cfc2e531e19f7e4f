"""The C++ extension, where this install built it, loads: no symbol left undefined by a partial build (a
toolkit without the CUTLASS headers, or the Hopper kernels left out on a machine without a GPU)."""

import glob
import os
import shutil
import subprocess

import pytest

import tensorrt_llm_dwdp

PKG = os.path.dirname(tensorrt_llm_dwdp.__file__)


def _built():
    return glob.glob(os.path.join(PKG, "_C*.so"))


@pytest.mark.skipif(not _built(), reason="the C++ extension is not built in this install (no CUDA toolkit, or "
                                         "DWDP_BUILD_EXT=0)")
def test_the_built_extension_imports_and_says_whether_it_has_the_kernels():
    import tensorrt_llm_dwdp._C as C
    assert hasattr(C, "SlotRing") and hasattr(C, "moe_forward")
    core = os.path.join(PKG, "libdwdp_core.so")
    assert os.path.exists(core)
    if shutil.which("nm"):
        undefined = subprocess.run(["nm", "-D", "--undefined-only", "-C", core], capture_output=True,
                                   text=True).stdout
        assert "dwdp::" not in undefined, undefined


@pytest.mark.skipif(not _built(), reason="the C++ extension is not built in this install")
def test_doctor_reports_the_extension_as_built():
    from tensorrt_llm_dwdp.commands.doctor import main
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main()
    text = out.getvalue().lower()
    assert "extension" in text and "not built" not in text.split("extension", 1)[1].splitlines()[0], out.getvalue()
