"""Run a candidate Python program (prompt + completion + the problem's tests) in a best-effort sandbox.

    result = run_program(source, timeout=5.0)
    result.status   # "passed" | "failed" | "timeout" | "error"
    result.detail   # a short reason: the exception's last line, "blocked: ...", "killed after 5 s", ...

BEST EFFORT, NOT A SECURITY BOUNDARY. This keeps an honest-but-buggy completion of a small model from
touching the machine; it does not contain hostile code. The audit hook below runs in the same interpreter as
the candidate, so native code (ctypes is refused, but a C extension already installed, or a hole in
CPython) can bypass it, and resource limits do not isolate the file system or the network. Run untrusted
completions in a container or a VM.

What a run gets:

- a subprocess `sys.executable -I -B` (isolated: no user site, no PYTHON* variables; -B: no .pyc writes),
  its own session (process group), an empty environment but HOME/TMPDIR pointing at a fresh temporary
  directory that is also its cwd and is deleted afterwards;
- resource limits, set by the child on itself before the candidate runs (`resource.setrlimit`: the same
  effect as a `preexec_fn`, which is unsafe in a multi-threaded parent such as torch): address space
  (`memory_mb`), CPU seconds (the timeout + 1), size of any written file (`file_mb`), no core files;
- a wall-clock `timeout`, after which the whole process group is killed (SIGKILL): status timeout;
- an audit hook (PEP 578, `sys.addaudithook`), installed by a small prelude before the candidate's code is
  compiled, that refuses (PermissionError) and records:
    * opening a file for writing (mode w/a/x/+ or os.open write/create flags) outside the temporary dir;
    * os.remove/unlink, os.rename/replace, os.rmdir, os.mkdir, os.truncate, os.chmod, os.chown, os.link,
      os.symlink, os.utime, shutil.rmtree outside the temporary dir;
    * every socket operation (socket.__new__, connect, bind, getaddrinfo, ...): no network;
    * spawning processes: subprocess.Popen, os.system, os.exec*, os.fork, os.forkpty, os.posix_spawn,
      os.spawn*, pty.spawn; and os.kill / os.killpg;
    * ctypes (dlopen, function pointers, memory access), which would let code step around the hook.
  Reading files is allowed (imports need it). Known gaps: a direct call of the private
  `_posixsubprocess.fork_exec`, and anything native.

Statuses: passed (exit 0 after the whole program ran, no refusal recorded); failed (the program raised: an
AssertionError of the tests, any other exception, or a refused operation, even one the candidate caught);
timeout; error (the process died without finishing: a signal, the memory or file-size limit, os._exit).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

__all__ = ["STATUSES", "ExecResult", "check_program", "run_check", "run_program"]

STATUSES = ("passed", "failed", "timeout", "error")
DETAIL_CHARS = 200  # the detail is cut to this length

# Runs as `python -I -B -c PRELUDE <root> <memory bytes> <cpu s> <file bytes>`; the program and a nonce come on
# stdin, read before the hook is installed. It prints the nonce on success, so an early os._exit(0) is no pass.
PRELUDE = r"""
import os, sys, resource
root, mem, cpu, fsize = os.path.realpath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
nonce, _, source = sys.stdin.read().partition("\n")
for kind, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                    (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(kind, (value, value))
refused = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,), "os.truncate": (0,),
               "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1), "os.symlink": (0, 1), "os.utime": (0,),
               "shutil.rmtree": (0,)}
SPAWN_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn",
                "os.spawn", "pty.spawn", "os.kill", "os.killpg", "os.startfile")
def inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor (os.open's own check happened when it was opened)
    path = os.fsdecode(path)
    full = os.path.realpath(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
    return full == root or full.startswith(root + os.sep)
def refuse(what):
    refused.append(what)
    raise PermissionError("divlab sandbox: " + what)
def hook(event, args):
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None))[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS)
        if writes and path is not None and not inside(path):
            refuse("open for writing outside the temp dir: %r" % (path,))
    elif event in PATH_EVENTS:
        for i in PATH_EVENTS[event]:
            if i < len(args) and args[i] is not None and not inside(args[i]):
                refuse("%s outside the temp dir: %r" % (event, args[i]))
    elif event.startswith("socket."):
        refuse("network (%s)" % event)
    elif event.startswith(SPAWN_EVENTS):
        refuse("spawning or signalling processes (%s)" % event)
    elif event.startswith("ctypes."):
        refuse("ctypes (%s)" % event)
try:
    code = compile(source, "<candidate>", "exec")
except (SyntaxError, ValueError) as e:  # a completion that does not parse fails like one that raises
    sys.stderr.write("\ndivlab-sandbox-failed: %s: %s\n" % (type(e).__name__, e))
    sys.stderr.flush()
    os._exit(1)
sys.addaudithook(hook)
del source
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except BaseException as e:
    line = "%s: %s" % (type(e).__name__, e)
    sys.stderr.write("\ndivlab-sandbox-failed: " + (refused[0] if refused else line) + "\n")
    sys.stderr.flush()
    os._exit(1)
if refused:
    sys.stderr.write("\ndivlab-sandbox-failed: blocked: " + refused[0] + "\n")
    sys.stderr.flush()
    os._exit(1)
sys.stdout.write("\n" + nonce + "\n")
sys.stdout.flush()
os._exit(0)
"""


class ExecResult(NamedTuple):
    status: str  # passed | failed | timeout | error
    detail: str  # a short reason (empty when passed)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 3] + "..."


def run_program(
    source: str,
    *,
    timeout: float = 5.0,  # wall-clock seconds before the process group is killed
    memory_mb: int = 1024,  # address-space limit of the child (RLIMIT_AS)
    file_mb: int = 16,  # largest file the child may write (RLIMIT_FSIZE)
) -> ExecResult:
    """Run `source` (a whole program: prompt + completion + tests + `check(entry_point)`) in the sandbox."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="divlab_exec_") as tmp:
        root = os.path.realpath(tmp)
        argv = [sys.executable, "-I", "-B", "-c", PRELUDE, root]
        argv += [str(memory_mb << 20), str(int(timeout) + 1), str(file_mb << 20)]
        proc = subprocess.Popen(
            argv,
            cwd=root,
            env={"HOME": root, "TMPDIR": root, "LC_ALL": "C.UTF-8"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: the timeout kills everything it started
            text=True,
        )
        try:
            out, err = proc.communicate(nonce + "\n" + source, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return ExecResult("timeout", f"killed after {timeout:g} s")
        finally:
            _kill_group(proc)  # anything the program left behind in its group
    marker = "divlab-sandbox-failed: "
    if proc.returncode == 0 and out.rstrip().endswith(nonce):
        return ExecResult("passed", "")
    if proc.returncode == 1 and marker in err:
        return ExecResult("failed", _short(err.rsplit(marker, 1)[1]))
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return ExecResult("error", _short(f"killed by {name} (a resource limit?) {err[-DETAIL_CHARS:]}"))
    return ExecResult(
        "error", _short(f"exit status {proc.returncode} without finishing {err[-DETAIL_CHARS:]}")
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval's check runs: prompt + completion, the tests, then check(entry_point)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def run_check(
    prompt: str, completion: str, test: str, entry_point: str, *, timeout: float = 5.0
) -> ExecResult:
    """run_program on check_program(...)."""
    return run_program(check_program(prompt, completion, test, entry_point), timeout=timeout)


if __name__ == "__main__":  # python -m divlab.metrics.code_exec FILE: run a file in the sandbox
    print(run_program(Path(sys.argv[1]).read_text()))
