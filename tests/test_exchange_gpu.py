"""DEP's exchange on GPUs: ranks sharing one GPU (gloo, staged through the host), and with one GPU per
rank NCCL and symm_mem (where NVSHMEM initialises). Each run checks its result against all-local math."""

import json
import os

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.mpi]
torch = pytest.importorskip("torch")


def _bench(ranks, tmp_path, *extra):
    import subprocess
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env, mpirun_command
    out = tmp_path / "x.json"
    cmd = mpirun_command(ranks, [os.path.join(ROOT, "benchmarks", "exchange_bench.py"), "--tokens", "512",
                                 "--hidden", "256", "--experts", "16", "--top-k", "4", "--iters", "3",
                                 "--json", str(out), *extra])
    proc = subprocess.run(cmd, env=clean_launch_env(dict(os.environ)), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())["results"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ranks_sharing_one_gpu_stage_through_gloo(tmp_path):
    res = _bench(min(4, 2 * torch.cuda.device_count() + 1), tmp_path)
    assert all(r["backend"] == "gloo" and r["ok"] for r in res)
    assert {r["rows"] for r in res} == {"exact", "bound"}  # both ways of sizing the received rows, checked


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_and_symm_mem_one_rank_per_gpu(tmp_path):
    res = _bench(2, tmp_path, "--backends", "nccl,symm_mem")
    assert all(r["ok"] for r in res if r["backend"] == "nccl") and any(r["backend"] == "nccl" for r in res)
    assert {r["rows"] for r in res if r["backend"] == "nccl"} == {"exact", "bound"}
    for r in res:
        if r["backend"] == "symm_mem" and "unavailable" not in r:
            assert r["ok"], r
        print(r)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_dep_layer_against_local_and_in_a_cuda_graph(tmp_path):
    """DEP's layer with the BF16 grouped kernel against all-local float64 math, and captured in a CUDA graph
    (NCCL, bound rows) replayed on new inputs equal to eager (tests/mpi_dep_graph.py)."""
    import subprocess
    from conftest import fresh_seed
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env, mpirun_command
    cmd = mpirun_command(2, [os.path.join(ROOT, "tests", "mpi_dep_graph.py"), str(fresh_seed())])
    proc = subprocess.run(cmd, env=clean_launch_env(dict(os.environ)), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
