"""Rank programs for the launcher tests: `python -m launch_targets MODE [RANK]`."""

import os
import signal
import sys
import time

# Before this module imports anything: what the rank had when it started.
preloaded = "transformers.modeling_utils" in sys.modules
mode = sys.argv[1]
rank = int(os.environ["RANK"])
target = int(sys.argv[2]) if len(sys.argv) > 2 else -1
print(f"rank {rank} started", flush=True)
if mode == "group":
    # A job that leaves its process group to the worker, which must shut it down before exit.
    import atexit

    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    atexit.register(lambda: print(f"group open at exit: {dist.is_initialized()}", flush=True))
elif mode == "abort-in-finalization":
    # Stands in for a C++ destructor that aborts at interpreter exit (a joinable std::thread):
    # the job's work is done, so the worker must end the rank without finalizing.
    import types

    class AbortsWhenDestroyed:
        def __del__(self):
            os.abort()

    keeper = types.ModuleType("axolab_test_keeper")
    keeper.obj = AbortsWhenDestroyed()
    sys.modules[keeper.__name__] = keeper
    print(f"rank {rank} done", flush=True)
    from axolab.launch.rank_exit import exit_rank

    exit_rank(0)  # how axolab's job modules end, under the worker or torchrun directly
elif mode == "term":
    # A rank that saves on SIGTERM (as a training rank does) and is cut short by a second one.
    got = []
    signal.signal(signal.SIGTERM, lambda *_: got.append(1))
    print(f"rank {rank} ready", flush=True)
    while not got:
        time.sleep(0.05)
    time.sleep(1.0)  # "saving"; a second SIGTERM would arrive in here
    print(f"rank {rank} saved after {len(got)} SIGTERM", flush=True)
    sys.exit(3 if len(got) > 1 else 0)
elif mode == "report":
    import json

    import torch

    print("report " + json.dumps({
        "rank": rank, "preloaded": preloaded, "cwd": os.getcwd(), "argv": sys.argv,
        "marker": os.environ.get("AXOLAB_TEST_MARKER"), "threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid(), "ppid": os.getppid(),
        # The launcher's parent: the rank starter that forked it (or the caller).
        "starter": int(open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1])}),
        flush=True)
elif mode == "ok":
    print(f"hello from rank {rank}", flush=True)
elif rank == target and mode == "raise":
    time.sleep(0.5)
    raise ValueError(f"boom from rank {rank}")
elif rank == target and mode == "kill":
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
elif rank == target and mode == "abort":
    time.sleep(0.5)
    print("native code gave up", flush=True)
    os.abort()  # what a C++ std::terminate does: SIGABRT, no Python exception
else:
    time.sleep(300)  # a peer blocked in a collective that will never complete
