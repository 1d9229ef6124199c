"""What a Slurm job asks for. Site defaults (partition, account, setup lines) live in a small
YAML file, so nothing of one site is baked into axolab; command-line options override them.

The file is the first of: ``--site-config PATH``, ``$AXOLAB_SLURM_CONFIG``,
``./axolab-slurm.yaml``, ``~/.config/axolab/slurm.yaml``. Its keys are the fields below.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import config_from_dict
from ..typecheck import check_field_types

# Every value here ends up in the job script, one line each: a line break (or any other
# control character) would start a new line there, which bash would run as a command.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class SlurmOptions:
    """One job of a sweep (each array task gets all of this)."""

    nodes: int = 1
    """Nodes per job."""
    ntasks_per_node: int = 1
    """Ranks per node: one per GPU on GPU nodes."""
    gpus_per_node: int = 0
    """GPUs per node (0: CPU-only job; no --gpus-per-node line)."""
    cpus_per_task: int = 1
    """CPU cores per rank."""
    mem: str | None = None
    """Memory per node, e.g. "200G" (None: the partition's default)."""
    time: str = "01:00:00"
    """Wall-clock limit, [days-]hours:minutes:seconds."""
    partition: str | None = None
    """Partition (queue); None: the cluster's default."""
    account: str | None = None
    """Account to charge."""
    qos: str | None = None
    """Quality of service."""
    requeue_grace_s: int = 300
    """Seconds before the time limit at which the job requeues itself (it resumes from its
    newest checkpoint); 0 disables the signal."""
    max_concurrent: int | None = None
    """At most this many array tasks run at once (--array=...%N)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the notebook (module load, conda activate): the site's own, one
    command per item (an item may not contain a line break)."""
    python: str | None = None
    """Interpreter on the compute nodes (default: the one running axolab now)."""
    sbatch_lines: list[str] = field(default_factory=list)
    """Extra "#SBATCH ..." directives, verbatim (e.g. "--constraint=a100"), one per item."""

    def validate(self) -> None:
        check_field_types(self, "slurm options")
        for name in ("mem", "time", "partition", "account", "qos", "python"):
            value = getattr(self, name)
            if value is not None and _CONTROL.search(value):
                raise ValueError(f"slurm option {name}={value!r} contains a line break or other "
                                 "control character; it would end its line in the job script")
        for name in ("setup", "sbatch_lines"):
            for i, line in enumerate(getattr(self, name)):
                if _CONTROL.search(line):
                    raise ValueError(f"slurm option {name}[{i}]={line!r} contains a line break or "
                                     "other control character; give one line per list item")
        for name in ("nodes", "ntasks_per_node", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"slurm option {name} must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"slurm option gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.requeue_grace_s < 0:
            raise ValueError(f"slurm option requeue_grace_s must be >= 0 (0: no signal), got "
                             f"{self.requeue_grace_s}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"slurm option max_concurrent must be at least 1, got "
                             f"{self.max_concurrent}")
        if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", self.time):
            raise ValueError(f"slurm option time={self.time!r}: expected [days-]hh:mm:ss")
        # Values go into #SBATCH lines, which sbatch splits on blanks: keep them single words.
        for name in ("mem", "partition", "account", "qos"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,:+-]+", value):
                raise ValueError(f"slurm option {name}={value!r} is not a plain Slurm name")


def site_config_path(explicit: str | Path | None = None) -> Path | None:
    candidates = [explicit, os.environ.get("AXOLAB_SLURM_CONFIG"), "axolab-slurm.yaml",
                  Path.home() / ".config" / "axolab" / "slurm.yaml"]
    for i, c in enumerate(candidates):
        if c and Path(c).is_file():
            return Path(c)
        if i == 0 and c:
            raise FileNotFoundError(f"site config {c} does not exist")
    return None


def load_options(site_config: str | Path | None = None, **overrides) -> SlurmOptions:
    """Defaults, then the site file, then ``overrides`` (None values are ignored)."""
    import yaml

    path = site_config_path(site_config)
    data = {}
    if path is not None:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of slurm options")
    opts = config_from_dict(SlurmOptions, data, where=str(path or "slurm options"))
    opts = dataclasses.replace(opts, **{k: v for k, v in overrides.items() if v is not None})
    opts.validate()
    return opts
