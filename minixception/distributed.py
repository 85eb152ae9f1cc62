"""Synchronous data-parallel SGD over MPI (mpi4py), with NCCL between GPUs when CuPy has it.

    mpiexec -n K python -m minixception train --distributed [--sync-bn] --batch-size B

K processes ("ranks") each hold a full copy of the model. Every step, each rank takes its
contiguous slice of the same global batch of B images, runs forward and backward on it, and
the ranks add their gradients with one allreduce per bucket; then every rank takes the same
SGD step and the copies stay equal. With each rank's loss weighted by its share of the batch
(``n_local / B``), the sum of the ranks' gradients is the gradient of the global batch's mean
loss: K workers with B / K images each run the same algorithm as one worker with B images.

The exception is batch norm. Per-rank batch norm normalises each slice with that slice's own
mean and variance (as the paper's TensorFlow replicas did), which is a different function of
the batch. ``convert_sync_batchnorm`` makes every batch-norm layer allreduce its per-channel
sums, so each rank normalises with the statistics of the whole global batch.

    group = init(device="cpu")               # rank, size; refuses a single process
    dp = DataParallel(group, sync_bn=True)
    dp.attach(model, optimizer)              # sync BN, rank 0's weights to all, gradient buckets
    ...                                      # forward / backward on this rank's slice
    dp.allreduce_gradients()                 # between backward and optimizer.step()
    dp.check_in_sync(model, optimizer)       # once an epoch: a bit-exact checksum of every array

Transport: NumPy arrays go through MPI directly (mpi4py's buffer interface). CuPy arrays use
NCCL (``cupy.cuda.nccl``) when it is available, otherwise they are staged through host memory
and MPI. One rank drives one GPU.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .backend import get_array_module, is_gpu_array, to_numpy
from .nn.layers import BatchNorm2D

LAUNCH = "mpiexec -n 2 python -m minixception train --distributed [--sync-bn] ..."
INSTALL = "pip install -e '.[distributed]'  (mpi4py and an MPI library: mpich)"
# PyTorch DDP's default bucket size: large enough that an allreduce is bandwidth-bound, small
# enough that a 23M-parameter model still splits into a few buckets
BUCKET_BYTES = 25 * 2**20


class DistributedUnavailable(RuntimeError):
    """--distributed cannot run here: no mpi4py, or no launcher providing more than one rank."""


class WeightDrift(RuntimeError):
    """The ranks' copies of the model (or of the optimiser state) are no longer identical."""


# -- the process group ---------------------------------------------------------------------------

def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedUnavailable(
            f"--distributed needs mpi4py and an MPI library, and importing mpi4py failed ({exc}); "
            f"install them with: {INSTALL}") from None
    return MPI


class Group:
    """The ranks of one run: ``rank``, ``size`` and the collectives the trainer needs.

    comm: an mpi4py communicator (default COMM_WORLD).
    device: "cpu" (NumPy, MPI) or "gpu" (CuPy: NCCL if ``backend`` allows and it is available,
      else MPI through host memory). backend: "auto" | "mpi" | "nccl".
    """

    def __init__(self, comm=None, device="cpu", backend="auto"):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.device = device
        if backend not in ("auto", "mpi", "nccl"):
            raise ValueError(f"backend must be 'auto', 'mpi' or 'nccl', got {backend!r}")
        self._nccl = None
        if device == "gpu":
            self._use_local_gpu()
            if backend != "mpi":
                self._nccl = _nccl_communicator(self.comm, required=backend == "nccl")
        elif backend == "nccl":
            raise ValueError("backend='nccl' needs device='gpu'")
        self.backend = "nccl" if self._nccl is not None else ("mpi (host-staged)" if device == "gpu" else "mpi")

    def _use_local_gpu(self):
        """One rank per GPU: the i-th rank on a node takes that node's i-th device."""
        import cupy
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        n_dev = cupy.cuda.runtime.getDeviceCount()
        if local.Get_size() > n_dev:
            raise DistributedUnavailable(
                f"{local.Get_size()} ranks on this node but {n_dev} GPU(s): launch one rank per GPU "
                f"(mpiexec -n {n_dev} ...)")
        cupy.cuda.Device(local.Get_rank()).use()
        local.Free()

    # -- collectives on device arrays (in place) ------------------------------------------------
    def allreduce_sum_(self, buf):
        """buf: a contiguous 1-D array; replaced by the element-wise sum over the ranks."""
        if self._nccl is not None and is_gpu_array(buf):
            self._nccl.allreduce_sum_(buf)
        elif is_gpu_array(buf):                       # host-staged: GPU -> host, MPI, host -> GPU
            host = to_numpy(buf)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf.set(host)
        else:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def broadcast_(self, buf, root=0):
        """buf: a contiguous 1-D array; every rank receives ``root``'s values."""
        if self._nccl is not None and is_gpu_array(buf):
            self._nccl.broadcast_(buf, root)
        elif is_gpu_array(buf):
            host = to_numpy(buf)
            self.comm.Bcast(host, root=root)
            buf.set(host)
        else:
            self.comm.Bcast(buf, root=root)
        return buf

    # -- small host-side reductions (metrics, flags, checksums) -----------------------------
    def sum(self, values):
        """A sequence of numbers -> their float64 sums over the ranks (a host array)."""
        a = np.asarray([float(v) for v in values], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)
        return a

    def any(self, flag):
        """True on every rank if ``flag`` is true on any rank (e.g. a Ctrl-C seen by one of them)."""
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def shard(self, n):
        """This rank's contiguous slice ``(lo, hi)`` of ``n`` items (sizes differ by at most one)."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size


def init(device="cpu", backend="auto", min_ranks=2):
    """The world group, refusing to run with fewer than ``min_ranks`` processes (with how to launch)."""
    MPI = _mpi()
    size = MPI.COMM_WORLD.Get_size()
    if size < min_ranks:
        raise DistributedUnavailable(
            f"--distributed was given but this is a single process (MPI world size {size}); start "
            f"K >= {min_ranks} processes with an MPI launcher, e.g.: {LAUNCH}")
    return Group(device=device, backend=backend)


class _NcclComm:
    """NCCL through CuPy: allreduce and broadcast straight between GPU buffers."""

    def __init__(self, nccl, comm):
        import cupy
        self._nccl, self._cupy = nccl, cupy
        uid = nccl.get_unique_id() if comm.Get_rank() == 0 else None
        uid = comm.bcast(uid, root=0)                  # NCCL's rendezvous travels over MPI
        self._comm = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def _dtype(self, buf):
        if buf.dtype not in self._types:
            raise TypeError(f"NCCL buffers: expected float32 or float64, got {buf.dtype}")
        return self._types[buf.dtype]

    def allreduce_sum_(self, buf):
        stream = self._cupy.cuda.get_current_stream().ptr
        self._comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtype(buf), self._nccl.NCCL_SUM, stream)

    def broadcast_(self, buf, root):
        stream = self._cupy.cuda.get_current_stream().ptr
        self._comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), root, stream)


def _nccl_communicator(comm, required=False):
    """A _NcclComm if CuPy's NCCL bindings load (on every rank), else None (or an error if required)."""
    try:
        from cupy.cuda import nccl
        ok = bool(nccl.available)
    except Exception:                                   # no cupy.cuda.nccl, or libnccl missing
        ok = False
    ok = bool(comm.allreduce(ok, op=_mpi().LAND))       # all ranks take the same path
    if not ok:
        if required:
            raise DistributedUnavailable("backend='nccl' asked for, but CuPy's NCCL bindings are not "
                                         "available on every rank (pip install nvidia-nccl-cu12)")
        return None
    return _NcclComm(nccl, comm)


# -- flat buckets -----------------------------------------------------------------------------------

def make_buckets(arrays, bucket_bytes=BUCKET_BYTES):
    """Group array indices, in the given order, into buckets of at most ``bucket_bytes``.

    Consecutive arrays share a bucket while they fit (one larger than the limit gets its own);
    a change of dtype starts a new bucket. Every rank builds the same buckets from the same
    model, so the k-th allreduce of every rank carries the same arrays in the same places.
    """
    buckets, cur, cur_bytes, cur_dtype = [], [], 0, None
    for i, a in enumerate(arrays):
        nbytes = a.size * a.dtype.itemsize
        if cur and (cur_bytes + nbytes > bucket_bytes or a.dtype != cur_dtype):
            buckets.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += nbytes
        cur_dtype = a.dtype
    if cur:
        buckets.append(cur)
    return buckets


def _pack(arrays, xp):
    """arrays -> one flat contiguous buffer (a copy)."""
    return xp.concatenate([a.reshape(-1) for a in arrays])


def _unpack(flat, arrays):
    """Write ``flat``'s pieces back into ``arrays`` in place."""
    off = 0
    for a in arrays:
        a[...] = flat[off:off + a.size].reshape(a.shape)
        off += a.size


def broadcast_model(model, group, root=0, bucket_bytes=BUCKET_BYTES):
    """Every parameter and buffer (BN moving statistics) of ``model`` <- rank ``root``'s values."""
    arrays = [p.data for p in model.parameters()] + [b for _, b in model.named_buffers()]
    for idx in make_buckets(arrays, bucket_bytes):
        part = [arrays[i] for i in idx]
        flat = group.broadcast_(_pack(part, get_array_module(part[0])), root)
        _unpack(flat, part)


def average_buffers(model, group):
    """Per-rank BN moving statistics -> their mean over the ranks (identical copies for eval/saving)."""
    bufs = [b for _, b in model.named_buffers()]
    if not bufs:
        return
    xp = get_array_module(bufs[0])
    flat = group.allreduce_sum_(_pack(bufs, xp))
    flat /= group.size
    _unpack(flat, bufs)


class GradientBuckets:
    """Sum every parameter's ``.grad`` over the ranks, a few large allreduces per step.

    params: the model's parameters in model order (the same on every rank).
    One call per parameter would pay the allreduce's latency hundreds of times per step; one
    flat buffer per ``bucket_bytes`` pays it a few times and moves the same bytes.
    """

    def __init__(self, params, group, bucket_bytes=BUCKET_BYTES):
        self.params, self.group = list(params), group
        self.buckets = make_buckets([p.grad for p in self.params], bucket_bytes)

    @property
    def nbytes(self):
        """Bytes each rank contributes per step (the payload of the allreduces)."""
        return sum(p.grad.size * p.grad.dtype.itemsize for p in self.params)

    def allreduce(self):
        for idx in self.buckets:
            grads = [self.params[i].grad for i in idx]
            flat = self.group.allreduce_sum_(_pack(grads, get_array_module(grads[0])))
            _unpack(flat, grads)


# -- synchronised batch norm ------------------------------------------------------------------------

class SyncBatchNorm2D(BatchNorm2D):
    """Batch norm whose training statistics are those of the global batch, over all ranks.

    x: (N_local, H, W, C) on each rank; M = sum over ranks of N_local * H * W.
    Forward: one allreduce of [sum(x - s), sum((x - s)^2), count] per channel, where the shift
    s = moving_mean (identical on every rank) keeps the subtraction var = E[d^2] - E[d]^2 from
    cancelling once the moving mean is near the batch mean. Backward: one allreduce of
    [sum(dy), sum(dy * (x - mu))], the two sums batch norm's input gradient needs; gamma and
    beta receive only this rank's share, which the gradient allreduce then adds up.
    Eval mode: the moving statistics, no communication (same as BatchNorm2D).
    """

    group = None

    def select_kernel(self, x, args):
        """Training mode runs the synchronised math below through the layers' shared path
        (same dy checks, gradients added into gamma/beta as for any batch norm); eval mode
        runs the ordinary batch norm."""
        if not self.training:
            return super().select_kernel(x, args)
        return kernels.Kernel("sync", self._sync_forward, self._sync_backward)

    def _sync_forward(self, x, gamma, beta, moving_mean, moving_variance, training, momentum, eps):
        """The batch norm op's signature; x: (N_local, H, W, C) -> y, cache."""
        xp = get_array_module(x)
        c = self.channels
        if x.ndim != 4 or x.shape[-1] != c:
            raise ValueError(f"{self._label()}: expected input (N, H, W, {c}), got shape {x.shape}")
        if x.dtype != beta.dtype:
            raise TypeError(f"{self._label()}: input dtype {x.dtype} differs from the layer's {beta.dtype}")
        x2 = x.reshape(-1, c)
        shift = moving_mean.astype(x.dtype, copy=False)
        d = x2 - shift
        stats = xp.concatenate([d.sum(axis=0), xp.einsum("mc,mc->c", d, d),
                                xp.asarray([x2.shape[0]], dtype=x.dtype)])
        self.group.allreduce_sum_(stats)
        m = stats[-1:]                       # the global count, left on the device
        if not is_gpu_array(m) and m[0] < 2:  # (reading it on a GPU would stall every layer)
            raise ValueError(f"{self._label()}: batch norm in training mode needs more than one value "
                             f"per channel over all ranks, got {m[0]:g}")
        mean_d = stats[:c] / m
        var = xp.maximum(stats[c:2 * c] / m - mean_d * mean_d, 0)       # biased, as Keras
        mean = shift + mean_d
        inv_std = 1.0 / xp.sqrt(var + eps)
        for buf, stat in ((moving_mean, mean), (moving_variance, var)):
            buf *= momentum
            buf += (1.0 - momentum) * stat.astype(buf.dtype, copy=False)
        xc = x2 - mean
        y = xc * (gamma * inv_std) + beta
        return y.reshape(x.shape), (xc, inv_std, m, x.shape, gamma)

    def _sync_backward(self, dy, cache):
        """dy: (N_local, H, W, C) -> (dx, this rank's dgamma, this rank's dbeta)."""
        xc, inv_std, m, shape, gamma = cache
        xp = get_array_module(dy)
        c = self.channels
        dy2 = dy.reshape(-1, c)
        local = xp.concatenate([dy2.sum(axis=0), xp.einsum("mc,mc->c", dy2, xc)])
        dbeta_local, dgamma_local = local[:c].copy(), local[c:] * inv_std   # this rank's shares
        total = self.group.allreduce_sum_(local.copy())
        dbeta, dy_xc = total[:c], total[c:]
        # dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat)), means over the global batch
        dx = (dy2 - dbeta / m - xc * (dy_xc * inv_std * inv_std / m)) * (gamma * inv_std)
        return dx.reshape(shape), dgamma_local, dbeta_local


def convert_sync_batchnorm(model, group):
    """Make every BatchNorm2D of ``model`` a SyncBatchNorm2D over ``group`` (in place) -> model.

    The layers keep their identity, parameters, buffers and names (the state dict and the
    checkpoint format do not change); only the class, hence the training-mode math, changes,
    so every container and optimiser holding them sees the synchronised layer.
    """
    for m in model.modules():
        if isinstance(m, BatchNorm2D):
            m.__class__ = SyncBatchNorm2D
            m.group = group
    return model


# -- weight drift ---------------------------------------------------------------------------------

def _bit_sum(a):
    """An exact checksum of an array: the sum of its raw bit patterns as integers, mod 2**64.

    Integer addition is exact and order-free, so equal arrays give equal sums on any device,
    and a change in any one element changes the sum.
    """
    xp = get_array_module(a)
    a = xp.ascontiguousarray(a).reshape(-1)
    ints = a.view({8: xp.uint64, 4: xp.uint32, 2: xp.uint16, 1: xp.uint8}[a.dtype.itemsize])
    return int(ints.sum(dtype=xp.uint64))


def state_arrays(model, optimizer=None):
    """``[(name, array)]``: parameters, buffers and (if given) the momentum buffers, in a fixed order."""
    arrays = [(k, p.data) for k, p in model.named_parameters()] + list(model.named_buffers())
    if optimizer is not None:
        names = [k for k, _ in model.named_parameters()]
        for i, b in enumerate(getattr(optimizer, "buffers", [])):
            if b is not None:
                arrays.append((f"momentum of {names[i] if i < len(names) else i}", b))
    return arrays


def check_in_sync(model, group, optimizer=None):
    """Raise WeightDrift on every rank if any array differs between ranks (names the arrays)."""
    arrays = state_arrays(model, optimizer)
    sums = np.array([_bit_sum(a) for _, a in arrays], dtype=np.uint64)
    lo, hi = sums.copy(), sums.copy()
    group.comm.Allreduce(group.MPI.IN_PLACE, lo, op=group.MPI.MIN)
    group.comm.Allreduce(group.MPI.IN_PLACE, hi, op=group.MPI.MAX)
    drifted = [arrays[i][0] for i in np.flatnonzero(lo != hi)]
    if drifted:
        shown = ", ".join(drifted[:8]) + (f" and {len(drifted) - 8} more" if len(drifted) > 8 else "")
        raise WeightDrift(f"the {group.size} ranks' copies differ in {len(drifted)} array(s): {shown}. "
                          "Every rank must start from rank 0's weights and apply the same allreduced "
                          "gradients; something updated one rank alone")


# -- what the trainer holds -------------------------------------------------------------------------

class DataParallel:
    """The trainer's hooks for one data-parallel run.

    attach(model, optimizer): sync BN (if ``sync_bn``), rank 0's weights everywhere, buckets.
    rows(n): this rank's contiguous rows of a global batch of n, and its loss weight (the
      trainer's BatchIterator produces only those rows); local_batch(xb, yb) cuts them from a
      whole global batch.
    allreduce_gradients(): between backward and the optimiser step.
    end_epoch(model, optimizer): per-rank BN statistics averaged (without sync BN), drift check.
    """

    def __init__(self, group, sync_bn=False, bucket_bytes=BUCKET_BYTES):
        self.group, self.sync_bn, self.bucket_bytes = group, bool(sync_bn), bucket_bytes
        self.rank, self.size = group.rank, group.size
        self.buckets = None
        self.weight = 1.0 / group.size

    def check_batch_size(self, batch_size):
        if batch_size % self.size:
            raise ValueError(f"--batch-size {batch_size} is the global batch and must divide by the "
                             f"{self.size} ranks; use a multiple of {self.size}")

    def attach(self, model, optimizer):
        if self.sync_bn:
            convert_sync_batchnorm(model, self.group)
        broadcast_model(model, self.group, bucket_bytes=self.bucket_bytes)
        self.buckets = GradientBuckets(optimizer.params, self.group, self.bucket_bytes)
        return self

    def rows(self, n):
        """(lo, hi): this rank's rows of a global batch of ``n``; sets ``weight`` = (hi - lo) / n.

        The loss gradient of the slice is multiplied by ``weight`` so that the ranks' gradients
        add up to the gradient of the global batch's mean loss. The trainer hands this method
        to ``BatchIterator(shard=...)``, which calls it for each batch it makes, so each rank
        gathers, normalises and augments only its own rows (and ``weight`` is that batch's).
        """
        lo, hi = self.group.shard(n)
        self.weight = (hi - lo) / n
        return lo, hi

    def local_batch(self, xb, yb):
        """(B, ...) global batch -> this rank's (B_local, ...) slice, cut by ``rows``."""
        lo, hi = self.rows(xb.shape[0])
        return xb[lo:hi], yb[lo:hi]

    def allreduce_gradients(self):
        self.buckets.allreduce()

    def end_epoch(self, model, optimizer):
        if not self.sync_bn:
            average_buffers(model, self.group)
        check_in_sync(model, self.group, optimizer)


__all__ = ["Group", "init", "DataParallel", "GradientBuckets", "SyncBatchNorm2D", "convert_sync_batchnorm",
           "broadcast_model", "average_buffers", "check_in_sync", "make_buckets", "DistributedUnavailable",
           "WeightDrift", "LAUNCH", "INSTALL"]
