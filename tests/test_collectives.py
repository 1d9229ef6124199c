"""Each differentiable collective of axolab.parallel.comm on its own, forward and backward.

Every rank builds its input and upstream gradient from a seed derived from its index on the
axis, so it can also rebuild every other rank's tensors and compute the expected result by hand.
"""

import pytest
import torch

SHAPE = (3, 4)


def _t(seed: int, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(fn_name, axis_name, dim=None):
    from axolab.parallel import Grid, comm

    grid = Grid.init(1, 2, 1, 4)  # x: 4 ranks, z: 2 ranks, y: 1 rank (identity)
    axis = getattr(grid, axis_name)
    n, i = axis.size, axis.index
    x = _t(100 + i).requires_grad_()
    if fn_name == "copy_to":
        out = comm.copy_to(x, axis)
        want_out, want_grad = x.detach(), sum(_t(200 + r) for r in range(n))
        g = _t(200 + i)
    elif fn_name == "reduce_from":
        out = comm.reduce_from(x, axis)
        want_out = sum(_t(100 + r) for r in range(n))
        g = _t(200)  # the upstream gradient of a replicated value is the same on all ranks
        want_grad = g
    elif fn_name == "all_reduce":
        out = comm.all_reduce(x, axis)
        want_out = sum(_t(100 + r) for r in range(n))
        g = _t(200 + i)
        want_grad = sum(_t(200 + r) for r in range(n))
    elif fn_name == "gather_along":
        out = comm.gather_along(x, axis, dim=dim)
        want_out = torch.cat([_t(100 + r) for r in range(n)], dim=dim)
        g = _t(200, tuple(want_out.shape))
        want_grad = g.chunk(n, dim=dim)[i]
    elif fn_name == "depth_gather":
        out = comm.depth_gather(x.view(-1), axis)
        want_out = torch.cat([_t(100 + r).view(-1) for r in range(n)])
        gs = [_t(300 + r, (n * x.numel(),)) for r in range(n)]  # each rank's own upstream grad
        g = gs[i]
        want_grad = sum(gs).chunk(n)[i].view(SHAPE)
    else:
        raise ValueError(fn_name)
    out.backward(g)
    return {"out": float((out.detach() - want_out).abs().max()),
            "grad": float((x.grad - want_grad).abs().max()),
            "identity_on_size_1": _identity_on_y(grid, comm)}


def _identity_on_y(grid, comm):
    t = _t(7)
    return all(f(t, grid.y) is t for f in (comm.copy_to, comm.reduce_from, comm.all_reduce,
                                           comm.depth_gather))


CASES = [("copy_to", "x", None), ("copy_to", "z", None), ("reduce_from", "x", None),
         ("reduce_from", "batch", None), ("all_reduce", "x", None), ("all_reduce", "z", None),
         ("gather_along", "x", 0), ("gather_along", "x", 1), ("gather_along", "z", -1),
         ("depth_gather", "z", None), ("depth_gather", "x", None)]


@pytest.mark.parametrize("fn_name,axis,dim", CASES, ids=lambda v: str(v))
def test_collective_forward_and_backward(pool8, fn_name, axis, dim):
    for rank, r in enumerate(pool8.run(_run, fn_name, axis, dim)):
        assert r["out"] < 1e-12, f"rank {rank}: forward off by {r['out']}"
        assert r["grad"] < 1e-12, f"rank {rank}: backward off by {r['grad']}"
        assert r["identity_on_size_1"], f"rank {rank}: a size-1 axis must not communicate"


def _grid_coordinates():
    from axolab.parallel import Grid

    grid = Grid.init(2, 1, 2, 2)
    return grid.rank, grid.coords, grid.x.ranks, grid.y.ranks, grid.z.ranks, grid.data.ranks, \
        grid.batch.ranks, grid.model.ranks, grid.batch_index


def test_grid_layout_is_x_fastest(pool8):
    for rank, coords, xr, yr, zr, dr, br, mr, bi in pool8.run(_grid_coordinates):
        d, z, y, x = coords
        assert rank == ((d * 1 + z) * 2 + y) * 2 + x
        base = rank - x
        assert xr == (base, base + 1)
        assert yr == tuple(rank - 2 * y + 2 * k for k in range(2))
        assert zr == (rank,)
        assert dr == tuple(rank - 4 * d + 4 * k for k in range(2))
        assert br == dr and bi == d
        assert mr == tuple(range(4 * d, 4 * d + 4))


def _reduce_scatter_on_cpu(axis_name):
    """reduce_scatter_flat, synchronous and async, against the hand-made sum and against gloo's
    own reduce_scatter_tensor, and the CPU allocator's bytes during the call: the other ranks'
    slices and the result, one input's size in all (gloo's own holds a full-size clone of the
    input besides the result)."""
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from axolab.parallel import Grid, comm

    grid = Grid.init(1, 2, 1, 4)
    axis = getattr(grid, axis_name)
    n, i = axis.size, axis.index
    numel = 4096 * n
    want = sum(_t(400 + r, (numel,)) for r in range(n)).chunk(n)[i]
    gloo = torch.empty(numel // n, dtype=want.dtype)
    dist.reduce_scatter_tensor(gloo, _t(400 + i, (numel,)), group=axis.group)
    errors, peaks = {"gloo": float((gloo - want).abs().max())}, {}
    for async_op in (False, True):
        t = _t(400 + i, (numel,))
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            if async_op:
                out, work = comm.reduce_scatter_flat(t, axis, async_op=True)
                assert work.wait() and work.is_completed()
            else:
                out = comm.reduce_scatter_flat(t, axis)
        assert torch.equal(t, _t(400 + i, (numel,)))  # the input is left as it was
        live = peak = 0
        for _, nbytes in sorted((e.start_ns(), e.nbytes())
                                for e in prof.profiler.kineto_results.events()
                                if e.name() == "[memory]"):
            live += nbytes
            peak = max(peak, live)
        errors[async_op] = float((out - want).abs().max())
        peaks[async_op] = peak
    # in_place: the sum written over this rank's own slice of the input (a scratch buffer);
    # only the other ranks' slices are held besides, (n - 1) / n of the input.
    t = _t(400 + i, (numel,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out, work = comm.reduce_scatter_flat(t, axis, async_op=True, in_place=True)
        work.wait()
    assert out.data_ptr() == t[i * (numel // n):].data_ptr()
    errors["in place"] = float((out - want).abs().max())
    live = peaks["in place"] = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes())
                            for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        live += nbytes
        peaks["in place"] = max(peaks["in place"], live)
    with pytest.raises(ValueError, match=f"reduce-scatter of 10 elements over {n} ranks into 3"):
        comm._reduce_scatter(torch.empty(3, dtype=torch.float64),
                             torch.zeros(10, dtype=torch.float64), group=axis.group)
    return errors, peaks, numel * 8, n


def _all_gather_on_cpu(axis_name):
    """all_gather_flat and all_gather_in_place, synchronous and async, against the ranks'
    parts rebuilt by hand and against gloo's own all_gather_into_tensor: exact copies, on a
    group of neighbouring ranks (x) and of ranks 4 apart (z); and the CPU allocator's bytes
    during the call."""
    from torch.profiler import ProfilerActivity, profile

    from axolab.parallel import Grid, comm

    grid = Grid.init(1, 2, 1, 4)
    axis = getattr(grid, axis_name)
    n, i = axis.size, axis.index
    part = 1000 + 7 * n
    want = torch.cat([_t(500 + r, (part,)) for r in range(n)])
    mine = _t(500 + i, (part,))
    gloo = torch.empty(n * part, dtype=want.dtype)
    comm._ALL_GATHER_TENSOR(gloo, mine, group=axis.group)
    results = {"gloo": gloo, "flat": comm.all_gather_flat(mine, axis)}
    out, work = comm.all_gather_flat(mine, axis, async_op=True)
    assert work.wait() and work.is_completed()
    results["flat async"] = out
    for async_op in (False, True):
        slots = torch.full((n * part,), float("nan"), dtype=want.dtype)
        slots[i * part:(i + 1) * part] = mine
        work = comm.all_gather_in_place(slots, axis, async_op=async_op)
        if async_op:
            work.wait()
        results[f"in place{' async' if async_op else ''}"] = slots
    assert torch.equal(mine, _t(500 + i, (part,)))  # the input is left as it was
    # Nothing is allocated besides the output (gloo's own allocates a second output's size).
    out = torch.empty(n * part, dtype=want.dtype)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        comm._all_gather(out, mine, group=axis.group)
    results["into out"] = out
    allocated = sum(e.nbytes() for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.nbytes() > 0)
    assert allocated <= 1024, allocated
    with pytest.raises(ValueError, match=f"all-gather of 3 torch.float64 elements over {n} "
                                         "ranks into 10 torch.float64"):
        comm._all_gather(torch.empty(10, dtype=torch.float64),
                         torch.zeros(3, dtype=torch.float64), group=axis.group)
    with pytest.raises(ValueError, match=f"into {3 * n} torch.float32: .* of its dtype"):
        comm._all_gather(torch.empty(3 * n), torch.zeros(3, dtype=torch.float64),
                         group=axis.group)
    return {how: bool(torch.equal(got, want)) for how, got in results.items()}


@pytest.mark.parametrize("axis", ["x", "z"])
def test_all_gather_on_cpu_places_every_part_in_its_slot(pool8, axis):
    for rank, exact in enumerate(pool8.run(_all_gather_on_cpu, axis)):
        assert all(exact.values()), (rank, exact)


@pytest.mark.parametrize("axis", ["x", "z"])
def test_reduce_scatter_on_cpu_is_the_sum_of_the_slices(pool8, axis):
    for rank, (errors, peaks, full_bytes, n) in enumerate(
            pool8.run(_reduce_scatter_on_cpu, axis)):
        for how, err in errors.items():
            assert err < 1e-12, f"rank {rank}: {how} off by {err}"
        for async_op in (False, True):
            assert full_bytes <= peaks[async_op] <= full_bytes + 1024, (rank, peaks)
        assert peaks["in place"] <= full_bytes * (n - 1) // n + 1024, (rank, peaks)
