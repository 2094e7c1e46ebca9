"""Metric reductions over 2 real CPU processes (gloo) when the processes report different metric names: the
union of names is reduced (a rank without a name is left out of its mean and adds 0 to its sum), instead of
a collective over tensors of different lengths (gloo: "Received data size doesn't match expected size")."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.multiprocess]

SCRIPT = r'''
import json, sys
from accelerate import Accelerator
from rlkit.dist import close_process_group, mean_over_processes, sum_over_processes
acc = Accelerator()
assert acc.num_processes == 2, acc.num_processes
r = acc.process_index
metrics = {"loss": 1.0 + r, "only_rank0": 5.0} if r == 0 else {"loss": 3.0 + r, "only_rank1": float("nan")}
out = {"mean": mean_over_processes(acc, metrics), "sum": sum_over_processes(acc, {"n": 2.0 + r} if r else {}),
       "empty": mean_over_processes(acc, {})}
if r == 0:
    open(sys.argv[1], "w").write(json.dumps(out))
close_process_group()   # as the rlkit command does; without it a gloo rank may abort at exit (SIGABRT)
'''


def test_reductions_take_the_union_of_metric_names(tmp_path):
    script, result = tmp_path / "reduce.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29541", str(script), str(result)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(result.read_text())
    assert out["mean"]["loss"] == 2.5                       # (1 + 4) / 2
    assert out["mean"]["only_rank0"] == 5.0                 # rank 1 does not report it: not counted
    assert out["mean"]["only_rank1"] != out["mean"]["only_rank1"]   # NaN: no process had a finite value
    assert out["sum"] == {"n": 3.0} and out["empty"] == {}
