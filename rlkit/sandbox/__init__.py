"""Killable worker processes with limits, shared by tools and rewards.

``ProcessExecutor(limits, workers, name)`` keeps ``workers`` long-lived worker processes; ``submit(fn, kwargs)``
returns a ``concurrent.futures.Future`` that holds ``fn(**kwargs)``'s result or raises a SandboxError subclass:
SandboxTimeout (past ``timeout_s``; the worker was killed), SandboxCrash (the worker died, or did not start
within ``startup_timeout_s``), SandboxCallError (the function raised, ``"ExcType: message (at file:line in fn)"``;
or its arguments/result could not be pickled, or the result is over ``max_output_bytes``). ``fn`` is a
picklable callable (a module-level function) or a reference resolved and cached in the worker:
``"module:attr"``, ``"path/file.py:attr"`` (relative to the parent's working directory when the executor was
made) or a registered reward name. ``async def`` functions are run with ``asyncio.run``. A killed or crashed
worker is replaced (started again right after, ready for the next call); calls on other workers go on.
``ThreadExecutor`` has the same interface on daemon threads (only ``timeout_s`` applies, and a timed-out call
cannot be stopped: it leaks its thread). ``make_executor("process" | "thread", limits)`` builds either.

This is a resource and kill boundary, not a security sandbox: it stops runaway or buggy code (hangs, infinite
loops, memory blow-ups, segfaults, fork bombs for non-root users, stray network use) from hurting the training
run, but it does not contain hostile code. What holds:

* Wall clock: a call past ``timeout_s`` gets SIGKILL for the worker's whole process group (the worker is a
  session leader, so every child it started dies too, unless a child moved itself to another session/group
  with ``setsid``/``setpgid``). The clock starts once the function is loaded, so import time is not counted
  (loading has its own ``startup_timeout_s``). Processes a call leaves running when it *returns* are killed
  too (the worker is a child subreaper). Workers get SIGKILL when the parent process dies (PR_SET_PDEATHSIG).
* rlimits, set in the worker: RLIMIT_AS = ``memory_mb`` (address space, not resident memory: an allocation
  over it raises MemoryError in Python, native code may crash instead; importing torch or CUDA libraries
  needs several GB of address space), RLIMIT_CPU = CPU used so far + ``cpu_s`` per call (past it SIGXCPU kills
  the worker -> SandboxCrash), RLIMIT_NPROC = ``max_processes``, RLIMIT_CORE = 0. RLIMIT_NPROC counts every
  process and thread of the real user id, the trainer's included, so on a busy node a low value can make
  ``fork``/thread creation fail in the worker; it is not enforced at all for root (checked: 100 forks under
  ``max_processes=64`` as root succeed).
* Network: with ``no_network`` the worker calls ``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` (uid/gid mapped to
  themselves, so files stay yours), falling back to ``unshare(CLONE_NEWNET)`` (needs root), and brings the new
  namespace's loopback up: only 127.0.0.1 inside the worker is reachable, no DNS. ``network_isolated`` says
  whether it worked (``network_note`` how, or why not); if it did not, calls still run, with the network.
  Measured on the development machine (Linux 6.18, as root): True, "new user+network namespace; loopback up";
  the same call as an unprivileged user (uid 65534) also succeeded there. It fails where the kernel or a
  seccomp profile forbids new namespaces (Docker's default profile, ``user.max_user_namespaces = 0``, some
  Ubuntu AppArmor settings) and off Linux.
* ``fresh_workdir``: each call runs in a new empty temporary directory, removed after the call (also after a
  kill). Only the working directory is fresh.

What does not hold: the filesystem is not isolated (code can read and write anything the user can, absolute paths
included; checked: a call writes /tmp/... and reads /etc/hostname); the worker inherits the trainer's environment
variables (API tokens included) and GPUs; processes of the same user can be signalled (and, where ptrace rules
allow, traced); calls on one worker share its interpreter (imported modules, module globals) -- only the call's
own globals are fresh; output written to file descriptors 1/2 goes to the trainer's stdout/stderr. No seccomp, no
chroot, no cgroups. Run untrusted model code on machines and accounts where that is acceptable.

Workers are fresh interpreters (``subprocess`` fork+exec, as multiprocessing's "spawn" does -- safe beside
torch/vLLM threads -- without re-importing the parent's ``__main__``), start in tens of milliseconds and
import only the standard library until a function needs more. Parent-side driver threads (one per worker)
talk to them over ``multiprocessing.Pipe`` connections; every wait has a deadline, so nothing hangs.
"""

from __future__ import annotations

from typing import Literal

from rlkit.sandbox.common import (SandboxCallError, SandboxCrash, SandboxError, SandboxLimits, SandboxTimeout)
from rlkit.sandbox.process import ProcessExecutor
from rlkit.sandbox.thread import ThreadExecutor

__all__ = ["ProcessExecutor", "SandboxCallError", "SandboxCrash", "SandboxError", "SandboxLimits", "SandboxTimeout",
           "ThreadExecutor", "make_executor"]


def make_executor(kind: Literal["process", "thread"], limits: SandboxLimits = SandboxLimits(), workers: int = 2,
                  name: str = "sandbox") -> ProcessExecutor | ThreadExecutor:
    """A ProcessExecutor (``"process"``) or ThreadExecutor (``"thread"``) with these limits."""
    if kind == "process":
        return ProcessExecutor(limits, workers=workers, name=name)
    if kind == "thread":
        return ThreadExecutor(limits, workers=workers, name=name)
    raise ValueError(f"executor kind must be 'process' or 'thread', got {kind!r}")
