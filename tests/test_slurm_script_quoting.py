"""The job script for a results path full of characters that mean something to sbatch or
bash (blanks, quotes, #, $(...), backquotes, %): sbatch reads the log path whole, and bash runs
only the script's own commands. The refusals (line breaks, backslashes) are in
test_hostile_inputs_data.py."""

from __future__ import annotations

import subprocess

from axolab.slurm import load_options, render_sbatch


def sbatch_arguments(script: str) -> list[str]:
    """The arguments sbatch takes from a script's #SBATCH lines, restated from Slurm 22.05's
    src/sbatch/opt.c (_opt_batch_script, _get_argument): directives end at the first line that
    is neither blank nor a comment; in a directive, blanks separate arguments unless quoted
    with " or ', a backslash takes the next character as it is, and an unquoted # ends it."""
    args = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if not line.startswith("#SBATCH"):
            continue
        i, rest = 0, line[len("#SBATCH"):]
        while i < len(rest):
            while i < len(rest) and rest[i].isspace():
                i += 1
            if i == len(rest):
                break
            arg, quote, escaped = "", None, False
            while i < len(rest) and (quote or not rest[i].isspace()):
                ch = rest[i]
                i += 1
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                    continue
                elif quote:
                    if ch == quote:
                        quote = None
                        continue
                elif ch in "\"'":
                    quote = ch
                    continue
                elif ch == "#":
                    i = len(rest)
                    break
                arg += ch
            assert quote is None, f"sbatch would refuse an unmatched quote in {line!r}"
            if arg:
                args.append(arg)
    return args


def test_hostile_results_path_stays_one_argument(tmp_path, monkeypatch):
    """Blanks, quotes, #, $(...), backquotes and % in the results path: sbatch reads the log
    path whole (with % doubled, so Slurm writes a literal %), and bash runs only the script's
    own commands, handing the sweep directory to the task as one argument."""
    monkeypatch.chdir(tmp_path)  # no site file of this machine's user
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AXOLAB_SLURM_CONFIG", raising=False)
    hostile = tmp_path / "r \"q\" it's #x $(touch MARKER) `touch MARKER`; %j %%" / "s"
    work = tmp_path / "work $(touch MARKER) dir"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv"
    fake_python = bin_dir / "fake-python"
    fake_python.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{argv_file}'\n")
    for tool in ("scontrol", "scancel"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    opts = load_options(None, python=str(fake_python), partition="gpu")
    text = render_sbatch(hostile, 2, opts, work)
    args = sbatch_arguments(text)
    assert len(args) == sum(line.startswith("#SBATCH") for line in text.splitlines())
    pattern = str(hostile).replace("%", "%%") + "/slurm/%A_%a.out"
    assert f"--output={pattern}" in args
    assert "--partition=gpu" in args
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "7", "HOME": str(tmp_path)}
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert argv_file.read_text().splitlines() == ["-m", "axolab.slurm.task", str(hostile)]
    assert not list(tmp_path.rglob("MARKER"))
