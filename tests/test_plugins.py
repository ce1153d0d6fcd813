"""Plugins: a user's own task, measure set and model, from a file a config names (`plugins:`) or from an
installed distribution's `groklab.plugins` entry point, found by every command and every process that reads
the run again; and a broken plugin as one line naming it, exit code 2, no run directory.

The worked example is the one the docs walk through (examples/plugin_task.py, examples/my-experiment.yaml),
shrunk to a few steps. The entry point is real: a `*.dist-info` directory on PYTHONPATH, read by
importlib.metadata in the subprocess."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, groklab_cli

from groklab.config import PluginError, RunConfig, TaskConfig, load_config
from groklab.config.plugins import resolve_plugin
from groklab.errors import ConfigError
from groklab.measures import MEASURES, register_measure
from groklab.store import Run
from groklab.tasks import TASKS, register_task

EXAMPLE = ROOT / "examples" / "my-experiment.yaml"
PLUGIN = ROOT / "examples" / "plugin_task.py"
KILL_AT = Path(__file__).with_name("kill_at.py")
FEW = [  # the example at p = 7, a small transformer, 20 steps: machinery, not grokking
    *("--set", "task.p=7", "--set", "model.d_model=32", "--set", "model.n_heads=2", "--set", "model.d_head=16"),
    *("--set", "model.d_mlp=64", "--set", "train.max_steps=20", "--set", "train.eval_every=10"),
    *("--set", "train.checkpoint_every=10", "--set", "measures.every=10", "--set", "train.early_stop=null"),
]


def one_error_line(result: subprocess.CompletedProcess, *names: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("groklab: error: plugin"), result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


# --- the worked example, end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> Path:
    """The example, killed after its first checkpoint (run from a directory that is not the config's), then
    resumed from yet another directory: `--resume` finds the plugin through the run's config.yaml."""
    work = tmp_path_factory.mktemp("work")
    out = work / "run"
    cmd = [sys.executable, str(KILL_AT), "checkpoint", "2", "groklab", "run", str(EXAMPLE), *FEW, "--out", str(out)]
    subprocess.run(cmd, capture_output=True, cwd=work, timeout=300)
    assert Run(out).summary.get("status") != "finished"
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = groklab_cli("run", "--resume", str(out), "-q", "--no-report", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    return out


def test_the_example_runs_resumes_and_records_its_plugin(example_run):
    run = Run(example_run)
    assert run.summary["status"] == "finished" and run.summary["step"] == 20
    stored = yaml.safe_load((example_run / "config.yaml").read_text())
    assert stored["plugins"] == [str(PLUGIN)]  # the file, relative to the config, stored absolute
    assert stored["task"]["name"] == "xy_x_y"
    m = run.metrics
    assert list(m["step"]) == [0, 10, 20]
    assert m["symmetry"].between(0, 1).all()  # the plugin's measure set, at every measure step
    assert run.task.name == "xy_x_y" and len(run.task.train) + len(run.task.test) == 49


def test_measure_and_report_find_the_plugin(example_run, tmp_path):
    before = Run(example_run).metrics["symmetry"]
    result = groklab_cli("measure", str(example_run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(Run(example_run).metrics["symmetry"]) == list(before)  # recomputed from the checkpoints
    result = groklab_cli("report", str(example_run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (example_run / "report.html").is_file()
    # the plugin's measure is drawn (with the other columns no built-in figure draws), each column once
    from groklab.report import build_report

    _, figures = build_report([Run(example_run)])
    other = [t.column for f in figures if f.key.startswith("other") for p in f.panels for t in p.traces]
    rest = {t.column for f in figures if not f.key.startswith("other") for p in f.panels for t in p.traces}
    assert "symmetry" in other and len(other) == len(set(other)) and not set(other) & rest


def test_a_sweep_of_the_example_in_worker_processes_then_compare(tmp_path):
    out = tmp_path / "sweep"
    result = groklab_cli("sweep", str(EXAMPLE), "--seeds", "0-1", "--workers", "2", "--out", str(out), *FEW)
    assert result.returncode == 0, result.stderr
    runs = [Run(out / "runs" / f"seed_{s:04d}") for s in (0, 1)]
    assert [r.summary["status"] for r in runs] == ["finished", "finished"]
    assert all("symmetry" in r.metrics for r in runs)
    result = groklab_cli(
        "compare", str(out), str(out), "--labels", "a,b", "--no-maps", "--min-runs", "2", "-o", str(tmp_path / "c.html")
    )
    assert result.returncode == 0, result.stderr


# --- an installed plugin: an entry point -----------------------------------------------------------------

INSTALLED = '''
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict

import groklab
from groklab.tasks import Split, Task, split_indices


class SubParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    p: int = 7


@groklab.register_task("ep_sub", SubParams)
def build(params, seed):
    p = params.p
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    tokens, answers = torch.stack([a, b, torch.full_like(a, p)], 1), (a - b) % p
    train, test = split_indices(len(answers), 0.5, seed, "random")
    vocab = (*map(str, range(p)), "=")
    return Task("ep_sub", Split(tokens[train], answers[train], train), Split(tokens[test], answers[test], test), p, vocab)


class BagConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    d_vocab: int
    n_ctx: int
    d_model: int = 16


@groklab.register_model(
    "bag",
    BagConfig,
    from_task=lambda task, params: {"d_vocab": task.d_vocab, "n_ctx": task.n_ctx},
    sizes=("d_vocab", "n_ctx"),
    sequence=True,
)
class Bag(nn.Module):
    """Embeddings of the tokens, concatenated, through an MLP: logits (batch, d_vocab) at any `at`."""

    def __init__(self, cfg, seed):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
            self.mlp = nn.Sequential(nn.Linear(cfg.n_ctx * cfg.d_model, 64), nn.ReLU(), nn.Linear(64, cfg.d_vocab))

    def forward(self, tokens, at=-1):
        return self.mlp(self.embed(tokens).flatten(1))  # (batch, d_vocab)
'''


def install(site: Path, dist: str, module: str, source: str) -> None:
    """A distribution as pip leaves it: the module, and NAME-VERSION.dist-info with its entry point."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[groklab.plugins]\n{dist} = {module}\n")


def env_with(site: Path, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **extra}


def test_an_installed_plugin_brings_its_task_and_model(tmp_path):
    site = tmp_path / "site"
    install(site, "groklab_demo", "groklab_demo_plugin", INSTALLED)
    config = tmp_path / "bag.yaml"
    config.write_text(
        "task: {name: ep_sub, p: 7}\nmodel: {arch: bag, d_model: 8}\n"
        "train: {max_steps: 10, eval_every: 5, checkpoint_every: 5, early_stop: null}\n"
        "measures: {every: 5, names: [weights]}\n"
    )
    out = tmp_path / "run"
    result = groklab_cli("run", str(config), "--out", str(out), "-q", "--no-report", env=env_with(site))
    assert result.returncode == 0, result.stderr
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["plugins"] == [] and stored["model"] == {"arch": "bag", "d_model": 8}
    result = groklab_cli("measure", str(out), env=env_with(site))  # a new process finds it again
    assert result.returncode == 0, result.stderr
    # not installed here: the run names a task nobody registered
    result = groklab_cli("measure", str(out))
    assert result.returncode == 2 and "ep_sub" in result.stderr


def test_a_broken_installed_plugin_is_named_and_can_be_skipped(tmp_path):
    site = tmp_path / "site"
    install(site, "groklab_broken", "groklab_broken_plugin", "raise RuntimeError('no licence server')\n")
    args = ("run", str(EXAMPLE), *FEW, "--set", "train.max_steps=1", "-q", "--no-report")
    result = groklab_cli(*args, "--out", str(tmp_path / "a"), env=env_with(site))
    line = one_error_line(result, "'groklab_broken'", "groklab_broken_plugin", "RuntimeError: no licence server")
    assert "GROKLAB_DISABLE_PLUGIN_AUTOLOAD" in line
    assert not (tmp_path / "a").exists()
    skip = env_with(site, GROKLAB_DISABLE_PLUGIN_AUTOLOAD="1")
    result = groklab_cli(*args, "--out", str(tmp_path / "b"), env=skip)
    assert result.returncode == 0, result.stderr


# --- plugins that cannot be used ------------------------------------------------------------------------

BROKEN = {
    "import_error": (
        "import groklab_no_such_module\n",
        "ModuleNotFoundError: No module named 'groklab_no_such_module'",
    ),
    "syntax_error": ("def build(:\n", "SyntaxError"),
    "raises": ("x = 1\nraise ValueError('p must be odd')\n", "ValueError: p must be odd (at {file}:2)"),
    "bad_params": (
        "import groklab\n@groklab.register_task('plain', dict)\ndef build(params, seed): ...\n",
        "task 'plain': params must be a pydantic BaseModel subclass",
    ),
    "clash": (
        "import groklab\nfrom pydantic import BaseModel\n\nclass P(BaseModel):\n    p: int = 5\n\n"
        "@groklab.register_task('add', P)\ndef build(params, seed): ...\n",
        "task 'add' is a built-in task (groklab.tasks.modular); register yours under another name",
    ),
    "bad_measure": (
        "import groklab\n@groklab.register_measure('m')\ndef m(model, task, sample): ...\n",
        "measure set 'm': compute takes 'sample', which a measure is not given",
    ),
    "measure_check": ("import groklab\ngroklab.register_measure('m', check=3)\n", "check must be a function"),
    "bad_model": (
        "import groklab\nfrom pydantic import BaseModel\n\nclass C(BaseModel):\n    d: int = 1\n\n"
        "@groklab.register_model('m', C, from_task=lambda t, p: {}, sizes=('d_vocab',), sequence=True)\n"
        "def build(cfg, seed): ...\n",
        "model 'm': size 'd_vocab' is not a field of C",
    ),
}


def broken_config(tmp_path: Path, case: str) -> Path:
    source, _ = BROKEN[case]
    (tmp_path / f"{case}.py").write_text(source)
    config = tmp_path / f"{case}.yaml"
    config.write_text(f"plugins: [{case}.py]\ntask: {{name: add, p: 7}}\n")
    return config


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_one_config_error_naming_it(tmp_path, case):
    config = broken_config(tmp_path, case)
    with pytest.raises(PluginError) as err:
        load_config(str(config))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"plugin '{tmp_path / case}.py'")
    assert BROKEN[case][1].format(file=f"{case}.py") in message


@pytest.mark.parametrize("case", ["import_error", "bad_params", "clash"])
def test_the_cli_exits_2_with_one_line_and_makes_no_run_directory(tmp_path, case):
    config = broken_config(tmp_path, case)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = groklab_cli("run", str(config), "--out", str(tmp_path / "run"), cwd=cwd)
    one_error_line(result, f"{case}.py", BROKEN[case][1])
    assert not (tmp_path / "run").exists() and not any(cwd.iterdir())


def test_missing_plugins_are_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("plugins: [sub/none.py, groklab_not_a_module]\ntask: {name: add}\n")
    with pytest.raises(PluginError, match=f"plugin file not found: {tmp_path / 'sub' / 'none.py'}"):
        load_config(str(config))
    config.write_text("plugins: [groklab_not_a_module]\ntask: {name: add}\n")
    with pytest.raises(PluginError, match="plugin 'groklab_not_a_module' failed to import: ModuleNotFoundError"):
        load_config(str(config))


# --- where plugins are found, and registration -----------------------------------------------------------


def test_paths_are_relative_to_the_config_file_or_else_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_plugin("mypkg.tasks") == "mypkg.tasks"  # a module name, as written
    assert resolve_plugin("x.py") == str(tmp_path / "x.py")
    assert resolve_plugin("../x.py", base=tmp_path / "a") == str(tmp_path / "x.py")
    # the example named by --set: relative to the working directory
    monkeypatch.chdir(ROOT)
    config = load_config("quick", ["plugins=[examples/plugin_task.py]", "task.name=xy_x_y"])
    assert config.plugins == (str(PLUGIN),)
    # in Python: RunConfig imports what it names, and the same file twice is imported once
    config = RunConfig(plugins=["examples/plugin_task.py"], task=TaskConfig(name="xy_x_y"))
    assert config.plugins == (str(PLUGIN),) and "xy_x_y" in TASKS and "symmetry" in MEASURES


def test_registration_refuses_a_taken_name_but_not_the_same_function_again():
    from pydantic import BaseModel

    class P(BaseModel):
        pass

    def build(params, seed): ...

    register_task("test_plugins_task", P)(build)
    register_task("test_plugins_task", P)(build)  # its module imported again: replaced
    with pytest.raises(ConfigError, match="already registered by"):
        register_task("test_plugins_task", P)(lambda params, seed: None)
    with pytest.raises(ConfigError, match="built-in measure set"):
        register_measure("weights")(lambda model, task: {})

    @register_measure("test_plugins_measure")
    def measure(model, task, cfg, key_freqs=None, scale=2):
        return {"n": scale, "cfg": cfg, "freqs": key_freqs}

    assert MEASURES["test_plugins_measure"].compute("model", "task", "cfg", [1]) == {"n": 2, "cfg": "cfg", "freqs": [1]}
