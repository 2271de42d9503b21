#!/usr/bin/env python3
"""End-to-end tests: the real pgvigild and pgvigilctl against a real throwaway PostgreSQL.

Each test gets its own directory with a generated configuration, state directory and
control socket; the PostgreSQL cluster is shared. Prints one line per test and a closing
"e2e: N passed, N failed".
"""
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("PGVIGIL_BUILD", "build"))
PGVIGILD = os.path.join(BUILD, "pgvigild")
PGVIGILCTL = os.path.join(BUILD, "pgvigilctl")
# PGVIGIL_WRAP (`make check-valgrind`): a command line put before every pgvigild and pgvigilctl
# (through two exec'ing scripts, so pids stay the daemon's); PGVIGIL_SLOW: a factor for the timeouts.
SLOW = float(os.environ.get("PGVIGIL_SLOW") or 1)
WRAPPED = bool(os.environ.get("PGVIGIL_WRAP"))
if WRAPPED:
    import atexit
    import shlex
    _wrap_dir = tempfile.mkdtemp(prefix="pgvigil-e2e-wrap-")
    os.chmod(_wrap_dir, 0o755)
    atexit.register(shutil.rmtree, _wrap_dir, True)
    for _name in ("pgvigild", "pgvigilctl"):
        with open(os.path.join(_wrap_dir, _name), "w") as _f:
            _f.write("#!/bin/sh\nexec %s %s \"$@\"\n" % (os.environ["PGVIGIL_WRAP"],
                                                          shlex.quote(os.path.join(BUILD, _name))))
        os.chmod(os.path.join(_wrap_dir, _name), 0o755)
    PGVIGILD = os.path.join(_wrap_dir, "pgvigild")
    PGVIGILCTL = os.path.join(_wrap_dir, "pgvigilctl")
if SLOW != 1:
    _run = subprocess.run

    def _slow_run(*args, **kw):
        if kw.get("timeout"):
            kw["timeout"] *= SLOW
        return _run(*args, **kw)
    subprocess.run = _slow_run
PGTMP = os.path.join(ROOT, "tests", "lib", "pgtmp")
PASSWORD = "vigil-secret"

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def wait_for(pred, timeout, what, interval=0.05):
    timeout *= SLOW
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise Failure("timed out after %.1fs waiting for %s" % (timeout, what))


def free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Cluster:
    def __init__(self, port=None):
        self.dir = tempfile.mkdtemp(prefix="pgvigil-e2e-pg-")
        # Without a port: one the kernel says is free, and another if something takes it first
        # (pgtmp exits 75 then).
        for attempt in range(5):
            self.port = port or free_tcp_port()
            out = subprocess.run([PGTMP, "start", self.dir, str(self.port)], capture_output=True, text=True)
            if out.returncode != 75 or port:
                break
        if out.returncode != 0:
            raise RuntimeError("cannot start PostgreSQL: " + out.stderr)
        self.sock = os.path.join(self.dir, "sock")

    def stop(self):
        subprocess.run([PGTMP, "stop", self.dir], capture_output=True)


# The logs of the daemons the current test cleaned up: printed (their tails) when it fails.
CLEANED_LOGS = []


class Daemon:
    """One pgvigild in the foreground with its own directory, config, notify socket."""

    def __init__(self, env_extra=None, name="d"):
        self.dir = tempfile.mkdtemp(prefix="pgvigil-e2e-")
        os.chmod(self.dir, 0o755)
        self.state_dir = os.path.join(self.dir, "state")
        self.socket = os.path.join(self.dir, "pgvigil.sock")
        self.config = os.path.join(self.dir, "pgvigil.yaml")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.notify_path = os.path.join(self.dir, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.1)
        self.notes = []
        self.proc = None
        self.env_extra = env_extra or {}

    def write_config(self, text):
        with open(self.config + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.config + ".tmp", self.config)

    def start(self, wait_ready=True, extra_env=None, preexec_fn=None):
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = self.notify_path
        env["DEMO_PASS"] = PASSWORD
        env.update(self.env_extra)
        env.update(extra_env or {})
        self.log = open(self.log_path, "ab")
        self.read_notes()
        since = len(self.notes)  # a restart must not match the previous start's READY=1
        self.proc = subprocess.Popen([PGVIGILD, "--foreground", "-c", self.config], stdout=self.log,
                                     stderr=self.log, env=env, preexec_fn=preexec_fn)
        if wait_ready:
            self.wait_note("READY=1", 10, since=since)
        return self

    def read_notes(self):
        while True:
            try:
                data = self.notify.recv(4096).decode()
            except (socket.timeout, BlockingIOError):
                return
            self.notes.extend(data.split("\n"))

    def wait_note(self, note, timeout, since=0):
        def seen():
            self.read_notes()
            if self.proc.poll() is not None:
                raise Failure("pgvigild exited with %s before %s; log:\n%s" % (self.proc.returncode, note,
                                                                               self.logtext()))
            return note in self.notes[since:]
        wait_for(seen, timeout, note)

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def ctl(self, *args, user=None, check_rc=None):
        cmd = [PGVIGILCTL, "-s", self.socket] + list(args)
        kw = {}
        if user is not None:
            kw["user"] = user
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, **kw)
        if check_rc is not None and out.returncode != check_rc:
            raise Failure("pgvigilctl %s: exit %d, expected %d\nstdout: %s\nstderr: %s" % (
                " ".join(args), out.returncode, check_rc, out.stdout, out.stderr))
        return out

    def ctl_json(self, *args):
        out = self.ctl("--json", *args, check_rc=0)
        return json.loads(out.stdout)

    def db(self):
        return sqlite3.connect(os.path.join(self.state_dir, "state.db"), timeout=10)

    def runs(self, job=None):
        with self.db() as c:
            q = "SELECT id, job, trigger, started, finished, duration, result, cause, figures FROM runs"
            rows = c.execute(q + (" WHERE job = ?" if job else "") + " ORDER BY id", (job,) if job else ()).fetchall()
        keys = ["id", "job", "trigger", "started", "finished", "duration", "result", "cause", "figures"]
        return [dict(zip(keys, r)) for r in rows]

    def stop(self, sig=signal.SIGTERM, timeout=25):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure("pgvigild did not exit within %ss of %s" % (timeout, sig))

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        log = self.logtext() if os.path.exists(self.log_path) else ""
        CLEANED_LOGS.append(log)
        shutil.rmtree(self.dir, ignore_errors=True)
        # under --enable-sanitizers, any report from the daemon fails the test
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in log:
                raise Failure("sanitizer report in the daemon log:\n" + log[log.index(marker) - 200:][:3000])


def base_config(d, cluster, jobs, extra_db="", daemon_extra=""):
    return """\
daemon:
  state_dir: %(state)s
  socket: %(sock)s
  admins: [root]
  log_level: debug
%(daemon_extra)s
storage:
  path: %(dir)s/backups
databases:
  demo:
    conninfo: "host=127.0.0.1 port=%(port)d dbname=demo user=vigil"
    password: env:DEMO_PASS
%(extra_db)s
jobs:
%(jobs)s
""" % {"state": d.state_dir, "sock": d.socket, "dir": d.dir, "port": cluster.port, "jobs": jobs,
       "extra_db": extra_db, "daemon_extra": daemon_extra}


HEALTH_FAST = "  health: { type: health, database: demo, every: 1s, timeout: 5s }\n"

# ---------------------------------------------------------------------------


EXAMPLE_CONFIGS = {
    "etc/pgvigil.yaml": ("PGVIGIL_PRODUCTION_PASSWORD", "PGVIGIL_SLACK_WEBHOOK_URL", "PGVIGIL_SMTP_PASSWORD",
                         "PGVIGIL_SCRATCH_PASSWORD", "PGVIGIL_HOOK_SECRET", "PGVIGIL_HEARTBEAT_URL"),
    "contrib/examples/supabase.yaml": ("PGVIGIL_SUPABASE_PASSWORD", "PGVIGIL_SCRATCH_PASSWORD",
                                       "PGVIGIL_SLACK_WEBHOOK_URL"),
    "contrib/examples/self-hosted.yaml": ("PGVIGIL_APP_PASSWORD", "PGVIGIL_SLACK_WEBHOOK_URL", "PGVIGIL_HOOK_URL",
                                          "PGVIGIL_HOOK_SECRET"),
}


@test
def example_config_checks(cluster):
    for name, secrets in EXAMPLE_CONFIGS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGVIGIL_")}
        path = os.path.join(ROOT, name)
        # each secret the example names is required: without it the check fails and says which
        out = subprocess.run([PGVIGILD, "--check-config", "-c", path], capture_output=True, text=True, env=env)
        check(out.returncode == 1 and secrets[0] in out.stderr, "%s without its secrets: %d %s" % (
            name, out.returncode, out.stderr))
        for k in secrets:
            env[k] = "https://hooks.example.com/example-secret-value"
        out = subprocess.run([PGVIGILD, "--check-config", "-c", path], capture_output=True, text=True, env=env)
        check(out.returncode == 0, "check-config of %s exit %d: %s" % (name, out.returncode, out.stderr))
        check("configuration is valid" in out.stderr, "%s: %s" % (name, out.stderr))
        # (etc/pgvigil.yaml warns on purpose: its comments explain the 4h RPO a daily backup misses)
        check(name.startswith("etc/") or "warning" not in out.stderr, "%s: warnings: %s" % (name, out.stderr))
        check("example-secret-value" not in out.stdout + out.stderr, "%s: a secret was printed" % name)
        check("redacted" in out.stdout, "%s: effective config does not show redacted secrets" % name)
        check("restore-test" in out.stdout or "daily-backup" in out.stdout, "%s: effective config lacks the jobs" % name)
    out = subprocess.run([PGVIGILD, "--check-config", "-c", os.path.join(ROOT, "contrib/examples/supabase.yaml")],
                         capture_output=True, text=True, env=dict(os.environ, PGVIGIL_SUPABASE_PASSWORD="x",
                                                                   PGVIGIL_SCRATCH_PASSWORD="x",
                                                                   PGVIGIL_SLACK_WEBHOOK_URL="https://x.example/"))
    check("port=5432" in out.stdout and "6543" not in out.stdout.split("databases:")[1].split("jobs:")[0],
          "the Supabase example must use a session-mode port")
    for schema in ("realtime", "vault", "pgsodium"):
        check(re.search(r"exclude_schemas: \[[^]]*\b%s\b" % schema, out.stdout), "supabase excludes " + schema)
    for schema in ("auth", "storage", "extensions", "public"):
        check(not re.search(r"exclude_schemas: \[[^]]*\b%s\b" % schema, out.stdout),
              "the Supabase example must keep " + schema)


@test
def check_config_reports_position(cluster):
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST + "  bad: { type: health, database: nowhere, every: 1s }\n")
                       + "bogus_key: 1\n")
        out = subprocess.run([PGVIGILD, "--check-config", "-c", d.config], capture_output=True, text=True,
                             env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 1, "exit %d" % out.returncode)
        check("pgvigil.yaml:" in out.stderr and "bogus_key" in out.stderr, "unknown key not reported: " + out.stderr)
        check("nowhere" in out.stderr, "dangling database reference not reported: " + out.stderr)
        # malformed YAML
        d.write_config("daemon:\n  state_dir: [unclosed\n")
        out = subprocess.run([PGVIGILD, "--check-config", "-c", d.config], capture_output=True, text=True)
        check(out.returncode == 1 and "pgvigil.yaml:" in out.stderr, "syntax error: " + out.stderr)
        # the daemon refuses to start on a bad config, with the reason
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d.config], capture_output=True, text=True, timeout=10)
        check(out.returncode == 1 and "pgvigil.yaml:" in out.stderr, "start with bad config: " + out.stderr)
    finally:
        d.cleanup()


@test
def start_status_jobs_run(cluster):
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST +
                                   "  hourly-health: { type: health, database: demo, schedule: \"0 * * * *\" }\n"))
        d.start()
        wait_for(lambda: any(r["result"] == "ok" for r in d.runs("health")), 10, "a successful health run")
        st = d.ctl_json("status")
        check(st["version"] and st["pid"] == d.proc.pid, "status: %r" % st)
        db = st["databases"][0]
        check(db["name"] == "demo" and db["health"]["result"] == "ok", "status health: %r" % db)
        check(db["health"]["figures"]["server_version_num"] >= 150000, "server version: %r" % db)
        human = d.ctl("status", check_rc=0).stdout
        check("demo" in human and "ok" in human, "human status: " + human)
        jobs = {j["name"]: j for j in d.ctl_json("jobs")["jobs"]}
        check(set(jobs) == {"health", "hourly-health"}, "jobs: %r" % jobs)
        check(jobs["hourly-health"]["next_run"].endswith(":00:00Z"), "next_run: %r" % jobs["hourly-health"])
        check(jobs["health"]["every"] == "1s", "every: %r" % jobs["health"])
        human = d.ctl("jobs", check_rc=0).stdout
        check("hourly-health" in human and "0 * * * *" in human, "human jobs: " + human)
        # manual run of the calendar job is recorded with trigger manual
        out = d.ctl("run", "hourly-health", check_rc=0)
        check("started hourly-health" in out.stdout, out.stdout)
        wait_for(lambda: any(r["trigger"] == "manual" and r["result"] == "ok" for r in d.runs("hourly-health")),
                 10, "manual run recorded")
        check("control command cmd=run uid=0" in d.logtext(), "mutating command not audited")
        out = d.ctl("run", "no-such-job", check_rc=1)
        check("no job named" in out.stderr, out.stderr)
        # interval runs keep coming: at least 3 in ~3s
        n0 = len(d.runs("health"))
        time.sleep(3.2)
        check(len(d.runs("health")) - n0 >= 2, "health runs not periodic")
        check(d.stop() == 0, "exit status")
        check(not os.path.exists(d.socket), "control socket left behind")
    finally:
        d.cleanup()


@test
def reload_good_and_bad(cluster):
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        d.start()
        # good reload via SIGHUP: a new job appears
        d.write_config(base_config(d, cluster, HEALTH_FAST + "  second: { type: health, database: demo, every: 1s }\n"))
        n = len(d.notes)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_note("RELOADING=1", 5, since=n)
        d.wait_note("READY=1", 5, since=n)
        wait_for(lambda: "second" in {j["name"] for j in d.ctl_json("jobs")["jobs"]}, 5, "new job after reload")
        wait_for(lambda: d.runs("second"), 5, "new job runs")
        st = d.ctl_json("status")
        check(st["reload"]["ok"] and st["reload"]["count"] == 1, "reload status: %r" % st["reload"])
        # bad reload: old config continues, status shows why
        d.write_config(base_config(d, cluster, HEALTH_FAST + "  third: { type: health, database: demo, every: soon }\n"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.ctl_json("status")["reload"]["count"] == 2, 5, "second reload")
        st = d.ctl_json("status")
        check(not st["reload"]["ok"] and "third" in st["reload"]["error"], "bad reload status: %r" % st["reload"])
        check("pgvigil.yaml:" in st["reload"]["error"], "reload error lacks position: %r" % st["reload"])
        human = d.ctl("status", check_rc=0).stdout
        check("FAILED" in human, "human status does not show the failed reload: " + human)
        names = {j["name"] for j in d.ctl_json("jobs")["jobs"]}
        check(names == {"health", "second"}, "jobs changed after bad reload: %r" % names)
        n = len(d.runs("second"))
        wait_for(lambda: len(d.runs("second")) > n, 5, "old config keeps running")
        # reload through the socket reports the error too
        out = d.ctl("reload", check_rc=1)
        check("previous configuration kept" in out.stderr, out.stderr)
        check(d.proc.poll() is None, "daemon died on bad reload")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def non_admin_may_read_not_mutate(cluster):
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        d.start()
        out = d.ctl("--json", "status", user="nobody", check_rc=0)
        check(json.loads(out.stdout)["pid"] == d.proc.pid, "non-admin status")
        out = d.ctl("run", "health", user="nobody", check_rc=1)
        check("permission denied" in out.stderr, "non-admin run: " + out.stderr)
        out = d.ctl("reload", user="nobody", check_rc=1)
        check("permission denied" in out.stderr, "non-admin reload: " + out.stderr)
        check("control command refused cmd=run uid=65534" in d.logtext(), "refusal not logged")
        check(d.ctl_json("status")["reload"]["count"] == 0, "refused reload happened")
    finally:
        d.stop()
        d.cleanup()


@test
def health_failures_recorded(cluster):
    d = Daemon(env_extra={"WRONG_PASS": "not-the-password"})
    try:
        extra = """  wrongpw:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil"
    password: env:WRONG_PASS
  closed:
    conninfo: "host=127.0.0.1 port=1 dbname=demo user=vigil"
""" % cluster.port
        jobs = ("  wp: { type: health, database: wrongpw, every: 1s }\n"
                "  cl: { type: health, database: closed, every: 1s }\n")
        d.write_config(base_config(d, cluster, jobs, extra_db=extra))
        d.start()
        wait_for(lambda: d.runs("wp") and d.runs("wp")[0]["result"], 10, "wrong-password run")
        r = d.runs("wp")[0]
        check(r["result"] == "failed" and "password authentication failed" in r["cause"], "wrong password: %r" % r)
        check(PASSWORD not in d.logtext() and "not-the-password" not in d.logtext(), "password logged")
        wait_for(lambda: d.runs("cl") and d.runs("cl")[0]["result"], 10, "refused run")
        r = d.runs("cl")[0]
        check(r["result"] == "failed" and "refused" in r["cause"].lower(), "closed port: %r" % r)
        st = {x["name"]: x for x in d.ctl_json("status")["databases"]}
        check(st["wrongpw"]["health"]["result"] == "failed", "status of failing db: %r" % st)
    finally:
        d.stop()
        d.cleanup()


def pgvigil_sessions(cluster):
    out = psql(cluster, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgvigil' ORDER BY pid",
               db="postgres", user="postgres")
    return [int(x) for x in out.split()]


@test
def health_keep_connection_reuses_and_reconnects(cluster):
    """keep_connection: one session serves every run; a session the server ended, a reload and an
    outage each lead to a new connection without a false failure; the session closes at exit."""
    other = Cluster()
    d = Daemon()
    try:
        extra = """  other:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil connect_timeout=2"
    password: env:DEMO_PASS
""" % other.port
        d.write_config(base_config(d, cluster, "  hk: { type: health, database: other, every: 1s, timeout: 5s, "
                                               "keep_connection: true }\n", extra_db=extra))
        d.start()

        def oks(after=0):
            return [r for r in d.runs("hk") if r["id"] > after and r["result"] == "ok"]
        wait_for(lambda: len(oks()) >= 3, 15, "three health runs")
        runs = oks()
        check("connect_seconds" in figures(runs[0]) and "reused_connection" not in figures(runs[0]),
              "the first run must connect: %r" % runs[0])
        for r in runs[1:3]:
            f = figures(r)
            check(f.get("reused_connection") is True and "connect_seconds" not in f, "not reused: %r" % r)
        pids = pgvigil_sessions(other)
        check(len(pids) == 1, "one kept session expected, found %r" % pids)
        last = runs[-1]["id"]
        wait_for(lambda: len(oks(last)) >= 2, 10, "two more runs")
        check(pgvigil_sessions(other) == pids, "the session changed between runs")
        check(" kept " in d.ctl("status", check_rc=0).stdout, "status does not say the session is kept")

        # The server ends the session while it is idle: the next run connects anew and passes.
        last = d.runs("hk")[-1]["id"]
        psql(other, "SELECT pg_terminate_backend(%d)" % pids[0], db="postgres", user="postgres")
        wait_for(lambda: any("connect_seconds" in figures(r) for r in oks(last)), 10, "a reconnecting run")
        check(all(r["result"] == "ok" for r in d.runs("hk") if r["id"] > last and r["result"]),
              "a run failed after the session was ended: %r" % d.runs("hk")[-3:])
        check("kept postgres session unusable, connecting anew" in d.logtext(), "the reconnect is not logged")
        pids2 = pgvigil_sessions(other)
        check(len(pids2) == 1 and pids2 != pids, "sessions after the reconnect: %r" % pids2)

        # A reload closes kept sessions: the next run connects with the configuration now in force.
        last = d.runs("hk")[-1]["id"]
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("connect_seconds" in figures(r) for r in oks(last)), 10, "a run after the reload")
        wait_for(lambda: len(pgvigil_sessions(other)) == 1 and pgvigil_sessions(other) != pids2, 10,
                 "the old session to go after the reload")

        # An outage fails runs as connection failures; after it the runs connect again.
        _pg_ctl(other, "-m", "immediate", "-w", "stop")
        last = d.runs("hk")[-1]["id"]
        wait_for(lambda: any(r["result"] == "failed" for r in d.runs("hk") if r["id"] > last), 10, "a failed run")
        failed = [r for r in d.runs("hk") if r["id"] > last and r["result"] == "failed"][0]
        check(figures(failed).get("connected") is False, "the outage is not a connection failure: %r" % failed)
        _pg_ctl(other, "-w", "start")
        last = d.runs("hk")[-1]["id"]
        wait_for(lambda: len(oks(last)) >= 2, 15, "runs after the outage")
        check(d.stop() == 0, "exit status")
        wait_for(lambda: pgvigil_sessions(other) == [], 5, "the kept session to close at exit")
    finally:
        d.cleanup()
        other.stop()


@test
def health_keep_connection_warns_on_low_file_limit(cluster):
    """With more kept sessions than the open file limit allows for, the daemon says so at start."""
    import resource
    d = Daemon()
    try:
        jobs = "".join("  hk%d: { type: health, database: demo, every: 1h, keep_connection: true }\n" % i
                       for i in range(3))
        d.write_config(base_config(d, cluster, jobs))
        d.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (258, 258)))
        # valgrind keeps a few descriptors for itself and reports a lower limit (246 of 258)
        m = re.search(r"open file limit too low for the kept health sessions limit=(\d+) keep_connection_jobs=3 "
                      r"needed=259;", d.logtext())
        check(m is not None and int(m.group(1)) <= 258, "no warning:\n" + d.logtext()[-2000:])
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def keep_history_forgets_old_runs_and_notifications(cluster):
    """daemon.keep_history: runs and sent notifications older than it are deleted soon after start, in
    batches, except each job's newest 100 runs; pending notifications and recent rows stay."""
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST, daemon_extra="  keep_history: 31d\n"))
        d.start()
        wait_for(lambda: len(d.runs("health")) >= 1, 10, "a first run")
        check(d.stop() == 0, "exit status")
        old = int(time.time()) - 40 * 86400
        with d.db() as c:
            c.executemany("INSERT INTO runs (job, type, \"database\", \"trigger\", started, finished, duration, result) "
                          "VALUES ('gone-job', 'backup', 'demo', 'schedule', ?, ?, 1, 'ok')",
                          [(old + i, old + i + 1) for i in range(130)])
            c.execute("INSERT INTO outbox (notifier, created, next_attempt, payload, idempotency_key, status) "
                      "VALUES ('hook', ?, 0, '{}', 'old-sent', 'sent')", (old,))
            c.execute("INSERT INTO outbox (notifier, created, next_attempt, payload, idempotency_key) "
                      "VALUES ('hook', ?, 0, '{}', 'old-pending')", (old,))
            recent = len(d.runs("health"))
        d.start()
        wait_for(lambda: "old history forgotten runs=30 notifications=1 alert_log=0 keep_history=" in d.logtext(),
                 20, "the history pass")
        check(len(d.runs("gone-job")) == 100, "the newest 100 runs of a job stay: %d" % len(d.runs("gone-job")))
        check(len(d.runs("health")) >= recent, "recent runs were deleted")
        with d.db() as c:
            keys = sorted(k for (k,) in c.execute("SELECT idempotency_key FROM outbox WHERE notifier = 'hook'"))
        check(keys == ["old-pending"], "outbox after the pass: %r" % keys)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def silent_server_times_out_loop_stays_live(cluster):
    """A listener that accepts and never answers: the health run times out at its deadline while
    the other job's 1s timer keeps firing on time."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def acceptor():
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
                accepted.append(c)
            except socket.timeout:
                pass
    t = threading.Thread(target=acceptor, daemon=True)
    t.start()
    d = Daemon()
    try:
        extra = """  silent:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil connect_timeout=1"
""" % port
        jobs = HEALTH_FAST + "  hang: { type: health, database: silent, every: 1h, timeout: 3s }\n"
        d.write_config(base_config(d, cluster, jobs, extra_db=extra))
        d.start()
        wait_for(lambda: d.runs("hang"), 5, "the silent server's run to start")
        # the job never overlaps itself: a manual run while it runs is refused
        out = d.ctl("run", "hang", check_rc=1)
        check("already running" in out.stderr, "overlapping manual run: " + out.stderr)
        # reload mid-run with a config that drops the job: the running run is untouched
        d.write_config(base_config(d, cluster, HEALTH_FAST, extra_db=extra))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.ctl_json("status")["reload"]["count"] == 1, 5, "the reload")
        check(d.ctl_json("status")["reload"]["ok"], "reload failed")
        check("hang" not in {j["name"] for j in d.ctl_json("jobs")["jobs"]}, "removed job still listed")
        wait_for(lambda: d.runs("hang") and d.runs("hang")[0]["result"], 10, "the silent server's run to end")
        r = d.runs("hang")[0]
        check(r["result"] == "timeout", "result: %r" % r)
        check(2.8 <= r["duration"] <= 4.0, "deadline not honoured: %.3fs" % r["duration"])
        check(accepted, "the daemon never connected to the silent server")
        # the other job kept its 1s rhythm during the 3s stall
        hr = [x for x in d.runs("health") if x["started"] <= r["finished"] + 1]
        check(len(hr) >= 3, "health runs during the stall: %d" % len(hr))
        starts = [x["started"] for x in hr]
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        check(max(gaps) <= 2, "timer stalled: gaps %r" % gaps)
    finally:
        stop.set()
        d.stop()
        d.cleanup()
        for c in accepted:
            c.close()
        lsock.close()


@test
def sigterm_graceful(cluster):
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        d.start()
        wait_for(lambda: d.runs("health"), 10, "a run")
        n = len(d.notes)
        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM, timeout=25)
        check(rc == 0, "exit status %r" % rc)
        check(time.monotonic() - t0 < 21, "stop took too long")
        d.read_notes()
        check("STOPPING=1" in d.notes[n:], "no STOPPING=1")
        check(not os.path.exists(d.socket), "socket left behind")
        # no children left behind in the daemon's process group
        out = subprocess.run(["pgrep", "-g", str(d.proc.pid)], capture_output=True, text=True)
        check(out.stdout.strip() == "", "processes left: " + out.stdout)
        check(all(r["result"] is not None for r in d.runs()), "unfinished run left in state")
        # SIGINT works the same
        d.start()
        check(d.stop(signal.SIGINT) == 0, "SIGINT exit status")
    finally:
        d.cleanup()


@test
def kill9_restart_catch_up(cluster):
    d = Daemon()
    try:
        jobs = HEALTH_FAST + "  daily: { type: health, database: demo, schedule: \"0 3 * * *\", timezone: Europe/Paris }\n"
        d.write_config(base_config(d, cluster, jobs))
        d.start()
        wait_for(lambda: len([r for r in d.runs("health") if r["result"]]) >= 2, 10, "two runs")
        d.proc.kill()
        d.proc.wait()
        before = d.runs()
        finished_before = {r["id"]: r for r in before if r["result"]}
        # the daemon was down across the 03:00 Paris slot: pretend the last handled slot is two days old
        with d.db() as c:
            c.execute("UPDATE sched SET last_slot = ? WHERE job = 'daily'", (int(time.time()) - 2 * 86400,))
        d.start()
        after = {r["id"]: r for r in d.runs()}
        for rid, r in finished_before.items():
            check(after.get(rid) == r, "run %d changed or lost after kill -9: %r" % (rid, after.get(rid)))
        for r in before:
            if r["result"] is None:
                check(after[r["id"]]["result"] == "interrupted", "unfinished run not marked interrupted")
        wait_for(lambda: [r for r in d.runs("daily") if r["trigger"] == "catch_up" and r["result"] == "ok"], 10,
                 "the catch-up run")
        time.sleep(1.5)
        check(len([r for r in d.runs("daily") if r["trigger"] == "catch_up"]) == 1, "more than one catch-up run")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def journal_prefixes_and_watchdog(cluster):
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        log = open(d.log_path, "ab")
        st = os.fstat(log.fileno())
        d.log = log
        env = dict(os.environ, NOTIFY_SOCKET=d.notify_path, DEMO_PASS=PASSWORD,
                   JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino), WATCHDOG_USEC="400000")
        d.proc = subprocess.Popen([PGVIGILD, "--foreground", "-c", d.config], stdout=log, stderr=log, env=env)
        d.wait_note("READY=1", 10)
        time.sleep(1.0)
        d.read_notes()
        check(d.notes.count("WATCHDOG=1") >= 3, "watchdog pings: %r" % d.notes)
        check(any(n.startswith("STATUS=") for n in d.notes), "no STATUS=")
        d.stop()
        lines = [l for l in d.logtext().splitlines() if l]
        check(lines and all(l[0] == "<" and l[2] == ">" for l in lines), "lines without <N> prefix: %r" % lines[:3])
        check(any(l.startswith("<5>") for l in lines) and any(l.startswith("<6>") for l in lines),
              "expected notice and info priorities")
    finally:
        d.cleanup()


@test
def socket_conflicts_and_ctl_errors(cluster):
    d = Daemon()
    d2 = Daemon()
    try:
        # a stale socket file from a crash is replaced
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(d.socket)
        s.close()
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        d.start()
        # a second daemon on the same socket is refused
        cfg = base_config(d, cluster, HEALTH_FAST).replace(d.state_dir, d2.state_dir)
        d2.write_config(cfg)
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d2.config], capture_output=True, text=True,
                             timeout=10, env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 1 and "in use" in out.stderr, "second daemon: " + out.stderr)
        d.ctl("status", check_rc=0)
        # CLI exit statuses
        out = subprocess.run([PGVIGILCTL, "-s", os.path.join(d.dir, "nope.sock"), "status"], capture_output=True)
        check(out.returncode == 3, "unreachable exit %d" % out.returncode)
        out = subprocess.run([PGVIGILCTL, "-s", d.socket, "frobnicate"], capture_output=True)
        check(out.returncode == 2, "usage exit %d" % out.returncode)
        out = subprocess.run([PGVIGILCTL, "-s", d.socket, "run"], capture_output=True)
        check(out.returncode == 2, "usage exit %d" % out.returncode)
        # garbage on the socket gets an error answer and the daemon lives on
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(d.socket)
        c.sendall(b"this is not json\n{\"cmd\": \"nope\"}\n")
        buf = b""
        c.settimeout(5)
        while buf.count(b"\n") < 2:
            chunk = c.recv(4096)
            if not chunk:
                break
            buf += chunk
        c.close()
        answers = [json.loads(l) for l in buf.decode().splitlines()]
        check(len(answers) == 2 and not answers[0]["ok"] and answers[1]["error"]["code"] == "usage",
              "garbage answers: %r" % answers)
        d.ctl("status", check_rc=0)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        d2.cleanup()


@test
def control_abuse_and_second_instance(cluster):
    d = Daemon()
    d2 = Daemon()
    flooders = []
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        d.start()
        # clients that pipeline thousands of requests and never read their answers
        req = b'{"cmd":"jobs"}\n' * 20000
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(d.socket)
            c.setblocking(False)
            try:
                c.send(req)
            except BlockingIOError:
                pass
            flooders.append(c)
        # meanwhile another client is answered promptly and the timers keep running
        t0 = time.monotonic()
        d.ctl("status", check_rc=0)
        check(time.monotonic() - t0 < 2 * SLOW, "status took %.1fs during the flood" % (time.monotonic() - t0))
        n = len(d.runs("health"))
        wait_for(lambda: len(d.runs("health")) >= n + 2, 5, "health runs during the flood")
        rss = int([l for l in open("/proc/%d/status" % d.proc.pid) if l.startswith("VmRSS")][0].split()[1])
        check(WRAPPED or rss < 100 * 1024, "daemon RSS %d kB during the flood" % rss)  # valgrind's own
        for c in flooders:
            c.close()
        flooders = []
        # a client that half-closes after its request still gets the answer
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(d.socket)
        c.sendall(b'{"cmd":"status"}\n')
        c.shutdown(socket.SHUT_WR)
        c.settimeout(5)
        buf = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            buf += chunk
        c.close()
        check(json.loads(buf)["ok"], "half-closed client: %r" % buf[:200])
        # a second daemon on the same state directory (other socket) is refused before touching state
        running = [r["id"] for r in d.runs() if r["result"] is None]
        cfg = base_config(d, cluster, HEALTH_FAST).replace(d.socket, d2.socket)
        d2.write_config(cfg)
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d2.config], capture_output=True, text=True,
                             timeout=10, env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 1 and "in use by another pgvigild (pid %d)" % d.proc.pid in out.stderr,
              "second daemon: " + out.stderr)
        after = {r["id"]: r for r in d.runs()}
        check(all(after[i]["result"] != "interrupted" for i in running), "second daemon touched running runs")
        check(d.stop() == 0, "exit status")
    finally:
        for c in flooders:
            c.close()
        d.cleanup()
        d2.cleanup()


@test
def background_start(cluster):
    """Without --foreground the parent returns once the daemon is ready (exit 0) or failed (exit 1)."""
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        out = subprocess.run([PGVIGILD, "-c", d.config], capture_output=True, text=True, timeout=20,
                             env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 0, "background start: %d %s" % (out.returncode, out.stderr))
        pid = d.ctl_json("status")["pid"]
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists("/proc/%d" % pid), 25, "background daemon to exit")
        d.write_config("daemon: [\n")
        out = subprocess.run([PGVIGILD, "-c", d.config], capture_output=True, text=True, timeout=20)
        check(out.returncode == 1, "background start with bad config: %d" % out.returncode)
    finally:
        d.cleanup()


@test
def state_problems_refuse_start(cluster):
    d = Daemon()
    try:
        # state_dir is a file
        open(d.state_dir, "w").close()
        d.write_config(base_config(d, cluster, HEALTH_FAST))
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d.config], capture_output=True, text=True,
                             timeout=10, env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 1 and "not a directory" in out.stderr, "state_dir is a file: " + out.stderr)
        # a state.db that is not a database is refused and left untouched
        os.unlink(d.state_dir)
        os.mkdir(d.state_dir, 0o700)
        junk = b"this is not an sqlite database\n" * 10
        with open(os.path.join(d.state_dir, "state.db"), "wb") as f:
            f.write(junk)
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d.config], capture_output=True, text=True,
                             timeout=10, env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 1 and "state.db" in out.stderr, "junk state.db: " + out.stderr)
        with open(os.path.join(d.state_dir, "state.db"), "rb") as f:
            check(f.read() == junk, "junk state.db was modified")
        # the secret it needs is missing from the environment
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d.config], capture_output=True, text=True,
                             timeout=10, env={k: v for k, v in os.environ.items() if k != "DEMO_PASS"})
        check(out.returncode == 1 and "DEMO_PASS" in out.stderr, "missing env secret: " + out.stderr)
    finally:
        d.cleanup()


@test
def install_layout(cluster):
    dest = tempfile.mkdtemp(prefix="pgvigil-e2e-install-")
    try:
        def install(*extra):
            out = subprocess.run(["make", "-s", "-C", ROOT, "install", "DESTDIR=" + dest] + list(extra),
                                 capture_output=True, text=True, timeout=300)
            check(out.returncode == 0, "make install: " + out.stderr)
            return out.stdout
        install()
        files = {os.path.relpath(os.path.join(p, f), dest) for p, _, fs in os.walk(dest) for f in fs}
        for want in ("sbin/pgvigild", "bin/pgvigilctl", "etc/pgvigil/pgvigil.yaml", "lib/systemd/system/pgvigil.service",
                     "lib/sysusers.d/pgvigil.conf", "lib/tmpfiles.d/pgvigil.conf", "share/man/man8/pgvigild.8",
                     "share/man/man1/pgvigilctl.1", "share/man/man5/pgvigil.yaml.5", "share/man/man5/pgvigil-backup.5",
                     "share/bash-completion/completions/pgvigilctl", "share/doc/pgvigil/examples/supabase.yaml",
                     "share/doc/pgvigil/examples/self-hosted.yaml"):
            check(any(f.endswith(want) for f in files), "not installed: %s (have %s)" % (want, sorted(files)))
        path = lambda suffix: os.path.join(dest, [f for f in files if f.endswith(suffix)][0])
        check(os.stat(path("sbin/pgvigild")).st_mode & 0o777 == 0o755, "pgvigild mode")
        check(os.stat(path("etc/pgvigil/pgvigil.yaml")).st_mode & 0o777 == 0o640, "config mode")
        for f in ("pgvigil.service", "tmpfiles.d/pgvigil.conf", "completions/pgvigilctl", "man5/pgvigil.yaml.5"):
            check(os.stat(path(f)).st_mode & 0o777 == 0o644, "%s mode %o" % (f, os.stat(path(f)).st_mode))
        tmpfiles = open(path("tmpfiles.d/pgvigil.conf")).read()
        check("@sysconfdir@" not in tmpfiles and "/etc/pgvigil 0750 root pgvigil" in tmpfiles, "tmpfiles: " + tmpfiles)
        check(open(path("completions/pgvigilctl")).read() == open(COMPLETION).read(), "completion differs")
        unit = path("pgvigil.service")
        text = open(unit).read()
        check("@sbindir@" not in text and "@sysconfdir@" not in text, "unit placeholders not filled")
        for key in ("Type=notify", "WatchdogSec=", "User=pgvigil", "StateDirectory=pgvigil",
                    "RuntimeDirectoryMode=0750", "ConfigurationDirectory=pgvigil", "ExecReload=",
                    "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes", "NoNewPrivileges=yes",
                    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n", "SystemCallFilter=@system-service",
                    "CapabilityBoundingSet=\n", "MemoryDenyWriteExecute=yes", "UMask=0077"):
            check(key in text, "unit lacks " + key)
        if shutil.which("systemd-analyze"):
            local = os.path.join(dest, "check.service")
            with open(local, "w") as f:
                f.write("\n".join(l for l in text.splitlines() if not l.startswith("Documentation="))
                        .replace(text.split("ExecStart=")[1].split()[0], PGVIGILD) + "\n")
            out = subprocess.run(["systemd-analyze", "verify", local], capture_output=True, text=True)
            check(out.returncode == 0, "systemd-analyze verify: " + out.stderr)
            out = subprocess.run(["systemd-analyze", "security", "--offline=true", local], capture_output=True,
                                 text=True)
            score = re.search(r"Overall exposure level for check.service: ([0-9.]+)", out.stdout)
            if score:
                print("     systemd-analyze security: exposure %s" % score.group(1), flush=True)
                check(float(score.group(1)) <= 1.5, "the sandbox got weaker: exposure " + score.group(1))

        # An existing configuration is never overwritten; everything else is.
        conf = path("etc/pgvigil/pgvigil.yaml")
        with open(conf, "w") as f:
            f.write("# edited by the administrator\n")
        out = install()
        check(open(conf).read() == "# edited by the administrator\n", "make install overwrote the configuration")
        check("keeping existing" in out, "no notice about the kept configuration: " + out)

        # prefix is honoured at install time too
        out = install("prefix=/opt/pgv")
        for want in ("opt/pgv/sbin/pgvigild", "opt/pgv/bin/pgvigilctl", "opt/pgv/etc/pgvigil/pgvigil.yaml",
                     "opt/pgv/share/bash-completion/completions/pgvigilctl", "opt/pgv/lib/systemd/system/pgvigil.service"):
            check(os.path.exists(os.path.join(dest, want)), "prefix=/opt/pgv: %s not installed" % want)
        text = open(os.path.join(dest, "opt/pgv/lib/systemd/system/pgvigil.service")).read()
        check("ExecStart=/opt/pgv/sbin/pgvigild --foreground -c /opt/pgv/etc/pgvigil/pgvigil.yaml" in text,
              "unit paths under prefix=/opt/pgv")

        # uninstall removes what install put there, except the configuration
        out = subprocess.run(["make", "-s", "-C", ROOT, "uninstall", "DESTDIR=" + dest, "prefix=/opt/pgv"],
                             capture_output=True, text=True, timeout=120)
        check(out.returncode == 0, "make uninstall: " + out.stderr)
        left = sorted(os.path.relpath(os.path.join(p, f), dest) for p, _, fs in os.walk(os.path.join(dest, "opt"))
                      for f in fs)
        check(left == ["opt/pgv/etc/pgvigil/pgvigil.yaml"], "left after uninstall: %r" % left)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@test
def dist_tarball(cluster):
    """make dist: the tarball holds every tracked file and a pre-generated configure; unpacked, it
    configures, builds without autoconf and passes the unit tests. (make distcheck runs the whole
    make check from the tarball; this is the cheaper variant.)"""
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "--is-inside-work-tree"], capture_output=True).returncode != 0:
        print("     skipped: not a git checkout (as when make check runs from the tarball itself)", flush=True)
        return
    work = tempfile.mkdtemp(prefix="pgvigil-e2e-dist-")
    os.chmod(work, 0o755)
    try:
        t0 = time.monotonic()
        out = subprocess.run(["make", "-s", "-C", ROOT, "dist", "DIST_DEST=" + work], capture_output=True, text=True,
                             timeout=300)
        check(out.returncode == 0, "make dist: " + out.stderr)
        tars = [f for f in os.listdir(work) if f.endswith(".tar.gz")]
        check(len(tars) == 1 and re.match(r"^pgvigil-[0-9]+\.[0-9]+\.[0-9]+\.tar\.gz$", tars[0]), "tarball: %r" % tars)
        tarball = os.path.join(work, tars[0])
        top = tars[0][:-len(".tar.gz")]
        listing = subprocess.run(["tar", "tzf", tarball], capture_output=True, text=True, check=True).stdout.split()
        members = {m[len(top) + 1:] for m in listing if not m.endswith("/")}
        check(all(m.startswith(top + "/") for m in listing), "members outside %s/" % top)
        tracked = {f for f in subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True,
                                             check=True).stdout.split("\n") if f and os.path.exists(os.path.join(ROOT, f))}
        check(tracked - members == set(), "tracked files missing from the tarball: %r" % sorted(tracked - members))
        check(members - tracked == {"configure"}, "unexpected files in the tarball: %r" % sorted(members - tracked - {"configure"}))
        print("     %s: %d bytes, %d files" % (tars[0], os.path.getsize(tarball), len(members)), flush=True)

        subprocess.run(["tar", "-C", work, "-xzf", tarball], check=True)
        src = os.path.join(work, top)
        out = subprocess.run(["./configure"], cwd=src, capture_output=True, text=True, timeout=300)
        check(out.returncode == 0, "configure from the tarball: " + out.stderr[-2000:])
        out = subprocess.run(["make", "-j2", "all", "unit-check"], cwd=src, capture_output=True, text=True, timeout=900)
        text = out.stdout + out.stderr
        failures = "\n".join(l for l in text.splitlines() if re.search(r":[FE]:|^failed:|Running suite|could not|pgtmp|FATAL|error", l))
        check(out.returncode == 0, "build and unit tests from the tarball:\n%s\n...\n%s" % (failures, text[-1500:]))
        check("autoreconf" not in text, "building from the tarball ran autoreconf")
        m = re.search(r"^([0-9]+) passed, ([0-9]+) failed$", out.stdout, re.M)
        check(m and int(m.group(1)) > 100 and m.group(2) == "0", "unit tests from the tarball: %r" % out.stdout[-500:])
        print("     built and ran %s unit tests from the tarball in %.0fs" % (m.group(1), time.monotonic() - t0),
              flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


COMPLETION = os.path.join(ROOT, "contrib", "bash-completion", "pgvigilctl")


def complete(*words, env=None):
    """What bash completes for the last of words (the word under the cursor) on a pgvigilctl line."""
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _pgvigilctl; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", script, "complete", COMPLETION, PGVIGILCTL] + list(words),
                         capture_output=True, text=True, timeout=20, env=env)
    check(out.returncode == 0, "completion of %r: %s" % (words, out.stderr))
    return sorted(x for x in out.stdout.split("\n") if x)


@test
def bash_completion(cluster):
    d = Daemon()
    try:
        d.write_config(base_config(d, cluster, HEALTH_FAST + "  health-slow: { type: health, database: demo, every: 1h }\n"))
        d.start()
        check(complete("") == sorted("status jobs run backups verify restore alerts silence maintenance report "
                                     "reload prune schedule decrypt verify-file".split()), "commands: %r" % complete(""))
        check(complete("re") == ["reload", "report", "restore"], "re: %r" % complete("re"))
        check(complete("--j") == ["--json"] and "--socket" in complete("-"), "options: %r" % complete("-"))
        # names from the daemon, on the socket given on the line or in PGVIGIL_SOCKET
        check(complete("-s", d.socket, "run", "") == ["health", "health-slow"], "jobs: %r" % complete("-s", d.socket, "run", ""))
        check(complete("--json", "--socket", d.socket, "run", "health-") == ["health-slow"], "job prefix")
        check(complete("run", "", env=dict(os.environ, PGVIGIL_SOCKET=d.socket)) == ["health", "health-slow"],
              "jobs through PGVIGIL_SOCKET")
        check(complete("-s", d.socket, "backups", "") == ["demo"], "databases: %r" % complete("-s", d.socket, "backups", ""))
        check(complete("-s", d.socket, "restore", "latest", "--database", "") == ["demo"], "restore --database")
        check(complete("-s", d.socket, "restore", "l") == ["latest"], "restore latest")
        check(complete("restore", "latest", "--") == ["--database", "--force", "--to"], "restore options")
        check(complete("silence", "") == ["add", "list", "remove"], "silence")
        check(complete("silence", "add", "connectivity_") == ["connectivity_lost"], "silence rules")
        check(complete("silence", "add", "backup_stale", "--") == ["--comment", "--for"], "silence options")
        check(complete("maintenance", "") == ["off", "on"] and complete("maintenance", "on", "--f") == ["--for"],
              "maintenance")
        check(complete("prune", "--") == ["--dry-run"] and complete("report", "--") == ["--json"], "prune/report")
        check(complete("alerts", "h") == ["history"], "alerts history")
        check(complete("schedule", "* * * * *", "--") == ["--count", "--from", "--tz"], "schedule options")
        check(complete("schedule", "* * * * *", "--tz", "Europe/Par") == ["Europe/Paris"],
              "zones: %r" % complete("schedule", "* * * * *", "--tz", "Europe/Par"))
        check(complete("decrypt", "x", "--k") == ["--key-file"], "decrypt options")
        check(complete("verify-file", os.path.join(d.dir, "sta")) == [d.state_dir], "verify-file directories")
        # no daemon: nothing offered, quickly
        t0 = time.monotonic()
        check(complete("-s", os.path.join(d.dir, "nothing.sock"), "run", "") == [], "jobs without a daemon")
        check(time.monotonic() - t0 < 5, "completion without a daemon took %.1fs" % (time.monotonic() - t0))
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def schedule_command_offline(cluster):
    out = subprocess.run([PGVIGILCTL, "schedule", "0 2 * * *", "--tz", "Europe/Paris", "--from",
                          "2026-03-28T00:00:00Z", "--count", "3"], capture_output=True, text=True)
    check(out.returncode == 0, out.stderr)
    check(out.stdout.split() == ["2026-03-28T01:00:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"],
          "Paris spring gap: %r" % out.stdout)
    out = subprocess.run([PGVIGILCTL, "schedule", "30 1 * * *", "--tz", "America/New_York", "--from",
                          "2026-10-31T12:00:00Z", "--count", "2"], capture_output=True, text=True)
    check(out.stdout.split() == ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"], "NY overlap: %r" % out.stdout)
    out = subprocess.run([PGVIGILCTL, "schedule", "61 * * * *"], capture_output=True, text=True)
    check(out.returncode == 2 and "minute" in out.stderr, "bad cron: %d %s" % (out.returncode, out.stderr))
    out = subprocess.run([PGVIGILCTL, "schedule", "* * * * *", "--tz", "Mars/Olympus"], capture_output=True,
                         text=True)
    check(out.returncode == 2 and "Mars/Olympus" in out.stderr, "bad tz: " + out.stderr)

# ---------------------------------------------------------------------------
# Backups under failure (issue 3, "Tests that must provoke")

def _real_pg_bin():
    found = sorted((d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()
                    and os.path.exists(os.path.join("/usr/lib/postgresql", d, "bin", "pg_dump"))), key=int)
    return os.path.join("/usr/lib/postgresql", found[-1], "bin") if found else None


REAL_PG_BIN = _real_pg_bin() if os.path.isdir("/usr/lib/postgresql") else None
PG_CTL_USER = "pgvigil-test"
KEY_A = "11" * 32
KEY_B = "2b" * 32


def psql(cluster, sql, db="demo", user="vigil", check_rc=True, settings=""):
    """Run SQL over the cluster's Unix socket (local auth is trust) and return stdout, unaligned."""
    out = subprocess.run([os.path.join(REAL_PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-h", cluster.sock, "-p", str(cluster.port), "-U", user, "-d", db],
                         input=settings + sql, capture_output=True, text=True, timeout=120)
    if check_rc and out.returncode != 0:
        raise Failure("psql failed (%d): %s\nSQL: %s" % (out.returncode, out.stderr, sql[:300]))
    return out.stdout.strip()


def ensure_bulk(cluster):
    """A table that makes the demo archive about 2 MB (md5 text: half-compressible)."""
    psql(cluster, "CREATE TABLE IF NOT EXISTS bulk (id int PRIMARY KEY, t text);"
                  "INSERT INTO bulk SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 50000) g "
                  "ON CONFLICT DO NOTHING;")


def write_key(path, hexkey):
    with open(path, "w") as f:
        f.write(hexkey + "\n")
    os.chmod(path, 0o600)
    return path


def key_fingerprint(hexkey):
    import hashlib
    return hashlib.sha256(b"pgvigil key fingerprint v1\n" + bytes.fromhex(hexkey)).hexdigest()[:16]


def make_pg_bin(d, pg_dump=None, pg_restore=None):
    """A daemon.pg_bin_dir for d: each tool is a symlink to the real one, or the given bash script
    (REAL stands for the real tool's path)."""
    bindir = os.path.join(d.dir, "pgbin")
    os.makedirs(bindir, exist_ok=True)
    for name, script in (("pg_dump", pg_dump), ("pg_restore", pg_restore)):
        path = os.path.join(bindir, name)
        real = os.path.join(REAL_PG_BIN, name)
        if script is None:
            os.symlink(real, path)
        else:
            with open(path, "w") as f:
                f.write("#!/bin/bash\n" + script.replace("REAL", real))
            os.chmod(path, 0o755)
    return bindir


# pg_dump that writes 20000 bytes, then stalls for 3 s before the rest
STALL_DUMP = """\
if [ "$1" = --version ]; then exec REAL "$@"; fi
set -o pipefail
REAL "$@" | { head -c 20000; sleep 3; cat; }
"""


def backup_config(d, cluster, jobs, storage=None, storage_extra="", daemon_extra="", extra_db="", demo_extra=""):
    text = base_config(d, cluster, jobs, extra_db=extra_db, daemon_extra=daemon_extra)
    if storage is not None:
        text = text.replace("  path: %s/backups\n" % d.dir, "  path: %s\n" % storage)
    if storage_extra:
        text = text.replace("storage:\n", "storage:\n" + storage_extra)
    if demo_extra:
        text = text.replace("    password: env:DEMO_PASS\n", "    password: env:DEMO_PASS\n" + demo_extra, 1)
    return text


def storage_dir(d):
    return os.path.join(d.dir, "backups")


def run_job(d, job, timeout=60):
    """Start job now and wait until its run finishes; returns the run row."""
    out = d.ctl("--json", "run", job, check_rc=0)
    rid = json.loads(out.stdout)["run"]

    def done():
        r = run_by_id(d, rid)
        return r if r and r["result"] is not None else None
    return wait_for(done, timeout, "run %d of %s to finish" % (rid, job), interval=0.1)


def started_run(d, job):
    out = d.ctl("--json", "run", job, check_rc=0)
    return json.loads(out.stdout)["run"]


def run_by_id(d, rid):
    r = [x for x in d.runs() if x["id"] == rid]
    if r and r[0]["result"] is not None and os.environ.get("E2E_VERBOSE"):
        print("     run %s: %s: %s" % (r[0]["job"], r[0]["result"], r[0]["cause"]))
    return r[0] if r else None


def catalogued(d, job=None):
    with d.db() as c:
        rows = c.execute("SELECT id, dir FROM backups" + (" WHERE job = ?" if job else "") + " ORDER BY id",
                         (job,) if job else ()).fetchall()
    return rows


def tree(path):
    """Every file and directory under path, relative."""
    out = []
    for p, dirs, files in os.walk(path):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(p, n), path))
    return sorted(out)


def check_nothing_left(d, storage, job):
    """No visible backup, no temporary directory, nothing catalogued."""
    leftovers = [p for p in tree(storage) if os.path.isfile(os.path.join(storage, p))
                 or os.path.basename(p).startswith(".tmp-")]
    check(not leftovers, "left behind in storage: %r" % leftovers)
    jobdir = os.path.join(storage, "demo", job)
    if os.path.isdir(jobdir):
        check(os.listdir(jobdir) == [], "job directory not empty: %r" % os.listdir(jobdir))
    check(catalogued(d, job) == [], "catalogued: %r" % catalogued(d, job))


def tmp_dirs(storage):
    return [p for p in tree(storage) if os.path.basename(p).startswith(".tmp-")]


def pids_of(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def real_dump_pids(pgbin):
    """The real pg_dump processes started by the pg_dump wrapper in pgbin."""
    real = os.path.join(REAL_PG_BIN, "pg_dump")
    found = []
    for w in pids_of(os.path.join(pgbin, "pg_dump")):
        out = subprocess.run(["pgrep", "-P", str(w), "-f", "^" + real], capture_output=True, text=True)
        found += [int(x) for x in out.stdout.split()]
    return found


def kill_pids(pids, sig=signal.SIGKILL):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def backups_json(d, db=None):
    return d.ctl_json("backups", *([db] if db else []))["backups"]


def good_backup(d, job, timeout=60):
    r = run_job(d, job, timeout)
    check(r["result"] == "ok", "backup run: %r\nlog tail:\n%s" % (r, d.logtext()[-3000:]))
    return r


BACKUP_JOB = "  bk: { type: backup, database: demo, schedule: \"0 0 1 1 *\", keep: %d, timeout: 60s }\n"


@test
def backup_ids_unique_within_a_second(cluster):
    """Backup ids have one-second resolution: two backups of a job in the same second both land."""
    if WRAPPED:
        return  # two backups within a second are out of reach under valgrind
    d = Daemon()
    try:
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 10))
        d.start()
        for _ in range(5):
            before = len(catalogued(d, "bk"))
            a = good_backup(d, "bk")
            b = good_backup(d, "bk")
            check(len(catalogued(d, "bk")) == before + 2, "a backup was lost")
            if a["started"] == b["started"]:
                break
        check(a["started"] == b["started"], "could not make two backups within one second")
        ids = [x["id"] for x in backups_json(d)]
        check(len(ids) == len(set(ids)), "duplicate ids: %r" % ids)
        check(any(i.endswith("-bk-2") for i in ids), "no suffixed id: %r" % ids)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def backup_pg_dump_killed(cluster):
    ensure_bulk(cluster)
    d = Daemon()
    try:
        pgbin = make_pg_bin(d, pg_dump=STALL_DUMP)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 3, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        rid = started_run(d, "bk")
        pids = wait_for(lambda: real_dump_pids(pgbin), 10, "the real pg_dump")
        check(tmp_dirs(storage_dir(d)), "no temporary directory while pg_dump runs: %r" % tree(storage_dir(d)))
        kill_pids(pids)
        r = wait_for(lambda: run_by_id(d, rid)["result"] and run_by_id(d, rid), 20, "the run to end")
        check(r["result"] == "failed", "result: %r" % r)
        check("pg_dump" in r["cause"] and "137" in r["cause"], "cause does not cite pg_dump's exit status: %r"
              % r["cause"])
        check_nothing_left(d, storage_dir(d), "bk")
        check(d.ctl_json("status")["pid"] == d.proc.pid, "daemon not answering")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def backup_during_sigterm_and_responsive(cluster):
    """While a backup streams, health checks keep their rhythm and the socket answers; SIGTERM
    mid-backup stops pg_dump's whole group, leaves nothing behind and exits 0."""
    ensure_bulk(cluster)
    d = Daemon()
    try:
        pgbin = make_pg_bin(d, pg_dump=STALL_DUMP.replace("sleep 3", "sleep 30"))
        jobs = BACKUP_JOB % 3 + HEALTH_FAST
        d.write_config(backup_config(d, cluster, jobs, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        rid = started_run(d, "bk")
        wait_for(lambda: real_dump_pids(pgbin), 10, "the real pg_dump")
        n = len(d.runs("health"))
        t0 = time.monotonic()
        for _ in range(5):
            d.ctl("status", check_rc=0)
            jobs_now = {j["name"]: j for j in d.ctl_json("jobs")["jobs"]}
            check(jobs_now["bk"]["running"] is not None, "backup not shown as running")
        check(time.monotonic() - t0 < 3 * SLOW, "control socket slow during a backup")
        wait_for(lambda: len(d.runs("health")) >= n + 2, 5, "health runs during the backup")
        t0 = time.monotonic()
        check(d.stop(signal.SIGTERM, timeout=25) == 0, "exit status")
        check(time.monotonic() - t0 < 21, "stop took %.1fs" % (time.monotonic() - t0))
        r = run_by_id(d, rid)
        check(r["result"] == "cancelled", "run after SIGTERM: %r" % r)
        check_nothing_left(d, storage_dir(d), "bk")
        check(not real_dump_pids(pgbin), "pg_dump left running after the daemon stopped")
        out = subprocess.run(["pgrep", "-g", str(d.proc.pid)], capture_output=True, text=True)
        check(out.stdout.strip() == "", "processes left in the daemon's group: " + out.stdout)
    finally:
        d.cleanup()


@test
def backup_pg_dump_too_old(cluster):
    d = Daemon()
    try:
        old = 'if [ "$1" = --version ]; then echo "pg_dump (PostgreSQL) 11.22"; exit 0; fi\nexec REAL "$@"\n'
        pgbin = make_pg_bin(d, pg_dump=old)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 3, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        major = int(psql(cluster, "SHOW server_version_num")) // 10000
        r = run_job(d, "bk", 30)
        check(r["result"] == "failed", "result: %r" % r)
        check("postgresql-client-%d" % major in r["cause"] and "11" in r["cause"],
              "cause does not name the package: %r" % r["cause"])
        check_nothing_left(d, storage_dir(d), "bk")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def backup_wrong_password(cluster):
    wrong = "not-the-password-xyzzy"
    d = Daemon(env_extra={"WRONG_PASS": wrong})
    try:
        extra = """  wrongpw:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil"
    password: env:WRONG_PASS
""" % cluster.port
        jobs = "  bkw: { type: backup, database: wrongpw, schedule: \"0 0 1 1 *\", keep: 2, timeout: 30s }\n"
        d.write_config(backup_config(d, cluster, jobs, extra_db=extra))
        d.start()
        r = run_job(d, "bkw", 30)
        check(r["result"] == "failed" and "password authentication failed" in r["cause"], "run: %r" % r)
        check(wrong not in r["cause"], "password in the cause")
        check(wrong not in d.logtext() and PASSWORD not in d.logtext(), "password in the daemon log")
        storage = storage_dir(d)
        check(not [p for p in tree(storage) if os.path.isfile(os.path.join(storage, p)) or ".tmp-" in p],
              "left behind: %r" % tree(storage))
        check(catalogued(d) == [], "catalogued")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def backup_server_dies(cluster):
    d = Daemon()
    other = None
    try:
        other = Cluster()
        psql(other, "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 50000) g;")
        pgbin = make_pg_bin(d, pg_dump=STALL_DUMP)
        extra = """  other:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil"
    password: env:DEMO_PASS
""" % other.port
        jobs = "  bko: { type: backup, database: other, schedule: \"0 0 1 1 *\", keep: 2, timeout: 60s }\n"
        d.write_config(backup_config(d, cluster, jobs, extra_db=extra, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        rid = started_run(d, "bko")
        storage = storage_dir(d)
        wait_for(lambda: tmp_dirs(storage), 10, "the backup to start writing")
        time.sleep(0.5)
        out = subprocess.run(["runuser", "-u", PG_CTL_USER, "--", os.path.join(REAL_PG_BIN, "pg_ctl"), "-D",
                              os.path.join(other.dir, "data"), "-m", "immediate", "-w", "stop"],
                             capture_output=True, text=True, timeout=30)
        check(out.returncode == 0, "pg_ctl stop: " + out.stderr)
        r = wait_for(lambda: run_by_id(d, rid)["result"] and run_by_id(d, rid), 30, "the run to end")
        check(r["result"] == "failed", "result: %r" % r)
        check("pg_dump" in r["cause"], "cause: %r" % r["cause"])
        # pg_dump's own account is in the log (the detail lines come after the error line)
        dump_lines = [l for l in d.logtext().splitlines() if "pg_dump: " in l]
        check(any("server closed the connection" in l or "terminating connection" in l for l in dump_lines),
              "pg_dump's error not logged:\n" + "\n".join(dump_lines))
        # and the recorded cause must say what happened, not only pg_dump's last "detail:" line
        check(any(w in r["cause"].lower() for w in ("server closed", "terminating connection", "connection to server")),
              "cause does not say the server went away: %r" % r["cause"])
        check(not tmp_dirs(storage), "temporary directory left: %r" % tree(storage))
        check(not [p for p in tree(storage) if os.path.isfile(os.path.join(storage, p))],
              "files left: %r" % tree(storage))
        check(catalogued(d) == [], "catalogued")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        if other is not None:
            other.stop()


@test
def backup_daemon_killed_then_restarted(cluster):
    ensure_bulk(cluster)
    d = Daemon()
    pgbin = None
    try:
        pgbin = make_pg_bin(d, pg_dump=STALL_DUMP)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 3, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        rid = started_run(d, "bk")
        storage = storage_dir(d)
        tmp = wait_for(lambda: tmp_dirs(storage), 10, "the temporary directory")
        d.proc.kill()
        d.proc.wait()
        # pg_dump and its wrapper outlive the daemon; end them (they would die of SIGPIPE anyway)
        kill_pids(pids_of(os.path.join(pgbin, "pg_dump")))
        check(tmp_dirs(storage) == tmp, "temporary directory vanished before the restart")
        check(run_by_id(d, rid)["result"] is None, "run finished although the daemon was killed")
        # restart without the stalling wrapper
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 3))
        d.start()
        check(not tmp_dirs(storage), "temporary directory not removed at start: %r" % tree(storage))
        log = d.logtext()
        name = os.path.basename(tmp[0])
        check(any("removed temporary backup directory" in l and name in l for l in log.splitlines()),
              "removal of the temporary directory %s not logged:\n%s" % (name, log[-2000:]))
        check(run_by_id(d, rid)["result"] == "interrupted", "run: %r" % run_by_id(d, rid))
        check(catalogued(d) == [], "catalogued: %r" % catalogued(d))
        r = good_backup(d, "bk")
        b = backups_json(d)
        check(len(b) == 1 and b[0]["verify_result"] == "ok", "backups after recovery: %r" % b)
        check(os.path.exists(os.path.join(b[0]["dir"], "manifest.json")), "no manifest")
        check(d.stop() == 0, "exit status")
    finally:
        if pgbin:
            kill_pids(pids_of(os.path.join(pgbin, "pg_dump")))
        d.cleanup()


@test
def backup_filesystem_full(cluster):
    ensure_bulk(cluster)
    d = Daemon()
    mnt = os.path.join(d.dir, "small")
    mounted = False
    try:
        os.mkdir(mnt)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mnt],
                             capture_output=True, text=True)
        check(out.returncode == 0, "cannot mount a tmpfs: " + out.stderr)
        mounted = True
        d.write_config(backup_config(d, cluster, HEALTH_FAST + BACKUP_JOB % 2, storage=mnt))
        d.start()
        r = run_job(d, "bk", 40)
        check(r["result"] == "failed", "result: %r" % r)
        check("No space left on device" in r["cause"], "cause: %r" % r["cause"])
        check_nothing_left(d, mnt, "bk")
        st = d.ctl_json("status")
        check(st["pid"] == d.proc.pid, "status after the failure")
        n = len(d.runs("health"))
        wait_for(lambda: len([x for x in d.runs("health") if x["result"] == "ok"]) >= n + 1, 5,
                 "health runs after the failure")
        check(d.stop() == 0, "exit status")
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        if mounted:
            subprocess.run(["umount", mnt], capture_output=True)
        d.cleanup()


@test
def backup_snapshot_import_failure_hint(cluster):
    """pg_dump that cannot import the exported snapshot (what a transaction-mode pooler causes):
    the run fails with the pooler HINT. Simulated by a wrapper that passes a snapshot id that
    does not exist; pg_dump >= 15 prints the server's error, then a "detail: Query was" line."""
    d = Daemon()
    try:
        bogus = ('args=(); for a in "$@"; do case "$a" in --snapshot=*) a=--snapshot=00000003-000000FF-1;; esac; '
                 'args+=("$a"); done\nexec REAL "${args[@]}"\n')
        pgbin = make_pg_bin(d, pg_dump=bogus)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 2, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        r = run_job(d, "bk", 30)
        check(r["result"] == "failed", "result: %r" % r)
        check("invalid snapshot identifier" in d.logtext(), "pg_dump's error not logged")
        check("HINT" in r["cause"] and "session-mode" in r["cause"], "no pooler HINT in the cause: %r" % r["cause"])
        check_nothing_left(d, storage_dir(d), "bk")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


def _decrypt(path, *keys):
    args = [PGVIGILCTL, "decrypt", path]
    for k in keys:
        args += ["--key-file", k]
    return subprocess.run(args, capture_output=True, timeout=60)


def _verify_file(dirpath, *keys):
    args = [PGVIGILCTL, "verify-file", dirpath]
    for k in keys:
        args += ["--key-file", k]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@test
def backup_corruption_detected(cluster):
    ensure_bulk(cluster)
    d = Daemon()
    try:
        ka = write_key(os.path.join(d.dir, "a.key"), KEY_A)
        kb = write_key(os.path.join(d.dir, "b.key"), KEY_B)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 5, storage_extra="  encryption_key_file: %s\n" % ka))
        d.start()
        good_backup(d, "bk")
        b = backups_json(d)[0]
        bid, bdir = b["id"], b["dir"]
        enc = os.path.join(bdir, "dump.zst.enc")
        check(b["verify_result"] == "ok" and b["key_fingerprint"] == key_fingerprint(KEY_A), "backup: %r" % b)
        orig = open(enc, "rb").read()
        check(len(orig) > 200 * 1024, "stored file too small for the chunk tests: %d" % len(orig))
        rec = 4 + 65536 + 16
        check(_verify_file(bdir, ka).returncode == 0, "verify-file of the good backup failed")

        def put(data):
            with open(enc, "wb") as f:
                f.write(data)

        def expect_bad(what, words):
            out = d.ctl("verify", bid)
            check(out.returncode == 1, "%s: verify exit %d: %s%s" % (what, out.returncode, out.stdout, out.stderr))
            vf = _verify_file(bdir, ka)
            check(vf.returncode == 1, "%s: verify-file exit %d: %s" % (what, vf.returncode, vf.stdout + vf.stderr))
            dc = _decrypt(enc, ka)
            derr = dc.stderr.decode(errors="replace")
            if os.environ.get("E2E_VERBOSE"):
                print("     %s:\n      verify: %s      verify-file: %s      decrypt: %s" % (
                    what, out.stdout + out.stderr, vf.stdout + vf.stderr, derr))
            check(dc.returncode != 0, "%s: decrypt exit 0" % what)
            for w in words:
                check(w in derr, "%s: decrypt does not say %r: %s" % (what, w, derr))
                check(w in out.stdout + out.stderr, "%s: verify does not say %r: %s" % (what, w, out.stdout + out.stderr))
                check(w in vf.stdout + vf.stderr, "%s: verify-file does not say %r: %s" % (what, w, vf.stdout + vf.stderr))
            return out.stdout + out.stderr, vf.stdout + vf.stderr, derr

        # (a) one flipped byte in the middle of a chunk
        flipped = bytearray(orig)
        pos = 44 + rec + 1000
        flipped[pos] ^= 0x01
        put(bytes(flipped))
        expect_bad("flipped byte", ["chunk 1", "failed authentication"])
        b = [x for x in backups_json(d) if x["id"] == bid][0]
        check(b["verify_result"] == "failed" and b["verify_cause"], "catalog after a failed verify: %r" % b)
        # (b) truncated at a chunk boundary, and in the middle of a chunk
        put(orig[:44 + 2 * rec])
        expect_bad("truncated at a boundary", ["truncated", "no final chunk"])
        put(orig[:len(orig) - 100])
        expect_bad("truncated mid-chunk", ["truncated"])
        # (c) two chunks swapped
        c1, c2 = orig[44 + rec:44 + 2 * rec], orig[44 + 2 * rec:44 + 3 * rec]
        put(orig[:44 + rec] + c2 + c1 + orig[44 + 3 * rec:])
        expect_bad("swapped chunks", ["out of place", "written as chunk 2"])
        # restored file verifies again
        put(orig)
        out = d.ctl("verify", bid)
        check(out.returncode == 0, "verify of the restored file: %s%s" % (out.stdout, out.stderr))
        check([x for x in backups_json(d) if x["id"] == bid][0]["verify_result"] == "ok", "catalog not ok again")
        # (d) wrong key: the error names the fingerprint of the key needed
        fa = key_fingerprint(KEY_A)
        vf = _verify_file(bdir, kb)
        check(vf.returncode == 1 and fa in vf.stdout + vf.stderr, "verify-file wrong key: %s" % (vf.stdout + vf.stderr))
        dc = _decrypt(enc, kb)
        check(dc.returncode != 0 and fa in dc.stderr.decode() and dc.stdout == b"",
              "decrypt wrong key: %d %s (%d bytes out)" % (dc.returncode, dc.stderr.decode(), len(dc.stdout)))
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def backup_retention_with_failed_newest(cluster):
    d = Daemon()
    try:
        flag = os.path.join(d.dir, "fail-restore")
        bad_restore = ('if [ "$1" != --version ] && [ -e %s ]; then cat >/dev/null; echo "pg_restore: error: '
                       'simulated failure" >&2; exit 1; fi\nexec REAL "$@"\n' % flag)
        pgbin = make_pg_bin(d, pg_restore=bad_restore)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 2, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        ids = []
        for i in range(5):
            if i:
                time.sleep(1.05)
            if i == 4:
                open(flag, "w").close()
            r = run_job(d, "bk", 60)
            check(r["result"] == ("ok" if i < 4 else "failed"), "backup %d: %r" % (i + 1, r))
            ids.append(sorted(set(x["id"] for x in backups_json(d)) - set(ids))[-1])
        check("simulated failure" in r["cause"] or "verification" in r["cause"], "cause: %r" % r["cause"])
        left = {x["id"]: x for x in backups_json(d)}
        check(set(left) == {ids[2], ids[3], ids[4]}, "kept %r of %r" % (sorted(left), ids))
        check(left[ids[4]]["verify_result"] == "failed", "newest: %r" % left[ids[4]])
        check(left[ids[2]]["verify_result"] == "ok" and left[ids[3]]["verify_result"] == "ok", "kept: %r" % left)
        jobdir = os.path.join(storage_dir(d), "demo", "bk")
        check(sorted(os.listdir(jobdir)) == sorted(ids[2:]), "directories: %r" % sorted(os.listdir(jobdir)))
        plan = d.ctl_json("prune", "--dry-run")
        check(plan["dry_run"] and not [x for x in plan["backups"] if x["verdict"] == "delete" or x["deleted"]],
              "dry run would delete: %r" % plan)
        check(sorted(os.listdir(jobdir)) == sorted(ids[2:]), "dry run deleted something")
        # a real prune agrees
        d.ctl("prune", check_rc=0)
        check(set(x["id"] for x in backups_json(d)) == set(ids[2:]), "prune deleted more")
        check(sorted(os.listdir(jobdir)) == sorted(ids[2:]), "prune deleted directories")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def backup_key_rotation(cluster):
    d = Daemon()
    try:
        ka = write_key(os.path.join(d.dir, "a.key"), KEY_A)
        kb = write_key(os.path.join(d.dir, "b.key"), KEY_B)
        fa, fb = key_fingerprint(KEY_A), key_fingerprint(KEY_B)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 5, storage_extra="  encryption_key_file: %s\n" % ka))
        d.start()
        good_backup(d, "bk")
        old = backups_json(d)[0]
        check(old["key_fingerprint"] == fa, "old backup: %r" % old)
        d.write_config(backup_config(d, cluster, BACKUP_JOB % 5, storage_extra=(
            "  encryption_key_file: %s\n  old_key_files: [%s]\n" % (kb, ka))))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.ctl_json("status")["reload"]["count"] == 1, 5, "the reload")
        check(d.ctl_json("status")["reload"]["ok"], "reload failed: %r" % d.ctl_json("status")["reload"])
        out = d.ctl("verify", old["id"])
        check(out.returncode == 0, "verify of the old backup: %s%s" % (out.stdout, out.stderr))
        time.sleep(1.05)
        good_backup(d, "bk")
        new = [x for x in backups_json(d) if x["id"] != old["id"]][0]
        man = json.load(open(os.path.join(new["dir"], "manifest.json")))
        check(man["encryption"]["key_fingerprint"] == fb and new["key_fingerprint"] == fb, "new manifest: %r"
              % man["encryption"])
        oman = json.load(open(os.path.join(old["dir"], "manifest.json")))
        check(oman["encryption"]["key_fingerprint"] == fa, "old manifest changed")
        oldfile = os.path.join(old["dir"], "dump.zst.enc")
        dec = subprocess.Popen([PGVIGILCTL, "decrypt", oldfile, "--key-file", ka], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        rest = subprocess.run([os.path.join(REAL_PG_BIN, "pg_restore"), "-f", "/dev/null"], stdin=dec.stdout,
                              capture_output=True, text=True, timeout=60)
        dec.stdout.close()
        derr = dec.stderr.read().decode()
        check(dec.wait(60) == 0, "decrypt with key A: " + derr)
        check(rest.returncode == 0, "pg_restore of the decrypted old backup: " + rest.stderr)
        dc = _decrypt(oldfile, kb)
        check(dc.returncode != 0 and fa in dc.stderr.decode(), "decrypt with B only: %s" % dc.stderr.decode())
        # both keys given: the right one is found
        dc = _decrypt(oldfile, kb, ka)
        check(dc.returncode == 0, "decrypt with B and A: %s" % dc.stderr.decode())
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


TYPES_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE alltypes (
    id int PRIMARY KEY, j json, jb jsonb, ia int[], ta text[], b bytea, m mood, n numeric(30, 10),
    ts timestamptz, iv interval, u uuid, ip inet, flag boolean, big text, d date, f float8);
INSERT INTO alltypes VALUES
  (1, '{"a": [1, 2, {"b": null}]}', '{"k": "v", "n": 1.5}', '{1,2,3}', '{"x","y z","q\\"uote"}',
   '\\x00ff10deadbeef', 'happy', 12345678901234567890.0123456789, '2026-03-29 02:30:00+02', '1 year 2 mons 3 days 04:05:06',
   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', true, 'small', '2024-02-29', 0.1),
  (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (3, '[]', '[]', '{}', '{}', '', 'sad', -0.0000000001, '1999-12-31 23:59:59.999999+00', '-1 day',
   '00000000-0000-0000-0000-000000000000', '::1', false, repeat('é€ long text ', 100000), '0001-01-01', 'NaN');
INSERT INTO alltypes (id, jb, ts, n, b, big)
  SELECT g, jsonb_build_object('g', g, 'arr', jsonb_build_array(g, g::text)), now() - g * interval '1 hour',
         g / 7.0, decode(md5(g::text), 'hex'), md5(g::text) FROM generate_series(4, 1000) g;
CREATE TABLE child (id bigserial PRIMARY KEY, parent int REFERENCES alltypes(id), note text);
INSERT INTO child (parent, note) SELECT 1 + g % 1000, 'n' || g FROM generate_series(1, 3000) g;
CREATE TABLE empty_one (x int);
"""

PINNED = ("SET search_path = ''; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';"
          " SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C';\n")


@test
def backup_every_column_type_restores(cluster):
    d = Daemon()
    dbs = ("types_src", "types_restored")
    try:
        for db in dbs:
            psql(cluster, "DROP DATABASE IF EXISTS %s" % db, db="postgres", user="postgres")
        psql(cluster, "CREATE DATABASE types_src OWNER vigil", db="postgres", user="postgres")
        psql(cluster, TYPES_SQL, db="types_src")
        extra = """  types:
    conninfo: "host=127.0.0.1 port=%d dbname=types_src user=vigil"
    password: env:DEMO_PASS
    critical_tables: [alltypes, public.child]
""" % cluster.port
        ka = write_key(os.path.join(d.dir, "a.key"), KEY_A)
        jobs = "  bkt: { type: backup, database: types, schedule: \"0 0 1 1 *\", keep: 2, timeout: 60s }\n"
        d.write_config(backup_config(d, cluster, jobs, extra_db=extra,
                                     storage_extra="  encryption_key_file: %s\n" % ka))
        d.start()
        good_backup(d, "bkt")
        b = backups_json(d, "types")[0]
        man = json.load(open(os.path.join(b["dir"], "manifest.json")))
        exp = man["expected"]
        check(exp["method"] == "pgvigil-rowhash-v1", "method: %r" % exp.get("method"))
        check(exp["row_counts"] == {"public.alltypes": 1000, "public.child": 3000, "public.empty_one": 0},
              "row counts: %r" % exp["row_counts"])
        # the hashes match the source too
        for t, h in exp["critical_table_hashes"].items():
            src = psql(cluster, "SELECT count(*) || ':' || coalesce(sum(hashtextextended(ROW(r.*)::text, 0)), 0)"
                       " FROM %s AS r" % t, db="types_src", settings=PINNED)
            check(src == h, "source hash of %s: %s, manifest %s" % (t, src, h))
        psql(cluster, "CREATE DATABASE types_restored OWNER vigil", db="postgres", user="postgres")
        dec = subprocess.Popen([PGVIGILCTL, "decrypt", os.path.join(b["dir"], "dump.zst.enc"), "--key-file", ka],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        rest = subprocess.run([os.path.join(REAL_PG_BIN, "pg_restore"), "--no-owner", "-h", cluster.sock, "-p",
                               str(cluster.port), "-U", "postgres", "-d", "types_restored", "--exit-on-error"],
                              stdin=dec.stdout, capture_output=True, text=True, timeout=120)
        dec.stdout.close()
        derr = dec.stderr.read().decode()
        check(dec.wait(60) == 0, "decrypt: " + derr)
        check(rest.returncode == 0, "pg_restore: " + rest.stderr)
        for t, n in exp["row_counts"].items():
            got = int(psql(cluster, "SELECT count(*) FROM ONLY %s" % t, db="types_restored", user="postgres"))
            check(got == n, "restored %s has %d rows, manifest %d" % (t, got, n))
        tables = psql(cluster, "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                      "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
                      db="types_restored", user="postgres").split()
        check(sorted(tables) == sorted(exp["tables"]), "restored tables %r, manifest %r" % (tables, exp["tables"]))
        check(set(exp["critical_table_hashes"]) == {"public.alltypes", "public.child"},
              "critical hashes: %r" % exp["critical_table_hashes"])
        for t, h in exp["critical_table_hashes"].items():
            got = psql(cluster, "SELECT count(*) || ':' || coalesce(sum(hashtextextended(ROW(r.*)::text, 0)), 0)"
                       " FROM %s AS r" % t, db="types_restored", user="postgres", settings=PINNED)
            check(got == h, "restored hash of %s: %s, manifest %s" % (t, got, h))
        big = psql(cluster, "SELECT length(big) FROM public.alltypes WHERE id = 3", db="types_restored",
                   user="postgres")
        check(int(big) > 1000000, "large text: %s" % big)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        for db in dbs:
            psql(cluster, "DROP DATABASE IF EXISTS %s" % db, db="postgres", user="postgres", check_rc=False)


# ---- restore probe ----
# Issue 4 item 3: the demo cluster doubles as the restore target; vigil gets CREATEDB.

PROBE_JOB = "  probe: { type: restore_probe, database: %s, schedule: \"0 0 1 1 *\", timeout: %s }\n"


def probe_config(d, cluster, jobs, port=None, demo_extra="", **kw):
    """backup_config plus a restore target `scratch` on the cluster (or on `port`) used by demo."""
    text = backup_config(d, cluster, jobs, demo_extra="    restore_target: scratch\n" + demo_extra, **kw)
    return text + """restore_targets:
  scratch:
    conninfo: "host=127.0.0.1 port=%d dbname=postgres user=vigil"
    password: env:DEMO_PASS
""" % (port or cluster.port)


def probe_dbs(cluster):
    return psql(cluster, "SELECT datname FROM pg_database WHERE datname LIKE 'pgvigil\\_probe\\_%' ORDER BY 1",
                db="postgres", user="postgres").split()


def probe_prepare(cluster):
    psql(cluster, "ALTER ROLE vigil CREATEDB", db="postgres", user="postgres")
    for name in probe_dbs(cluster):
        psql(cluster, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name, db="postgres", user="postgres")


def figures(run):
    return json.loads(run["figures"]) if run["figures"] else {}


def in_use(d):
    with d.db() as c:
        return c.execute("SELECT coalesce(sum(in_use), 0) FROM backups").fetchone()[0]


@test
def probe_passes_every_column_type(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        psql(cluster, "DROP DATABASE IF EXISTS types_probe", db="postgres", user="postgres")
        psql(cluster, "CREATE DATABASE types_probe OWNER vigil", db="postgres", user="postgres")
        psql(cluster, TYPES_SQL, db="types_probe")
        extra = """  types:
    conninfo: "host=127.0.0.1 port=%d dbname=types_probe user=vigil"
    password: env:DEMO_PASS
    critical_tables: [alltypes, public.child]
    restore_target: scratch
    assertions:
      - "SELECT count(*) = 1000 FROM alltypes"
      - "SELECT bool_and(parent IS NOT NULL) FROM child"
""" % cluster.port
        ka = write_key(os.path.join(d.dir, "a.key"), KEY_A)
        jobs = ("  bkt: { type: backup, database: types, schedule: \"0 0 1 1 *\", keep: 2, timeout: 60s }\n"
                + PROBE_JOB % ("types", "60s"))
        d.write_config(probe_config(d, cluster, jobs, extra_db=extra,
                                    storage_extra="  encryption_key_file: %s\n" % ka))
        d.start()
        good_backup(d, "bkt")
        bid = backups_json(d, "types")[0]["id"]
        r = run_job(d, "probe")
        f = figures(r)
        check(r["result"] == "ok", "probe: %r\nlog tail:\n%s" % (r, d.logtext()[-3000:]))
        check(f["backup_id"] == bid and f["backup_job"] == "bkt", "backup in figures: %r" % f)
        check(f["mismatches"] == [] and f["consecutive_failures"] == 0, "figures: %r" % f)
        check(f["assertions"] == 2 and f["assertions_passed"] == 2, "assertions: %r" % f)
        check(f["tables"] == 3 and f["rows"] == 4000, "tables/rows: %r" % f)
        check(f["fk_constraints"] == 1 and f["fk_orphans"] == 0, "foreign keys: %r" % f)
        for k in ("restore_seconds", "validation_seconds", "total_seconds", "drop_seconds"):
            check(isinstance(f.get(k), float) and f[k] > 0, "%s: %r" % (k, f))
        check(f["total_seconds"] >= f["restore_seconds"] + f["validation_seconds"], "total: %r" % f)
        check(0 <= f["backup_age_seconds"] < 120, "age: %r" % f)
        check(f["scratch_database"].startswith("pgvigil_probe_types_") and len(f["scratch_database"]) <= 63,
              "scratch name: %r" % f)
        check(f["scratch_dropped"] is True and probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
        check(in_use(d) == 0, "backup still marked in use")
        check("scratch database created" in d.logtext() and "scratch database dropped" in d.logtext(),
              "create/drop not logged")
        check(PASSWORD not in d.logtext(), "password logged")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        psql(cluster, "DROP DATABASE IF EXISTS types_probe", db="postgres", user="postgres", check_rc=False)


@test
def probe_corrupted_after_verification(cluster):
    probe_prepare(cluster)
    ensure_bulk(cluster)
    d = Daemon()
    try:
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 3 + PROBE_JOB % ("demo", "60s")))
        d.start()
        good_backup(d, "bk")
        b = backups_json(d)[0]
        check(b["verify_result"] == "ok", "not verified: %r" % b)
        path = os.path.join(b["dir"], "dump.zst")
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x55
        with open(path, "wb") as f:
            f.write(bytes(data))
        r = run_job(d, "probe")
        cause = r["cause"] or ""
        check(r["result"] == "failed", "probe of a corrupt file: %r" % r)
        check(b["id"] in cause and ("is damaged" in cause or "could not be read" in cause), "cause: %s" % cause)
        check("sha256" in cause or "zstd" in cause or "corrupt" in cause.lower(), "cause does not say why: %s" % cause)
        check(figures(r)["consecutive_failures"] == 1, "figures: %r" % figures(r))
        check(probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
        check(in_use(d) == 0, "backup still marked in use")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def probe_manifest_mismatch_named(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        extra = ("    critical_tables: [users]\n    assertions:\n      - \"SELECT count(*) = 200 FROM users\"\n"
                 "      - \"SELECT count(*) = 0 FROM users\"\n      - \"SELECT 1\"\n"
                 "      - \"SELECT * FROM no_such_table\"\n")
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 3 + PROBE_JOB % ("demo", "60s"), demo_extra=extra))
        d.start()
        good_backup(d, "bk")
        b = backups_json(d)[0]
        mpath = os.path.join(b["dir"], "manifest.json")
        man = json.load(open(mpath))
        check(man["expected"]["row_counts"]["public.users"] == 200, "manifest: %r" % man["expected"])
        man["expected"]["row_counts"]["public.users"] = 201
        man["expected"]["critical_table_hashes"]["public.users"] = "200:12345"
        man["expected"]["tables"].append("public.vanished")
        man["expected"]["row_counts"]["public.vanished"] = 5
        with open(mpath, "w") as f:
            json.dump(man, f, indent=2, sort_keys=True)
        r = run_job(d, "probe")
        f = figures(r)
        mis = f.get("mismatches", [])
        check(r["result"] == "failed", "probe: %r" % r)
        want = ["row count of public.users: expected 201, restored 200",
                "table public.vanished is missing from the restored copy",
                "content hash of critical table public.users: expected 200:12345, restored 200:",
                "assertion 2 (SELECT count(*) = 0 FROM users) returned false",
                "assertion 3 (SELECT 1) returned 1, not a boolean",
                "assertion 4 (SELECT * FROM no_such_table) failed: relation \"no_such_table\" does not exist"]
        for w in want:
            check(any(m.startswith(w) for m in mis), "mismatch %r not named in %r" % (w, mis))
        check(len(mis) == len(want), "unexpected mismatches: %r" % mis)
        check(f["assertions"] == 4 and f["assertions_passed"] == 1, "assertions: %r" % f)
        check("row count of public.users: expected 201, restored 200" in r["cause"], "cause: %s" % r["cause"])
        check("6 mismatches" in r["cause"], "cause: %s" % r["cause"])
        check(probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def probe_target_unreachable(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 3 + PROBE_JOB % ("demo", "60s"), port=1))
        d.start()
        good_backup(d, "bk")
        t0 = time.monotonic()
        r = run_job(d, "probe")
        cause = r["cause"] or ""
        check(r["result"] == "failed", "probe: %r" % r)
        check("cannot create the scratch database on restore target scratch" in cause and "port 1" in cause
              and "refused" in cause, "cause: %s" % cause)
        check(time.monotonic() - t0 < 10, "took %.1fs" % (time.monotonic() - t0))
        f = figures(r)
        check(f["consecutive_failures"] == 1 and "restore_seconds" not in f, "figures: %r" % f)
        check("dropping" not in cause, "tried to drop what was never created: %s" % cause)
        check(in_use(d) == 0, "backup still marked in use")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


# pg_restore that stalls when restoring into a database (-d), like a restore that takes too long;
# verification (-f /dev/null) and --version use the real one.
STALL_RESTORE = """\
for a in "$@"; do if [ "$a" = -d ]; then echo "stalling $$" >&2; sleep 60; fi; done
exec REAL "$@"
"""


@test
def probe_timeout_and_sigterm_drop_scratch(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        pgbin = make_pg_bin(d, pg_restore=STALL_RESTORE)
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 3 + PROBE_JOB % ("demo", "3s"),
                                    daemon_extra="  pg_bin_dir: %s\n" % pgbin))
        d.start()
        good_backup(d, "bk")
        t0 = time.monotonic()
        rid = started_run(d, "probe")
        wait_for(lambda: len(probe_dbs(cluster)) == 1, 5, "the scratch database")
        r = wait_for(lambda: (run_by_id(d, rid) or {}).get("result") and run_by_id(d, rid), 15, "probe to end")
        took = time.monotonic() - t0
        check(r["result"] == "timeout" and "timeout after 3s while restoring" in r["cause"], "probe: %r" % r)
        check(took < 9, "timeout took %.1fs" % took)
        check(probe_dbs(cluster) == [], "scratch left after timeout: %r" % probe_dbs(cluster))
        check(figures(r)["scratch_dropped"] is True and figures(r)["consecutive_failures"] == 1,
              "figures: %r" % figures(r))
        check(pids_of(os.path.join(pgbin, "pg_restore")) == [], "pg_restore left running")
        # SIGTERM mid-restore: the daemon cancels, drops the scratch database and exits
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 3 + PROBE_JOB % ("demo", "60s"),
                                    daemon_extra="  pg_bin_dir: %s\n" % pgbin))
        d.ctl("reload", check_rc=0)
        rid = started_run(d, "probe")
        wait_for(lambda: len(probe_dbs(cluster)) == 1 and pids_of(os.path.join(pgbin, "pg_restore")), 5,
                 "the scratch database and pg_restore")
        t0 = time.monotonic()
        check(d.stop() == 0, "exit status")
        check(time.monotonic() - t0 < 10, "stop took %.1fs" % (time.monotonic() - t0))
        r = run_by_id(d, rid)
        check(r["result"] == "cancelled" and "cancelled while restoring" in r["cause"], "probe: %r" % r)
        check(figures(r)["consecutive_failures"] == 1, "a cancel counted as a failure: %r" % figures(r))
        check(probe_dbs(cluster) == [], "scratch left after SIGTERM: %r" % probe_dbs(cluster))
        check(pids_of(os.path.join(pgbin, "pg_restore")) == [], "pg_restore left running")
    finally:
        d.cleanup()


@test
def probe_daemon_killed_scratch_dropped_at_start(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        pgbin = make_pg_bin(d, pg_restore=STALL_RESTORE)
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 3 + PROBE_JOB % ("demo", "60s"),
                                    daemon_extra="  pg_bin_dir: %s\n" % pgbin))
        d.start()
        good_backup(d, "bk")
        started_run(d, "probe")
        wait_for(lambda: len(probe_dbs(cluster)) == 1 and pids_of(os.path.join(pgbin, "pg_restore")), 5,
                 "the scratch database and pg_restore")
        left = probe_dbs(cluster)[0]
        d.proc.kill()
        d.proc.wait()
        kill_pids(pids_of(os.path.join(pgbin, "pg_restore")))
        check(probe_dbs(cluster) == [left], "scratch database should survive the crash: %r" % probe_dbs(cluster))
        # a database that is not a scratch database, and one a probe of another daemon might be
        # creating right now (stamped in the future), are both left alone
        psql(cluster, "CREATE DATABASE pgvigil_probe_future_29991231t235959", db="postgres", user="postgres")
        time.sleep(1.1)  # names carry whole seconds: the restart must be later than the probe's start
        d.log.close()
        d.start()
        wait_for(lambda: probe_dbs(cluster) == ["pgvigil_probe_future_29991231t235959"], 10,
                 "the leftover scratch database to be dropped")
        check("dropped scratch database left by an earlier run target=scratch database=%s" % left in d.logtext(),
              "drop not logged")
        r = d.runs("probe")[0]
        check(r["result"] == "interrupted", "run after the crash: %r" % r)
        check(in_use(d) == 0, "backup still marked in use")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        psql(cluster, "DROP DATABASE IF EXISTS pgvigil_probe_future_29991231t235959", db="postgres",
             user="postgres", check_rc=False)


@test
def probe_consecutive_failures(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 3 + PROBE_JOB % ("demo", "60s")))
        d.start()
        for i in (1, 2, 3):
            r = run_job(d, "probe")
            check(r["result"] == "failed" and r["cause"] == "no verified backup of demo to probe", "probe: %r" % r)
            check(figures(r)["consecutive_failures"] == i, "run %d: %r" % (i, figures(r)))
        good_backup(d, "bk")
        r = run_job(d, "probe")
        check(r["result"] == "ok" and figures(r)["consecutive_failures"] == 0, "probe: %r" % r)
        # a crash-interrupted run neither counts nor resets
        with d.db() as c:
            c.execute("UPDATE backups SET verify_result = 'failed'")
        r = run_job(d, "probe")
        check(r["result"] == "failed" and figures(r)["consecutive_failures"] == 1, "after reset: %r" % r)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def probe_orphans_in_restored_copy(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        psql(cluster, "DROP DATABASE IF EXISTS fk_probe", db="postgres", user="postgres")
        psql(cluster, "CREATE DATABASE fk_probe OWNER vigil", db="postgres", user="postgres")
        psql(cluster, "CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1), (2);"
                      "CREATE TABLE child (id int PRIMARY KEY, parent_id int);"
                      "INSERT INTO child VALUES (1, 1), (2, 7), (3, 8), (4, NULL);"
                      "ALTER TABLE child ADD CONSTRAINT child_parent_fkey FOREIGN KEY (parent_id) "
                      "REFERENCES parent (id) NOT VALID;", db="fk_probe")
        extra = """  fk:
    conninfo: "host=127.0.0.1 port=%d dbname=fk_probe user=vigil"
    password: env:DEMO_PASS
    restore_target: scratch
""" % cluster.port
        jobs = ("  bkf: { type: backup, database: fk, schedule: \"0 0 1 1 *\", keep: 2, timeout: 60s }\n"
                + PROBE_JOB % ("fk", "60s"))
        d.write_config(probe_config(d, cluster, jobs, extra_db=extra))
        d.start()
        good_backup(d, "bkf")
        r = run_job(d, "probe")
        f = figures(r)
        check(r["result"] == "failed", "probe: %r" % r)
        check(f["mismatches"] == ["foreign key public.child.child_parent_fkey: 2 orphaned rows"], "mismatches: %r" % f)
        check(f["fk_constraints"] == 1 and f["fk_orphans"] == 2, "figures: %r" % f)
        check(probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        psql(cluster, "DROP DATABASE IF EXISTS fk_probe", db="postgres", user="postgres", check_rc=False)


# ---- drill and restore ----
# Issue 4 items 4 and 5: the drill job type and the emergency `restore` command.

DRILL_JOB = "  drill: { type: drill, database: %s, schedule: \"0 0 1 1 *\", timeout: %s }\n"


@test
def drill_passes_with_summary(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        extra = "    critical_tables: [users]\n    objectives: { rpo: 1d, rto: 1h }\n"
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 2 + DRILL_JOB % ("demo", "60s"), demo_extra=extra))
        d.start()
        good_backup(d, "bk")
        b = backups_json(d)[0]
        r = run_job(d, "drill")
        f = figures(r)
        check(r["result"] == "ok", "drill: %r\nlog tail:\n%s" % (r, d.logtext()[-3000:]))
        s = f.get("summary") or {}
        check(s.get("backup", {}).get("id") == b["id"] and s["backup"]["tier"] == b["tier"]
              and s["backup"]["size"] == b["size"] and 0 <= s["backup"]["age_seconds"] < 120, "backup: %r" % s)
        phases = s.get("phases", {})
        check(sorted(phases) == ["create", "drop", "hash", "restore", "validate"], "phases: %r" % phases)
        check(all(isinstance(v, float) and v > 0 for v in phases.values()), "phase times: %r" % phases)
        check(f["rto_seconds"] > 0 and f["rto_objective_seconds"] == 3600, "rto: %r" % f)
        check(f["rto_met"] is (f["rto_seconds"] <= 3600) and f["rto_met"] is True, "rto_met: %r" % f)
        check(s["rto_seconds"] == f["rto_seconds"] and s["rto_met"] is True, "summary rto: %r" % s)
        check(f["rto_seconds"] >= sum(phases.values()) - 0.01, "rto below the sum of phases: %r" % f)
        hashes = s.get("table_hashes", {})
        check(s["tables_hashed"] == f["tables"] == len(hashes) and s["hashes_compared"] == 1,
              "hashes: %r" % s)
        check({"public.users", "public.group_trips", "public.private_bookings"} <= set(hashes)
              and all(h.split(":")[0].isdigit() for h in hashes.values()), "table hashes: %r" % hashes)
        check(s["sequences"] >= 3 and s["sequences_behind"] == [], "sequences: %r" % s)
        check(s["indexes"] >= 3 and s["indexes_invalid"] == [], "indexes: %r" % s)
        check(f["mismatches"] == [] and s["mismatches"] == [] and f["consecutive_failures"] == 0, "figures: %r" % f)
        check(probe_dbs(cluster) == [] and in_use(d) == 0, "scratch left or backup in use")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def drill_rto_missed_and_sequence_behind(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        psql(cluster, "DROP DATABASE IF EXISTS seq_drill", db="postgres", user="postgres")
        psql(cluster, "CREATE DATABASE seq_drill OWNER vigil", db="postgres", user="postgres")
        psql(cluster, "CREATE TABLE t (id serial PRIMARY KEY, v text);"
                      "INSERT INTO t (v) SELECT 'row ' || g FROM generate_series(1, 100) g;"
                      "CREATE TABLE ok (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);"
                      "INSERT INTO ok DEFAULT VALUES; INSERT INTO ok DEFAULT VALUES;"
                      "SELECT setval('t_id_seq', 5);", db="seq_drill")
        extra = """  seq:
    conninfo: "host=127.0.0.1 port=%d dbname=seq_drill user=vigil"
    password: env:DEMO_PASS
    restore_target: scratch
    objectives: { rto: 1s }
""" % cluster.port
        jobs = ("  bks: { type: backup, database: seq, schedule: \"0 0 1 1 *\", keep: 2, timeout: 60s }\n"
                + DRILL_JOB % ("seq", "60s"))
        d.write_config(probe_config(d, cluster, jobs, extra_db=extra))
        d.start()
        good_backup(d, "bks")
        r = run_job(d, "drill")
        f = figures(r)
        s = f.get("summary") or {}
        check(r["result"] == "failed", "drill: %r" % r)
        behind = s.get("sequences_behind", [])
        check([x["sequence"] for x in behind] == ["public.t_id_seq"] and behind[0]["column_edge"] == "100"
              and behind[0]["last_value"] == "5", "sequences_behind: %r" % s)
        check(s["sequences"] == 2, "sequences: %r" % s)
        check(len(f["mismatches"]) == 1 and "sequence public.t_id_seq is behind its column public.t.id" in
              f["mismatches"][0], "mismatches: %r" % f["mismatches"])
        check("public.t_id_seq" in (r["cause"] or ""), "cause: %r" % r["cause"])
        check(f["rto_objective_seconds"] == 1 and f["rto_met"] is (f["rto_seconds"] <= 1), "rto: %r" % f)
        check(probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        psql(cluster, "DROP DATABASE IF EXISTS seq_drill", db="postgres", user="postgres", check_rc=False)


def ctl_request(d, cmd, args=None, user=None, timeout=60):
    """One request on the daemon's socket, as root or (user) through a child python; the answer."""
    req = json.dumps({"cmd": cmd, "args": args or {}}) + "\n"
    script = ("import socket,sys\ns=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
              "s.sendall(sys.argv[2].encode());b=b''\n"
              "while not b.endswith(b'\\n'):\n c=s.recv(65536)\n if not c: break\n b+=c\n"
              "sys.stdout.write(b.decode())\n")
    kw = {"user": user} if user else {}
    # another user may not reach this interpreter (pyenv under /root): the system one serves
    py = "/usr/bin/python3" if user and os.path.exists("/usr/bin/python3") else sys.executable
    out = subprocess.run([py, "-c", script, d.socket, req], capture_output=True, text=True,
                         timeout=timeout, **kw)
    check(out.returncode == 0, "socket client: %s" % out.stderr)
    return json.loads(out.stdout)


def restore_to(cluster, db):
    return "host=127.0.0.1 port=%d dbname=%s user=vigil password=%s" % (cluster.port, db, PASSWORD)


RESTORED_DBS = ("demo_restored", "demo_restored_cli", "demo_busy")


def drop_restored(cluster):
    for name in RESTORED_DBS:
        psql(cluster, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name, db="postgres", user="postgres",
             check_rc=False)


@test
def restore_new_nonempty_force_and_denied(cluster):
    probe_prepare(cluster)
    drop_restored(cluster)
    d = Daemon()
    try:
        extra = "    critical_tables: [users]\n    assertions:\n      - \"SELECT count(*) = 200 FROM users\"\n"
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 2, demo_extra=extra))
        d.start()
        good_backup(d, "bk")
        bid = backups_json(d)[0]["id"]
        users = psql(cluster, "SELECT count(*) FROM users")
        # into a database that does not exist yet: created, restored, validated
        a = ctl_request(d, "restore", {"backup": "latest", "database": "demo", "to": restore_to(cluster, "demo_restored")})
        check(a["ok"] is True, "restore answer: %r" % a)
        r = a["data"]
        check(r["ok"] is True and r["cause"] is None and r["mismatches"] == [], "report: %r" % r)
        check(r["created"] is True and r["forced"] is False and r["target"] == "demo_restored", "report: %r" % r)
        check(r["backup"]["id"] == bid and r["assertions_passed"] == 1 and r["fk_orphans"] == 0, "report: %r" % r)
        check(r["total_seconds"] >= r["restore_seconds"] > 0 and r["archive_bytes"] > 0, "times: %r" % r)
        check(psql(cluster, "SELECT count(*) FROM users", db="demo_restored") == users, "data not restored")
        check(ctl_request(d, "restore-progress")["data"] == {"running": False}, "progress after the end")
        check(in_use(d) == 0, "backup still marked in use")
        # into the same database again: refused, nothing touched
        psql(cluster, "INSERT INTO users (email) VALUES ('added-after@example.com')", db="demo_restored")
        a = ctl_request(d, "restore", {"backup": bid, "database": "demo", "to": restore_to(cluster, "demo_restored")})
        r = a["data"]
        check(a["ok"] is True and r["ok"] is False, "non-empty target accepted: %r" % a)
        # the cause names the first few tables (which ones depends on what earlier tests added to demo)
        check("not empty" in r["cause"] and "--force" in r["cause"] and "public." in r["cause"], "cause: %r" % r)
        check("restore_seconds" not in r, "restored anyway: %r" % r)
        check(psql(cluster, "SELECT count(*) FROM users", db="demo_restored") == str(int(users) + 1),
              "refused restore changed the target")
        # with force: restored over it (pg_restore --clean --if-exists)
        a = ctl_request(d, "restore", {"backup": bid, "database": "demo", "to": restore_to(cluster, "demo_restored"),
                                       "force": True})
        r = a["data"]
        check(r["ok"] is True and r["forced"] is True and r["created"] is False, "forced restore: %r" % r)
        check(psql(cluster, "SELECT count(*) FROM users", db="demo_restored") == users, "force did not replace")
        # a backup of another database, an unknown one, bad arguments
        a = ctl_request(d, "restore", {"backup": "nope", "database": "demo", "to": restore_to(cluster, "x")})
        check(a["ok"] is False, "unknown backup: %r" % a)
        a = ctl_request(d, "restore", {"backup": "latest", "database": "demo", "to": "host=127.0.0.1"})
        check(a["ok"] is False and a["error"]["code"] == "usage" and "dbname" in a["error"]["message"], "%r" % a)
        # not an admin
        a = ctl_request(d, "restore", {"backup": "latest", "database": "demo", "to": restore_to(cluster, "demo_busy")},
                        user="nobody")
        check(a["ok"] is False and "permission denied" in a["error"]["message"], "non-admin: %r" % a)
        check(ctl_request(d, "restore-progress", user="nobody")["ok"] is True, "progress is read-only")
        check(psql(cluster, "SELECT count(*) FROM pg_database WHERE datname = 'demo_busy'", db="postgres",
                   user="postgres") == "0", "non-admin restore created its database")
        check(PASSWORD not in d.logtext(), "password logged")

        # the same through pgvigilctl, once the lead's dispatch line is in
        probe = d.ctl("restore")
        if probe.returncode == 2 and "unknown command" in probe.stderr:
            print("     note: pgvigilctl has no restore command yet; CLI assertions skipped")
        else:
            out = d.ctl("restore", "latest", "--database", "demo", "--to", restore_to(cluster, "demo_restored_cli"))
            check(out.returncode == 0, "cli restore: %d\n%s\n%s" % (out.returncode, out.stdout, out.stderr))
            check("restored in " in out.stdout and "PASSED" in out.stdout and "(created)" in out.stdout,
                  "cli output: %s" % out.stdout)
            check("\r" not in out.stderr, "progress drawn for a non-terminal: %r" % out.stderr)
            out = d.ctl("restore", "latest", "--database", "demo", "--to", restore_to(cluster, "demo_restored_cli"))
            check(out.returncode == 1 and "not empty" in out.stderr and "--force" in out.stderr,
                  "cli non-empty: %d %s %s" % (out.returncode, out.stdout, out.stderr))
            out = d.ctl("--json", "restore", "latest", "--database", "demo", "--force",
                        "--to", restore_to(cluster, "demo_restored_cli"))
            check(out.returncode == 0 and json.loads(out.stdout)["forced"] is True and out.stderr == "",
                  "cli --force --json: %d %s %s" % (out.returncode, out.stdout, out.stderr))
            out = d.ctl("restore", "latest", "--database", "demo", "--to", restore_to(cluster, "demo_busy"),
                        user="nobody")
            check(out.returncode == 1 and "permission denied" in out.stderr, "cli non-admin: %s" % out.stderr)
            out = d.ctl("restore", "latest", "--to", restore_to(cluster, "demo_busy"))
            check(out.returncode == 2, "cli usage: %d %s" % (out.returncode, out.stderr))
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        drop_restored(cluster)



# ---- rpo, rto and report ----
# Issue 4 items 6 and 7: achieved RPO/RTO in `status`, and `report` (Markdown and --json).

RPO_OBJECTIVES = "    objectives: { rpo: 4h, rto: 1h }\n"


def status_db(d, name="demo"):
    return [x for x in d.ctl_json("status")["databases"] if x["name"] == name][0]


def report_db(report, name="demo"):
    return [x for x in report["databases"] if x["name"] == name][0]


@test
def rpo_rto_status_and_report(cluster):
    import re
    probe_prepare(cluster)
    d = Daemon()
    try:
        jobs = BACKUP_JOB % 2 + PROBE_JOB % ("demo", "60s") + HEALTH_FAST
        d.write_config(probe_config(d, cluster, jobs, demo_extra=RPO_OBJECTIVES))
        d.start()
        # nothing yet: no RPO (a breach of its objective), no RTO, NOT READY
        s = status_db(d)
        check(s["rpo"]["seconds"] is None and s["rpo"]["met"] is False and s["rpo"]["objective"] == 4 * 3600,
              "rpo before any backup: %r" % s["rpo"])
        check(s["rto"]["seconds"] is None and s["rto"]["objective"] == 3600, "rto before any probe: %r" % s["rto"])
        rep = report_db(d.ctl_json("report"))
        check(rep["headline"] == "NOT READY", "headline: %r" % rep)
        check([r["code"] for r in rep["reasons"]] == ["no_verified_backup", "restore_never_tested"],
              "reasons: %r" % rep["reasons"])
        out = d.ctl("status", check_rc=0).stdout
        check("  rpo none (objective 4h, BREACHED)  rto never measured (objective 1h, unknown)" in out,
              "status line: %s" % out)

        b = good_backup(d, "bk")
        bid = figures(b)["backup_id"]
        p = run_job(d, "probe")
        check(p["result"] == "ok", "probe: %r\nlog tail:\n%s" % (p, d.logtext()[-3000:]))
        wait_for(lambda: status_db(d)["health"] is not None, 10, "a health check")
        s = status_db(d)
        rpo, rto = s["rpo"], s["rto"]
        check(rpo["newest_verified_backup"] == bid and rpo["job"] == "bk", "rpo backup: %r" % rpo)
        check(0 <= rpo["seconds"] < 120 and rpo["met"] is True, "rpo: %r" % rpo)
        check(rpo["largest_gap_30d"] is not None and rpo["seconds"] <= rpo["largest_gap_30d"] <= rpo["seconds"] + 5,
              "largest gap with one backup is its age: %r" % rpo)
        check(abs(rto["seconds"] - figures(p)["total_seconds"]) < 1e-6, "rto seconds: %r vs %r" % (rto, figures(p)))
        check(rto["measured_by"] == "restore_probe" and rto["run"] == p["id"] and rto["job"] == "probe"
              and rto["met"] is True and 0 < rto["seconds"] < 60, "rto: %r" % rto)
        out = d.ctl("status", check_rc=0).stdout
        check(re.search(r"\n  rpo \d+s \(objective 4h, met\)  rto \d[.\dms]* \(objective 1h, met\)\n", out),
              "status line: %s" % out)

        report = d.ctl_json("report")
        rep = report_db(report)
        check(rep["headline"] == "READY" and rep["reasons"] == [], "headline: %r %r" % (rep["headline"], rep["reasons"]))
        for key in ("health", "schema", "integrity", "backups", "restore_probe", "drill", "rpo", "rto", "alerts"):
            check(key in rep, "report lacks %s: %r" % (key, sorted(rep)))
        check(rep["rpo"]["newest_verified_backup"] == bid and rep["rto"]["run"] == p["id"], "rpo/rto: %r" % rep)
        check(rep["health"]["result"] == "ok" and rep["health"]["connected"] is True
              and rep["health"]["connect_seconds"] > 0, "health: %r" % rep["health"])
        check(isinstance(rep["schema"]["tables"], int) and rep["schema"]["tables"] > 0, "schema: %r" % rep["schema"])
        check(rep["integrity"] is None, "no integrity job: %r" % rep["integrity"])
        tiers = rep["backups"]["newest_verified_per_tier"]
        check(len(tiers) == 1 and tiers[0]["id"] == bid and tiers[0]["job"] == "bk", "tiers: %r" % tiers)
        check(rep["restore_probe"]["result"] == "ok" and rep["restore_probe"]["backup_id"] == bid
              and rep["restore_probe"]["total_seconds"] > 0, "probe: %r" % rep["restore_probe"])
        check(rep["drill"] is None, "drill: %r" % rep["drill"])
        check(rep["alerts"] == {"available": True, "firing": []}, "alerts: %r" % rep["alerts"])
        check(report["storage"]["path"] == storage_dir(d), "storage: %r" % report["storage"])

        md = d.ctl("report", check_rc=0).stdout
        for frag in ("# Disaster-recovery readiness report\n", "## demo: READY\n", "### Connection health\n",
                     "### Schema validation\n", "### Data integrity\n", "### Backups\n", "### Restore tests\n",
                     "- Last restore probe: ok at ", "### Achieved RPO and RTO\n",
                     "| RPO | ", "(newest verified backup %s) | 4h | met |" % bid, "| RTO | ",
                     "### Firing alerts\n\nnone\n", "## Storage\n"):
            check(frag in md, "report lacks %r:\n%s" % (frag, md))
        check(d.ctl("report", "--json").returncode == 0, "report --json")
        check(d.ctl("report", "extra").returncode == 2, "report with a bad argument: usage error")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def rpo_breach_and_failed_probe_in_report(cluster):
    probe_prepare(cluster)
    d = Daemon()
    try:
        jobs = BACKUP_JOB % 2 + PROBE_JOB % ("demo", "60s")
        d.write_config(probe_config(d, cluster, jobs, demo_extra="    objectives: { rpo: 2s }\n"))
        d.start()
        good_backup(d, "bk")
        # the objective passes while we wait: breached, NOT READY, and said so
        wait_for(lambda: status_db(d)["rpo"]["met"] is False, 15, "the RPO objective to be breached")
        s = status_db(d)
        check(s["rpo"]["seconds"] > 2 and s["rto"]["objective"] is None and s["rto"]["met"] is None,
              "status: %r" % s)
        # the backup goes bad after verification: the probe fails, the report says why
        with d.db() as c:
            c.execute("UPDATE backups SET verify_result = 'failed'")
        p = run_job(d, "probe")
        check(p["result"] == "failed", "probe: %r" % p)
        rep = report_db(d.ctl_json("report"))
        codes = [r["code"] for r in rep["reasons"]]
        check(rep["headline"] == "NOT READY" and codes[:2] == ["no_verified_backup", "restore_failed"],
              "report: %r %r" % (rep["headline"], rep["reasons"]))
        check(rep["restore_probe"]["result"] == "failed" and rep["restore_probe"]["consecutive_failures"] == 1,
              "probe in report: %r" % rep["restore_probe"])
        md = d.ctl("report", check_rc=0).stdout
        check("## demo: NOT READY\n" in md and "- NOT READY: no verified backup\n" in md
              and "- NOT READY: last restore probe failed: no verified backup of demo to probe" in md,
              "markdown:\n%s" % md)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


class WebhookSink:
    """A local HTTP endpoint that records every request (arrival time, headers, body) and answers 200."""

    def __init__(self):
        import http.server
        sink = self
        self.received = []
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink.lock:
                    sink.received.append({"at": time.time(), "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self):
        with self.lock:
            return [dict(m, json=json.loads(m["body"])) for m in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _pg_ctl(cluster, *args):
    out = subprocess.run(["runuser", "-u", PG_CTL_USER, "--", os.path.join(REAL_PG_BIN, "pg_ctl"), "-D",
                          os.path.join(cluster.dir, "data"), "-l", os.path.join(cluster.dir, "server.log")]
                         + list(args), capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, "pg_ctl %s: %s" % (" ".join(args), out.stderr))


@test
def alert_connectivity_lost_reaches_webhook(cluster):
    import hashlib
    import hmac
    secret = "hook-secret-for-e2e"
    d = Daemon(env_extra={"HOOK_SECRET": secret})
    sink = WebhookSink()
    other = None
    try:
        other = Cluster()
        extra = """  other:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil connect_timeout=2"
    password: env:DEMO_PASS
""" % other.port
        jobs = "  hc-other: { type: health, database: other, every: 1s, timeout: 5s }\n"
        text = base_config(d, cluster, jobs, extra_db=extra) + """alerts:
  group_wait: 1s
  rules:
    connectivity_lost: { after: 3s }
    backup_stale: { enabled: false }
    rpo_breach: { enabled: false }
notifiers:
  hook: { type: webhook, url: "http://127.0.0.1:%d/hook", secret: env:HOOK_SECRET }
""" % sink.port
        d.write_config(text)
        d.start()
        wait_for(lambda: [r for r in d.runs("hc-other") if r["result"] == "ok"], 15, "a good health run")
        _pg_ctl(other, "-m", "immediate", "-w", "stop")
        stopped = time.time()

        def firing():
            return [m for m in sink.messages() if m["json"]["rule"] == "connectivity_lost"
                    and m["json"]["status"] == "firing"]
        msgs = wait_for(firing, 30, "the connectivity_lost notification")
        m = msgs[0]
        latency = m["at"] - (stopped + 3)
        print("     connectivity_lost: condition true at stop+3s, received %.2fs later (%.2fs after the stop)"
              % (latency, m["at"] - stopped), flush=True)
        check(m["at"] - stopped < 15, "alert took %.1fs after the stop" % (m["at"] - stopped))
        check(m["at"] - stopped >= 3, "alert before the threshold: %.1fs" % (m["at"] - stopped))
        check(m["json"]["database"] == "other" and m["json"]["severity"] == "critical", "body: %r" % m["json"])
        sig = m["headers"].get("X-Pgvigil-Signature")
        want = "sha256=" + hmac.new(secret.encode(), m["body"], hashlib.sha256).hexdigest()
        check(sig is not None and hmac.compare_digest(sig, want), "signature %r, want %r" % (sig, want))
        check(m["headers"].get("X-Pgvigil-Idempotency-Key") == m["json"]["idempotency_key"], "idempotency header")
        al = d.ctl_json("alerts")["alerts"]
        check([a for a in al if a["rule"] == "connectivity_lost" and a["database"] == "other"
               and a["status"] == "firing"], "alerts while firing: %r" % al)
        out = d.ctl("alerts", check_rc=0).stdout
        check("connectivity_lost" in out and "other" in out and "firing" in out, "alerts table:\n" + out)
        rep = {x["name"]: x for x in d.ctl_json("report")["databases"]}
        check([a for a in rep["other"]["alerts"]["firing"] if a["rule"] == "connectivity_lost"],
              "report alerts: %r" % rep["other"]["alerts"])
        check("connectivity_lost" in d.ctl("report", check_rc=0).stdout, "Markdown report lacks the alert")
        st = d.ctl_json("status")
        check([a for a in st["alerts"] if a["rule"] == "connectivity_lost"], "status alerts: %r" % st["alerts"])
        check("hook" in st["notifications"] and st["notifications"]["hook"]["failed"] == 0,
              "status notifications: %r" % st["notifications"])
        out = d.ctl("status", check_rc=0).stdout
        check("firing alerts: 1" in out and "hook" in out, "status text:\n" + out)
        check("alert firing rule=connectivity_lost" in d.logtext() and "database=other" in d.logtext(),
              "transition not logged")

        _pg_ctl(other, "-w", "start")

        def resolved():
            return [m for m in sink.messages() if m["json"]["rule"] == "connectivity_lost"
                    and m["json"]["status"] == "resolved"]
        r = wait_for(resolved, 30, "the resolved notification")[0]
        check(r["json"]["database"] == "other", "resolved body: %r" % r["json"])
        check(len(firing()) == 1, "firing sent %d times" % len(firing()))
        check(d.ctl_json("alerts")["alerts"] == [], "alerts after resolve: %r" % d.ctl_json("alerts"))
        hist = d.ctl_json("alerts", "history")["alerts"]
        check([a for a in hist if a["rule"] == "connectivity_lost"], "history: %r" % hist)
        check(secret not in d.logtext(), "secret logged")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        sink.close()
        if other is not None:
            other.stop()


class ScriptedSink(WebhookSink):
    """An HTTP sink whose answers follow a script: a list of (status, headers, body), the last repeated.
    GET requests (heartbeats) are recorded too."""

    def __init__(self, script=None, port=0):
        import http.server
        sink = self
        self.received = []
        self.lock = threading.Lock()
        self.script = list(script or [(200, {}, b"ok")])

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, body_in):
                with sink.lock:
                    status, headers, body = sink.script[0] if len(sink.script) == 1 else sink.script.pop(0)
                    sink.received.append({"at": time.time(), "method": self.command, "path": self.path,
                                          "headers": dict(self.headers), "body": body_in, "status": status})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def do_GET(self):
                self.answer(b"")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self):
        with self.lock:
            return [dict(m, json=json.loads(m["body"])) for m in self.received if m["method"] == "POST"]

    def gets(self):
        with self.lock:
            return [m for m in self.received if m["method"] == "GET"]


class SmtpSink:
    """A local SMTP server: EHLO, STARTTLS (with a test certificate), AUTH PLAIN/LOGIN, MAIL, RCPT, DATA.
    Mail is refused before STARTTLS (530) and before a good login (530); a wrong password gets 535."""

    def __init__(self, certfile, keyfile, user="alerts", password="smtp-secret"):
        import ssl
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        self.user, self.password = user, password
        self.mails = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        import base64
        f = conn.makefile("rb")
        tls = authed = False
        envelope = {}

        def send(line):
            conn.sendall(line.encode() + b"\r\n")

        def readline():
            return f.readline().decode(errors="replace").rstrip("\r\n")
        try:
            send("220 localhost ESMTP pgvigil-test")
            while True:
                line = readline()
                if not line:
                    return
                verb = line.split(" ")[0].upper()
                if verb in ("EHLO", "HELO"):
                    send("250-localhost")
                    if not tls:
                        send("250-STARTTLS")
                    send("250-AUTH PLAIN LOGIN")
                    send("250 8BITMIME")
                elif verb == "STARTTLS":
                    send("220 go ahead")
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                    f = conn.makefile("rb")
                    tls = True
                elif verb == "AUTH":
                    parts = line.split(" ")
                    if parts[1].upper() == "PLAIN":
                        if len(parts) > 2:
                            blob = parts[2]
                        else:
                            send("334 ")
                            blob = readline()
                        _, u, p = base64.b64decode(blob).decode().split("\0")
                    else:
                        send("334 VXNlcm5hbWU6")
                        u = base64.b64decode(readline()).decode()
                        send("334 UGFzc3dvcmQ6")
                        p = base64.b64decode(readline()).decode()
                    if (u, p) == (self.user, self.password):
                        authed = True
                        send("235 ok")
                    else:
                        send("535 5.7.8 Authentication credentials invalid")
                elif verb == "MAIL":
                    if not tls:
                        send("530 5.7.0 Must issue a STARTTLS command first")
                    elif not authed:
                        send("530 5.7.0 Authentication required")
                    else:
                        envelope = {"from": line[10:], "rcpt": []}
                        send("250 ok")
                elif verb == "RCPT":
                    envelope["rcpt"].append(line[8:])
                    send("250 ok")
                elif verb == "DATA":
                    send("354 end with .")
                    data = []
                    while True:
                        raw = f.readline()
                        if raw in (b".\r\n", b""):
                            break
                        data.append(raw[1:] if raw.startswith(b"..") else raw)
                    with self.lock:
                        self.mails.append(dict(envelope, data=b"".join(data).decode(), tls=tls, at=time.time()))
                    send("250 queued")
                elif verb == "QUIT":
                    send("221 bye")
                    return
                else:
                    send("250 ok")
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def messages(self):
        import email
        import email.policy
        with self.lock:
            mails = list(self.mails)
        return [dict(m, msg=email.message_from_string(m["data"], policy=email.policy.default)) for m in mails]

    def close(self):
        self.closed = True
        self.sock.close()


def test_certificate(dirname):
    cert, key = os.path.join(dirname, "cert.pem"), os.path.join(dirname, "key.pem")
    out = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                          "-days", "2", "-subj", "/CN=localhost", "-addext",
                          "subjectAltName=IP:127.0.0.1,DNS:localhost"], capture_output=True, text=True)
    check(out.returncode == 0, "openssl: " + out.stderr)
    return cert, key


def unreachable_config(d, cluster, notifiers, after="1s", group_wait="0s", extra_alerts=""):
    """A daemon health-checking a database nobody listens for, so connectivity_lost becomes true
    `after` after the start."""
    extra = """  gone:
    conninfo: "host=127.0.0.1 port=1 dbname=demo user=vigil connect_timeout=1"
    password: env:DEMO_PASS
"""
    jobs = "  hc-gone: { type: health, database: gone, every: 1s, timeout: 5s }\n"
    return base_config(d, cluster, jobs, extra_db=extra) + """alerts:
  group_wait: %s
  rules:
    connectivity_lost: { after: %s }
    backup_stale: { enabled: false }
    rpo_breach: { enabled: false }
%snotifiers:
%s""" % (group_wait, after, extra_alerts, notifiers)


def outbox_rows(d):
    with d.db() as c:
        return c.execute("SELECT id, notifier, status, attempts, idempotency_key, last_error FROM outbox "
                         "ORDER BY id").fetchall()


def firing_of(sink, rule="connectivity_lost"):
    return [m for m in sink.messages() if m["status"] == 200 and m["json"]["rule"] == rule
            and m["json"]["status"] == "firing"]


@test
def webhook_500_then_429_then_200_delivered_once(cluster):
    """The sink fails with 500, then rate-limits with Retry-After: 2, then takes the message: one
    delivery, after the wait, with the same idempotency key on every attempt."""
    d = Daemon()
    sink = ScriptedSink([(500, {}, b"oops"), (429, {"Retry-After": "2"}, b"slow down"), (200, {}, b"ok")])
    try:
        d.write_config(unreachable_config(d, cluster, '  hook: { type: webhook, url: "http://127.0.0.1:%d/h" }\n'
                                          % sink.port))
        d.start()
        wait_for(lambda: firing_of(sink), 40, "the delivery after 500 and 429")
        time.sleep(3)
        with sink.lock:
            got = [m for m in sink.received if json.loads(m["body"])["rule"] == "connectivity_lost"]
        check([m["status"] for m in got] == [500, 429, 200], "answers: %r" % [m["status"] for m in got])
        keys = {m["headers"].get("X-Pgvigil-Idempotency-Key") for m in got}
        check(len(keys) == 1 and None not in keys, "idempotency keys: %r" % keys)
        gap = got[2]["at"] - got[1]["at"]
        check(gap >= 1.95, "retried %.2fs after the 429, Retry-After was 2s" % gap)
        print("     500 -> retry after %.2fs; 429 Retry-After: 2 -> retry after %.2fs; 200 delivered once"
              % (got[1]["at"] - got[0]["at"], gap), flush=True)
        rows = [r for r in outbox_rows(d) if r[4] in keys]
        check(len(rows) == 1 and rows[0][2] == "sent" and rows[0][3] == 3, "outbox: %r" % rows)
        st = d.ctl_json("status")["notifications"]["hook"]
        check(st["pending"] == 0 and st["failed"] == 0 and st["sent"] >= 1, "status: %r" % st)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        sink.close()


@test
def outbox_survives_sigkill_while_sink_down(cluster):
    """The sink is down when the alert fires; the daemon is SIGKILLed with the message pending; both come
    back: the message arrives once, with its original key, and the alert is not fired a second time."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    d = Daemon()
    sink = None
    try:
        d.write_config(unreachable_config(d, cluster, '  hook: { type: webhook, url: "http://127.0.0.1:%d/h" }\n'
                                          % port))
        d.start()
        wait_for(lambda: [r for r in outbox_rows(d) if r[2] == "pending" and r[3] >= 1], 30,
                 "a failed attempt with the message still pending")
        pending = [r for r in outbox_rows(d) if r[2] == "pending"]
        d.proc.kill()
        d.proc.wait()
        sink = ScriptedSink(port=port)
        d.start()
        wait_for(lambda: firing_of(sink), 30, "the pending notification after the restart")
        time.sleep(4)
        got = firing_of(sink)
        check(len(got) == 1, "delivered %d times" % len(got))
        check(got[0]["headers"]["X-Pgvigil-Idempotency-Key"] == pending[0][4], "key changed across the restart")
        rows = outbox_rows(d)
        fired = [r for r in rows if r[4] == pending[0][4]]
        check(len(fired) == 1 and fired[0][2] == "sent", "outbox after restart: %r" % rows)
        check(len(rows) == len(pending), "new messages queued after the restart: %r" % rows)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        if sink is not None:
            sink.close()


@test
def slack_no_service_breaks_and_email_tells_with_threading(cluster):
    """Slack answers 404 no_service: not retried, notifier_broken goes out by email (SMTP with STARTTLS
    and a login, test certificate); mail about one alert is threaded with References."""
    d = Daemon(env_extra={"SMTP_PASS": "smtp-secret"})
    slack = ScriptedSink([(404, {}, b"no_service")])
    cert, key = test_certificate(d.dir)
    smtp = SmtpSink(cert, key)
    other = None
    try:
        other = Cluster()
        extra = """  other:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil connect_timeout=1"
    password: env:DEMO_PASS
""" % other.port
        jobs = "  hc-other: { type: health, database: other, every: 1s, timeout: 5s }\n"
        d.write_config(base_config(d, cluster, jobs, extra_db=extra) + """alerts:
  group_wait: 0s
  rules:
    connectivity_lost: { after: 1s }
    backup_stale: { enabled: false }
    rpo_breach: { enabled: false }
notifiers:
  slack-ops: { type: slack, webhook_url: "http://127.0.0.1:%d/services/T/B/X" }
  oncall: { type: email, smtp_url: "smtp://127.0.0.1:%d", starttls: required, ca_file: %s,
            username: alerts, password: env:SMTP_PASS, from: "pgvigil <pgvigil@example.org>",
            to: [oncall@example.org, "Ops <ops@example.org>"], severities: [critical] }
""" % (slack.port, smtp.port, cert))
        d.start()
        wait_for(lambda: [r for r in d.runs("hc-other") if r["result"] == "ok"], 15, "a good health run")
        _pg_ctl(other, "-m", "immediate", "-w", "stop")

        def mails(rule, status=None):
            return [m for m in smtp.messages() if ("Rule:      " + rule) in m["data"]
                    and (status is None or ("Status:    " + status) in m["data"])]
        wait_for(lambda: mails("notifier_broken"), 40, "notifier_broken by email")
        fire = wait_for(lambda: mails("connectivity_lost", "CRITICAL"), 20, "connectivity_lost by email")[0]
        with slack.lock:
            slack_tries = [m for m in slack.received if b"connectivity_lost" in m["body"]]
        check(len(slack_tries) == 1, "slack tried %d times after a permanent error" % len(slack_tries))
        broken = mails("notifier_broken")[0]
        check("slack-ops" in broken["data"] and "no_service" in broken["data"], "broken mail:\n" + broken["data"])
        m = fire["msg"]
        for h in ("Date", "Message-ID", "From", "To", "Subject"):
            check(m[h], "header %s missing:\n%s" % (h, fire["data"]))
        check(m["Auto-Submitted"] == "auto-generated", "Auto-Submitted: %r" % m["Auto-Submitted"])
        check(m["Message-ID"].endswith("@example.org>"), "Message-ID %r" % m["Message-ID"])
        check("CRITICAL" in m["Subject"] and "connectivity_lost" in m["Subject"], "Subject %r" % m["Subject"])
        check(fire["tls"] and fire["from"].startswith("<pgvigil@example.org>"), "envelope %r" % fire)
        check(sorted(fire["rcpt"]) == ["<oncall@example.org>", "<ops@example.org>"], "rcpt %r" % fire["rcpt"])
        check(m.get_content_type() == "text/plain" and "Database:  other" in m.get_content(), "body:\n" + fire["data"])
        long_lines = [line for line in fire["data"].split("\r\n") if len(line) > 100]
        check(not long_lines, "long lines in the mail: %r" % long_lines)

        _pg_ctl(other, "-w", "start")
        res = wait_for(lambda: [x for x in smtp.messages() if "RESOLVED" in x["msg"]["Subject"]
                                and "connectivity_lost" in x["msg"]["Subject"]], 30, "the resolved mail")[0]["msg"]
        check(res["References"] == m["Message-ID"] and res["In-Reply-To"] == m["Message-ID"],
              "threading: References %r In-Reply-To %r, first %r" % (res["References"], res["In-Reply-To"],
                                                                       m["Message-ID"]))
        st = d.ctl_json("status")["notifications"]
        check(st["slack-ops"]["failed"] >= 1 and st["oncall"]["failed"] == 0, "status: %r" % st)
        check("smtp-secret" not in d.logtext(), "SMTP password logged")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        slack.close()
        smtp.close()
        if other is not None:
            other.stop()


@test
def email_wrong_password_is_permanent_and_reported(cluster):
    """A refused SMTP login is a permanent error: one attempt, the message marked failed, status says so."""
    d = Daemon(env_extra={"SMTP_PASS": "not-the-password"})
    cert, key = test_certificate(d.dir)
    smtp = SmtpSink(cert, key)
    try:
        d.write_config(unreachable_config(d, cluster, """  oncall: { type: email, smtp_url: "smtp://127.0.0.1:%d", ca_file: %s,
            username: alerts, password: env:SMTP_PASS, from: pgvigil@example.org, to: [oncall@example.org] }
""" % (smtp.port, cert)))
        d.start()
        wait_for(lambda: [r for r in outbox_rows(d) if r[2] == "failed"], 30, "the failed message")
        rows = outbox_rows(d)
        check(rows[0][3] == 1 and "535" in (rows[0][5] or ""), "outbox: %r" % rows)
        check(smtp.messages() == [], "mail accepted with a wrong password")
        check("not-the-password" not in d.logtext(), "password logged")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        smtp.close()


@test
def silence_suppresses_then_its_expiry_delivers(cluster):
    d = Daemon()
    sink = ScriptedSink()
    try:
        d.write_config(unreachable_config(d, cluster, '  hook: { type: webhook, url: "http://127.0.0.1:%d/h" }\n'
                                          % sink.port, after="3s"))
        d.start()
        out = d.ctl("silence", "add", "connectivity_lost", "gone", "--for", "8s", "--comment", "network work",
                    check_rc=0).stdout
        added = time.time()
        check("silence 1 added" in out, "silence add: " + out)
        # non-admins may list but not add or remove
        d.ctl("silence", "add", "connectivity_lost", "--for", "1h", "--comment", "x", user="nobody", check_rc=1)
        d.ctl("silence", "remove", "1", user="nobody", check_rc=1)
        lst = d.ctl_json("silence", "list")["silences"]
        check(len(lst) == 1 and lst[0]["author"] == "root" and lst[0]["comment"] == "network work"
              and lst[0]["database"] == "gone", "silence list: %r" % lst)
        check("network work" in d.ctl("silence", "list", user="nobody", check_rc=0).stdout, "list as nobody")
        check("unknown rule" in d.ctl("silence", "add", "no_such_rule", "--for", "1h", "--comment", "x",
                                      check_rc=2).stderr, "unknown rule message")
        d.ctl("silence", "add", "connectivity_lost", "--comment", "x", check_rc=2)
        d.ctl("silence", "add", "connectivity_lost", "nodb", "--for", "1h", "--comment", "x", check_rc=2)

        wait_for(lambda: [a for a in d.ctl_json("alerts")["alerts"] if a["status"] == "firing"], 20, "the alert firing")
        hist = d.ctl_json("alerts", "history")["alerts"]
        check([h for h in hist if h["rule"] == "connectivity_lost" and h["suppressed"] == "silence 1"],
              "history: %r" % hist)
        check(firing_of(sink) == [], "delivered while silenced")
        got = wait_for(lambda: firing_of(sink), 20, "the notification once the silence ended")
        check(got[0]["at"] >= added + 7.5, "delivered %.1fs after the silence, which lasts 8s" % (got[0]["at"] - added))
        print("     silenced for 8s; delivered %.1fs after the silence was added" % (got[0]["at"] - added), flush=True)
        check(d.ctl_json("silence", "list")["silences"] == [], "expired silence still listed")
        check(len(d.ctl_json("silence", "list", "--all")["silences"]) == 1, "silence history")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        sink.close()


@test
def maintenance_holds_back_until_off(cluster):
    d = Daemon()
    sink = ScriptedSink()
    try:
        d.write_config(unreachable_config(d, cluster, '  hook: { type: webhook, url: "http://127.0.0.1:%d/h" }\n'
                                          % sink.port, after="2s"))
        d.start()
        d.ctl("maintenance", "on", "--for", "1h", "--comment", "upgrade", check_rc=0)
        d.ctl("maintenance", "off", user="nobody", check_rc=1)
        st = d.ctl_json("status")
        check(st["maintenance"] and st["maintenance"]["author"] == "root", "status: %r" % st["maintenance"])
        check("maintenance: on" in d.ctl("status", check_rc=0).stdout, "status text")
        wait_for(lambda: [h for h in d.ctl_json("alerts", "history")["alerts"] if h["suppressed"] == "maintenance"],
                 20, "a notification held back by maintenance")
        time.sleep(1)
        check(firing_of(sink) == [], "delivered during maintenance")
        off = time.time()
        d.ctl("maintenance", "off", check_rc=0)
        got = wait_for(lambda: firing_of(sink), 10, "the notification after maintenance off")
        print("     delivered %.2fs after maintenance off" % (got[0]["at"] - off), flush=True)
        check(d.ctl_json("status")["maintenance"] is None, "maintenance still on")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        sink.close()


@test
def group_wait_swallows_a_flap(cluster):
    """PostgreSQL gone for about two seconds with connectivity_lost after 1s and group_wait 8s: the alert
    becomes pending and resolves inside group_wait, so nothing is ever sent."""
    d = Daemon()
    sink = ScriptedSink()
    other = None
    try:
        other = Cluster()
        extra = """  other:
    conninfo: "host=127.0.0.1 port=%d dbname=demo user=vigil connect_timeout=1"
    password: env:DEMO_PASS
""" % other.port
        jobs = "  hc-other: { type: health, database: other, every: 1s, timeout: 5s }\n"
        d.write_config(base_config(d, cluster, jobs, extra_db=extra) + """alerts:
  group_wait: 8s
  rules:
    connectivity_lost: { after: 1s }
    backup_stale: { enabled: false }
    rpo_breach: { enabled: false }
notifiers:
  hook: { type: webhook, url: "http://127.0.0.1:%d/h" }
""" % sink.port)
        d.start()
        wait_for(lambda: [r for r in d.runs("hc-other") if r["result"] == "ok"], 15, "a good health run")
        _pg_ctl(other, "-m", "immediate", "-w", "stop")
        wait_for(lambda: [a for a in d.ctl_json("alerts")["alerts"] if a["rule"] == "connectivity_lost"
                          and a["status"] == "pending"], 15, "the alert pending")
        _pg_ctl(other, "-w", "start")
        wait_for(lambda: not d.ctl_json("alerts")["alerts"], 15, "the pending alert to go away")
        time.sleep(9)
        check(sink.messages() == [], "a flap inside group_wait was sent: %r" % [m["json"] for m in sink.messages()])
        check(not [h for h in d.ctl_json("alerts", "history")["alerts"] if h["rule"] == "connectivity_lost"],
              "the flap reached the alert log")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        sink.close()
        if other is not None:
            other.stop()


@test
def heartbeat_pings_and_digest_gathers_info(cluster):
    """A heartbeat every 2s reaches its URL; info events for a notifier with a digest arrive as one
    message at the next minute, not one by one."""
    d = Daemon()
    sink = ScriptedSink()
    try:
        jobs = "  bk: { type: backup, database: demo, every: 4s, keep: 2 }\n"
        d.write_config(base_config(d, cluster, jobs) + """alerts:
  group_wait: 0s
  rules:
    backup_stale: { enabled: false }
    rpo_breach: { enabled: false }
notifiers:
  hb: { type: heartbeat, url: "http://127.0.0.1:%d/ping", every: 2s }
  weekly: { type: webhook, url: "http://127.0.0.1:%d/digest", severities: [info], digest: "* * * * *" }
""" % (sink.port, sink.port))
        d.start()
        pings = wait_for(lambda: len(sink.gets()) >= 3 and sink.gets(), 15, "three heartbeats")
        gaps = [b["at"] - a["at"] for a, b in zip(pings, pings[1:])]
        check(all(1.5 < g < 3.5 for g in gaps[:2]), "heartbeat gaps %r" % gaps)
        check(pings[0]["path"] == "/ping", "path %r" % pings[0]["path"])
        check(d.ctl_json("status")["heartbeats"]["hb"]["pings"] >= 3, "status heartbeats")
        wait_for(lambda: [r for r in d.runs("bk") if r["result"] == "ok"], 30, "a backup")
        digest = wait_for(lambda: [m for m in sink.messages() if m["json"]["rule"] == "digest"], 75, "the digest")
        body = digest[0]["json"]
        check(not [m for m in sink.messages() if m["json"]["rule"] == "backup_succeeded"],
              "backup_succeeded sent on its own despite the digest")
        check("backup_succeeded" in body["text"] and body["status"] == "info", "digest: %r" % body)
        print("     digest: %s" % body["title"], flush=True)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        sink.close()


def session_holder(cluster, db, user, seconds=120):
    """A psql session sitting in db for `seconds`; wait until the server lists it."""
    holder = subprocess.Popen([os.path.join(REAL_PG_BIN, "psql"), "-X", "-q", "-h", cluster.sock, "-p",
                               str(cluster.port), "-U", user, "-d", db, "-c", "SELECT pg_sleep(%d)" % seconds],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: psql(cluster, "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND usename = '%s'"
                          % (db, user), db="postgres", user="postgres") == "1", 10, "the session on " + db)
    return holder


@test
def probe_leftover_with_a_session_dropped_at_start(cluster):
    """Leftover scratch databases someone is still connected to. The plain DROP fails and the daemon
    removes the other session (its own role may) and drops it. A superuser's session (as an autovacuum
    worker is) it may not remove: it drops again until that session has left, and when it never does,
    it says why the drop failed. Nothing else is touched."""
    probe_prepare(cluster)
    names = ["pgvigil_probe_demo_20200101t00000%d" % i for i in range(3)]
    for name in names:
        psql(cluster, 'CREATE DATABASE "%s"' % name, db="postgres", user="vigil")
    holders = []
    d = Daemon()
    try:
        holders.append(session_holder(cluster, names[0], "vigil"))
        holders.append(session_holder(cluster, names[1], "postgres"))  # leaves when the daemon retries
        holders.append(session_holder(cluster, names[2], "postgres"))  # never leaves
        d.write_config(probe_config(d, cluster, BACKUP_JOB % 2))
        d.start()
        try:
            wait_for(lambda: names[0] not in probe_dbs(cluster), 20, "the first leftover to be dropped")
            check(holders[0].wait(10) != 0, "the other session was not ended")
            wait_for(lambda: "removing other sessions failed, dropping again database=%s" % names[1] in d.logtext(),
                     20, "the retry on the superuser's session")
            # the superuser's session ends, as an autovacuum worker's does
            psql(cluster, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'" % names[1],
                 db="postgres", user="postgres")
            wait_for(lambda: names[1] not in probe_dbs(cluster), 20, "the second leftover to be dropped")
            failed = "cannot drop scratch database left by an earlier run target=scratch database=%s" % names[2]
            wait_for(lambda: failed in d.logtext(), 30, "the third drop to fail")
        except Failure as e:
            raise Failure("%s\nsessions: %s\nlog tail:\n%s" % (
                e, psql(cluster, "SELECT string_agg(coalesce(datname, '-') || '/' || usename || '/' || state || "
                                 "'/' || left(query, 40), '; ') FROM pg_stat_activity", db="postgres",
                        user="postgres"), d.logtext()[-3000:]))
        log = d.logtext()
        check("plain drop failed, removing other sessions database=%s" % names[0] in log,
              "the drop did not go through the session removal")
        line = [x for x in log.splitlines() if failed in x][0]
        check("other sessions remained after" in line and "superuser" in line,
              "the failure does not say why: " + line)
        check(names[2] in probe_dbs(cluster), "the third leftover should still be there")
        check(holders[2].poll() is None, "the superuser's session was ended")
        check(d.stop() == 0, "exit status")
    finally:
        for h in holders:
            if h.poll() is None:
                h.kill()
                h.wait()
        d.cleanup()
        probe_prepare(cluster)


# ---- parallel restore (probe.c: -j N from a temporary file above 16 MiB of archive) ----

PARALLEL_DB = "probe_big"


def parallel_db(cluster):
    """A database of its own whose archive is about 21 MB (above the 16 MiB threshold): created
    once in the shared cluster, so the demo database (and the other tests) stay small."""
    if psql(cluster, "SELECT count(*) FROM pg_database WHERE datname = '%s'" % PARALLEL_DB,
            db="postgres", user="postgres") == "1":
        return
    psql(cluster, "CREATE DATABASE %s OWNER vigil" % PARALLEL_DB, db="postgres", user="postgres")
    psql(cluster, "CREATE TABLE parent (id int PRIMARY KEY, name text);"
                  "INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 1000) g;"
                  "CREATE TABLE big (id int PRIMARY KEY, parent int REFERENCES parent, t text);"
                  "INSERT INTO big SELECT g, 1 + g % 1000, md5(g::text) || md5((g * 7)::text) "
                  "FROM generate_series(1, 300000) g;"
                  "CREATE INDEX big_parent ON big (parent);", db=PARALLEL_DB)


PARALLEL_JOBS = ("  bkb: { type: backup, database: big, schedule: \"0 0 1 1 *\", keep: 2, timeout: 60s }\n"
                 "  probeb: { type: restore_probe, database: big, schedule: \"0 0 1 1 *\", timeout: %s }\n")


def parallel_config(d, cluster, timeout="60s", jobs_extra="", **kw):
    extra = """  big:
    conninfo: "host=127.0.0.1 port=%d dbname=%s user=vigil"
    password: env:DEMO_PASS
    critical_tables: [big]
    restore_target: scratch
""" % (cluster.port, PARALLEL_DB)
    return probe_config(d, cluster, PARALLEL_JOBS % timeout + jobs_extra, extra_db=extra, **kw)


def tmp_probe_dirs(d):
    return [x for x in tmp_dirs(storage_dir(d)) if ".tmp-probe-" in x]


@test
def probe_parallel_mode_and_small_streams(cluster):
    """A big archive is decompressed to a temporary file and restored with -j N (N >= 2 on the
    2-CPU CI machine), the file is gone afterwards; the small demo database still streams."""
    probe_prepare(cluster)
    parallel_db(cluster)
    d = Daemon()
    try:
        d.write_config(parallel_config(d, cluster, jobs_extra=BACKUP_JOB % 2 + PROBE_JOB % ("demo", "60s")))
        d.start()
        good_backup(d, "bkb")
        b = backups_json(d, "big")[0]
        check(b["archive_size"] >= 16 << 20, "archive too small for the test: %r" % b)
        r = run_job(d, "probeb")
        f = figures(r)
        check(r["result"] == "ok", "probe: %r\nlog tail:\n%s" % (r, d.logtext()[-3000:]))
        ncpu = os.cpu_count() or 1
        check(ncpu > 1, "the test needs more than one CPU")
        check(f["restore_mode"] == "parallel" and f["restore_jobs"] == min(ncpu, 4) and f["restore_jobs"] >= 2,
              "mode: %r" % f)
        check(isinstance(f.get("decompress_seconds"), float) and 0 < f["decompress_seconds"] <= f["restore_seconds"],
              "decompress/restore seconds: %r" % f)
        check(f["tables"] == 2 and f["rows"] == 301000 and f["mismatches"] == [], "figures: %r" % f)
        check(f["archive_bytes"] == b["archive_size"], "archive bytes: %r vs %r" % (f, b))
        check("restore mode=parallel jobs=%d" % f["restore_jobs"] in d.logtext(), "choice not logged")
        check(tmp_probe_dirs(d) == [], "temporary directory left: %r" % tmp_probe_dirs(d))
        check(os.listdir(os.path.join(storage_dir(d), "big", "bkb")) == [b["id"]],
              "job directory: %r" % os.listdir(os.path.join(storage_dir(d), "big", "bkb")))
        check(probe_dbs(cluster) == [] and in_use(d) == 0, "scratch left: %r" % probe_dbs(cluster))
        # the demo database is far below the threshold: streamed as before
        good_backup(d, "bk")
        r = run_job(d, "probe")
        f = figures(r)
        check(r["result"] == "ok", "small probe: %r" % r)
        check(f["restore_mode"] == "stream" and f["restore_jobs"] == 1 and "decompress_seconds" not in f,
              "small mode: %r" % f)
        check("restore mode=stream" in d.logtext() and "archive below 16 MiB" in d.logtext(),
              "stream choice not logged with its reason")
        check(tmp_probe_dirs(d) == [] and probe_dbs(cluster) == [], "left behind")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


# pg_restore -j: note the temporary file, then fail (or stall while the flag file exists)
PARALLEL_FAIL_RESTORE = """\
for a in "$@"; do
  if [ "$a" = -j ]; then
    f="${@: -1}"
    ls -ld "$f" "$(dirname "$f")" >> "$(dirname "$0")/seen"
    if [ -e "$(dirname "$0")/stall" ]; then echo "stalling $$" >&2; sleep 60; fi
    sleep 0.5
    echo "pg_restore: error: failing for the test" >&2
    exit 1
  fi
done
exec REAL "$@"
"""


@test
def probe_parallel_failure_timeout_cancel_remove_file(cluster):
    """pg_restore -j failing, passing the job timeout, and the daemon stopping mid-restore: each
    time the temporary directory is removed and the scratch database dropped."""
    probe_prepare(cluster)
    parallel_db(cluster)
    d = Daemon()
    try:
        pgbin = make_pg_bin(d, pg_restore=PARALLEL_FAIL_RESTORE)
        seen = os.path.join(pgbin, "seen")
        d.write_config(parallel_config(d, cluster, daemon_extra="  pg_bin_dir: %s\n" % pgbin))
        d.start()
        good_backup(d, "bkb")
        # 1. pg_restore exits 1
        r = run_job(d, "probeb")
        check(r["result"] == "failed" and "exited with status 1" in r["cause"]
              and "failing for the test" in r["cause"], "probe: %r" % r)
        lines = open(seen).read().splitlines()
        files = [x for x in lines if x.endswith("/archive")]
        dirs = [x for x in lines if not x.endswith("/archive")]
        check(len(files) == 1 and files[0].startswith("-rw-------") and "/.tmp-probe-pgvigil_probe_big_" in files[0]
              and len(dirs) == 1 and dirs[0].startswith("drwx------"),
              "temporary file as pg_restore saw it: %r" % lines)
        check(figures(r)["restore_mode"] == "parallel" and figures(r)["scratch_dropped"] is True, "figures: %r" % figures(r))
        check(tmp_probe_dirs(d) == [], "temporary directory left after a failure: %r" % tmp_probe_dirs(d))
        check(probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
        # 2. pg_restore stalls past a 3 s job timeout
        open(os.path.join(pgbin, "stall"), "w").close()
        d.write_config(parallel_config(d, cluster, timeout="3s", daemon_extra="  pg_bin_dir: %s\n" % pgbin))
        d.ctl("reload", check_rc=0)
        r = run_job(d, "probeb", timeout=20)
        check(r["result"] == "timeout" and "timeout after 3s while restoring" in r["cause"], "probe: %r" % r)
        check(tmp_probe_dirs(d) == [], "temporary directory left after a timeout: %r" % tmp_probe_dirs(d))
        check(probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
        check(pids_of(os.path.join(pgbin, "pg_restore")) == [], "pg_restore left running")
        # 3. the daemon stops while pg_restore -j runs
        d.write_config(parallel_config(d, cluster, daemon_extra="  pg_bin_dir: %s\n" % pgbin))
        d.ctl("reload", check_rc=0)
        rid = started_run(d, "probeb")
        wait_for(lambda: tmp_probe_dirs(d) and pids_of(os.path.join(pgbin, "pg_restore")), 10,
                 "pg_restore -j and its temporary file")
        check(d.stop() == 0, "exit status")
        r = run_by_id(d, rid)
        check(r["result"] == "cancelled" and "cancelled while restoring" in r["cause"], "probe: %r" % r)
        check(tmp_probe_dirs(d) == [], "temporary directory left after a stop: %r" % tmp_probe_dirs(d))
        check(probe_dbs(cluster) == [], "scratch left: %r" % probe_dbs(cluster))
    finally:
        d.cleanup()


@test
def probe_parallel_corrupt_file_removes_temporary(cluster):
    """In parallel mode a stored file damaged after verification fails while it is decompressed:
    pg_restore never runs, the cause names the damage, the temporary directory is removed."""
    probe_prepare(cluster)
    parallel_db(cluster)
    d = Daemon()
    try:
        d.write_config(parallel_config(d, cluster))
        d.start()
        good_backup(d, "bkb")
        b = backups_json(d, "big")[0]
        path = os.path.join(b["dir"], "dump.zst")
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x55
        with open(path, "wb") as f:
            f.write(bytes(data))
        r = run_job(d, "probeb")
        f = figures(r)
        check(r["result"] == "failed" and "could not be read" in (r["cause"] or "") and b["id"] in r["cause"],
              "probe: %r" % r)
        check(f["restore_mode"] == "parallel", "figures: %r" % f)
        check(tmp_probe_dirs(d) == [], "temporary directory left: %r" % tmp_probe_dirs(d))
        check(probe_dbs(cluster) == [] and in_use(d) == 0, "scratch left: %r" % probe_dbs(cluster))
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


# ---- Prometheus metrics (issue 6) ----

SPEC_METRICS = {  # family name as the exposition text has it -> type (SPEC §6)
    "pgvigil_up": "gauge",
    "pgvigil_database_up": "gauge",
    "pgvigil_connect_seconds": "gauge",
    "pgvigil_backup_last_success_timestamp_seconds": "gauge",
    "pgvigil_backup_size_bytes": "gauge",
    "pgvigil_backup_duration_seconds": "gauge",
    "pgvigil_rpo_seconds": "gauge",
    "pgvigil_restore_probe_last_success_timestamp_seconds": "gauge",
    "pgvigil_restore_probe_duration_seconds": "gauge",
    "pgvigil_storage_used_ratio": "gauge",
    "pgvigil_alerts_firing": "gauge",
    "pgvigil_notifications_pending": "gauge",
    "pgvigil_notifications_failed_total": "counter",
    "pgvigil_job_runs_total": "counter",
}
STORAGE_JOB = "  storage: { type: storage, every: 1h }\n"
METRICS_HOOK_TOKEN = "T0KEN-in-the-hook-url-must-not-leak"


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(port, path="/metrics", method="GET", timeout=5):
    """(status, headers, body text, seconds) of one request to 127.0.0.1:port."""
    import http.client
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        body = r.read().decode()
        return r.status, dict(r.getheaders()), body, time.monotonic() - t0
    finally:
        c.close()


def prometheus_parser():
    """prometheus_client's exposition-format parser, from Debian's python3-prometheus-client (pure
    Python) even when python3 on PATH is another interpreter than Debian's."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        sys.path.append("/usr/lib/python3/dist-packages")
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            raise Failure("prometheus_client not found: install python3-prometheus-client (contrib/install-deps)")
    return text_string_to_metric_families


def scrape(port):
    """The metric families of one scrape, parsed by the Prometheus client library's own parser:
    {family name: (type, [(sample name, labels, value)])}. Counters are keyed with their _total
    name, as the exposition text writes them."""
    text_string_to_metric_families = prometheus_parser()
    status, headers, body, _ = http_get(port)
    check(status == 200, "scrape answered %d: %s" % (status, body[:300]))
    check(headers.get("Content-Type") == "text/plain; version=0.0.4; charset=utf-8",
          "content type: %r" % headers.get("Content-Type"))
    fams = {}
    for f in text_string_to_metric_families(body):
        name = f.name + "_total" if f.type == "counter" and not f.name.endswith("_total") else f.name
        check(name not in fams, "family %s twice" % name)
        fams[name] = (f.type, [(s.name, dict(s.labels), s.value) for s in f.samples])
    seen = set()
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            check(series not in seen, "duplicate series %s" % series)
            seen.add(series)
    return fams, body


def mvalue(fams, name, **labels):
    """The value of the one sample of `name` with exactly these labels, or None."""
    for sname, slabels, v in fams.get(name, (None, []))[1]:
        if sname == name and slabels == labels:
            return v
    return None


def metrics_config(d, cluster, port, sink_port, jobs, demo_extra=RPO_OBJECTIVES, alerts=""):
    text = probe_config(d, cluster, jobs, demo_extra=demo_extra,
                        daemon_extra="  metrics_listen: 127.0.0.1:%d\n" % port)
    return text + alerts + """notifiers:
  hook: { type: webhook, url: "http://127.0.0.1:%d/%s" }
""" % (sink_port, METRICS_HOOK_TOKEN)


@test
def metrics_endpoint_after_backup_probe_health(cluster):
    """After a backup, a restore probe, health checks and a storage run, /metrics parses with the
    Prometheus client's parser, has every SPEC family with its type, and its values agree with the
    state database and pgvigilctl; other paths and methods are refused; nothing secret shows; a
    reload moves the endpoint, and a move to a taken port keeps the old one."""
    probe_prepare(cluster)
    d = Daemon()
    sink = WebhookSink()
    blocker = None
    try:
        port = free_port()
        jobs = BACKUP_JOB % 3 + PROBE_JOB % ("demo", "60s") + HEALTH_FAST + STORAGE_JOB
        d.write_config(metrics_config(d, cluster, port, sink.port, jobs))
        d.start()
        check("metrics endpoint listening address=127.0.0.1:%d" % port in d.logtext(), "no listening line")
        b = good_backup(d, "bk")
        p = run_job(d, "probe")
        check(p["result"] == "ok", "probe: %r" % p)
        s = run_job(d, "storage")
        check(s["result"] == "ok", "storage: %r" % s)
        wait_for(lambda: [r for r in d.runs("health") if r["result"] == "ok"], 10, "a good health check")
        # the backup_succeeded event reaches the sink: counted as sent
        wait_for(lambda: [m for m in sink.messages() if m["json"]["rule"] == "backup_succeeded"], 20,
                 "the backup_succeeded notification")

        def sent():
            return (mvalue(scrape(port)[0], "pgvigil_notifications_sent_total", notifier="hook") or 0) >= 1
        wait_for(sent, 10, "the notification counted as sent")
        before = {r["id"]: r for r in d.runs()}
        fams, body = scrape(port)
        after = {r["id"]: r for r in d.runs()}

        for name, typ in SPEC_METRICS.items():
            check(name in fams, "family %s missing; families: %s" % (name, sorted(fams)))
            check(fams[name][0] == typ, "%s is a %s, not a %s" % (name, fams[name][0], typ))
        check(mvalue(fams, "pgvigil_up") == 1, "pgvigil_up")
        check(mvalue(fams, "pgvigil_database_up", database="demo") == 1, "database_up")
        cs = mvalue(fams, "pgvigil_connect_seconds", database="demo")
        check(cs is not None and 0 < cs < 5, "connect_seconds %r" % cs)
        cat = backups_json(d, "demo")[0]
        size = mvalue(fams, "pgvigil_backup_size_bytes", database="demo", job="bk")
        check(size is not None and size > 0 and size == cat["size"], "backup size %r, catalog %r" % (size, cat))
        dur = mvalue(fams, "pgvigil_backup_duration_seconds", database="demo", job="bk")
        check(dur is not None and 0 < dur < 60, "backup duration %r" % dur)
        last = mvalue(fams, "pgvigil_backup_last_success_timestamp_seconds", database="demo", job="bk")
        check(last == run_by_id(d, b["id"])["finished"], "backup last success %r vs run %r" % (last, b))
        rpo = mvalue(fams, "pgvigil_rpo_seconds", database="demo")
        st = status_db(d)
        check(rpo is not None and abs(rpo - st["rpo"]["seconds"]) <= 2 and 0 <= rpo < 300,
              "rpo %r vs status %r" % (rpo, st["rpo"]))
        check(mvalue(fams, "pgvigil_rpo_objective_seconds", database="demo") == 4 * 3600, "rpo objective")
        check(abs(mvalue(fams, "pgvigil_rto_seconds", database="demo") - st["rto"]["seconds"]) < 1e-6,
              "rto vs status %r" % st["rto"])
        check(mvalue(fams, "pgvigil_rto_objective_seconds", database="demo") == 3600, "rto objective")
        check(mvalue(fams, "pgvigil_restore_probe_last_success_timestamp_seconds", database="demo")
              == run_by_id(d, p["id"])["finished"], "probe last success")
        pd = mvalue(fams, "pgvigil_restore_probe_duration_seconds", database="demo")
        check(pd is not None and abs(pd - figures(p)["total_seconds"]) < 1e-6, "probe duration %r" % pd)
        check(mvalue(fams, "pgvigil_restore_probe_success", database="demo") == 1, "probe success")
        ratio = mvalue(fams, "pgvigil_storage_used_ratio")
        check(ratio is not None and abs(ratio - figures(s)["used_ratio"]) < 1e-9 and 0 < ratio <= 1,
              "storage ratio %r vs %r" % (ratio, figures(s)))
        firing = {l["severity"]: v for _, l, v in fams["pgvigil_alerts_firing"][1]}
        check(set(firing) == {"critical", "warning", "info"}, "severities: %r" % firing)
        check(mvalue(fams, "pgvigil_notifications_pending", notifier="hook") is not None, "pending")
        check(mvalue(fams, "pgvigil_notifications_failed_total", notifier="hook") == 0, "failed")
        # every job and result, counted like the runs table (health keeps running: bounded by the
        # counts before and after the scrape)
        for job in ("bk", "probe", "storage", "health"):
            for result in ("ok", "failed", "timeout", "cancelled", "interrupted"):
                v = mvalue(fams, "pgvigil_job_runs_total", job=job, result=result)
                lo = len([r for r in before.values() if r["job"] == job and r["result"] == result])
                hi = len([r for r in after.values() if r["job"] == job and r["result"] == result])
                check(v is not None and lo <= v <= hi, "job_runs_total{%s,%s} = %r, runs table %d..%d"
                      % (job, result, v, lo, hi))
        check(mvalue(fams, "pgvigil_job_runs_total", job="bk", result="ok") == 1, "one backup counted")
        check(mvalue(fams, "pgvigil_metrics_collect_errors") == 0, "collect errors")
        for secret in (PASSWORD, METRICS_HOOK_TOKEN, "http://127.0.0.1:%d" % sink.port):
            check(secret not in body, "a secret is in the metrics: %s" % secret)

        # other paths, other methods, HEAD
        status, _, _, _ = http_get(port, "/other")
        check(status == 404, "/other answered %d" % status)
        status, _, _, _ = http_get(port, "/")
        check(status == 404, "/ answered %d" % status)
        status, headers, _, _ = http_get(port, "/metrics", method="POST")
        check(status == 405 and headers.get("Allow") == "GET, HEAD", "POST: %d %r" % (status, headers))
        status, headers, text, _ = http_get(port, "/metrics", method="HEAD")
        check(status == 200 and text == "" and int(headers["Content-Length"]) > 1000, "HEAD: %d %r" % (status, headers))

        # 100 scrapes in a row: how long one takes with this configuration
        times = sorted(http_get(port)[3] for _ in range(100))
        print("     100 scrapes (%d jobs, %d runs): median %.2f ms, p99 %.2f ms, max %.2f ms"
              % (jobs.count("type:"), len(d.runs()), times[49] * 1e3, times[98] * 1e3, times[99] * 1e3), flush=True)
        check(times[98] < 0.5, "p99 scrape %.3fs" % times[98])

        # reload: the endpoint moves
        port2 = free_port()
        d.write_config(metrics_config(d, cluster, port2, sink.port, jobs))
        d.ctl("reload", check_rc=0)
        check(mvalue(scrape(port2)[0], "pgvigil_up") == 1, "new address")
        try:
            http_get(port, timeout=2)
            check(False, "the old address still answers")
        except OSError:
            pass
        # reload to a taken port: the reload stands, the endpoint stays where it is, the log says why
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        d.write_config(metrics_config(d, cluster, taken, sink.port, jobs))
        d.ctl("reload", check_rc=0)
        check(mvalue(scrape(port2)[0], "pgvigil_config_last_reload_successful") == 1, "reload result")
        log = d.logtext()
        check("metrics endpoint not moved, still serving address=127.0.0.1:%d" % port2 in log
              and "127.0.0.1:%d" % taken in log and "Address already in use" in log, "log tail:\n" + log[-2000:])
        check(d.stop() == 0, "exit status")
    finally:
        if blocker is not None:
            blocker.close()
        d.cleanup()
        sink.close()


@test
def metrics_scrape_fast_during_backup_and_alerts_counted(cluster):
    """While pg_dump streams (stalled for 30 s), scrapes answer in well under a second and show the
    backup running but not counted; an RPO objective breached shows as a firing critical alert, the
    same count pgvigilctl alerts shows."""
    ensure_bulk(cluster)
    probe_prepare(cluster)
    d = Daemon()
    sink = WebhookSink()
    try:
        port = free_port()
        pgbin = make_pg_bin(d, pg_dump=STALL_DUMP.replace("sleep 3", "sleep 30"))
        jobs = BACKUP_JOB % 3 + HEALTH_FAST
        d.write_config(metrics_config(d, cluster, port, sink.port, jobs, demo_extra="    objectives: { rpo: 2s }\n",
                                      alerts="alerts:\n  group_wait: 1s\n")
                       .replace("daemon:\n", "daemon:\n  pg_bin_dir: %s\n" % pgbin, 1))
        d.start()
        rid = started_run(d, "bk")
        wait_for(lambda: real_dump_pids(pgbin), 10, "the real pg_dump")
        times = []
        for _ in range(20):
            status, _, body, secs = http_get(port)
            check(status == 200, "scrape during a backup: %d" % status)
            times.append(secs)
        times.sort()
        print("     20 scrapes during a backup: median %.2f ms, max %.2f ms" % (times[10] * 1e3, times[-1] * 1e3),
              flush=True)
        check(times[-1] < 1.0, "slowest scrape during a backup took %.3fs" % times[-1])
        fams, _ = scrape(port)
        check(mvalue(fams, "pgvigil_jobs_running") >= 1, "running jobs")
        check(mvalue(fams, "pgvigil_job_runs_total", job="bk", result="ok") == 0, "running backup counted")
        check(run_by_id(d, rid)["result"] is None, "the backup ended early: %r" % run_by_id(d, rid))

        def critical_firing():
            al = [a for a in d.ctl_json("alerts")["alerts"] if a["status"] == "firing"]
            return al if [a for a in al if a["rule"] == "rpo_breach"] else None
        al = wait_for(critical_firing, 60, "rpo_breach firing")
        fams, _ = scrape(port)
        al = [a for a in d.ctl_json("alerts")["alerts"] if a["status"] == "firing"]
        for sev in ("critical", "warning", "info"):
            want = len([a for a in al if a["severity"] == sev])
            check(mvalue(fams, "pgvigil_alerts_firing", severity=sev) == want,
                  "alerts_firing{%s} = %r, pgvigilctl alerts: %d" % (sev, mvalue(fams, "pgvigil_alerts_firing",
                                                                                severity=sev), want))
        check(mvalue(fams, "pgvigil_alerts_firing", severity="critical") >= 1, "no critical alert counted")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
        sink.close()


@test
def metrics_bind_conflict_refuses_start(cluster):
    """A metrics port already taken: the daemon exits 1 at start, naming the address and the reason,
    and leaves no control socket behind."""
    d = Daemon()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        d.write_config(base_config(d, cluster, HEALTH_FAST, daemon_extra="  metrics_listen: 127.0.0.1:%d\n" % port))
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d.config], capture_output=True, text=True, timeout=20,
                             env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 1, "exit %d; stderr:\n%s" % (out.returncode, out.stderr))
        check("cannot serve metrics on 127.0.0.1:%d (daemon.metrics_listen)" % port in out.stderr
              and "Address already in use" in out.stderr, "message: " + out.stderr)
        check(not os.path.exists(d.socket), "control socket left behind")
        # a name that does not resolve is refused the same way
        d.write_config(base_config(d, cluster, HEALTH_FAST,
                                   daemon_extra="  metrics_listen: no-such-host.invalid:9187\n"))
        out = subprocess.run([PGVIGILD, "--foreground", "-c", d.config], capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, DEMO_PASS=PASSWORD))
        check(out.returncode == 1 and "no-such-host.invalid" in out.stderr, "unresolvable host: " + out.stderr)
    finally:
        blocker.close()
        d.cleanup()


@test
def metrics_reload_resolves_names_off_the_loop(cluster):
    """A reload that moves the endpoint to a name looks it up without blocking the loop: localhost
    moves it, a name that does not resolve leaves the old address serving and says why."""
    d = Daemon()
    try:
        p1, p2 = free_port(), free_port()
        d.write_config(base_config(d, cluster, HEALTH_FAST, daemon_extra="  metrics_listen: 127.0.0.1:%d\n" % p1))
        d.start()
        check(http_get(p1)[0] == 200, "first address")
        d.write_config(base_config(d, cluster, HEALTH_FAST, daemon_extra="  metrics_listen: localhost:%d\n" % p2))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "metrics endpoint listening address=localhost:%d" % p2 in d.logtext(), 10, "the move")
        check(http_get(p2)[0] == 200, "moved to localhost")
        try:
            socket.create_connection(("127.0.0.1", p1), 1).close()
            check(False, "the old address still accepts connections")
        except ConnectionRefusedError:
            pass
        t0 = time.monotonic()
        d.write_config(base_config(d, cluster, HEALTH_FAST,
                                   daemon_extra="  metrics_listen: no-such-host.invalid:%d\n" % p1))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.logtext().count("configuration reloaded") == 2, 10, "the second reload")
        check(http_get(p2)[0] == 200, "the old address must serve while the name is looked up")
        wait_for(lambda: "metrics endpoint not moved, still serving address=localhost:%d" % p2 in d.logtext(), 60,
                 "the failed lookup")
        print("     unresolvable name reported after %.1fs" % (time.monotonic() - t0), flush=True)
        check("no-such-host.invalid" in d.logtext(), "the error does not name the host")
        check(http_get(p2)[0] == 200, "the old address after the failed move")
        check(d.ctl_json("status") is not None, "control socket")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


@test
def contrib_dashboard_and_rules_match_exported_metrics(cluster):
    """contrib/grafana/pgvigil.json and contrib/prometheus/pgvigil-rules.yml parse, and every
    expression in them names only families a real scrape has (tests/contrib_check.py; with promtool
    on PATH also promtool check rules and the rules' unit tests)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import contrib_check
    d = Daemon()
    try:
        port = free_port()
        d.write_config(base_config(d, cluster, HEALTH_FAST + STORAGE_JOB,
                                   daemon_extra="  metrics_listen: 127.0.0.1:%d\n" % port))
        d.start()
        _, body = scrape(port)
        families = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
        check(families == contrib_check.names_from_source(),
              "src/metrics/metrics.c and the scrape disagree: %r" % (families ^ contrib_check.names_from_source()))
        problems, notes = contrib_check.check_all(families)
        for n in notes:
            print("     " + n, flush=True)
        check(not problems, "contrib files:\n" + "\n".join(problems))
        # the checker itself can fail
        bad = []
        contrib_check.check_expr("probe", 'rate(pgvigil_no_such_total{databse="x"}[5m])', families, set(), bad)
        check(len(bad) == 2, "checker missed an unknown metric or label: %r" % bad)
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()
# ---- make demo (contrib/demo --batch) ----

DEMO = os.path.join(ROOT, "contrib", "demo")
DEMO_STEPS = [
    "1. A throwaway PostgreSQL", "user_notifications   1000 rows   trip_id -> group_trips, user_id -> users",
    "2. A webhook sink", "3. pgvigild starts", "$ pgvigilctl jobs", "4. Backups on three tiers",
    "$ pgvigilctl backups", "5. Verify one backup again", "verified demo/daily-backup/", "6. A restore probe",
    "EVENT info restore_probe_result (demo)", "result ok in",
    "0 mismatches, 0 foreign-key orphans, 2/2 assertions",
    "7. Outage: PostgreSQL stops", "health: failed: connection to server",
    "FIRING critical connectivity_lost (demo)", "$ pgvigilctl alerts", "8. Recovery",
    "RESOLVED critical connectivity_lost (demo)", "$ pgvigilctl run daily-backup", "$ pgvigilctl status",
    "9. The disaster-recovery readiness report", "$ pgvigilctl report", "## demo: READY",
    "demo: the whole story took", "demo: stopped pgvigild, the sink and PostgreSQL",
]


def demo_leftovers(run_dir):
    return [p for p in pids_of(run_dir) if p != os.getpid()]


@test
def demo_tells_the_whole_story(cluster):
    """make demo's story, non-interactively: every step appears in the transcript, in order, in under
    two minutes; then Ctrl-C in the middle of the outage still removes everything."""
    run_dir = tempfile.mkdtemp(prefix="pgvigil-e2e-demo-")
    env = dict(os.environ, PGVIGIL_BUILD=BUILD, PGVIGIL_DEMO_DIR=run_dir)
    try:
        t0 = time.monotonic()
        out = subprocess.run([DEMO, "--batch"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=180, env=env)
        took = time.monotonic() - t0
        text = out.stdout + out.stderr
        print("     the demo took %.1fs" % took, flush=True)
        check(out.returncode == 0, "demo exited %d:\n%s" % (out.returncode, text[-4000:]))
        pos = 0
        for s in DEMO_STEPS:
            i = text.find(s, pos)
            check(i >= 0, "demo transcript lacks %r after position %d:\n%s" % (s, pos, text[-6000:]))
            pos = i + len(s)
        for tier in ("daily", "weekly", "monthly"):
            check(re.search(r"Z-%s +%s +[0-9.]+ kB .* ok +ok, encrypted" % (tier, tier), text),
                  "no verified %s backup in the transcript" % tier)
        check("BAD SIGNATURE" not in text, "the sink saw a bad signature")
        check(took < 120, "the demo took %.1fs" % took)
        check(not os.path.exists(run_dir), "the demo left %s" % run_dir)
        check(demo_leftovers(run_dir) == [], "processes left: %r" % demo_leftovers(run_dir))

        # Interrupted while PostgreSQL is down: the clean-up still stops and removes everything.
        p = subprocess.Popen([DEMO], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)
        lines = []
        for line in p.stdout:
            lines.append(line)
            if "health: failed" in line:
                break
        check(os.path.exists(os.path.join(run_dir, "pgvigil.sock")), "no daemon running at the interrupt")
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=60)
        text = "".join(lines) + rest
        check(p.returncode == 130, "interrupted demo exited %d:\n%s" % (p.returncode, text[-3000:]))
        check("demo: interrupted" in text and "demo: stopped pgvigild, the sink and PostgreSQL" in text,
              "clean-up not reported:\n" + text[-3000:])
        check(not os.path.exists(run_dir), "the interrupted demo left %s" % run_dir)
        check(demo_leftovers(run_dir) == [], "processes left after Ctrl-C: %r" % demo_leftovers(run_dir))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main():
    only = sys.argv[1:]
    if os.geteuid() != 0:
        print("e2e: these tests need root (a system user runs the PostgreSQL cluster; another is the non-admin peer)")
    cluster = Cluster()
    passed = failed = 0
    try:
        for fn in TESTS:
            if only and fn.__name__ not in only:
                continue
            if fn.__name__ in os.environ.get("PGVIGIL_E2E_SKIP", "").split():
                print("skip %-45s (PGVIGIL_E2E_SKIP)" % fn.__name__, flush=True)
                continue
            t0 = time.monotonic()
            CLEANED_LOGS.clear()
            try:
                fn(cluster)
                passed += 1
                print("ok   %-45s %.1fs" % (fn.__name__, time.monotonic() - t0), flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                failed += 1
                print("FAIL %-45s %.1fs" % (fn.__name__, time.monotonic() - t0), flush=True)
                if isinstance(e, Failure):
                    print("     " + str(e).replace("\n", "\n     "))
                else:
                    traceback.print_exc()
                for i, log in enumerate(CLEANED_LOGS):
                    tail = log.splitlines()[-25:]
                    print("     daemon %d of %d, last %d log lines:" % (i + 1, len(CLEANED_LOGS), len(tail)))
                    print("\n".join("       " + line for line in tail), flush=True)
    finally:
        cluster.stop()
    print("e2e: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    # The security checks live in security.py and register with @test; they import this module as "run".
    sys.modules.setdefault("run", sys.modules[__name__])
    import security  # noqa: E402,F401
    sys.exit(main())
