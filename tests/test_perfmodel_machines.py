"""Machines for the planner: bandwidth by where a group's GPUs sit (span inside a node, or
across nodes), the presets' tables, and `axolab plan calibrate` measuring the same table on
real gloo ranks."""

import dataclasses

import pytest

from axolab.perfmodel import GridShape, Machine, get_machine, load_machine, presets, save_machine
from axolab.perfmodel.calibrate import CalibrationConfig, calibrate
from axolab.perfmodel.comm import link_bandwidth

NODE = Machine("two-packages", gpus_per_node=8, memory_gib=64, peak_flops_bf16=1e14,
               peak_flops_fp32=1e13, matmul_efficiency=0.5, memory_bandwidth_gb_s=1000,
               intra_node_gb_s=40, inter_node_gb_s=10,
               intra_node_by_span=((2, 150.0), (4, 60.0)))


def test_bandwidth_follows_the_span_of_a_group_not_only_its_size():
    world = 64
    # A pair of neighbours shares the fast package links; the same pair 4 apart (span 8) only
    # has the node-wide ring; a group of 4 neighbours sits in the middle.
    assert link_bandwidth(NODE, 2, 1, world) == 150e9
    assert link_bandwidth(NODE, 2, 2, world) == 60e9   # span 4
    assert link_bandwidth(NODE, 2, 4, world) == 40e9   # span 8: whole node
    assert link_bandwidth(NODE, 4, 1, world) == 60e9
    assert link_bandwidth(NODE, 8, 1, world) == 40e9
    # Across nodes: each of the 8 rings of a node gets its NIC share; with stride 2, only two
    # rings leave the node, so each gets 4 shares, capped by the node's own links.
    assert link_bandwidth(NODE, 2, 8, world) == 10e9
    assert link_bandwidth(NODE, 16, 2, world) == 40e9
    assert link_bandwidth(NODE, 16, 4, world) == 20e9


def test_presets_give_a_span_table_with_sources_and_the_table_is_validated():
    for machine in presets().values():
        assert machine.source, machine.name
        spans = [s for s, _ in machine.intra_node_by_span]
        assert spans == sorted(spans) and all(2 <= s <= machine.gpus_per_node for s in spans)
        rates = [bw for _, bw in machine.intra_node_by_span] + [machine.intra_node_gb_s]
        assert rates == sorted(rates, reverse=True), machine.name  # wider groups never faster
        assert machine.inter_node_gb_s < machine.intra_node_gb_s
    with pytest.raises(ValueError, match=r"intra_node_by_span entry \(16, 100.0\) needs 2 <= "
                                         r"span <= gpus_per_node=8"):
        dataclasses.replace(NODE, intra_node_by_span=((16, 100.0),))


def test_span_table_round_trips_through_a_machine_file(tmp_path):
    path = save_machine(NODE, tmp_path / "m.json")
    assert load_machine(path) == NODE
    frontier = get_machine("frontier")
    assert load_machine(save_machine(frontier, tmp_path / "f.json")) == frontier


def test_calibrate_measures_the_same_table_on_real_ranks(tmp_path):
    cfg = CalibrationConfig(ranks=4, sizes_bytes=(4096, 65536), repeats=2, rounds=1,
                            matmul_size=64, name="ci")
    machine = calibrate(cfg)
    assert machine.name == "ci" and machine.gpus_per_node == 4
    assert [s for s, _ in machine.intra_node_by_span] == [2, 4]
    assert {(c.op, c.group_size) for c in machine.collectives} == {
        (op, g) for op in ("all_reduce", "all_gather", "reduce_scatter") for g in (2, 4)}
    # The table is the all-reduce rows' bandwidths, by the span of neighbouring ranks.
    assert dict(machine.intra_node_by_span) == {
        c.group_size: c.bandwidth_gb_s for c in machine.collectives if c.op == "all_reduce"}
    assert 0.0 <= machine.overlap_efficiency <= 1.0
    assert load_machine(save_machine(machine, tmp_path / "ci.json")) == machine
    # The planner runs on what was measured.
    from axolab.perfmodel import Workload, model_shapes, predict
    p = predict(model_shapes("small-llama"), GridShape(1, 1, 2, 2), Workload(4, 32), machine)
    assert p.step_time_s > 0 and p.exposed_comm_s <= p.comm.total
