"""Machines for the planner: bandwidth by where a group's GPUs sit (group size and stride
inside a node, or across nodes), the presets' tables against their builders' measurements, and
`axolab plan calibrate` measuring the same table on real gloo ranks."""

import dataclasses
import types

import pytest

from axolab.perfmodel import GridShape, Machine, get_machine, load_machine, presets, save_machine
from axolab.perfmodel.calibrate import CalibrationConfig, calibrate
from axolab.perfmodel.comm import link_bandwidth

NODE = Machine("two-packages", gpus_per_node=8, memory_gib=64, peak_flops_bf16=1e14,
               peak_flops_fp32=1e13, matmul_efficiency=0.5, memory_bandwidth_gb_s=1000,
               intra_node_gb_s=40, inter_node_gb_s=10,
               intra_node_links=((2, 1, 150.0), (4, 1, 60.0), (2, 2, 30.0)))


def test_bandwidth_follows_the_placement_of_a_group_not_only_its_size():
    world = 64
    assert link_bandwidth(NODE, 2, 1, world) == 150e9  # neighbours: the fast package links
    assert link_bandwidth(NODE, 2, 2, world) == 30e9   # the same size two apart: listed, slow
    assert link_bandwidth(NODE, 4, 1, world) == 60e9
    assert link_bandwidth(NODE, 2, 4, world) == 40e9   # not listed, nothing spans 8: node-wide
    assert link_bandwidth(NODE, 8, 1, world) == 40e9
    # Across nodes: each of the 8 rings of a node gets its NIC share; with stride 2, only two
    # rings leave the node, so each gets 4 shares, capped by the node's own links.
    assert link_bandwidth(NODE, 2, 8, world) == 10e9
    assert link_bandwidth(NODE, 16, 2, world) == 40e9
    assert link_bandwidth(NODE, 16, 4, world) == 20e9
    # An unlisted placement spanning as many GPUs as listed ones takes the slowest of them.
    fours = dataclasses.replace(NODE, intra_node_links=((4, 1, 60.0), (2, 2, 30.0)))
    assert fours.intra_bandwidth(4, 1) == 60.0 and fours.intra_bandwidth(2, 2) == 30.0
    assert dataclasses.replace(NODE, intra_node_links=((2, 2, 30.0), (4, 1, 60.0))) \
        .intra_bandwidth(4, 1) == 60.0


# The AxoNN authors' measured bus bandwidths, GB/s by (stride, group size), from their
# communication model (github.com/axonn-ai/Megatron-AxoNN, examples/comm_model.py, get_bw).
AUTHORS = {
    "frontier": {(1, 2): 129, (1, 4): 52, (1, 8): 135, (1, 16): 40, (2, 2): 50, (2, 4): 72,
                 (2, 8): 20, (4, 2): 36, (4, 4): 10, (8, 2): 5, (16, 4): 5},
    "perlmutter": {(1, 2): 76, (1, 4): 225, (1, 8): 80, (2, 2): 76, (2, 4): 40, (4, 2): 20,
                   (8, 8): 20},
}


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_presets_send_at_the_bandwidths_their_builders_measured(name):
    machine, world = get_machine(name), 4096
    for (stride, size), gb_s in AUTHORS[name].items():
        assert link_bandwidth(machine, size, stride, world) == pytest.approx(gb_s * 1e9), \
            (name, stride, size)


def test_presets_name_their_sources_and_tables_are_validated():
    for machine in presets().values():
        assert machine.source, machine.name
        assert machine.inter_node_gb_s < machine.intra_node_gb_s
    with pytest.raises(ValueError, match=r"intra_node_links entry \(16, 1, 100.0\) needs group "
                                         r"size >= 2, stride >= 1, group size x stride <= "
                                         r"gpus_per_node=8"):
        dataclasses.replace(NODE, intra_node_links=((16, 1, 100.0),))


def test_link_table_round_trips_through_a_machine_file(tmp_path):
    path = save_machine(NODE, tmp_path / "m.json")
    assert load_machine(path) == NODE
    frontier = get_machine("frontier")
    assert load_machine(save_machine(frontier, tmp_path / "f.json")) == frontier


def test_calibrate_measures_the_same_table_on_real_ranks(tmp_path):
    cfg = CalibrationConfig(ranks=4, sizes_bytes=(4096, 65536), repeats=2, rounds=1,
                            matmul_size=64, name="ci")
    machine = calibrate(cfg)
    assert machine.name == "ci" and machine.gpus_per_node == 4
    placements = {(2, 1), (4, 1), (2, 2)}  # every (size, stride) of 4 ranks
    assert {(g, s) for g, s, _ in machine.intra_node_links} == placements
    assert {(c.op, c.group_size, c.stride) for c in machine.collectives} == {
        (op, g, s) for op in ("all_reduce", "all_gather", "reduce_scatter")
        for g, s in placements}
    # The table is the all-reduce rows' bandwidths, by placement.
    assert {(g, s): bw for g, s, bw in machine.intra_node_links} == {
        (c.group_size, c.stride): c.bandwidth_gb_s for c in machine.collectives
        if c.op == "all_reduce"}
    assert 0.0 <= machine.overlap_efficiency <= 1.0 and machine.sync_s >= 0.0
    # A sync cost per group size of neighbours, the whole world's being sync_s.
    assert [g for g, _ in machine.sync_by_group] == [2, 4]
    assert dict(machine.sync_by_group)[4] == machine.sync_s
    assert load_machine(save_machine(machine, tmp_path / "ci.json")) == machine
    # The planner runs on what was measured.
    from axolab.perfmodel import Workload, model_shapes, predict
    p = predict(model_shapes("small-llama"), GridShape(1, 1, 2, 2), Workload(4, 32), machine)
    assert p.step_time_s > 0 and p.exposed_comm_s <= p.comm.total


def test_a_collective_is_timed_warm(monkeypatch):
    """The first call on a group (buffers, connections) is made before the clock starts: on a
    fake clock where the first call takes 10 s and every later one 1 s, the timing is 1 s."""
    import torch.distributed as dist

    from axolab.perfmodel import calibrate as cal

    clock = {"now": 0.0, "calls": 0}

    def all_reduce(tensor, group=None):
        clock["now"] += 10.0 if clock["calls"] == 0 else 1.0
        clock["calls"] += 1

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "barrier", lambda group=None: None)
    # The module's own clock only (not time.perf_counter for everyone, pytest included).
    monkeypatch.setattr(cal, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    cfg = CalibrationConfig(ranks=2, repeats=3, rounds=2)
    assert cal._time_collective("all_reduce", 4096, None, 2, cfg) == 1.0
    assert clock["calls"] == 1 + 3 * 2  # one warm-up, then rounds x repeats


def test_a_negative_overlap_slowdown_is_refused():
    from axolab.perfmodel.machines import overlap_efficiency_for
    assert overlap_efficiency_for(0.25) == pytest.approx(0.8)  # 1 / 1.25, by hand
    with pytest.raises(ValueError, match="a slowdown must be >= 0, got -0.1"):
        overlap_efficiency_for(-0.1)
