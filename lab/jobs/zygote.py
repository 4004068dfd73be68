"""A warm process each of a worker's jobs is forked from, so no job pays the imports again.

A job's own process (lab/jobs/process.py) spends seconds importing torch, transformers and the lab's runner before
it measures anything (about 4 s on a 2-core CPU, several times that while browsers load pages), and the worker ran
jobs one after another. The zygote imports that once, then only forks: no torch op, no thread, no database
connection happens in it, so a fork of it is the clean process a fresh `python -m lab _run-job` would be. Each job
still runs in a process of its own, with its own environment: cancel and stop kill it, a crash takes only the job.
It also keeps the memory probe's LLM server (lab/bench/probe_server.py), which every job it forks inherits.

multiprocessing's forkserver does the same for functions; it is not used because the worker must kill a job by
pid at once (its cancel) and read the job's exit status, signals included, which a forkserver Process hides behind
its own sentinel and pickling.

Protocol, one JSON line each way, on the zygote's stdin and stdout:
  worker -> zygote  {"job": <id>, "env": {...}}
  zygote -> worker  {"pid": <the job's pid>}, then, when it ends, {"exit": <code, -signal when killed>}
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import traceback

from lab.bench import probe_server
from lab.paths import ROOT, child_env, read_reply, set_parent_death_signal

READY_TIMEOUT_S = 300
ZYGOTE = "the job zygote"
JOB_PROCESS_NAME = "lab-job"  # what ps and top show for a forked job (its command line is the zygote's)
SOURCE = ROOT / "lab"


def source_stamp() -> float:
    """The newest modification time of the lab's code: a zygote older than it would run code that is gone."""
    return max((p.stat().st_mtime for p in SOURCE.rglob("*.py")), default=0.0)


class Zygote:
    """The worker's side: start() the warm process, fork() a job from it (a Popen-like ForkedJob)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.stamp = 0.0

    def fork(self, job_id: int, env: dict) -> "ForkedJob":
        if self.proc is None or self.proc.poll() is not None or source_stamp() > self.stamp:
            self.start()
        self.proc.stdin.write(json.dumps({"job": job_id, "env": env}) + "\n")
        self.proc.stdin.flush()
        return ForkedJob(self.proc, json.loads(read_reply(self.proc, READY_TIMEOUT_S, ZYGOTE))["pid"])

    def start(self) -> None:
        self.close()
        self.stamp = source_stamp()
        self.proc = subprocess.Popen([sys.executable, "-m", "lab.jobs.zygote"], cwd=ROOT, env=child_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     preexec_fn=set_parent_death_signal)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class ForkedJob:
    """A job's process with the part of subprocess.Popen the worker uses (pid, wait, terminate, kill, returncode):
    its watch loop treats a forked job and a started one alike."""

    def __init__(self, zygote: subprocess.Popen, pid: int):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and self._read(timeout) is None:
            raise subprocess.TimeoutExpired(f"job process {self.pid}", timeout)
        return self.returncode

    def _read(self, timeout: float | None) -> int | None:
        try:
            line = read_reply(self.zygote, timeout, ZYGOTE)
        except TimeoutError:
            return None
        except EOFError:  # the zygote died (killed with its job's process group): the job died with it
            line = json.dumps({"exit": -signal.SIGKILL})
        self.returncode = json.loads(line)["exit"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# --- the zygote's own side ---------------------------------------------------------------------------------
def _preload() -> None:
    # lazy: what every LLM job's process imports anyway (diffusion jobs add diffusers after the fork)
    import lab.bench.run  # noqa: F401
    import lab.jobs.process  # noqa: F401


def _run_child(request: dict, replies) -> None:
    """In the forked process: become the job's process, run it, exit. Never returns."""
    code = 1
    try:
        # the job holds neither end of the worker's pipes: the worker must see EOF the moment the zygote dies
        replies.close()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(request["env"], LAB_WORKER_PID=str(os.getppid()))  # the zygote dies with the worker
        _name_process(JOB_PROCESS_NAME)
        from lab.jobs.process import run_job_child  # lazy: preloaded by the zygote, no import happens here
        code = run_job_child(request["job"])
    except BaseException:  # noqa: BLE001  # a forked child must reach os._exit, never the zygote's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _name_process(name: str) -> None:
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME: /proc/<pid>/comm
    except (OSError, AttributeError):  # not Linux: the name is only for people reading ps
        pass


def main() -> None:
    set_parent_death_signal()  # never outlive the worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the worker decides
    probe_server.start_server("llm")  # it imports on the other core while this process preloads
    _preload()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what a job prints goes to stderr, never into the replies
    for line in sys.stdin:
        _probe_server_ready()
        pid = os.fork()
        if pid == 0:
            _run_child(json.loads(line), replies)
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        _share_probe_server(code)
        replies.write(json.dumps({"exit": code}) + "\n")


def _probe_server_ready() -> None:
    try:
        probe_server.await_ready("llm")  # its imports never run beside a job's timed repeats
    except (OSError, EOFError, TimeoutError, ValueError) as e:
        print(f"the job zygote: the memory probe's server did not start ({e}); each job starts its own",
              file=sys.stderr)
        probe_server.stop_server("llm")


def _share_probe_server(job_exit: int) -> None:
    """Keep the LLM memory probe's server here, so each job inherits one that has imported torch and the engine
    (a job's own server cost it 5-7 s of the 12 a tiny model's job took on a 2-core CPU). A job that failed or was
    killed may have left it mid-request, and its reply would reach the next job: that one gets a new server."""
    if job_exit == 0:
        probe_server.start_server("llm")  # a new one only if it died
    else:
        probe_server.renew_server("llm")


if __name__ == "__main__":
    main()
