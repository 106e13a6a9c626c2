"""The overlapped run loop of `kexport all` (api.run_targets when api.overlapped()).

Most verification happens in the runtimes' own processes (Node, gunicorn, the LiteRT child,
qemu, the JVM, Spark), so it can run beside the conversions instead of after each one:

- one worker thread converts the targets one after the other, in order (TensorFlow conversions
  never run two at a time);
- as soon as a target is converted, each (variant, runtime) check and the target's checks() go
  to a small pool of verifier threads;
- a runtime bound to the thread that started it (Chromium through Playwright:
  `Runtime.thread_bound`) is checked on this thread, while it waits for the next conversion;
- then, in target order, as soon as a target's verdicts are all in: its rows take them, its
  progress lines are printed as the sequential loop prints them, and it is swapped into
  OUT/<target>/ (never before its verdicts). Rows and report are the same as the sequential
  loop's (tests/test_overlap.py).

Nothing is checked less: each runtime gets exactly the call `check_artifact` would make.
"""

from __future__ import annotations

import functools
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

# Checks in flight beside the conversion. Most wait on another process, so a few more than the
# cores keeps them busy; more mostly adds memory (in-process runtimes hold a model each).
VERIFY_THREADS = 4


def run_overlapped(targets: list, ctx, out, options, say) -> list:
    from .api import convert_target, discard, finish_target

    convert_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kexport-convert")
    verify_pool = ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="kexport-verify")
    conversions = []
    for target in targets:
        lines: list[str] = []  # the converter's progress, replayed under the target's heading
        conversions.append((convert_pool.submit(convert_target, target, ctx, out, options, lines.append), lines))
    on_this_thread: list = []
    submitted = []  # (Converted, lines, per variant: [futures of parity-row lists] | None)
    rows: list = []
    finished = 0  # targets whose rows are in (and artifacts moved into place), in order

    def unfinished_jobs() -> list:
        return [] if finished == len(submitted) else [j for jobs in submitted[finished][2] if jobs for j in jobs]

    def finish_ready(block: bool) -> None:
        """Finish targets in order, as far as their verdicts are in (all of them when `block`):
        progress lines appear as the checks complete, in the sequential loop's order."""
        nonlocal finished
        while finished < len(submitted):
            if not block and not all(j.done() for j in unfinished_jobs()):
                return
            conv, lines, pending = submitted[finished]
            say(f"[{finished + 1}/{len(targets)}] {conv.target.name}")
            for line in lines:
                say(line)
            verdicts = [None if jobs is None else [row for job in jobs for row in job.result()] for jobs in pending]
            rows.extend(finish_target(conv, ctx, out, options, say, verdicts))
            finished += 1

    try:
        for future, lines in conversions:
            while not future.done():
                if on_this_thread:
                    on_this_thread.pop(0)()
                else:
                    wait([future, *(j for j in unfinished_jobs() if not j.done())], return_when=FIRST_COMPLETED)
                finish_ready(block=False)
            conv = future.result()  # a UsageError from a preflight stops the run, as sequentially
            submitted.append((conv, lines, _submit(conv, ctx, options, verify_pool, on_this_thread)))
            finish_ready(block=False)
        while on_this_thread:
            on_this_thread.pop(0)()
        finish_ready(block=True)
    finally:
        for future, _ in conversions:
            future.cancel()
        convert_pool.shutdown(wait=True, cancel_futures=True)
        verify_pool.shutdown(wait=True, cancel_futures=True)
        for future, _ in conversions:  # a run stopped early: nothing it converted stays behind
            if future.done() and not future.cancelled() and future.exception() is None:
                discard(future.result())
    return rows


def _submit(conv, ctx, options, pool: ThreadPoolExecutor, on_this_thread: list) -> list:
    """Per variant of a converted target: the futures of its parity rows, in the order the
    sequential loop produces them (each runtime of the target, then target.checks())."""
    from .api import _tolerance
    from .parity import check_artifact
    from .runtimes import get_runtime

    if conv.refused:
        return []
    target, topts = conv.target, conv.topts
    pending = []
    for row, art in conv.produced:
        if art is None or not options.verify:
            pending.append(None)
            continue
        tol = _tolerance(target, row.variant, topts, options)
        noise, note = target.conditioning(art)
        jobs = []
        for name in target.runtimes:
            job = functools.partial(check_artifact, art, [name], ctx.inputs, ctx.outputs, tol, noise=noise, note=note)
            if getattr(get_runtime(name), "thread_bound", False):
                jobs.append(Future())
                on_this_thread.append(functools.partial(_run_into, jobs[-1], job))
            else:
                jobs.append(pool.submit(job))
        jobs.append(pool.submit(target.checks, ctx, art, topts, tol))
        pending.append(jobs)
    return pending


def _run_into(future: Future, job) -> None:
    try:
        future.set_result(job())
    except BaseException as e:  # re-raised where the verdicts are collected  # noqa: BLE001
        future.set_exception(e)
