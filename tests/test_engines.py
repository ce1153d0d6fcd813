"""Sweeps on other engines, for real: a Ray cluster started here (`ray start --head`), and SLURM's code path
through submitit's local executor. Each checks the finished runs against the same sweep run locally."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import groklab_cli
from test_cli import bad
from test_sweep import PARITY, parity_config

from groklab.store import Run, SweepDir
from groklab.sweep import sweep
from groklab.sweep.engines.slurm import slurm_parameters

ray = pytest.importorskip("ray", reason="the README's test command installs groklab[ray]")
submitit = pytest.importorskip("submitit", reason="the README's test command installs groklab[slurm]")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head node on a free local port, in a temporary directory; stopped (its whole process
    group) at the end. Yields its address."""
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--temp-dir={tmp}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` itself may not exit on it: SIGKILL after 3 s
    try:
        head.wait(3)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    subprocess.run(["pkill", "-9", "-f", tmp], check=False)


@pytest.fixture(scope="module")
def local_parity(tmp_path_factory):
    """The reference: seeds 0-3 of the tiny parity config swept locally, one run per process."""
    out = tmp_path_factory.mktemp("local") / "s"
    return sweep(parity_config(max_steps=160), [0, 1, 2, 3], out, workers=2, threads=1)


# the hu-sparse-parity preset cut to 3200 steps: a few seconds a run, long enough to stop it part-way
SLOW = [
    "--set",
    "train.max_steps=3200",
    "--set",
    "train.checkpoint_every=160",
    "--set",
    "train.eval_every=4",
    "--set",
    "measures.every=4",
]


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory):
    from groklab.config import load_config

    out = tmp_path_factory.mktemp("slow") / "s"
    return sweep(load_config("hu-sparse-parity", [s for s in SLOW if s != "--set"]), [0, 1], out, workers=2, threads=1)


def same_runs(sweep_dir: SweepDir, reference: SweepDir, seeds, batched: bool = False) -> None:
    """The same metrics, every column. Runs trained one per process: equal. Runs trained in a batch against
    runs trained alone: equal to float32 rounding — a batched matrix product may round differently from a
    single one (Intel MKL does, AMD's path did not: `trace`, a sum that nearly cancels, 6.69542e-4 vs
    6.69570e-4 after 160 steps on an Intel Xeon)."""
    for seed in seeds:
        run, ref = Run(sweep_dir.run_path(seed)), Run(reference.run_path(seed))
        assert run.status == ref.status == "finished", (seed, run.status)
        tolerance = {"rtol": 1e-4, "atol": 1e-6} if batched else {}
        pd.testing.assert_frame_equal(
            run.metrics.drop(columns="elapsed_s"), ref.metrics.drop(columns="elapsed_s"), **tolerance
        )
        assert set(ref.steps) <= set(run.steps)  # and the checkpoint an interrupted run saved where it stopped


def test_a_ray_sweep_equals_the_local_sweep(ray_cluster, local_parity, tmp_path):
    """Runs and a batch of runs, each a Ray task on the cluster: the same metrics, every column, as locally."""
    out = tmp_path / "ray"
    result = groklab_cli(
        "sweep",
        "hu-sparse-parity",
        *PARITY,
        "--set",
        "train.max_steps=160",
        "--seeds",
        "0-3",
        "--on",
        "ray",
        "--address",
        ray_cluster,
        "--threads",
        "1",
        "--batch",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "on ray" in result.stderr and "seed 3: finished" in result.stderr
    same_runs(SweepDir.open(out), local_parity, range(4), batched=True)
    assert "pid" in (out / "logs").iterdir().__next__().read_text()  # the unit's output, from its Ray worker


def _wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _steps(path: Path) -> list[int]:
    try:
        return Run(path).steps if (path / "config.yaml").is_file() else []
    except Exception:  # a file being written
        return []


def test_a_ray_worker_killed_mid_run_is_retried_and_resumes(ray_cluster, slow_reference, tmp_path):
    """SIGKILL the Ray worker process that trains a run: Ray runs the task again (a new worker), the run resumes
    from its checkpoint and ends with the metrics of an uninterrupted run."""
    out = tmp_path / "ray"
    driver = subprocess.Popen(
        [
            str(BIN / "groklab"),
            "sweep",
            "hu-sparse-parity",
            *SLOW,
            "--seeds",
            "0",
            "--on",
            "ray",
            "--address",
            ray_cluster,
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = out / "logs" / "seed_0000.log"
    _wait_for(
        lambda: log.is_file() and "pid" in log.read_text() and len(_steps(out / "runs" / "seed_0000")) >= 3,
        "the run's third checkpoint",
    )
    pid = int(re.findall(r"pid (\d+)", log.read_text())[0])
    os.kill(pid, signal.SIGKILL)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    pids = re.findall(r"pid (\d+)", log.read_text())
    assert len(pids) == 2 and pids[1] != pids[0]  # ran again, in another worker process
    same_runs(SweepDir.open(out), slow_reference, [0])


def test_a_ray_sweep_stops_on_ctrl_c_and_resumes_after_its_driver_dies(ray_cluster, slow_reference, tmp_path):
    """Ctrl-C: the runs checkpoint and stop, the command says how to continue; the driver killed outright:
    re-running the command resumes. The end: the runs of the same sweep run locally."""
    out = tmp_path / "ray"
    args = [
        str(BIN / "groklab"),
        "sweep",
        "hu-sparse-parity",
        *SLOW,
        "--seeds",
        "0-1",
        "--on",
        "ray",
        "--address",
        ray_cluster,
        "--threads",
        "1",
        "--out",
        str(out),
    ]

    def running(before: int) -> bool:  # a run trains and has checkpointed since `before` checkpoints
        return any(
            Run(p).status == "running" and len(_steps(p)) >= before + 2
            for p in (out / "runs").glob("seed_*")
            if (p / "config.yaml").is_file()
        )

    before = 0
    for stop in (signal.SIGINT, signal.SIGKILL):
        driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: (out / "runs").is_dir() and running(before), "a running run")  # noqa: B023 (called at once)
        driver.send_signal(stop)
        _, stderr = driver.communicate(timeout=300)
        if stop == signal.SIGINT:
            assert driver.returncode == 130 and "run the same command again to continue" in stderr, stderr
            statuses = {Run(p).status for p in (out / "runs").glob("seed_*")}
            assert "interrupted" in statuses and "running" not in statuses, statuses
            before = max(len(_steps(p)) for p in (out / "runs").glob("seed_*"))
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    same_runs(SweepDir.open(out), slow_reference, [0, 1])


def test_groklab_show_prints_the_live_table_of_a_running_sweep(tmp_path):
    """From another terminal while a sweep runs: each run's status, step of max steps, steps/s, time left,
    and the totals line."""
    out = tmp_path / "s"
    driver = subprocess.Popen(
        [
            str(BIN / "groklab"),
            "sweep",
            "hu-sparse-parity",
            "--set",
            "train.max_steps=200000",
            "--seeds",
            "0",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = out / "runs" / "seed_0000"
    try:
        _wait_for(lambda: len(_steps(run)) >= 2 and Run(run).status == "running", "a running run")
        show = groklab_cli("show", str(out))
    finally:
        driver.send_signal(signal.SIGINT)
        driver.communicate(timeout=300)
    assert show.returncode == 0, show.stderr
    lines = show.stdout.splitlines()
    assert lines[0].split() == ["seed", "status", "step", "metric", "value", "steps/s", "left"]
    assert lines[1].split()[:2] == ["0", "running"] and lines[1].split()[2].endswith("/200000")
    assert re.fullmatch(r"(\d+h\d\dm|\d+m\d\ds)", lines[1].split()[-1])  # time left, as a duration
    assert lines[-2].startswith("1 runs: 1 running;") and "steps/s running" in lines[-2]
    assert lines[-1].startswith("converged so far (test acc >= 0.9): ")
    assert Run(run).status == "interrupted"


def test_a_failed_run_on_ray_is_recorded_and_the_others_finish(ray_cluster, tmp_path):
    config = parity_config(max_steps=16)
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config.model_dump(mode="json"), [0, 1])
    broken = sweep_dir.run_path(1)
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text("this: [is not a run config")
    sweep(config, [0, 1], sweep_dir.path, on="ray", threads=1, engine=_ray(ray_cluster))
    table = pd.read_csv(sweep_dir.path / "table.csv").set_index("seed")
    assert table.loc[0, "status"] == "finished" and table.loc[1, "status"] != "finished"
    assert "exit code 2" in table.loc[1, "error"] and "seed_0001.log" in table.loc[1, "error"]
    assert "corrupt" in (sweep_dir.path / "logs" / "seed_0001.log").read_text()


def _ray(address):
    from groklab.sweep.engines import EngineOptions

    return EngineOptions(address=address)


def test_engine_errors(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    bad(
        [
            "sweep",
            "hu-sparse-parity",
            *PARITY,
            "--seeds",
            "0",
            "--on",
            "ray",
            "--address",
            f"127.0.0.1:{port}",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "r"),
        ],
        "no Ray cluster answers",
    )
    assert time.monotonic() - start < 30
    bad(
        ["sweep", "hu-sparse-parity", *PARITY, "--seeds", "0", "--on", "ray", "--out", str(tmp_path / "t")], "--threads"
    )
    bad(
        [
            "sweep",
            "hu-sparse-parity",
            *PARITY,
            "--seeds",
            "0",
            "--on",
            "slurm",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "s"),
        ],
        "no SLURM here",
    )
    bad(
        [
            "sweep",
            "hu-sparse-parity",
            *PARITY,
            "--seeds",
            "0",
            "--on",
            "submitit-local",
            "--threads",
            "1",
            "--time",
            "soon",
            "--out",
            str(tmp_path / "u"),
        ],
        "--time takes",
    )
    bad(
        [
            "sweep",
            "hu-sparse-parity",
            *PARITY,
            "--seeds",
            "0",
            "--on",
            "submitit-local",
            "--threads",
            "1",
            "--device",
            "tpu",
            "--out",
            str(tmp_path / "d"),
        ],
        "unknown device 'tpu'",
    )
    assert not any((tmp_path / d).exists() for d in "rtsud")  # nothing made for a sweep that cannot start


def test_a_sweep_through_submitit_equals_the_local_sweep(local_parity, tmp_path):
    """SLURM's path (one job array, two runs packed into each array task) through submitit's local executor."""
    out = tmp_path / "slurm"
    result = groklab_cli(
        "sweep",
        "hu-sparse-parity",
        *PARITY,
        "--set",
        "train.max_steps=160",
        "--seeds",
        "0-3",
        "--on",
        "submitit-local",
        "--runs-per-job",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    same_runs(SweepDir.open(out), local_parity, range(4))
    assert len(list((out / "slurm").glob("*_result.pkl"))) == 2  # two array tasks


def test_a_submitit_sweep_stops_on_ctrl_c_and_resumes(slow_reference, tmp_path):
    out = tmp_path / "slurm"
    args = [
        str(BIN / "groklab"),
        "sweep",
        "hu-sparse-parity",
        *SLOW,
        "--seeds",
        "0",
        "--on",
        "submitit-local",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = out / "runs" / "seed_0000"
    _wait_for(lambda: len(_steps(run)) >= 3 and Run(run).status == "running", "a running run")
    driver.send_signal(signal.SIGINT)  # the driver only, as the engine must pass it on
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 130 and "run the same command again to continue" in stderr, stderr
    assert Run(run).status == "interrupted"
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    same_runs(SweepDir.open(out), slow_reference, [0])


def test_a_local_sweep_killed_with_sigterm_stops_its_workers_and_resumes(slow_reference, tmp_path):
    """`kill DRIVER` (a scheduler, a shell): the driver asks its worker processes to checkpoint and stop, as
    for Ctrl-C — before, the driver died alone and its workers trained on, holding their runs' locks."""
    out = tmp_path / "local"
    args = [
        str(BIN / "groklab"),
        "sweep",
        "hu-sparse-parity",
        *SLOW,
        "--seeds",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = out / "runs" / "seed_0000"
    _wait_for(lambda: len(_steps(run)) >= 3 and Run(run).status == "running", "a running run")
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 130 and "run the same command again to continue" in stderr, stderr
    assert Run(run).status == "interrupted"  # its worker stopped and said so (it ends before the driver does)
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    same_runs(SweepDir.open(out), slow_reference, [0])


def test_a_background_sweep_stops_on_sigint_to_its_group_and_starts_no_more_units(tmp_path):
    """A shell starts `groklab sweep ... &` with SIGINT ignored; `kill -INT` to the job's group reached the
    workers (they checkpointed and stopped) but not the driver, which went on starting the next units."""
    out = tmp_path / "background"
    args = [str(BIN / "groklab"), "sweep", "hu-sparse-parity", *SLOW, "--seeds", "0-1", "--workers", "1"]
    driver = subprocess.Popen(
        [*args, "--threads", "1", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a background job's
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a shell leaves a background job
    )
    run = out / "runs" / "seed_0000"
    _wait_for(lambda: len(_steps(run)) >= 3 and Run(run).status == "running", "a running run")
    os.killpg(driver.pid, signal.SIGINT)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 130 and "run the same command again to continue" in stderr, stderr
    assert Run(run).status == "interrupted"
    assert "seed 1" not in stderr and not _steps(out / "runs" / "seed_0001")  # the next unit never started


def test_slurm_job_parameters_and_the_sbatch_script(tmp_path):
    """The options only a real cluster uses, as submitit writes them into the job array's sbatch script."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters("depths", threads=4, gpus=1, partition="gpu", time="1-02:30:00", mem_gb=7.5, max_jobs=5)
    assert params == {
        "job_name": "groklab-depths",
        "time": 1590,
        "cpus_per_task": 4,
        "signal_delay_s": 120,
        "stderr_to_stdout": True,
        "partition": "gpu",
        "mem": "8GB",
        "gpus_per_node": 1,
        "array_parallelism": 5,
    }
    script = _make_sbatch_string("python -m submitit.core._submit", tmp_path, map_count=50, **params)
    for line in (
        "--partition=gpu",
        "--time=1590",
        "--mem=8GB",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--array=0-49%5",
        "--job-name=groklab-depths",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {line}" in script, line
