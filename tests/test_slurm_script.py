"""The sbatch script and site options, without a cluster: what a site's file and the command
line ask for is what the script says, and nothing in it comes from parameter values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from axolab.slurm import load_options, render_sbatch


def test_site_file_then_command_line(tmp_path, monkeypatch):
    site = tmp_path / "slurm.yaml"
    site.write_text("partition: gpu\naccount: memstudy\ngpus_per_node: 4\nntasks_per_node: 4\n"
                    "setup: ['module load cuda/12.4']\n")
    monkeypatch.setenv("AXOLAB_SLURM_CONFIG", str(site))
    opts = load_options(None, nodes=2, partition="debug", time=None)
    assert (opts.nodes, opts.partition, opts.account, opts.gpus_per_node) == (2, "debug",
                                                                             "memstudy", 4)
    site.write_text("partiton: gpu\n")
    with pytest.raises(ValueError, match="did you mean 'partition'"):
        load_options(None)
    monkeypatch.delenv("AXOLAB_SLURM_CONFIG")
    monkeypatch.chdir(tmp_path)  # no ./axolab-slurm.yaml
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_options(None).partition is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_options(tmp_path / "missing.yaml")
    for bad, message in (({"time": "2 hours"}, "hh:mm:ss"), ({"partition": "gpu; rm -rf ~"},
                                                              "not a plain Slurm name"),
                         ({"nodes": 0}, "at least 1")):
        with pytest.raises(ValueError, match=message):
            load_options(None, **bad)


def test_script_asks_for_what_the_options_say(tmp_path):
    opts = load_options(None, nodes=2, ntasks_per_node=4, gpus_per_node=4, cpus_per_task=16,
                        time="04:00:00", partition="gpu", qos="high", max_concurrent=2,
                        requeue_grace_s=120)
    sweep_dir = tmp_path / "my sweep (1)"
    text = render_sbatch(sweep_dir, 3, opts, tmp_path / "work dir")
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=16", "#SBATCH --qos=high",
                 "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@120"):
        assert line + "\n" in text
    assert "--account" not in text
    assert f"cd '{tmp_path / 'work dir'}'" in text
    assert f"-m axolab.slurm.task '{sweep_dir}' &" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid shell
    cpu = render_sbatch(Path("/r/s"), 1, load_options(None, requeue_grace_s=0), Path("/w"))
    assert "--gpus-per-node" not in cpu and "#SBATCH --signal" not in cpu and "--array=0-0\n" in cpu
