"""DWDP across real processes: every rank against the float64 all-local reference.

CPU ranks share /dev/shm; on a GPU machine the same jobs run with CUDA IPC, several
processes sharing one GPU. Tolerance: relative L2 error <= 2e-5 on CPU, 1e-4 on GPU
(float32 math against float64).
"""

import json

import pytest

from conftest import fresh_seed

pytestmark = pytest.mark.mpi
pytest.importorskip("mpi4py")

CASES = {
    "even": ["--num-experts", "16"],
    "uneven": ["--num-experts", "14", "--n-group", "2", "--topk-group", "1"],
    "redundant": ["--placement", "redundant", "--experts-per-rank", "6", "--num-experts", "16"],
    "explicit_multi_owner": ["--placement", "0-9;5-15;0,15;1-4", "--num-experts", "16"],
}


def _check(proc):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "PASS" in proc.stdout, out
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_placements_match_reference_cpu(verify, case, tmp_path):
    out_json = tmp_path / "r.json"
    proc = verify(4, "--backend", "cpu_shm", "--seed", str(fresh_seed()), "--steps", "3",
                  "--json", str(out_json), *CASES[case])
    _check(proc)
    res = json.loads(out_json.read_text())
    assert res["ok"] and len(res["ranks"]) == 4
    tol = res["tolerance"]
    for r in res["ranks"]:
        assert r["bytes_pulled"] > 0
        for e in r["errors"]:
            assert e["rel_err"] <= tol and e["tokens"] > 0


def test_uneven_token_counts_and_an_idle_rank(verify, tmp_path):
    out_json = tmp_path / "r.json"
    proc = verify(4, "--backend", "cpu_shm", "--seed", str(fresh_seed()), "--tokens", "1,33,0,7",
                  "--zero-rank", "2", "--routing", "softmax", "--dtype", "bfloat16", "--depth", "3",
                  "--layers", "5", "--json", str(out_json))
    _check(proc)
    res = json.loads(out_json.read_text())
    assert [e["tokens"] for e in res["ranks"][1]["errors"]] == [33] * 3
    assert [e["tokens"] for e in res["ranks"][2]["errors"]] == [0] * 3


def test_two_groups_of_two(verify):
    _check(verify(4, "--backend", "cpu_shm", "--group-size", "2", "--seed", str(fresh_seed())))


def test_stalled_rank_does_not_hold_up_the_others(verify, tmp_path):
    """Rank 1 sleeps 3 s inside its second forward; the other ranks must finish all 8 steps meanwhile."""
    out_json = tmp_path / "r.json"
    proc = verify(4, "--backend", "cpu_shm", "--seed", str(fresh_seed()), "--steps", "8", "--stall-rank", "1",
                  "--stall-seconds", "3", "--json", str(out_json))
    _check(proc)
    ind = json.loads(out_json.read_text())["independence"]
    assert ind["finished_after_stall"] == [] and ind["stall_s"] >= 3.0
    # Every other rank ran steps while rank 1 slept. How many depends on how far it had got before
    # the stall began (process start skew on a loaded 2-core machine), so only the overlap is required.
    assert all(n >= 1 for n in ind["steps_done_during_stall"].values()), ind


def test_a_dead_peer_ends_the_job_instead_of_hanging(verify):
    """Rank 2 exits without MPI_Finalize mid-forward; the survivors must not hang."""
    import time
    t0 = time.monotonic()
    proc = verify(4, "--backend", "cpu_shm", "--seed", str(fresh_seed()), "--steps", "6", "--die-rank", "2",
                  timeout=150)
    assert proc.returncode != 0 and "PASS" not in proc.stdout
    assert "rank 2: exiting abruptly" in proc.stdout
    assert time.monotonic() - t0 < 140


def test_wrong_results_fail_the_job(verify):
    """The check can fail: a tolerance below float32 rounding must be reported as FAIL."""
    proc = verify(2, "--backend", "cpu_shm", "--seed", str(fresh_seed()), "--tolerance", "1e-12")
    assert proc.returncode != 0 and "FAIL" in proc.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("case", ["even", "uneven", "redundant"])
def test_cuda_ipc_ranks_share_one_gpu(verify, ranks, case, tmp_path):
    out_json = tmp_path / "r.json"
    args = CASES[case] if case != "redundant" or ranks == 4 else ["--placement", "redundant",
                                                                  "--experts-per-rank", "10"]
    proc = verify(ranks, "--backend", "cuda_ipc", "--seed", str(fresh_seed()), "--json", str(out_json),
                  "--tokens", "5,40,0,17", "--zero-rank", str(ranks - 1), *args)
    _check(proc)
    res = json.loads(out_json.read_text())
    assert all(r["backend"] == "cuda_ipc" and r["device"].startswith("cuda") for r in res["ranks"])
    print(proc.stdout)


@pytest.mark.gpu
@pytest.mark.parametrize("case,issue", [("uneven", "graph"), ("redundant", "batched"), ("even", "per_slice")])
def test_cuda_vmm_ranks_share_one_gpu(verify, case, issue, tmp_path):
    out_json = tmp_path / "r.json"
    proc = verify(4, "--backend", "cuda_vmm", "--seed", str(fresh_seed()), "--json", str(out_json),
                  "--tokens", "5,40,0,17", "--zero-rank", "3", "--pull-issue", issue, *CASES[case])
    _check(proc)
    assert all(r["backend"] == "cuda_vmm" for r in json.loads(out_json.read_text())["ranks"])
    print(proc.stdout)


@pytest.mark.gpu
def test_cuda_ipc_stalled_rank(verify, tmp_path):
    out_json = tmp_path / "r.json"
    proc = verify(4, "--backend", "cuda_ipc", "--seed", str(fresh_seed()), "--steps", "8", "--stall-rank", "2",
                  "--stall-seconds", "3", "--json", str(out_json))
    _check(proc)
    assert json.loads(out_json.read_text())["independence"]["finished_after_stall"] == []
    print(proc.stdout)


FP8 = ["--dtype", "float8_e4m3fn", "--hidden", "256", "--inter", "128", "--num-experts", "12",
       "--placement", "redundant", "--experts-per-rank", "5"]


def test_fp8_experts_with_block_scales_cpu(verify, tmp_path):
    """FP8 shards: e4m3 weights and their 128x128 scales are pulled together; dequantized in float32 they
    match float64 math on the same quantized weights."""
    out_json = tmp_path / "r.json"
    _check(verify(3, "--backend", "cpu_shm", "--seed", str(fresh_seed()), "--steps", "2", "--json", str(out_json),
                  *FP8))
    res = json.loads(out_json.read_text())
    assert res["ok"] and all(r["bytes_pulled"] > 0 for r in res["ranks"])


@pytest.mark.gpu
def test_fp8_experts_with_block_scales_cuda_vmm(verify, tmp_path):
    out_json = tmp_path / "r.json"
    _check(verify(3, "--backend", "cuda_vmm", "--seed", str(fresh_seed()), "--steps", "2", "--json", str(out_json),
                  *FP8))
    assert json.loads(out_json.read_text())["ok"]


def _composite(ranks, backend, placement, dtype, **env):
    import os
    import subprocess
    from conftest import ROOT
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env, mpirun_command
    extra = {"OMP_NUM_THREADS": "1", **env}
    cmd = mpirun_command(ranks, [os.path.join(ROOT, "tests", "mpi_composite.py"), backend, placement, dtype,
                                 str(fresh_seed())], extra)
    proc = subprocess.run(cmd, env=dict(clean_launch_env(dict(os.environ)), **extra), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr


COMPOSITE = [(2, "even"), (4, "even"), (3, "redundant"), (4, "0-9;5-13;0,13;1-4"), (2, "0-2,7;3-6,8-13")]


@pytest.mark.parametrize("ranks,placement", COMPOSITE)
def test_composite_tensors_are_the_loaded_weights_cpu(ranks, placement):
    """Even, uneven (14 experts), redundant and explicit placements: each layer's composite view, over several
    steps with slots reused across layers, holds exactly the loaded bytes."""
    _composite(ranks, "cpu_shm", placement, "float32")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda_vmm", "cuda_ipc"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("ranks,placement", [(2, "0-2,7;3-6,8-13"), (4, "even")])
def test_composite_tensors_and_graph_replay_gpu(backend, dtype, ranks, placement):
    _composite(ranks, backend, placement, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda_vmm", "cuda_ipc"])
def test_composite_tensors_through_the_python_ring_gpu(backend):
    """The same through Prefetcher over CudaCopyEngine (DWDP_NATIVE_RING=0), the path without the extension."""
    _composite(2, backend, "0-2,7;3-6,8-13", "bfloat16", DWDP_NATIVE_RING="0")
