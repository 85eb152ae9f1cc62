"""Run under ``mpiexec -n K`` by tests/test_distributed.py: collective checks that need real ranks.

    mpiexec -n 2 python tests/_mpi_worker.py OUT_DIR            # collectives, gradients, drift
    mpiexec -n 2 python tests/_mpi_worker.py OUT_DIR resume     # Ctrl-C mid-epoch, then --resume

Each rank writes ``OUT_DIR/rank<r>.json`` with what it measured; the test reads and asserts.
Everything is float64 and seeded, so the single-process reference can be computed on every rank.
"""
import json
import sys

import numpy as np

import minixception as mx
from minixception import distributed as D
from minixception.gradcheck import rel_error
from minixception.losses import softmax_cross_entropy


def tiny(seed):
    return mx.models.mini_xception(10, width=0.25, middle_blocks=1, rng=seed, dtype="float64")


def grads_of(model, x, y, weight=1.0):
    model.zero_grad()
    loss, dlogits = softmax_cross_entropy(model(x), y)
    model.backward(dlogits * weight)
    return loss, [p.grad.copy() for p in model.parameters()]


def main(out):
    group = D.init("cpu")
    r = {"rank": group.rank, "size": group.size}
    rng = np.random.default_rng(7)                       # the same batch on every rank
    x = rng.standard_normal((8, 32, 32, 3))
    y = rng.integers(0, 10, 8)

    # the single-process reference: the whole batch, plain batch norm, on this rank alone
    ref = tiny(seed=0)
    ref_loss, ref_grads = grads_of(ref, x, y)

    # data parallel: every rank but 0 starts from other weights; attach() must replace them
    model = tiny(seed=0 if group.rank == 0 else 100 + group.rank)
    opt = mx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dp = D.DataParallel(group, sync_bn=True, bucket_bytes=4096).attach(model, opt)
    r["broadcast_err"] = max(rel_error(a.data, b.data) for a, b in zip(ref.parameters(), model.parameters()))
    r["buckets"] = len(dp.buckets.buckets)
    r["params"] = len(opt.params)
    xb, yb = dp.local_batch(x, y)
    r["local_n"] = int(xb.shape[0])
    loss, grads = grads_of(model, xb, yb, dp.weight)
    r["local_vs_ref_before"] = max(rel_error(a, b) for a, b in zip(grads, ref_grads))
    dp.allreduce_gradients()
    r["grad_err"] = max(rel_error(p.grad, g) for p, g in zip(model.parameters(), ref_grads))
    r["loss"] = float(group.sum([float(loss) * xb.shape[0]])[0]) / x.shape[0]
    r["ref_loss"] = float(ref_loss)
    # sync BN in training mode normalised with the global statistics: same moving averages as ref
    r["bn_buffer_err"] = max(rel_error(a, b) for (_, a), (_, b) in zip(ref.named_buffers(), model.named_buffers()))

    # the drift check: silent when equal, loud (on every rank, naming the array) after one ulp
    opt.step()
    D.check_in_sync(model, group, opt)
    r["drift_ok"] = True
    name, p = next(iter(model.named_parameters()))
    if group.rank == 1:
        p.data.reshape(-1)[0] = np.nextafter(p.data.reshape(-1)[0], np.inf)
    try:
        D.check_in_sync(model, group, opt)
        r["drift_error"] = None
    except D.WeightDrift as exc:
        r["drift_error"] = str(exc)
    r["drift_name"] = name
    with open(f"{out}/rank{group.rank}.json", "w") as f:
        json.dump(r, f)


def interrupted_then_resumed(out):
    """Train 2 epochs of 4 steps with Ctrl-C (simulated) after step 3, then resume to the end."""
    from minixception.runs import DEFAULTS, run_training
    group = D.init("cpu")
    settings = dict(DEFAULTS, width=0.25, middle_blocks=1, subset=64, batch_size=16, dtype="float64",
                    schedule="step")
    quiet = dict(progress=False, verbose=False)
    try:
        run_training(settings, out, 2, distributed=D.DataParallel(group, sync_bn=True),
                     interrupt_after_steps=3, **quiet)
        raise AssertionError("the simulated Ctrl-C did not stop training")
    except KeyboardInterrupt:
        pass
    run_training(settings, out, 2, resume=f"{out}/checkpoint.npz", distributed=D.DataParallel(group, sync_bn=True),
                 **quiet)


if __name__ == "__main__":
    if sys.argv[2:] == ["resume"]:
        interrupted_then_resumed(sys.argv[1])
    else:
        main(sys.argv[1])
