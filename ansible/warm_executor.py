"""The warm executor of ansible-runner-service.

One of these runs per worker slot. It imports Ansible once, then for each run
the worker asks for it forks a child that runs ansible-playbook's own entry
point, exactly as the `ansible-playbook` script would, minus the imports.

Protocol, over a Unix stream socket on fd 0 (one JSON object per line):
  server -> worker  {"ready": {"pid": ..., "ansible": "2.19.x"}}  once imported
  worker -> server  {"argv": [...], "cwd": ..., "env": {...}, "local_tmp": ...,
                     "job_id": ...}  with three descriptors attached
                     (SCM_RIGHTS): the run's stdout, stderr and event pipe
  server -> worker  {"started": pid}                     the child runs
  server -> worker  {"exited": {"pid": pid, "rc": n}}   n < 0: killed by -n

The server runs one child at a time and keeps no state between runs: every
child starts from the same freshly imported interpreter. It exits when the
worker closes the socket.
"""

import atexit
import ctypes
import json
import os
import select
import shutil
import socket
import sys
import tempfile
import traceback

JOB_ID_ENV = "ARS_JOB_ID"
EVENTS_FD = 3

# Modules a run imports anyway; importing them here is the point of the
# server. A missing one is only slower, never wrong.
PRELOAD = (
    "ansible.cli.playbook",
    "ansible.executor.playbook_executor",
    "ansible.executor.task_queue_manager",
    "ansible.executor.task_executor",
    "ansible.executor.process.worker",
    "ansible.executor.module_common",
    "ansible.executor.stats",
    "ansible.playbook",
    "ansible.playbook.play",
    "ansible.playbook.task",
    "ansible.playbook.block",
    "ansible.playbook.handler",
    "ansible.playbook.role",
    "ansible.playbook.role_include",
    "ansible.playbook.task_include",
    "ansible.inventory.manager",
    "ansible.vars.manager",
    "ansible.template",
    "ansible.plugins.loader",
    "ansible.plugins.strategy.linear",
    "ansible.plugins.strategy.free",
    "ansible.plugins.connection.local",
    "ansible.plugins.connection.ssh",
    "ansible.plugins.shell.sh",
    "ansible.plugins.become.sudo",
    "ansible.plugins.action",
    "ansible.plugins.action.normal",
    "ansible.plugins.action.command",
    "ansible.plugins.action.shell",
    "ansible.plugins.action.debug",
    "ansible.plugins.action.set_fact",
    "ansible.plugins.action.gather_facts",
    "ansible.plugins.action.pause",
    "ansible.plugins.action.copy",
    "ansible.plugins.action.template",
    "ansible.plugins.action.include_vars",
    "ansible.plugins.callback",
    "ansible.plugins.callback.default",
    "ansible.plugins.inventory.yaml",
    "ansible.plugins.inventory.ini",
    "ansible.plugins.inventory.host_list",
    "ansible.plugins.vars.host_group_vars",
    "ansible.plugins.filter.core",
    "ansible.plugins.test.core",
    "ansible.plugins.lookup.items",
    # The plugin loader reads every callback and connection plugin it finds
    # (for their documented options), used or not.
    "ansible.plugins.callback.junit",
    "ansible.plugins.callback.minimal",
    "ansible.plugins.callback.oneline",
    "ansible.plugins.callback.tree",
    "ansible.plugins.connection.paramiko_ssh",
    "ansible.plugins.connection.psrp",
    "ansible.plugins.connection.winrm",
    "ansible.plugins.become.su",
    "ansible.plugins.cache.memory",
    "ansible.plugins.shell.cmd",
    "ansible.plugins.inventory.auto",
    "ansible.plugins.inventory.script",
    "ansible.plugins.inventory.toml",
    "ansible.playbook.handler_task_include",
    "multiprocessing.popen_fork",
    "multiprocessing.synchronize",
)


def send(ctl, message):
    ctl.sendall(json.dumps(message).encode() + b"\n")


def mark_environment(job_id):
    """Makes /proc/<pid>/environ of this process, and of every process it
    forks, name the job: the worker finds a run's processes that way. Linux
    shows the environment block the process was started with, so the value
    this server was started with (a placeholder of the same length) is
    overwritten in place; the variable is also set for processes it execs."""
    libc = ctypes.CDLL(None)
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    prefix = (JOB_ID_ENV + "=").encode()
    value = job_id.encode()
    i = 0
    while environ[i]:
        entry = ctypes.string_at(environ[i])
        if entry.startswith(prefix) and len(entry) == len(prefix) + len(value):
            ctypes.memmove(environ[i] + len(prefix), value, len(value))
        i += 1
    os.environ[JOB_ID_ENV] = job_id


def child(ctl, request, fds):
    rc = 250
    try:
        ctl.close()
        os.setpgid(0, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.dup2(fds[2], EVENTS_FD)
        for fd in set(fds):
            if fd > EVENTS_FD:
                os.close(fd)
        os.chdir(request["cwd"])
        mark_environment(request["job_id"])
        os.environ.update(request["env"])

        # What the interpreter registered while importing (the server's own
        # temporary folder, above all) is not this run's to clean up.
        atexit._clear()
        from ansible import constants as C

        # Settings read once at import: what this run's environment sets
        # (a git source's collections, roles) is read again.
        for name, variable in (("COLLECTIONS_PATHS", "ANSIBLE_COLLECTIONS_PATH"),
                               ("DEFAULT_ROLES_PATH", "ANSIBLE_ROLES_PATH")):
            if variable in request["env"]:
                setattr(C, name, C.config.get_config_value(name))

        local_tmp = tempfile.mkdtemp(prefix="ansible-local-%d" % os.getpid(), dir=request["local_tmp"])
        C.DEFAULT_LOCAL_TMP = local_tmp
        atexit.register(shutil.rmtree, local_tmp, True)

        from ansible.cli.playbook import main

        sys.argv = list(request["argv"])
        try:
            main(sys.argv)
            rc = 0
        except SystemExit as stop:
            if stop.code is None:
                rc = 0
            elif isinstance(stop.code, int):
                rc = stop.code
            else:
                print(stop.code, file=sys.stderr)
                rc = 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc & 0xFF)


def wait_for_child_or_worker(ctl, pid):
    """Returns when the child ended; exits when the worker is gone meanwhile
    (the child then lives on as a plain ansible-playbook would, and the
    worker's next start reaps it by its job id)."""
    pidfd = os.pidfd_open(pid)
    watched = [ctl, pidfd]
    try:
        while True:
            ready, _, _ = select.select(watched, [], [])
            if pidfd in ready:
                return
            if not ctl.recv(1, socket.MSG_PEEK):
                os._exit(0)
            # The worker sends nothing during a run; should it, stop watching.
            watched = [pidfd]
    finally:
        os.close(pidfd)


def serve(ctl):
    buffered = b""
    fds = []
    while True:
        data, received, _flags, _addr = socket.recv_fds(ctl, 1 << 16, 8)
        fds.extend(received)
        if not data:
            return
        buffered += data
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            request = json.loads(line)
            mine, fds = fds[:3], fds[3:]
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(ctl, request, mine)
            for fd in mine:
                os.close(fd)
            send(ctl, {"started": pid})
            wait_for_child_or_worker(ctl, pid)
            while True:
                try:
                    _, status = os.waitpid(pid, 0)
                    break
                except InterruptedError:
                    continue
            send(ctl, {"exited": {"pid": pid, "rc": os.waitstatus_to_exitcode(status)}})


def main():
    # The socket arrives as stdin; runs get /dev/null there, as with
    # ansible-playbook started by the worker.
    ctl = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a missing module only costs time
            print("warm executor: not preloaded: %s: %s" % (name, e), file=sys.stderr)
    from ansible.release import __version__

    send(ctl, {"ready": {"pid": os.getpid(), "ansible": __version__}})
    try:
        serve(ctl)
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main()
