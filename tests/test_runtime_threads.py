"""Work on a passing thread, and the agent's model loaded on one: after `Agent.open()` the pipeline thread's
OpenMP pool is the process's only one, so its workers spin between kernels instead of being put to sleep
(see hgad/runtime/threads.py). Measured in a fresh process, by voluntary context switches per kernel: a
count, not a time, so a busy machine does not blur it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from hgad.runtime.threads import on_passing_thread

from .conftest import ROOT
from .test_agent_daemon import config_data

# In its own process: nothing may start torch's parallel work on the main thread before `Agent.open()`.
SCRIPT = """
import json, os, resource, sys, threading
import torch
torch.set_num_threads(len(os.sched_getaffinity(0)))  # every core: two pools then always outnumber them
from agent.config import parse_config
from agent.daemon import Agent

agent = Agent(parse_config(json.loads(open(sys.argv[1]).read())))
agent.open()

def switches_per_kernel(n=200):
    out = []
    def work():
        x = torch.ones(1 << 21)  # this thread's pool, as the pipeline's first frame makes it
        before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        for _ in range(n):
            x.exp()
        out.append((resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before) / n)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    return out[0]

after_open = switches_per_kernel()
torch.ones(1 << 21).exp()  # a pool on the main thread, as loading the model there would leave
with_main_pool = switches_per_kernel()
agent.engine.dispose()
print(json.dumps({"after_open": after_open, "with_main_pool": with_main_pool, "threads": torch.get_num_threads()}))
"""


def test_on_passing_thread_returns_the_result_from_another_thread():
    assert on_passing_thread(lambda: threading.current_thread().name, "worker") == "worker"
    assert threading.current_thread() is threading.main_thread()


def test_on_passing_thread_raises_the_callers_exception_here():
    def fail():
        raise ValueError("bad value")

    with pytest.raises(ValueError, match="bad value"):
        on_passing_thread(fail, "worker")


def test_after_open_the_pipeline_threads_pool_is_the_only_one(tmp_path, tiny_model, calibrated_db):
    config = config_data(tmp_path, tiny_model, calibrated_db, [("cam1", "fabric")])
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "config.json")], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts["threads"] >= 2, counts  # one core: no pools, nothing to measure
    # With a second pool the workers sleep after every kernel (about one switch per kernel or more); with
    # the pipeline's pool alone they spin and nearly never do.
    assert counts["with_main_pool"] >= 0.5, counts
    assert counts["after_open"] <= counts["with_main_pool"] / 10, counts
