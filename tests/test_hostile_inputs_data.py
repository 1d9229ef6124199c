"""Data recipes, dataset outputs, sweep names and Slurm job scripts a careless or hostile user
might give: each is refused with one clear line naming the problem and the value, before any
output is written. New fields join the tables below."""

from __future__ import annotations

import copy
import gzip
import re
import shutil
from pathlib import Path

import pytest
import yaml

from axolab.cli import main as axolab
from axolab.data import RecipeError, build, load_recipe, recipe_from_dict
from axolab.files import replace_directory
from axolab.data.corpus import _first_invalid_utf8
from axolab.runs import ParameterError, prepare_sweep
from axolab.runs.sweep import sweep_directory
from axolab.slurm import load_options, render_sbatch
from notebook_factory import echo_notebook

SMALL = {"name": "t", "corpus": {"embedded": "austen", "max_documents": 400},
         "tokenizer": {"train_bpe_vocab": 300},
         "canaries": [{"kind": "random", "length": 8, "repetitions": [1, 3], "per_count": 1}],
         "packing": {"seq_len": 64}}


def _recipe(changes: dict) -> dict:
    """SMALL with ``changes``: {"packing.seq_len": 3} sets one field, {"corpus": ...} a section."""
    data = copy.deepcopy(SMALL)
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[key]
        target[last] = value
    return data


# (what the user did, the recipe fields changed, what the error must say)
BAD_RECIPES = [
    ("a sequence length as a string", {"packing.seq_len": "64"},
     "seq_len='64' must be an integer"),
    ("a fraction as a percentage", {"packing.validation_fraction": "5%"},
     "validation_fraction='5%' must be a number"),
    ("yes as a flag, quoted", {"packing.allow_split": "yes"},
     "allow_split='yes' must be true or false"),
    ("a seed as a string", {"seed": "0"}, "seed='0' must be an integer"),
    ("a negative seed", {"seed": -1}, "seed=-1 must be at least 0"),
    ("a number as the name", {"name": 5}, "name=5 must be a string"),
    ("a name that climbs out of results/data", {"name": "../../x"},
     "name='../../x' must be a plain directory name"),
    ("a hidden name", {"name": ".t"}, "name='.t' must be a plain directory name"),
    ("one corpus file as a string", {"corpus": {"files": "a.txt"}},
     "files='a.txt' must be a list"),
    ("a corpus that is a list", {"corpus": ["austen"]}, "corpus: expected a mapping"),
    ("a Hub configuration as a number", {"corpus": {"hub": "x/y", "hub_config": 2023}},
     "hub_config=2023 must be a string or null"),
    ("zero documents", {"corpus.max_documents": 0}, "max_documents=0 must be at least 1"),
    ("a boundary regex that does not compile", {"corpus.document_boundary": "regex:([a-z"},
     "'([a-z' is not a valid regular expression"),
    ("a vocabulary size as a string", {"tokenizer.train_bpe_vocab": "1024"},
     "train_bpe_vocab='1024' must be an integer or null"),
    ("an expected vocabulary of zero", {"tokenizer.expect_vocab_size": 0},
     "expect_vocab_size=0 must be at least 1"),
    ("canary groups as a mapping", {"canaries": {"kind": "random"}},
     "canaries={'kind': 'random'} must be a list of mappings"),
    ("repetitions as a string", {"canaries": [{"kind": "random", "repetitions": "1,2"}]},
     "repetitions='1,2' must be a list, each item an integer"),
    ("a fractional repetition", {"canaries": [{"kind": "random", "repetitions": [1, 2.5]}]},
     "repetitions=[1, 2.5] must be a list, each item an integer"),
    ("true as a count", {"canaries": [{"kind": "random", "per_count": True}]},
     "per_count=True must be an integer"),
    ("negative controls", {"canaries": [{"kind": "random", "controls": -1}]},
     "controls=-1 must be at least 0"),
    ("a document window that is empty", {"canaries": [{"kind": "document", "min_tokens": 32,
                                                      "max_tokens": 10}]},
     "max_tokens=10 is below min_tokens=32"),
    ("two groups with one name", {"canaries": [{"kind": "random", "name": "pin"},
                                              {"kind": "random", "name": "pin"}]},
     "canaries[1]: group name 'pin' is also the name of canaries[0]"),
    ("a name equal to another group's default", {"canaries": [
        {"kind": "random"}, {"kind": "random", "name": "random0"}]},
     "canaries[1]: group name 'random0' is also the name of canaries[0]"),
]


@pytest.mark.parametrize("what,changes,message", BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_is_refused(what, changes, message, tmp_path, capsys):
    data = _recipe(changes)
    with pytest.raises(RecipeError, match=re.escape(message)):
        recipe_from_dict(data)
    # The same from a file through the command line: one line, exit status 2, no output.
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert axolab(["data", "build", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_recipe_changed_in_code_is_checked_again_by_build(tmp_path):
    recipe = recipe_from_dict(_recipe({}))
    recipe.packing.seq_len = "64"
    with pytest.raises(RecipeError, match=re.escape("seq_len='64' must be an integer")):
        build(recipe, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


GOOD_YAML = yaml.safe_dump(SMALL, sort_keys=False)  # 15 lines; "name: t" is line 1

# (what the user wrote, the recipe file's text, what the error must say)
BAD_RECIPE_FILES = [
    ("an unclosed flow mapping", "name: t\ncorpus: {embedded: austen\ntokenizer: {}\n",
     "is not valid YAML at line 3, column 10: expected ',' or '}', but got ':'"),
    ("a tab for indentation", "name: t\ncorpus:\n\tembedded: austen\n",
     "is not valid YAML at line 3, column 1: found character '\\t' that cannot start any token"),
    ("a key given twice", GOOD_YAML + "name: u\n",
     "is not valid YAML at line 16, column 1: key 'name' is given twice (first on line 1)"),
    ("an undefined alias", GOOD_YAML + "seed: *x\n",
     "is not valid YAML at line 16, column 7: found undefined alias 'x'"),
    ("an empty file", "", "is empty: expected a mapping"),
    ("a list at the top", "- name: t\n", "r.yaml: expected a mapping of field names to values"),
    ("a typo in a field name", GOOD_YAML + "sead: 3\n", "unknown field 'sead' (did you mean"),
]


@pytest.mark.parametrize("what,text,message", BAD_RECIPE_FILES,
                         ids=[c[0] for c in BAD_RECIPE_FILES])
def test_bad_recipe_file_is_refused(what, text, message, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(path)
    assert axolab(["data", "build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_recipe_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(RecipeError, match=re.escape(f"recipe file {path} is not UTF-8 text "
                                                    "(byte 0xe9 at byte offset 9)")):
        load_recipe(path)


# (the corpus file, its bytes, what the error must say: the file and the first bad byte)
BAD_CORPORA = [
    ("bad.txt", b"hello world\n\nbad \xff byte\n", "byte 0xff at byte offset 17 is not valid"),
    ("bad.jsonl", b'{"text": "fine"}\n{"text": "a \xfe b"}\n', "byte 0xfe at byte offset 29"),
    ("bad.txt.gz", gzip.compress("caf\xe9\n".encode("latin-1")),
     "byte 0xe9 at byte offset 3 of the decompressed text"),
    ("cut.txt.gz", gzip.compress(b"some text\n" * 50)[:20], "is not a readable gzip file"),
]


@pytest.mark.parametrize("name,content,message", BAD_CORPORA, ids=[c[0] for c in BAD_CORPORA])
def test_corpus_file_that_cannot_be_read_is_named(name, content, message, tmp_path):
    (tmp_path / name).write_bytes(content)
    recipe = recipe_from_dict(_recipe({"corpus": {"files": [name]}}), tmp_path)
    with pytest.raises(RecipeError, match=re.escape(message)) as e:
        build(recipe, tmp_path / "out", progress=False)
    assert str(tmp_path / name) in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("content", [
    b"a" * ((1 << 20) - 1) + "\u00e9".encode() + b"xy\xffz",  # a character across the 1 MiB read
    b"a" * ((1 << 20) - 1) + b"\xc3(",                          # a broken one across it
    b"ok " * 10 + b"\xe2\x82",                                  # the file ends inside one
    b"\x80",
])
def test_first_invalid_byte_is_where_python_says(content, tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with pytest.raises(UnicodeDecodeError) as e:
        content.decode("utf-8")
    assert _first_invalid_utf8(path) == (e.value.start, content[e.value.start])
    path.write_bytes(b"fine \xc3\xa9" * 200000)
    assert _first_invalid_utf8(path) is None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small dataset built through the command line, and its recipe."""
    root = tmp_path_factory.mktemp("built")
    recipe = root / "r.yaml"
    recipe.write_text(GOOD_YAML)
    assert axolab(["data", "build", str(recipe), "--out", str(root / "ds"), "--quiet"]) == 0
    return root / "ds", recipe


def _files(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# (what is already at --out, with --overwrite or not, what the error must say)
OCCUPIED_OUTPUTS = [
    ("a dataset, no --overwrite", "dataset", False,
     "{out} already exists; pass --overwrite to replace it"),
    ("someone's directory", "notes", True, "--overwrite replaces only a dataset built by `axolab "
     "data build`, and {out} is not one (it has no stats.json, recipe.yaml, canaries.jsonl)"),
    ("a dataset missing its manifest", "no-manifest", True,
     "{out} is not one (it has no canaries.jsonl)"),
    ("a file", "file", True, "--overwrite replaces only a dataset directory, and {out} is not a "
     "directory"),
    ("a symbolic link to a dataset", "link", True, "{out} is a symbolic link"),
]


@pytest.mark.parametrize("what,kind,overwrite,message", OCCUPIED_OUTPUTS,
                         ids=[c[0] for c in OCCUPIED_OUTPUTS])
def test_occupied_output_is_refused_untouched(what, kind, overwrite, message, built, tmp_path,
                                              capsys):
    dataset, recipe = built
    out = tmp_path / "out"
    if kind == "dataset":
        shutil.copytree(dataset, out)
    elif kind == "no-manifest":
        shutil.copytree(dataset, out)
        (out / "canaries.jsonl").unlink()
    elif kind == "notes":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    elif kind == "file":
        out.write_text("a file")
    else:
        out.symlink_to(dataset)
    before = _files(out) if out.is_dir() else out.read_bytes()
    args = ["data", "build", str(recipe), "--out", str(out), "--quiet"]
    assert axolab(args + (["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err
    assert message.format(out=out) in err and err.count("\n") == 1
    assert (_files(out) if out.is_dir() else out.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a partial output was left"


def test_overwrite_replaces_a_dataset_and_leaves_nothing_beside(built, tmp_path):
    dataset, recipe = built
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    (out / "stale-file").write_text("from an older build")
    assert axolab(["data", "build", str(recipe), "--out", str(out), "--quiet",
                   "--overwrite"]) == 0
    assert not (out / "stale-file").exists()
    same = _files(dataset)
    got = _files(out)
    del same[Path("stats.json")], got[Path("stats.json")]  # holds the build time
    assert got == same
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("atomic", [True, False], ids=["exchange", "two renames"])
def test_replacing_keeps_one_whole_dataset(atomic, tmp_path, monkeypatch):
    if not atomic:
        monkeypatch.setattr("axolab.files._exchange", lambda a, b: False)
    old, new = tmp_path / "ds", tmp_path / ".ds.x.partial"
    for d, tag in ((old, "old"), (new, "new")):
        d.mkdir()
        (d / "stats.json").write_text(tag)
    replace_directory(new, old)
    assert (old / "stats.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    if atomic:
        return
    # Two renames: when the second fails, the previous dataset goes back in place.
    new.mkdir()
    (new / "stats.json").write_text("newer")
    real_rename = Path.rename

    def second_rename_fails(self, target):
        if self == new:
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", second_rename_fails)
    with pytest.raises(OSError, match="disk gone"):
        replace_directory(new, old)
    assert (old / "stats.json").read_text() == "new"


@pytest.fixture
def no_site_file(tmp_path, monkeypatch):
    """Run in tmp_path with no Slurm site file of this machine's user in reach."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AXOLAB_SLURM_CONFIG", raising=False)


# (what the user gave as --name, what the error must say)
BAD_SWEEP_NAMES = [
    ("a path out of the results directory", "../../x", "sweep name '../../x'"),
    ("a nested path", "a/b", "sweep name 'a/b'"),
    ("the parent directory", "..", "sweep name '..'"),
    ("a hidden directory", ".x", "sweep name '.x'"),
    ("nothing", "", "sweep name ''"),
    ("a job-script injection", "x\ntouch MARKER\n#", "sweep name 'x\\ntouch MARKER\\n#'"),
    ("a blank", "a b", "sweep name 'a b'"),
    ("a shell substitution", "$(touch MARKER)", "sweep name '$(touch MARKER)'"),
    ("a Slurm file-name pattern", "run-%j", "sweep name 'run-%j'"),
]


@pytest.mark.parametrize("what,name,message", BAD_SWEEP_NAMES,
                         ids=[c[0] for c in BAD_SWEEP_NAMES])
def test_bad_sweep_name_is_refused_before_anything_is_written(what, name, message, tmp_path,
                                                              no_site_file, capsys):
    nb = echo_notebook(tmp_path / "nb.ipynb")
    results = tmp_path / "deep" / "results"
    full = message + " must be a single plain directory name"
    with pytest.raises(ParameterError, match=re.escape(full)):
        prepare_sweep(nb, {"count": [1, 2]}, results=results, name=name)
    for command in (["sweep"], ["slurm", "submit"]):
        assert axolab([*command, str(nb), "--name", name, "--results", str(results)]) == 2
        err = capsys.readouterr().err
        assert full in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["nb.ipynb"]


def test_good_sweep_names_are_accepted(tmp_path):
    assert sweep_directory("nb.ipynb", tmp_path, "run-1.v2_x") == tmp_path / "run-1.v2_x"
    # The default comes from the notebook's name, made plain.
    assert sweep_directory("my study (v2).ipynb", tmp_path).name == "my_study__v2_-sweep"


# (what the site file or command line said, the option values, what the error must say)
BAD_SLURM_OPTIONS = [
    ("a partition with a command after it", {"partition": "gpu\ntouch MARKER"},
     "slurm option partition='gpu\\ntouch MARKER' contains a line break"),
    ("a memory size with a carriage return", {"mem": "4G\r"}, "mem='4G\\r' contains a line"),
    ("a time limit with a newline", {"time": "01:00:00\n"}, "time='01:00:00\\n' contains a"),
    ("an interpreter with a newline", {"python": "/usr/bin/python3\nrm -rf ~"},
     "python='/usr/bin/python3\\nrm -rf ~' contains a line break"),
    ("a setup item with two lines", {"setup": ["module load cuda\ntouch MARKER"]},
     "slurm option setup[0]='module load cuda\\ntouch MARKER' contains a line break"),
    ("an #SBATCH line with an escape character", {"sbatch_lines": ["--constraint=a\x1b"]},
     "sbatch_lines[0]='--constraint=a\\x1b' contains a line break or other control"),
    ("a node count as a string", {"nodes": "2"}, "nodes='2' must be an integer"),
    ("a negative requeue grace", {"requeue_grace_s": -1}, "requeue_grace_s must be >= 0"),
    ("no concurrent tasks", {"max_concurrent": 0}, "max_concurrent must be at least 1, got 0"),
    ("an account with a blank", {"account": "a b"}, "account='a b' is not a plain Slurm name"),
]


@pytest.mark.parametrize("what,options,message", BAD_SLURM_OPTIONS,
                         ids=[c[0] for c in BAD_SLURM_OPTIONS])
def test_bad_slurm_option_is_refused(what, options, message, tmp_path, no_site_file):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_options(None, **options)
    site = tmp_path / "site.yaml"  # the same from a site file
    site.write_text(yaml.safe_dump(options))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_options(site)


# (what the results directory holds, the directory, what the error must say)
BAD_SCRIPT_PATHS = [
    ("a newline and a command", "r\ntouch MARKER", "contains a line break or other control"),
    ("a carriage return", "r\rx", "contains a line break or other control"),
    ("a backslash", "r\\x", "contains a backslash, which Slurm's --output file-name patterns"),
]


@pytest.mark.parametrize("what,results,message", BAD_SCRIPT_PATHS,
                         ids=[c[0] for c in BAD_SCRIPT_PATHS])
def test_results_path_the_job_script_cannot_hold(what, results, message, tmp_path,
                                                 no_site_file, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_sbatch(tmp_path / results / "s", 1, load_options(None), tmp_path)
    nb = echo_notebook(tmp_path / "nb.ipynb")
    assert axolab(["slurm", "submit", str(nb), "--results", results, "--name", "s"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.ipynb"], "written before refusing"


def test_working_directory_with_a_line_break(tmp_path, no_site_file):
    with pytest.raises(ValueError, match=re.escape("working directory '/w\\ntouch MARKER' "
                                                   "contains a line break")):
        render_sbatch(tmp_path / "s", 1, load_options(None), Path("/w\ntouch MARKER"))


BAD_RUN_NAMES = ["../x", "a/b", ".hidden", "x\ntouch MARKER", "back\\slash", "sp ace", ".."]


@pytest.mark.parametrize("name", BAD_RUN_NAMES)
def test_run_names_are_plain_directory_names(name, tmp_path):
    from axolab.runs import ParameterError, prepare_run
    from notebook_factory import echo_notebook

    nb = echo_notebook(tmp_path / "echo.ipynb")
    with pytest.raises(ParameterError, match="must be a single plain directory name"):
        prepare_run(nb, {}, tmp_path / "results", name=name)
    assert not (tmp_path / "results").exists()
