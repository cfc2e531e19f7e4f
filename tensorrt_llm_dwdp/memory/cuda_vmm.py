"""CUDA VMM: shard pieces made with cuMemCreate, exported as POSIX file descriptors (or fabric
handles where the driver offers them) and mapped by peers with cuMemMap (cuda.bindings);
composite views map a rank's own pieces and its private slot pieces side by side.

A file descriptor cannot travel through MPI, so the owner serves its pieces' descriptors on one
abstract Unix socket named in each handle's payload until every peer has them (SCM_RIGHTS).
Fabric handles are plain bytes and travel like legacy IPC handles. A mapped peer piece stays
valid while it is mapped, even after the owner releases its own reference.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import BackendKind
from .base import Composite, LocalShard, PeerShard, SharedHandle, SharedMemoryError, hostname
from .cuda_common import CudaBackend, as_cuda_tensor


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError:  # cuda-python < 12.6
        from cuda import cuda as driver
    return driver


def _ok(result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    drv = _driver()
    if err != drv.CUresult.CUDA_SUCCESS:
        _, name = drv.cuGetErrorName(err)
        raise SharedMemoryError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else tuple(rest)


def fabric_supported(device: int) -> bool:
    drv = _driver()
    _ok(drv.cuInit(0), "cuInit")
    attr = drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED
    return bool(_ok(drv.cuDeviceGetAttribute(attr, device), "cuDeviceGetAttribute"))


def _prop(device: int, handle_type):
    drv = _driver()
    prop = drv.CUmemAllocationProp()
    prop.type = drv.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    prop.location.id = device
    prop.requestedHandleTypes = handle_type
    return prop


def granularity(device: int) -> int:
    drv = _driver()
    _ok(drv.cuInit(0), "cuInit")
    prop = _prop(device, drv.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_NONE)
    return int(_ok(drv.cuMemGetAllocationGranularity(
        prop, drv.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
        "cuMemGetAllocationGranularity"))


@dataclass
class _Mapped:
    ptr: int
    size: int


def _grant(ptr: int, size: int, device: int) -> None:
    drv = _driver()
    access = drv.CUmemAccessDesc()
    access.location.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    access.location.id = device
    access.flags = drv.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    _ok(drv.cuMemSetAccess(ptr, size, [access], 1), "cuMemSetAccess")


def _map(handle, size: int, device: int) -> _Mapped:
    """Reserve a VA range, map the allocation there, grant this device read/write."""
    drv = _driver()
    ptr = _ok(drv.cuMemAddressReserve(size, 0, 0, 0), "cuMemAddressReserve")
    _ok(drv.cuMemMap(ptr, size, 0, handle, 0), "cuMemMap")
    _grant(int(ptr), size, device)
    return _Mapped(int(ptr), size)


def _unmap(m: _Mapped) -> None:
    drv = _driver()
    _ok(drv.cuMemUnmap(m.ptr, m.size), "cuMemUnmap")
    _ok(drv.cuMemAddressFree(m.ptr, m.size), "cuMemAddressFree")


class _FdServer:
    """Hands this process's exported file descriptors to whoever connects and names one (4-byte index)."""

    def __init__(self):
        self.fds, self.name = [], f"\0dwdp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.name)
        self.sock.listen(64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dwdp-vmm-fd", daemon=True)
        self._thread.start()

    def add(self, fd: int) -> bytes:
        self.fds.append(fd)
        return b"fd:" + self.name.encode("latin-1") + b"#" + str(len(self.fds) - 1).encode()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    index = int.from_bytes(conn.recv(4), "little")
                    socket.send_fds(conn, [b"f"], [self.fds[index]])
                except (OSError, IndexError):
                    continue

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _receive_fd(body: bytes) -> int:
    name, _, index = body.rpartition(b"#")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        try:
            s.connect(name.decode("latin-1"))
            s.sendall(int(index).to_bytes(4, "little"))
            _, fds, _, _ = socket.recv_fds(s, 1, 1)
        except OSError as e:
            raise SharedMemoryError(f"could not receive a shard piece's file descriptor from its owner ({e}): "
                                    "the owner exited, or it runs in another network namespace") from e
    if not fds:
        raise SharedMemoryError("the shard piece's owner sent no file descriptor")
    return fds[0]


class CudaVmmLocal(LocalShard):
    """A cuMemCreate allocation mapped here: exported through `server` (POSIX FD), as a fabric handle, or private."""

    def __init__(self, nbytes: int, device: int, export: str, server: "_FdServer" = None):
        drv = _driver()
        _ok(drv.cuInit(0), "cuInit")
        kind = drv.CUmemAllocationHandleType
        htype = {"fd": kind.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, "fabric": kind.CU_MEM_HANDLE_TYPE_FABRIC,
                 "none": kind.CU_MEM_HANDLE_TYPE_NONE}[export]
        prop = _prop(device, htype)
        size = -(-nbytes // granularity(device)) * granularity(device)
        self.device, self.nbytes = device, nbytes
        self._alloc = _ok(drv.cuMemCreate(size, prop, 0), f"cuMemCreate({size})")
        self._mapped = _map(self._alloc, size, device)
        self.handle = None
        if export != "none":
            exported = _ok(drv.cuMemExportToShareableHandle(self._alloc, htype, 0), "cuMemExportToShareableHandle")
            payload = b"fabric:" + bytes(exported.data) if export == "fabric" else server.add(int(exported))
            backend = BackendKind.CUDA_FABRIC if export == "fabric" else BackendKind.CUDA_VMM
            self.handle = SharedHandle(backend.value, nbytes, payload, hostname(), device, os.getpid())
        self.tensor = as_cuda_tensor(self._mapped.ptr, nbytes, device, self)

    def close(self) -> None:
        if self._mapped is not None:
            _release(self)


def _release(shard) -> None:
    """Unmap and drop this process's reference; the memory goes when the last one does."""
    torch.cuda.synchronize(shard.device)
    shard.tensor = None
    _unmap(shard._mapped)
    _ok(_driver().cuMemRelease(shard._alloc), "cuMemRelease")
    shard._mapped = None


class CudaVmmPeer(PeerShard):
    def __init__(self, handle: SharedHandle, device: int):
        drv = _driver()
        _ok(drv.cuInit(0), "cuInit")
        kind = drv.CUmemAllocationHandleType
        tag, _, body = handle.payload.partition(b":")
        if tag == b"fd":
            fd = _receive_fd(body)
            try:
                alloc = _ok(drv.cuMemImportFromShareableHandle(fd, kind.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
                            "cuMemImportFromShareableHandle")
            finally:
                os.close(fd)
        else:
            fh = drv.CUmemFabricHandle()
            fh.data = body
            alloc = _ok(drv.cuMemImportFromShareableHandle(fh, kind.CU_MEM_HANDLE_TYPE_FABRIC),
                        "cuMemImportFromShareableHandle(fabric)")
        self.handle, self.device, self._alloc = handle, device, alloc
        self._mapped = _map(alloc, _alloc_size(alloc, handle.nbytes), device)
        self.tensor = as_cuda_tensor(self._mapped.ptr, handle.nbytes, device, self)

    def close(self) -> None:
        if self._mapped is not None:
            _release(self)


def _alloc_size(alloc, nbytes: int) -> int:
    """The owner rounded nbytes up to the recommended granularity; peers round the same way."""
    drv = _driver()
    prop = _ok(drv.cuMemGetAllocationPropertiesFromHandle(alloc), "cuMemGetAllocationPropertiesFromHandle")
    gran = _ok(drv.cuMemGetAllocationGranularity(
        prop, drv.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
        "cuMemGetAllocationGranularity")
    return -(-nbytes // gran) * gran


class VmmComposite(Composite):
    """One reserved range; each piece's allocation mapped at its offset (cuMemMap takes whole allocations)."""

    def __init__(self, nbytes: int, pieces, device: int):
        drv = _driver()
        gran = granularity(device)
        self.size = -(-nbytes // gran) * gran
        self.ptr = int(_ok(drv.cuMemAddressReserve(self.size, gran, 0, 0), "cuMemAddressReserve"))
        self._mapped, self.device = [], device
        try:
            for offset, piece in pieces:
                size = piece._mapped.size
                if offset % gran or offset + size > self.size:
                    raise SharedMemoryError(f"piece at {offset} (+{size}) does not fit the {gran}-byte grid of a "
                                            f"{self.size}-byte view")
                _ok(drv.cuMemMap(self.ptr + offset, size, 0, piece._alloc, 0), "cuMemMap")
                self._mapped.append((self.ptr + offset, size))
                _grant(self.ptr + offset, size, device)
        except BaseException:
            self._unmap_all()
            raise
        self.tensor = as_cuda_tensor(self.ptr, nbytes, device, self)

    def _unmap_all(self) -> None:
        drv = _driver()
        for ptr, size in self._mapped:
            _ok(drv.cuMemUnmap(ptr, size), "cuMemUnmap")
        self._mapped = []
        _ok(drv.cuMemAddressFree(self.ptr, self.size), "cuMemAddressFree")

    def close(self) -> None:
        if self.ptr is not None:
            torch.cuda.synchronize(self.device)
            self.tensor = None
            self._unmap_all()
            self.ptr = None


class CudaVmmBackend(CudaBackend):
    """kind 'cuda_vmm' exports POSIX file descriptors (one node); 'cuda_fabric' exports fabric
    handles (multi-node NVLink domains such as GB200 NVL72; needs driver support and IMEX)."""

    def __init__(self, device: Optional[torch.device] = None, fabric: bool = False):
        super().__init__(device)
        self.fabric, self._server = fabric, None
        self.granularity = granularity(self.device.index)
        self.kind = BackendKind.CUDA_FABRIC if fabric else BackendKind.CUDA_VMM
        if fabric and not fabric_supported(self.device.index):
            raise SharedMemoryError(f"memory_backend='cuda_fabric': GPU {self.device.index} does not support "
                                    "fabric handles; use 'cuda_vmm' (one node) or 'cuda_ipc'")

    def check_reachable(self, handle: SharedHandle, peer_rank: int) -> None:
        if not self.fabric:
            return super().check_reachable(handle, peer_rank)
        # NOTE: a fabric handle is meant to cross nodes of one NVLink domain (IMEX); the peer's GPU index means
        # nothing here and the host differs by design, so only the kind is checked. An import outside the
        # domain fails in cuMemImportFromShareableHandle with the driver's reason.
        self._check_kind(handle, peer_rank)

    def allocate(self, nbytes: int) -> LocalShard:
        if self.fabric:
            return CudaVmmLocal(nbytes, self.device.index, "fabric")
        if self._server is None:
            self._server = _FdServer()
        return CudaVmmLocal(nbytes, self.device.index, "fd", self._server)

    def private(self, nbytes: int) -> LocalShard:
        return CudaVmmLocal(nbytes, self.device.index, "none")

    def open(self, handle: SharedHandle) -> PeerShard:
        return CudaVmmPeer(handle, self.device.index)

    def compose(self, nbytes: int, pieces) -> Composite:
        return VmmComposite(nbytes, pieces, self.device.index)

    def exports_done(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
