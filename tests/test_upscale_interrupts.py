"""Stopping ``ebsr-upscale`` with Ctrl-C (SIGINT) or SIGTERM, in the library and end to end.

The end-to-end tests run the real command with an embedded model in a subprocess, wait until
it reaches a given moment of a batch (reading an input, running the model, writing an
output), send the signal, and check that the run ends with "interrupted" and exit status 130,
leaves no temporary file and no partial output, and that ``--skip-existing`` then completes
the batch. The moments are found from outside: a named pipe as a slow input, the outputs
appearing, the temporary file of an output being written.
"""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ebsr_basicsr.upscale import interrupts
from ebsr_basicsr.upscale.batch import BatchOptions, plan_batch, process_job, run_batch
from ebsr_basicsr.upscale.imageio import read_image, write_image
from ebsr_basicsr.weights import available_scales, default_model_path

from test_imageio import photo
from test_upscale_cli import StandInEngine, make_video

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# library: signals are recorded and acted upon at safe points
# ------------------------------------------------------------------------------------------
def test_a_signal_is_recorded_then_raised_at_a_safe_point():
    with interrupts.handle_signals():
        assert signal.getsignal(signal.SIGINT) is interrupts.record
        interrupts.check()  # nothing pending
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between bytecodes: it must not raise by itself
        assert interrupts.pending() == signal.SIGINT
        with pytest.raises(interrupts.Interrupted) as info:
            interrupts.check()
        assert info.value.signum == signal.SIGINT and isinstance(info.value, KeyboardInterrupt)
        # a second signal while one is pending stops at once
        with pytest.raises(interrupts.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert interrupts.pending() is None


def test_an_ignored_signal_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handle_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is interrupts.record
    finally:
        signal.signal(signal.SIGINT, old)


def test_an_error_from_the_engine_while_a_signal_is_pending_is_the_interrupt(tmp_path):
    """What a SIGINT inside a Numba kernel looks like: the dispatcher returns with an exception
    set (SystemError). It must stop the run, not count as a failed file."""
    src = tmp_path / "a.png"
    write_image(src, photo())

    class Kernel(StandInEngine):
        def run(self, x):
            interrupts.record(signal.SIGINT)
            raise SystemError("CPUDispatcher(<function binary_conv2d>) returned a result with an exception set")

    opts = BatchOptions(output_dir=tmp_path / "out")
    plan = plan_batch([src], 2, opts)
    with interrupts.handle_signals():
        with pytest.raises(interrupts.Interrupted):
            process_job(Kernel(), plan.jobs[0], opts)
        interrupts.reset()
        # without a pending signal the same error is a failed file, and the batch goes on
        class Broken(StandInEngine):
            def run(self, x):
                raise SystemError("something else")
        res = process_job(Broken(), plan.jobs[0], opts)
        assert res.status == "failed" and "SystemError" in res.reason
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_interrupted_video_keeps_nothing(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=6)
    frames = tmp_path / "frames"

    class Slow(StandInEngine):
        def run(self, x):
            if len(self.calls) == 3:
                interrupts.record(signal.SIGTERM)
            return super().run(x)

    opts = BatchOptions(output_dir=tmp_path / "out", frames_dir=frames, ffmpeg=None)
    with interrupts.handle_signals():
        with pytest.raises(interrupts.Interrupted):
            run_batch(plan_batch([src], 2, opts), Slow(), options=opts)
    assert list((tmp_path / "out").iterdir()) == []
    assert not frames.exists() or not list(frames.rglob("*"))  # frames written so far are removed


# ------------------------------------------------------------------------------------------
# end to end: the real command in a subprocess
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    scales = available_scales()
    if not scales:
        pytest.skip("no embedded model")
    return default_model_path(2 if 2 in scales else scales[0])


class Run:
    """``ebsr-upscale ARGS`` in a subprocess whose stderr is collected as it comes."""

    def __init__(self, *args, session=False):
        def child():
            # a test runner started in the background ignores SIGINT, and children inherit
            # that; the command must see Ctrl-C as a user's shell delivers it
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        self.proc = subprocess.Popen([sys.executable, "-m", "ebsr_basicsr.cli.upscale", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=child, start_new_session=session)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, condition, timeout=120.0, step=0.002):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the command ended before the moment: {self.lines}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the moment never came: {self.lines}")
            time.sleep(step)

    def signal(self, sig, group=False):
        if group:  # what a terminal does on Ctrl-C: the whole foreground process group
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def finish(self, timeout=120):
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc


def batch_inputs(folder: Path) -> list:
    """Three images: a small one, a larger one (16-bit RGBA, tiled under LIMIT: many model
    runs, and a large output to write), and a small one."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "a.png", photo(40, 48, "chelsea"))
    base = np.tile(photo(80, 80, "astronaut"), (4, 4, 1)).astype(np.uint16) * 257
    alpha = np.tile(np.linspace(0, 65535, 320).astype(np.uint16), (320, 1))
    write_image(folder / "b.png", np.dstack([base + np.arange(320, dtype=np.uint16)[None, :, None], alpha]))
    write_image(folder / "c.png", photo(40, 48, "coffee"))
    return [folder / n for n in ("a.png", "b.png", "c.png")]


#: memory budget under which b.png is processed in 16 tiles (a.png and c.png whole)
LIMIT = "40M"


def in_the_model(run: Run, name: str = "b.png"):
    """The moment the automatic tiles of ``name`` are announced: its model runs follow."""
    return lambda: any(name in line and "automatic tiles" in line for line in run.lines)


def check_clean_and_resume(out: Path, files, model):
    """No temporary files, every output complete; then --skip-existing does the rest."""
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    done = sorted(p.name for p in out.iterdir())
    for name in done:
        src = read_image(next(f for f in files if f.stem + "_x2.png" == name))
        assert read_image(out / name).shape[:2] == (src.shape[0] * 2, src.shape[1] * 2), name
    resume = Run(*files, "-o", out, "-m", model, "--skip-existing")
    assert resume.finish() == 0, resume.lines
    assert resume.lines[-1].startswith(f"{len(files) - len(done)} done, {len(done)} skipped, 0 failed"), resume.lines
    assert sorted(p.name for p in out.iterdir()) == sorted(f.stem + "_x2.png" for f in files)
    return done


def assert_interrupted(run: Run):
    rc = run.finish()
    assert rc == 130, (rc, run.lines)
    assert run.lines[-1] == "interrupted", run.lines
    assert not any("Traceback" in ln or ln.startswith("error:") for ln in run.lines), run.lines


def test_ctrl_c_while_reading_an_input(tmp_path, model):
    """The second input is a named pipe fed slowly: the signal comes while it is being read."""
    files = batch_inputs(tmp_path / "in")
    fifo = tmp_path / "in" / "slow.png"
    os.mkfifo(fifo)
    data = (tmp_path / "in" / "c.png").read_bytes()
    out = tmp_path / "out"
    run = Run(files[0], fifo, files[2], "-o", out, "-m", model)
    fd = []

    def opened():  # the command has opened the pipe (after a.png): there is a reader
        try:
            fd.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader yet
            return False
        os.set_blocking(fd[0], True)
        return True
    run.wait_for(opened)
    with open(fd[0], "wb") as pipe:
        pipe.write(data[:100])
        pipe.flush()
        run.wait_for(lambda: (out / "a_x2.png").exists())
        time.sleep(0.2)
        run.signal(signal.SIGINT)
        time.sleep(0.2)
        pipe.write(data[100:])
    assert_interrupted(run)
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png"]
    os.unlink(fifo)
    (tmp_path / "in" / "slow.png").write_bytes(data)
    check_clean_and_resume(out, [files[0], tmp_path / "in" / "slow.png", files[2]], model)


def test_ctrl_c_inside_the_model(tmp_path, model):
    files = batch_inputs(tmp_path / "in")
    out = tmp_path / "out"
    run = Run(*files, "-o", out, "-m", model, "--memory-limit", LIMIT)
    run.wait_for(in_the_model(run))
    run.signal(signal.SIGINT)
    assert_interrupted(run)
    assert check_clean_and_resume(out, files, model) == ["a_x2.png"]


def test_ctrl_c_while_writing_an_output(tmp_path, model):
    files = batch_inputs(tmp_path / "in")
    out = tmp_path / "out"
    run = Run(*files, "-o", out, "-m", model)
    run.wait_for(lambda: out.is_dir() and any(p.name.startswith(".b_x2.png.") for p in out.iterdir()))
    run.signal(signal.SIGINT)
    assert_interrupted(run)
    # b_x2.png is complete or absent, never partial; c.png was not started
    assert check_clean_and_resume(out, files, model) in (["a_x2.png"], ["a_x2.png", "b_x2.png"])


def test_sigterm_inside_the_model(tmp_path, model):
    files = batch_inputs(tmp_path / "in")
    out = tmp_path / "out"
    run = Run(*files, "-o", out, "-m", model, "--memory-limit", LIMIT)
    run.wait_for(in_the_model(run))
    run.signal(signal.SIGTERM)
    assert_interrupted(run)
    assert check_clean_and_resume(out, files, model) == ["a_x2.png"]


@pytest.mark.parametrize("sig,group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_signal_with_two_workers(tmp_path, model, sig, group):
    """Ctrl-C reaches the parent and its workers (the process group); SIGTERM only the parent,
    which stops the workers itself. Either way the workers clean up."""
    files = batch_inputs(tmp_path / "in")
    out = tmp_path / "out"
    run = Run(*files, "-o", out, "-m", model, "--workers", 2, "--threads", 1, "--memory-limit", LIMIT,
              session=True)
    run.wait_for(in_the_model(run))
    run.signal(sig, group=group)
    assert_interrupted(run)
    done = check_clean_and_resume(out, files, model)
    assert "b_x2.png" not in done


def test_a_worker_stopped_while_loading_its_engine_leaves_after_loading():
    """SIGTERM that reaches a worker while it loads the model (Numba loading its cache, through
    ctypes callbacks that would print an exception raised there as a traceback) is held until
    loading is over; then the worker leaves without the traceback a process pool logs for an
    initializer that raises, and the pool reports it stopped."""
    code = """if True:
        import multiprocessing, os, signal
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool
        from ebsr_basicsr.upscale import batch

        def loader():
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(100000))  # bytecodes for the handler to run between
            print("loaded", flush=True)
            return object()

        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=batch._worker_init,
                                 initargs=(loader, None, (), 1, 30, ctx.Queue())) as pool:
            try:
                pool.submit(pow, 2, 2).result()
            except BrokenProcessPool:
                print("stopped", flush=True)
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "loaded\nstopped\n", "")
