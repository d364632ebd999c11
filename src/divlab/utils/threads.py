"""Torch intra-op threads of a run (`threads` in conf/train.yaml), set before anything is built.

`threads: auto` shares the machine's cores among the runs that go at once: OMP_NUM_THREADS when the user
(or a parent process) set it, else max(1, cores // jobs), where cores are the CPUs this process may use and
jobs is $DIVLAB_JOBS (the table script sets it for its cell subprocesses) or, under Hydra multirun, the
launcher's n_jobs (joblib-style launchers), else 1. A task's own thread key (mix_lm.threads,
one_step.torch_threads, ...) is applied later by its builder and wins for that task.
"""

import os

from divlab.errors import ConfigError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _positive_int(value, key: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return number


def parallel_jobs() -> int:
    """How many runs share this machine now: $DIVLAB_JOBS, else the multirun launcher's n_jobs, else 1."""
    if os.environ.get("DIVLAB_JOBS"):
        return _positive_int(os.environ["DIVLAB_JOBS"], "the environment variable DIVLAB_JOBS")
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
        if isinstance(n_jobs, int) and n_jobs > 0:
            return n_jobs
    return 1


def choose_threads(setting) -> int | None:
    """The thread count for `threads: <setting>` (None: leave torch's default)."""
    if setting is None:
        return None
    if setting == "auto":
        if os.environ.get("OMP_NUM_THREADS"):
            return _positive_int(os.environ["OMP_NUM_THREADS"], "the environment variable OMP_NUM_THREADS")
        return max(1, available_cores() // parallel_jobs())
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"threads must be auto, null or a positive integer, got {setting!r}")
    return setting


def apply_threads(setting) -> int | None:
    """torch.set_num_threads(choose_threads(setting)); returns the count set (None: untouched)."""
    import torch

    threads = choose_threads(setting)
    if threads is not None:
        torch.set_num_threads(threads)
    return threads
