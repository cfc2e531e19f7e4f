"""Shared-memory backends: export, open in another process, read what the owner wrote."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tensorrt_llm_dwdp.memory import SharedHandle, SharedMemoryError, get_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peer_reads(handle: SharedHandle, device: str) -> bytes:
    """Open `handle` in a fresh process, double every byte in place, return what it read."""
    code = textwrap.dedent(f"""
        import sys, torch
        from tensorrt_llm_dwdp.memory import SharedHandle, get_backend
        h = SharedHandle({handle.kind!r}, {handle.nbytes}, {handle.payload!r}, {handle.host!r}, {handle.device},
                         {handle.pid})
        be = get_backend({handle.kind!r}, torch.device({device!r}))
        peer = be.open(h)
        data = peer.tensor.cpu().numpy().tobytes()
        peer.tensor.mul_(2)
        if peer.tensor.is_cuda:
            torch.cuda.synchronize()
        peer.close()
        sys.stdout.buffer.write(data)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


def _roundtrip(kind, device):
    be = get_backend(kind, torch.device(device))
    shard = be.allocate(1000)
    try:
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        data = torch.randint(0, 100, (1000,), dtype=torch.uint8, generator=g)
        shard.tensor.copy_(data)
        assert _peer_reads(shard.handle, device) == data.numpy().tobytes()
        assert torch.equal(shard.tensor.cpu(), data * 2)  # the peer's writes land in the owner's memory
    finally:
        shard.close()


def test_cpu_shm_roundtrip_between_processes():
    _roundtrip("cpu_shm", "cpu")


def test_cpu_shm_name_gone_after_unlink():
    be = get_backend("cpu_shm")
    shard = be.allocate(4096)
    shard.after_peers_opened()
    with pytest.raises(SharedMemoryError, match="is gone"):
        be.open(shard.handle)
    shard.close()


def test_mismatched_backend_and_host_are_reported():
    be = get_backend("cpu_shm")
    h = SharedHandle("cuda_ipc", 8, b"x" * 64, "elsewhere", 0, 1)
    with pytest.raises(SharedMemoryError, match="same memory_backend"):
        be.check_reachable(h, 3)
    h = SharedHandle("cpu_shm", 8, b"/x", "another-node", -1, 1)
    with pytest.raises(SharedMemoryError, match="one NVLink domain"):
        be.check_reachable(h, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["cuda_ipc", "cuda_vmm"])
def test_cuda_roundtrip_between_processes(kind):
    _roundtrip(kind, "cuda:0")


@pytest.mark.gpu
def test_cuda_vmm_peer_mapping_outlives_owner_release():
    """A VMM peer keeps reading correct data after the owner unmapped and released its reference."""
    be = get_backend("cuda_vmm", torch.device("cuda:0"))
    shard = be.allocate(1 << 20)
    data = torch.randint(0, 255, (1 << 20,), dtype=torch.uint8, device="cuda:0")
    shard.tensor.copy_(data)
    torch.cuda.synchronize()
    h = shard.handle
    code = textwrap.dedent(f"""
        import sys, torch
        from tensorrt_llm_dwdp.memory import SharedHandle, get_backend
        h = SharedHandle({h.kind!r}, {h.nbytes}, {h.payload!r}, {h.host!r}, {h.device}, {h.pid})
        peer = get_backend("cuda_vmm", torch.device("cuda:0")).open(h)
        print("opened", flush=True)
        sys.stdin.readline()
        sys.stdout.write(str(int(peer.tensor.to(torch.int64).sum())) + "\\n")
        peer.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "opened", proc.stderr.read()
        shard.close()  # the owner's mapping and reference are gone
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert int(proc.stdout.readline()) == int(data.to(torch.int64).sum())
    finally:
        proc.wait(timeout=60)


@pytest.mark.gpu
def test_cuda_ipc_handle_bytes_roundtrip():
    from tensorrt_llm_dwdp.memory.cuda_ipc import IPC_HANDLE_BYTES, handle_from_bytes, handle_to_bytes
    be = get_backend("cuda_ipc", torch.device("cuda:0"))
    shard = be.allocate(4096)
    try:
        payload = shard.handle.payload
        assert len(payload) == IPC_HANDLE_BYTES and any(payload)
        assert handle_to_bytes(handle_from_bytes(payload)) == payload
    finally:
        shard.close()
