"""``ebsr-upscale --ray``: the batch on Ray workers, end to end in subprocesses.

One test starts its own Ray (``--ray local``); the others join one small Ray instance that
this module starts once (2 CPUs, no dashboard, a 200 MB object store) by its address. The
outputs must be those of a local run byte for byte, with the same error lines and exit
codes; Ctrl-C and SIGTERM must stop the workers, leave no temporary file and exit 130.
Without Ray, ``--ray`` must say how to install it.
"""
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ebsr_basicsr.upscale.batch import WORKER_DIED, BatchOptions, plan_batch, run_batch
from ebsr_basicsr.upscale.imageio import write_image
from ebsr_basicsr.weights import available_scales, model_path

from test_imageio import photo
from test_upscale_cli import BAD, GOOD, StandInEngine, cli, make_inputs, run_cli, sha
from test_upscale_interrupts import Run, assert_interrupted, batch_inputs, check_clean_and_resume, in_the_model

pytestmark = pytest.mark.skipif(2 not in available_scales(), reason="no embedded x2 model")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs") / "in")


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory):
    """The reference: the same batch without Ray."""
    out = tmp_path_factory.mktemp("local") / "out"
    res = run_cli(inputs, "-o", out, "--scale", 2, "--threads", 1)
    assert res.returncode == 1, res.stderr
    return out, res


@pytest.fixture(scope="module")
def cluster():
    """The address of a small Ray instance started once for the module (and stopped after it)."""
    ray = pytest.importorskip("ray")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # the workers of this process's runs import the stand-in engines below from the tests folder
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, logging_level=logging.ERROR,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    for sig, handler in handlers.items():  # ray.init sets its own SIGTERM handler
        signal.signal(sig, handler)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def error_lines(stderr: str) -> list:
    return sorted(line for line in stderr.splitlines() if line.startswith("error:"))


def outputs(folder) -> dict:
    return {p.name: sha(p) for p in folder.iterdir()}


def test_a_local_ray_gives_the_outputs_of_a_local_run(inputs, local_run, tmp_path):
    pytest.importorskip("ray")
    reference, local = local_run
    out = tmp_path / "out"
    res = run_cli(inputs, "-o", out, "--scale", 2, "--ray", "local", "--workers", 2, "--threads", 1)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert outputs(out) == outputs(reference)  # byte for byte, the video included
    assert len(outputs(out)) == len(GOOD)
    assert error_lines(res.stderr) == error_lines(local.stderr)
    assert any("corrupt.png" in line and "truncated PNG" in line for line in error_lines(res.stderr)), res.stderr
    for name in BAD:
        assert sum(name in line for line in error_lines(res.stderr)) == 1, (name, res.stderr)
    assert res.stderr.splitlines()[-1].startswith(f"{len(GOOD)} done, 0 skipped, {len(BAD)} failed")


def test_skip_existing_on_a_cluster(inputs, local_run, cluster, tmp_path):
    reference, _ = local_run
    out = tmp_path / "out"
    res = run_cli(inputs, "-o", out, "--scale", 2, "--ray", cluster, "--workers", 2, "--threads", 1)
    assert res.returncode == 1, res.stderr
    assert outputs(out) == outputs(reference)
    (out / "cat_x2.png").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = run_cli(inputs, "-o", out, "--scale", 2, "--ray", cluster, "--threads", 1, "--skip-existing")
    assert res.returncode == 1, res.stderr
    assert res.stderr.splitlines()[-1].startswith(f"1 done, {len(GOOD) - 1} skipped, {len(BAD)} failed"), res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in kept} == kept
    assert outputs(out) == outputs(reference)
    # nothing left to do: Ray is not even needed
    res = run_cli(*(inputs / name for name in GOOD), "-o", out, "--scale", 2, "--ray", cluster, "--skip-existing")
    assert res.returncode == 0 and f"0 done, {len(GOOD)} skipped, 0 failed" in res.stderr, res.stderr


def test_threads_no_node_can_hold(inputs, cluster, tmp_path):
    res = run_cli(inputs / "cat.png", "-o", tmp_path / "out", "--scale", 2, "--ray", cluster, "--threads", 64)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: no node of the Ray cluster has 64 CPUs for a worker (--threads 64)"], res.stderr


def test_an_unreachable_cluster_is_one_line(inputs, tmp_path):
    pytest.importorskip("ray")
    res = run_cli(inputs / "cat.png", "-o", tmp_path / "out", "--ray", "127.0.0.1:9")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to the Ray cluster at 127.0.0.1:9"), lines


def test_help_tells_what_a_ray_run_needs():
    text = " ".join(cli(["--help"]).output.split())
    for part in ["--ray ADDRESS", "'local'", "'auto'", "ray://HOST:PORT", "reserves --threads CPUs",
                 "A video is done by one worker", "shared filesystem", 'pip install "ray[client]>=2.9"']:
        assert part in text, part


def test_a_bad_address_is_a_usage_error(inputs, tmp_path):
    res = run_cli(inputs / "cat.png", "-o", tmp_path / "out", "--ray", "not an address")
    assert res.returncode == 2 and "is not a Ray address" in res.stderr
    assert not (tmp_path / "out").exists()


BLOCK_RAY = """
import sys

class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoRay())
from ebsr_basicsr.cli.upscale import main
main()
"""


def test_without_ray_the_option_says_how_to_get_it(inputs, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", BLOCK_RAY, str(inputs / "cat.png"), "-o", str(out),
                          "--ray", "local"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: --ray needs Ray") and 'pip install "ray[client]>=2.9"' in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("sig,group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_signal_stops_the_workers(tmp_path, cluster, sig, group):
    """Ctrl-C reaches the command's process group (not the Ray workers, which have their own),
    SIGTERM the command only: either way the worker stops at a safe point and cleans up."""
    files = batch_inputs(tmp_path / "in")
    # b.png larger than in the local tests (tiled under 80M as the other under LIMIT): many
    # tiles, so that it is still running when the command hears of its tiles (the worker's
    # messages come by polling)
    base = np.tile(photo(80, 80, "astronaut"), (8, 8, 1)).astype(np.uint16) * 257
    write_image(files[1], base)
    model = model_path(2, "bicubic")  # the slower shipped family (RGB, 8 blocks): b.png takes seconds
    out = tmp_path / "out"
    run = Run(*files, "-o", out, "-m", model, "--memory-limit", "80M", "--ray", cluster, "--workers", 1,
              "--threads", 1, session=True)
    run.wait_for(in_the_model(run))
    run.signal(sig, group=group)
    assert_interrupted(run)
    assert check_clean_and_resume(out, files, model) == ["a_x2.png"]


# ------------------------------------------------------------------------------------------
# the executor in this process, with stand-in engines that break
# ------------------------------------------------------------------------------------------
class DiesOnTallImages(StandInEngine):
    """Kills its worker process on an image taller than 60 pixels (as the kernel would be killed
    for memory)."""

    def run(self, x):
        if x.shape[0] > 60:
            os._exit(3)
        return super().run(x)


def dying_loader():
    return DiesOnTallImages(2)


def failing_loader():
    raise ValueError("no model here")


def run_on_cluster(files, out, loader, workers=2):
    from ebsr_basicsr.upscale import cluster as executor
    opts = BatchOptions(output_dir=out)
    progress = []
    summary = run_batch(plan_batch(files, 2, opts), options=opts, engine_loader=loader, workers=workers, threads=1,
                        executor=executor.run_jobs, on_progress=progress.append)
    return {r.src.name: (r.status, r.reason) for r in summary.results}, sum(progress)


def test_a_worker_that_dies_fails_its_file_only(cluster, tmp_path):
    names = ["a.png", "tall.png", "c.png", "d.png"]
    for name in names:
        write_image(tmp_path / name, photo(80 if name == "tall.png" else 40, 48))
    out = tmp_path / "out"
    results, progress = run_on_cluster([tmp_path / n for n in names], out, dying_loader)
    assert results.pop("tall.png") == ("failed", WORKER_DIED)
    assert set(results.values()) == {("done", "")} and progress == 3  # the other worker did the rest
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "c_x2.png", "d_x2.png"]


def test_a_model_no_worker_can_load_fails_each_file(cluster, tmp_path):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, photo(40, 48))
    results, progress = run_on_cluster([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out", failing_loader)
    reason = "cannot load the model in a worker: ValueError: no model here"
    assert results == {"a.png": ("failed", reason), "b.png": ("failed", reason)} and progress == 0
    assert not (tmp_path / "out").exists()
