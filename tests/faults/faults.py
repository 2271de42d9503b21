#!/usr/bin/env python3
"""Fault injection: the real pgvigild against a real throwaway PostgreSQL, killed at random points,
starved of disk, cut off from its database, flooded with signals and clients, and given notification
endpoints that hang, reset or crawl. Every scenario ends by proving that nothing was lost (see
tests/faults/README.md and faultlib.Ledger).

    python3 tests/faults/faults.py [SCENARIO...]

FAULT_ITERATIONS (default 20) sets the number of SIGKILLs per kill scenario; FAULT_SEED fixes the
random kill points (the seed is printed, so a failure can be replayed). Prints one line per scenario
with its figures and a closing "faults: N passed, N failed".
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faultlib import (R, SANITIZED, Daemon, Failure, FaultySmtp, HttpSink, Ledger, catalog,  # noqa: E402
                      check, cpu_seconds, fd_count, figures_of, integrity_ok, outbox_full, probe_dbs, rss_kb,
                      wait_for, wait_idle)

SCENARIOS = []
SAN_NOTE = " (sanitizer build: RSS not bounded)" if SANITIZED else ""


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


class Ctx:
    def __init__(self, cluster, seed, iterations, name):
        self.cluster = cluster
        self.seed = seed
        self.iterations = iterations
        # one stream per scenario, so a scenario replays alone with the same FAULT_SEED
        self.rng = random.Random("%d/%s" % (seed, name))


QUIET_ALERTS = """alerts:
  group_wait: 0s
  rules:
    backup_stale: { enabled: false }
    rpo_breach: { enabled: false }
    backup_size_anomaly: { enabled: false }
    backup_slow: { enabled: false }
"""

BACKUP = '  bk: { type: backup, database: demo, schedule: "0 0 1 1 *", keep: 1000, timeout: 60s }\n'
VERIFY = '  verify: { type: verify, schedule: "0 0 1 1 *", timeout: 60s }\n'
PROBE = '  probe: { type: restore_probe, database: demo, schedule: "0 0 1 1 *", timeout: 60s }\n'
HEALTH = '  health: { type: health, database: demo, every: 1s, timeout: 5s }\n'


def restart(d):
    """Start d again after it died; returns the seconds until it was ready."""
    if getattr(d, "log", None) is not None:
        d.log.close()
    d.read_notes()
    n = len(d.notes)  # the harness keeps every note: wait for this start's READY=1, not the last one's
    d.notify.settimeout(0.005)  # finer than the harness's 0.1s, for the figure
    t0 = time.monotonic()
    d.start(wait_ready=False)
    d.wait_note("READY=1", 10, since=n)
    took = time.monotonic() - t0
    d.notify.settimeout(0.1)
    return took


def sigkill(d, L):
    d.proc.kill()
    d.proc.wait()
    L.kills += 1
    L.observe(d)


def calibrate(d, L, job, runs=2):
    """The longest recorded duration of a few runs of JOB: the window kills are drawn from."""
    took = []
    for _ in range(runs):
        rid = L.start_run(d, job)
        r = wait_for(lambda: (R.run_by_id(d, rid) or {}).get("result") and R.run_by_id(d, rid), 60,
                     "the calibration run of %s" % job, interval=0.01)
        took.append(r["duration"])
        check(r["result"] == "ok", "calibration run of %s: %r\n%s" % (job, r, d.logtext()[-2000:]))
    return max(took)


def storage_of(d):
    return R.storage_dir(d)


def tally(counter, key):
    counter[key] = counter.get(key, 0) + 1


def show(counter):
    return ", ".join("%s %d" % kv for kv in sorted(counter.items()))


# ---------------------------------------------------------------------------
# SIGKILL at random points


@scenario
def kill_backup(ctx):
    """SIGKILL at a random point of an encrypted backup (snapshot, dump, commit, verification)."""
    R.ensure_bulk(ctx.cluster)
    d = Daemon()
    key = R.write_key(os.path.join(d.dir, "backup.key"), R.KEY_A)
    L = Ledger(keys=[key])
    storage = storage_of(d)
    phases, recov = {}, []
    try:
        d.write_config(R.backup_config(d, ctx.cluster, BACKUP, storage_extra="  encryption_key_file: %s\n" % key))
        d.start()
        window = calibrate(d, L, "bk")
        for _ in range(ctx.iterations):
            before = set(R.tree(storage))
            rid = L.start_run(d, "bk")
            time.sleep(ctx.rng.uniform(0, window))
            sigkill(d, L)
            new = set(R.tree(storage)) - before
            if L.runs[rid]["result"] is not None:
                tally(phases, "after its end")
            elif [p for p in new if os.path.basename(p).startswith(".tmp-")]:
                tally(phases, "dumping")
            elif [p for p in new if p.count("/") == 2]:
                tally(phases, "verifying")
            else:
                tally(phases, "starting")
            recov.append(restart(d))
            wait_idle(d)
            L.check_runs(d, killed=True)
            L.check_storage(d, storage, ["bk"])
        r = R.run_job(d, "bk")
        check(r["result"] == "ok", "backup after the kills: %r" % r)
        L.check_runs(d, killed=False)
        n = L.check_storage(d, storage, ["bk"])
        check(d.stop() == 0, "exit status")
        return ("%d kills in a %.2fs window (%s); restart to ready %s; %d backups stored, all catalogued "
                "and verified" % (L.kills, window, show(phases), figures_of(recov), n))
    finally:
        d.cleanup()


@scenario
def kill_verify(ctx):
    """SIGKILL at a random point of a verify run over four stored backups."""
    R.ensure_bulk(ctx.cluster)
    d = Daemon()
    L = Ledger()
    storage = storage_of(d)
    phases, recov = {}, []
    try:
        d.write_config(R.backup_config(d, ctx.cluster, BACKUP + VERIFY))
        d.start()
        for _ in range(4):
            R.good_backup(d, "bk")
        window = calibrate(d, L, "verify")

        def ledger_rows():
            with d.db() as c:
                return c.execute("SELECT count(*) FROM verifications").fetchone()[0]
        for _ in range(ctx.iterations):
            n0 = ledger_rows()
            cat0 = {c["dir"]: c for c in catalog(d)}
            rid = L.start_run(d, "verify")
            time.sleep(ctx.rng.uniform(0, window))
            sigkill(d, L)
            if L.runs[rid]["result"] is not None:
                tally(phases, "after its end")
            else:
                tally(phases, "%d of 4 verified" % (ledger_rows() - n0))
            recov.append(restart(d))
            wait_idle(d)
            L.check_runs(d, killed=True)
            L.check_storage(d, storage, ["bk"])
            cat = {c["dir"]: c for c in catalog(d)}
            check(set(cat) == set(cat0), "catalog changed by a verify: %r vs %r" % (set(cat0), set(cat)))
            for k, c in cat.items():
                check(c["sha256"] == cat0[k]["sha256"], "recorded hash changed: %r" % c)
            with d.db() as c:
                bad = c.execute('SELECT b.id, b.verify_count, (SELECT count(*) FROM verifications v WHERE '
                                'v."database" = b."database" AND v.job = b.job AND v.backup_id = b.id) '
                                'FROM backups b').fetchall()
            for bid, count, ledger in bad:
                check(count == ledger, "backup %s: verify_count %d but %d ledger rows" % (bid, count, ledger))
        r = R.run_job(d, "verify")
        check(r["result"] == "ok" and json.loads(r["figures"])["verified"] == 4, "verify after the kills: %r" % r)
        L.check_runs(d, killed=False)
        check(d.stop() == 0, "exit status")
        return ("%d kills in a %.2fs window (%s); restart to ready %s; 4 backups intact, ledger consistent"
                % (L.kills, window, show(phases), figures_of(recov)))
    finally:
        d.cleanup()


@scenario
def kill_probe(ctx):
    """SIGKILL at a random point of a restore probe: the scratch database is dropped after the restart,
    or, when the restart cannot tell it from a live one, by the next probe."""
    R.probe_prepare(ctx.cluster)
    d = Daemon()
    L = Ledger()
    storage = storage_of(d)
    phases, recov, gone, later = {}, [], [], 0
    try:
        d.write_config(R.probe_config(d, ctx.cluster, BACKUP + PROBE))
        d.start()
        R.good_backup(d, "bk")
        window = calibrate(d, L, "probe")
        for _ in range(ctx.iterations):
            rid = L.start_run(d, "probe")
            time.sleep(ctx.rng.uniform(0, window))
            sigkill(d, L)
            left = probe_dbs(ctx.cluster)
            if L.runs[rid]["result"] is not None:
                tally(phases, "after its end")
            elif left:
                tally(phases, "scratch database exists")
            else:
                tally(phases, "before the scratch database")
            t0 = time.monotonic()
            recov.append(restart(d))
            try:
                # the restart drops what an earlier second left; a database stamped in the restart's own
                # second, or created by the server after it, waits for the next probe
                wait_for(lambda: probe_dbs(ctx.cluster) == [], 1, "")
                if left:
                    gone.append(time.monotonic() - t0)
            except Failure:
                later += 1
            wait_idle(d)
            L.check_runs(d, killed=True)
            L.check_storage(d, storage, ["bk"])
        time.sleep(1.1)  # the last probe's name must not be the one a kill in this second left
        r = R.run_job(d, "probe")
        check(r["result"] == "ok", "probe after the kills: %r" % r)
        wait_for(lambda: probe_dbs(ctx.cluster) == [], 10, "no scratch database after the last probe")
        L.check_runs(d, killed=False)
        # a probe started in the second a killed one was stamped with finds its name taken
        taken = len([r for r in L.runs.values() if r["job"] == "probe" and "already exists" in (r["cause"] or "")])
        check(d.stop() == 0, "exit status")
        return ("%d kills in a %.2fs window (%s); restart to ready %s; leftovers dropped at the restart in %s, "
                "%d more by the next probe; none left; %d probes failed on a leftover's name"
                % (L.kills, window, show(phases), figures_of(recov), figures_of(gone), later, taken))
    finally:
        d.cleanup()


@scenario
def kill_outbox(ctx):
    """SIGKILL while notifications are queued and being delivered to a slow webhook: none vanish; a
    message is delivered again only if it was in flight at the kill, always with the same key."""
    d = Daemon()
    sink = HttpSink(mode="slow", delay=0.3)
    L = Ledger()
    storage = storage_of(d)
    phases, recov, drained = {}, [], []
    lost_events = 0
    try:
        notifiers = "notifiers:\n  hook: { type: webhook, url: \"%s\", severities: [info, warning, critical] }\n" \
            % sink.url()
        d.write_config(R.backup_config(d, ctx.cluster, BACKUP) + QUIET_ALERTS + notifiers)
        d.start()
        # the window: from `run bk` to the sink's answer for its backup_succeeded message
        t0 = time.monotonic()
        R.good_backup(d, "bk")
        wait_for(lambda: [m for m in outbox_full(d) if m["status"] == "sent"], 30, "the first delivery")
        window = time.monotonic() - t0
        # two backups finishing within one second are two events, two messages, two keys
        for _ in range(5):
            a, b = R.good_backup(d, "bk"), R.good_backup(d, "bk")
            if a["finished"] == b["finished"]:
                break
        check(a["finished"] == b["finished"], "could not finish two backups within one second")
        for r in (a, b):
            bid = json.loads(r["figures"])["backup_id"]
            wait_for(lambda: [m for m in outbox_full(d) if json.loads(m["payload"])["value"].startswith(
                "backup %s:" % bid)], 10, "the message about backup %s" % bid)
        for i in range(ctx.iterations):
            # two runs back to back: the second's message queues behind the first's delivery
            rid = L.start_run(d, "bk")
            wait_for(lambda: (R.run_by_id(d, rid) or {}).get("result"), 30, "backup %d" % rid, interval=0.02)
            L.start_run(d, "bk")
            time.sleep(ctx.rng.uniform(0, window))
            sigkill(d, L)
            pending = [m for m in L.outbox.values() if m["status"] == "pending"]
            tally(phases, "%d pending" % len(pending))
            t0 = time.monotonic()
            recov.append(restart(d))
            wait_idle(d)
            wait_for(lambda: all(m["status"] == "sent" for m in outbox_full(d)), 30, "the outbox to drain")
            drained.append(time.monotonic() - t0)
            L.check_runs(d, killed=True)
            L.check_outbox(d, sink)
            L.check_storage(d, storage, ["bk"])
        # every successful backup's event reached the outbox (the run end and the enqueue are separate
        # commits: a kill between them loses the event; counted, see README)
        values = {json.loads(m["payload"]).get("value") for m in outbox_full(d)}
        for r in L.runs.values():
            if r["job"] == "bk" and r["result"] == "ok":
                bid = json.loads(r["figures"])["backup_id"]
                if not [v for v in values if v and v.startswith("backup %s:" % bid)]:
                    lost_events += 1
        rows = L.check_outbox(d, sink, final=True)
        check(d.stop() == 0, "exit status")
        return ("%d kills in a %.2fs window (%s); restart to ready %s; restart to outbox drained %s; %d messages "
                "all delivered, %d delivered twice (in flight at a kill, same key); %d backup events not queued"
                % (L.kills, window, show(phases), figures_of(recov), figures_of(drained), len(rows),
                   L.dup_at_kill, lost_events))
    finally:
        d.cleanup()
        sink.close()


# ---------------------------------------------------------------------------
# PostgreSQL going away


# pg_restore that takes its archive in two parts with a pause between, when restoring into a database
SLOW_RESTORE = """\
for a in "$@"; do
  if [ "$a" = -d ]; then
    { head -c 300000; sleep 3; cat; } | REAL "$@"
    exit $?
  fi
done
exec REAL "$@"
"""


def pg_stop(cluster):
    R._pg_ctl(cluster, "-m", "immediate", "-w", "stop")


def pg_start(cluster):
    R._pg_ctl(cluster, "-w", "start")


@scenario
def postgres_stops_mid_dump(ctx):
    """PostgreSQL stopped (immediate) while pg_dump streams: the run fails naming the server, nothing
    partial is left, the daemon keeps its schedule, and the next backup succeeds once it is back."""
    R.ensure_bulk(ctx.cluster)
    d = Daemon()
    L = Ledger()
    storage = storage_of(d)
    up = True
    try:
        pgbin = R.make_pg_bin(d, pg_dump=R.STALL_DUMP)
        d.write_config(R.backup_config(d, ctx.cluster, BACKUP + HEALTH, daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        rid = L.start_run(d, "bk")
        wait_for(lambda: R.tmp_dirs(storage), 10, "the backup to start writing")
        pg_stop(ctx.cluster)
        up = False
        t_stop = time.monotonic()
        r = wait_for(lambda: (R.run_by_id(d, rid) or {}).get("result") and R.run_by_id(d, rid), 30, "the run to end")
        t_fail = time.monotonic() - t_stop
        check(r["result"] == "failed" and "pg_dump" in r["cause"], "run: %r" % r)
        cause = r["cause"]
        check(any(w in r["cause"].lower() for w in ("server closed", "terminating connection", "connection to server",
                                                     "could not connect", "connection refused")),
              "cause does not say the server went away: %r" % r["cause"])
        n = len(d.runs("health"))
        wait_for(lambda: len(d.runs("health")) >= n + 2, 5, "health runs while PostgreSQL is down")
        check([x for x in d.runs("health") if x["result"] == "failed"], "health did not notice the server is down")
        t0 = time.monotonic()
        d.ctl("status", check_rc=0)
        check(time.monotonic() - t0 < 2, "status slow while PostgreSQL is down")
        L.check_runs(d, killed=False)
        L.check_storage(d, storage, ["bk"])
        pg_start(ctx.cluster)
        up = True
        t_up = time.monotonic()
        d.write_config(R.backup_config(d, ctx.cluster, BACKUP + HEALTH))
        d.ctl("reload", check_rc=0)
        wait_for(lambda: d.runs("health")[-1]["result"] == "ok", 10, "a good health run after the restart")
        r = R.run_job(d, "bk")
        check(r["result"] == "ok", "backup after PostgreSQL came back: %r" % r)
        t_ok = time.monotonic() - t_up
        wait_idle(d)
        L.check_runs(d, killed=False)
        n = L.check_storage(d, storage, ["bk"])
        check(n == 1, "backups stored: %d" % n)
        check(d.stop() == 0, "exit status")
        return ("backup failed %.2fs after the stop (cause: %s); nothing partial left; next backup ok %.2fs after "
                "the server was back" % (t_fail, cause[:70], t_ok))
    finally:
        if not up:
            pg_start(ctx.cluster)
        d.cleanup()


@scenario
def postgres_stops_mid_restore(ctx):
    """PostgreSQL stopped while a restore probe's pg_restore is loading the scratch database: the probe
    fails, and once the server is back the scratch database it could not drop is dropped."""
    R.ensure_bulk(ctx.cluster)
    R.probe_prepare(ctx.cluster)
    d = Daemon()
    L = Ledger()
    storage = storage_of(d)
    up = True
    try:
        pgbin = R.make_pg_bin(d, pg_restore=SLOW_RESTORE)
        d.write_config(R.probe_config(d, ctx.cluster, BACKUP + PROBE + HEALTH,
                                      daemon_extra="  pg_bin_dir: %s" % pgbin))
        d.start()
        R.good_backup(d, "bk")
        rid = L.start_run(d, "probe")
        wait_for(lambda: probe_dbs(ctx.cluster) and R.pids_of(os.path.join(pgbin, "pg_restore")), 10,
                 "pg_restore loading the scratch database")
        time.sleep(0.5)
        pg_stop(ctx.cluster)
        up = False
        t_stop = time.monotonic()
        r = wait_for(lambda: (R.run_by_id(d, rid) or {}).get("result") and R.run_by_id(d, rid), 60, "the probe to end")
        t_fail = time.monotonic() - t_stop
        check(r["result"] == "failed", "probe: %r" % r)
        f = json.loads(r["figures"])
        check(f.get("scratch_dropped") is False, "scratch dropped while the server was down? %r" % f)
        pg_start(ctx.cluster)
        up = True
        t_up = time.monotonic()
        left = probe_dbs(ctx.cluster)
        check(left, "no scratch database after the failed drop (nothing to clean up?)")
        # the next probe clears what the failed one left, then passes
        r = R.run_job(d, "probe")
        check(r["result"] == "ok", "probe after PostgreSQL came back: %r\n%s" % (r, d.logtext()[-2000:]))
        wait_for(lambda: probe_dbs(ctx.cluster) == [], 15, "the leftover scratch database %r to be dropped" % left)
        t_clean = time.monotonic() - t_up
        wait_idle(d)
        L.check_runs(d, killed=False)
        L.check_storage(d, storage, ["bk"])
        check(d.stop() == 0, "exit status")
        return ("probe failed %.2fs after the stop; its scratch database %s dropped %.2fs after the server was "
                "back, by the next probe" % (t_fail, left[0], t_clean))
    finally:
        if not up:
            pg_start(ctx.cluster)
        d.cleanup()


# ---------------------------------------------------------------------------
# Full file systems


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", path],
                         capture_output=True, text=True)
    check(out.returncode == 0, "cannot mount a tmpfs: " + out.stderr)


def remount(path, size):
    out = subprocess.run(["mount", "-o", "remount,size=%s" % size, path], capture_output=True, text=True)
    check(out.returncode == 0, "cannot resize the tmpfs: " + out.stderr)


def umount(path):
    subprocess.run(["umount", "-l", path], capture_output=True)


def fill(path):
    """Write a file until the file system is full; returns its path."""
    filler = os.path.join(path, "filler")
    with open(filler, "wb") as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    try:
        with open(filler, "ab") as f:  # the last partial page
            while True:
                f.write(b"\0" * 512)
                f.flush()
    except OSError:
        pass
    return filler


def du(path):
    return sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(path) for f in fs)


@scenario
def backup_disk_full(ctx):
    """The backup file system fills up mid-backup: the run fails with ENOSPC, nothing partial is
    visible, the earlier backup is intact, the daemon keeps going, and backups resume when there is room."""
    R.ensure_bulk(ctx.cluster)
    d = Daemon()
    L = Ledger()
    mnt = os.path.join(d.dir, "small")
    mounted = False
    try:
        mount_tmpfs(mnt, "64m")
        mounted = True
        d.write_config(R.backup_config(d, ctx.cluster, BACKUP + HEALTH, storage=mnt))
        d.start()
        R.good_backup(d, "bk")
        one = du(mnt)
        remount(mnt, "%dk" % ((one * 16 // 10) // 1024 + 4))
        r = R.run_job(d, "bk", 60)
        check(r["result"] == "failed" and "No space left on device" in (r["cause"] or ""), "run: %r" % r)
        n = len(d.runs("health"))
        wait_for(lambda: len([x for x in d.runs("health") if x["result"] == "ok"]) >= n + 1, 5,
                 "health runs after the failure")
        t0 = time.monotonic()
        d.ctl("status", check_rc=0)
        check(time.monotonic() - t0 < 2, "status slow after the failure")
        wait_idle(d)
        L.check_runs(d, killed=False)
        check(L.check_storage(d, mnt, ["bk"]) == 1, "the first backup is not the only one stored")
        remount(mnt, "64m")
        r = R.run_job(d, "bk", 60)
        check(r["result"] == "ok", "backup once there is room again: %r" % r)
        wait_idle(d)
        L.check_runs(d, killed=False)
        n = L.check_storage(d, mnt, ["bk"])
        check(d.stop() == 0, "exit status")
        return ("one backup is %d kB; with room for 1.6 of them the second failed with ENOSPC and left nothing; "
                "%d backups stored after the room came back, all verified" % (one // 1024, n))
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        if mounted:
            umount(mnt)
        d.cleanup()


# pg_dump and pg_restore that stall for 3s while the file "stall" exists next to them
STALL_IF_FLAG_DUMP = """\
if [ "$1" = --version ] || [ ! -e "$(dirname "$0")/stall" ]; then exec REAL "$@"; fi
set -o pipefail
REAL "$@" | { head -c 20000; sleep 3; cat; }
"""
STALL_IF_FLAG_RESTORE = """\
if [ -e "$(dirname "$0")/stall" ]; then for a in "$@"; do [ "$a" = -d ] && sleep 3; done; fi
exec REAL "$@"
"""


@scenario
def state_disk_full(ctx):
    """The state database's file system fills up while a backup and a restore probe are in flight and
    health checks run every second: the daemon keeps running and answering, refuses what it cannot
    record and logs why; once there is room it records the runs' ends, catalogues the backup and
    delivers the notification it could not queue while full."""
    R.probe_prepare(ctx.cluster)
    d = Daemon()
    sink = HttpSink()
    L = Ledger()
    storage = storage_of(d)
    mounted = False
    filler = None
    try:
        mount_tmpfs(d.state_dir, "8m")
        mounted = True
        pgbin = R.make_pg_bin(d, pg_dump=STALL_IF_FLAG_DUMP, pg_restore=STALL_IF_FLAG_RESTORE)
        notifiers = "notifiers:\n  hook: { type: webhook, url: \"%s\", severities: [info, warning, critical] }\n" \
            % sink.url()
        jobs = BACKUP + PROBE + HEALTH + '  storage: { type: storage, schedule: "0 0 1 1 *" }\n'
        d.write_config(R.probe_config(d, ctx.cluster, jobs, daemon_extra="  pg_bin_dir: %s" % pgbin)
                       + QUIET_ALERTS + notifiers)
        d.start()
        R.good_backup(d, "bk")
        wait_for(lambda: len(d.runs("health")) >= 2, 10, "health runs")
        open(os.path.join(pgbin, "stall"), "w").close()
        bk = L.start_run(d, "bk")
        probe = L.start_run(d, "probe")
        wait_for(lambda: R.tmp_dirs(storage) and probe_dbs(ctx.cluster), 10, "the backup and the probe under way")
        filler = fill(d.state_dir)
        t_full = time.monotonic()
        log0 = len(d.logtext())
        # while full: the backup and the probe finish, health checks come due, an operator asks for a run
        time.sleep(5)
        check(d.proc.poll() is None, "the daemon died when its state file system filled:\n" + d.logtext()[-3000:])
        t0 = time.monotonic()
        st = d.ctl_json("status")
        check(time.monotonic() - t0 < 2 and st["pid"] == d.proc.pid, "status while the state disk is full")
        out = d.ctl("run", "health")
        check(out.returncode == 1 and "full" in out.stderr, "a run that cannot be recorded: %d %r" %
              (out.returncode, out.stderr))
        log = d.logtext()[log0:]
        errors = [l for l in log.splitlines() if "disk is full" in l]
        check(errors, "no error logged while the state disk is full:\n" + log[-2000:])
        check("notification held in memory" in log, "the probe's notification was not held:\n" + log[-3000:])
        full_for = time.monotonic() - t_full
        os.unlink(filler)
        filler = None
        t_room = time.monotonic()
        n = len(d.runs("health"))
        wait_for(lambda: len(d.runs("health")) > n, 10, "health runs recorded again")
        t_health = time.monotonic() - t_room
        ends = {}
        for rid in (bk, probe):
            ends[rid] = wait_for(lambda: (R.run_by_id(d, rid) or {}).get("result") and R.run_by_id(d, rid), 40,
                                 "the end of run %d to be recorded" % rid)
        t_end = time.monotonic() - t_room
        check(ends[probe]["result"] == "ok", "probe: %r" % ends[probe])
        wait_for(lambda: [m for m in sink.received() if b"restore_probe_result" in m["body"]], 20,
                 "the probe's notification, held while the disk was full")
        t_note = time.monotonic() - t_room
        # a backup whose catalog entry could not be written is catalogued by the storage job
        R.run_job(d, "storage")
        wait_idle(d)
        L.check_runs(d, killed=False)
        n_backups = L.check_storage(d, storage, ["bk"])
        check(n_backups == 2, "backups stored: %d" % n_backups)
        check(probe_dbs(ctx.cluster) == [], "scratch database left: %r" % probe_dbs(ctx.cluster))
        check(integrity_ok(d), "state database damaged")
        os.unlink(os.path.join(pgbin, "stall"))
        check(R.run_job(d, "bk")["result"] == "ok", "backup after the room came back")
        wait_for(lambda: all(m["status"] == "sent" for m in outbox_full(d)), 20, "notifications delivered")
        L.check_outbox(d, sink, final=True)
        check(d.stop() == 0, "exit status")
        return ("full for %.1fs with a backup and a probe in flight: daemon kept running, status answered, a run "
                "refused, %d error lines; after the room came back: health recorded in %.2fs, the runs' ends in "
                "%.2fs (backup %s: %s), the held notification delivered in %.2fs; state intact"
                % (full_for, len(errors), t_health, t_end, ends[bk]["result"], (ends[bk]["cause"] or "")[:60],
                   t_note))
    finally:
        if filler is not None and os.path.exists(filler):
            os.unlink(filler)
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        if mounted:
            umount(d.state_dir)
        d.cleanup()
        sink.close()


# ---------------------------------------------------------------------------
# Notification endpoints that hang, reset and crawl


def health_gaps(d, since):
    starts = sorted(r["started"] for r in d.runs("health") if r["started"] >= since)
    return [b - a for a, b in zip(starts, starts[1:])]


@scenario
def sinks_hang_reset_slow(ctx):
    """Webhook and SMTP endpoints that accept and never answer, reset the connection, or answer after
    4s: health checks keep their 1s rhythm, the control socket answers, messages stay pending, and
    all are delivered exactly once when the endpoints recover."""
    d = Daemon(env_extra={"SMTP_PASS": "smtp-secret"})
    cert, key = R.test_certificate(d.dir)
    hooks = {"hang": HttpSink("hang"), "reset": HttpSink("reset"), "slow": HttpSink("slow", 4.0)}
    mails = {"hang": FaultySmtp(cert, key, "hang"), "reset": FaultySmtp(cert, key, "reset"),
             "slow": FaultySmtp(cert, key, "slow", 4.0)}
    L = Ledger()
    try:
        notifiers = "notifiers:\n"
        for mode, s in hooks.items():
            notifiers += "  hook-%s: { type: webhook, url: \"%s\" }\n" % (mode, s.url())
        for mode, s in mails.items():
            notifiers += ("  mail-%s: { type: email, smtp_url: \"smtp://127.0.0.1:%d\", starttls: required,"
                          " ca_file: %s,"
                          " username: alerts, password: env:SMTP_PASS, from: pgvigil@example.org,"
                          " to: [oncall@example.org] }\n" % (mode, s.port, cert))
        d.write_config(R.backup_config(d, ctx.cluster, BACKUP + HEALTH) + QUIET_ALERTS + notifiers)
        d.start()
        wait_for(lambda: d.runs("health"), 10, "a health run")
        t_begin = time.time()
        R.good_backup(d, "bk")
        R.good_backup(d, "bk")
        wait_for(lambda: len(outbox_full(d)) == 12, 10, "12 messages queued (2 events x 6 notifiers)")
        # while the endpoints misbehave
        lat = []
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            d.ctl("status", check_rc=0)
            lat.append(time.monotonic() - t0)
            time.sleep(0.5)
        check(max(lat) < 2, "status took %.2fs while endpoints hang" % max(lat))
        gaps = health_gaps(d, int(t_begin))
        check(gaps and max(gaps) <= 2, "health checks lost their rhythm: gaps %r" % gaps)
        rows = {m["notifier"]: [] for m in outbox_full(d)}
        for m in outbox_full(d):
            rows[m["notifier"]].append(m)
        for name in ("hook-hang", "hook-reset", "mail-hang", "mail-reset"):
            check(all(m["status"] == "pending" for m in rows[name]), "%s: %r" % (name, rows[name]))
        check(all(m["status"] == "sent" for m in rows["hook-slow"] + rows["mail-slow"]),
              "slow endpoints not delivered: %r" % (rows["hook-slow"] + rows["mail-slow"]))
        check(hooks["reset"].received() and mails["reset"].attempts >= 1, "reset endpoints never tried")
        check(hooks["hang"].received() or hooks["hang"].connections, "the hanging webhook was never tried")
        tries = {n: max(m["attempts"] for m in rows[n]) for n in rows}
        # recovery
        for s in list(hooks.values()) + list(mails.values()):
            s.mode = "ok"
        t_ok = time.monotonic()
        wait_for(lambda: all(m["status"] == "sent" for m in outbox_full(d)), 60, "every message delivered")
        t_all = time.monotonic() - t_ok
        for mode, s in hooks.items():
            keys = s.delivered_keys()
            check(len(keys) == 2 and all(v == 1 for v in keys.values()), "hook-%s deliveries: %r" % (mode, keys))
        for mode, s in mails.items():
            ids = s.message_ids()
            check(len(ids) == 2 and all(v == 1 for v in ids.values()), "mail-%s deliveries: %r" % (mode, ids))
        L.check_outbox(d, None, final=False)
        gaps = health_gaps(d, int(t_begin))
        check(max(gaps) <= 2, "health checks lost their rhythm: gaps %r" % gaps)
        check(d.stop() == 0, "exit status")
        return ("12 messages; while broken: status max %.2fs, health max gap %ds, attempts %s; all delivered once "
                "%.1fs after the endpoints recovered" % (max(lat), max(gaps), ", ".join(
                    "%s %d" % kv for kv in sorted(tries.items())), t_all))
    finally:
        d.cleanup()
        for s in list(hooks.values()) + list(mails.values()):
            s.close()


# ---------------------------------------------------------------------------
# Signal and client storms


@scenario
def sighup_storm(ctx):
    """100 SIGHUPs within a second, the configuration rewritten between them (some versions invalid),
    while a backup streams and health checks run: no crash, the backup completes, the last
    configuration is the one in force."""
    R.ensure_bulk(ctx.cluster)
    d = Daemon()
    L = Ledger()
    storage = storage_of(d)
    stop = threading.Event()
    try:
        pgbin = R.make_pg_bin(d, pg_dump=R.STALL_DUMP)

        def config(extra):
            return R.backup_config(d, ctx.cluster, BACKUP + HEALTH + extra, daemon_extra="  pg_bin_dir: %s" % pgbin)
        d.write_config(config(""))
        d.start()
        # drain the readiness socket as systemd does (its queue is 512 datagrams and read at once; the
        # harness's socket holds 10, and a full one blocks the daemon's sd_notify)
        def drain():
            while not stop.is_set():
                d.read_notes()
        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        rss0, fds0 = rss_kb(d.proc.pid), fd_count(d.proc.pid)
        rid = L.start_run(d, "bk")
        wait_for(lambda: R.tmp_dirs(storage), 10, "the backup to start writing")
        t_begin = int(time.time())
        t0 = time.monotonic()
        for i in range(100):
            if i % 10 == 7:
                d.write_config(config("  broken-%d: { type: health, database: demo, every: soon }\n" % i))
            else:
                d.write_config(config("  extra-%d: { type: health, database: demo, every: 1h }\n" % i))
            d.proc.send_signal(signal.SIGHUP)
            time.sleep(max(0, t0 + (i + 1) * 0.005 - time.monotonic()))
        d.write_config(config('  final: { type: health, database: demo, every: 1s }\n'))
        d.proc.send_signal(signal.SIGHUP)
        storm = time.monotonic() - t0
        check(storm < 1.0, "the storm took %.2fs" % storm)
        check(d.proc.poll() is None, "the daemon died in the storm:\n" + d.logtext()[-3000:])
        wait_for(lambda: "final" in {j["name"] for j in d.ctl_json("jobs")["jobs"]}, 10, "the final configuration")
        st = d.ctl_json("status")
        check(st["reload"]["ok"], "last reload failed: %r" % st["reload"])
        names = {j["name"] for j in d.ctl_json("jobs")["jobs"]}
        check(names == {"bk", "health", "final"}, "jobs after the storm: %r" % names)
        r = wait_for(lambda: (R.run_by_id(d, rid) or {}).get("result") and R.run_by_id(d, rid), 30, "the backup")
        check(r["result"] == "ok", "the backup did not survive the storm: %r" % r)
        wait_for(lambda: d.runs("final"), 5, "the final configuration's job to run")
        gaps = health_gaps(d, t_begin)
        check(gaps and max(gaps) <= 2, "health checks stalled: gaps %r" % gaps)
        wait_idle(d)
        L.check_runs(d, killed=False)
        L.check_storage(d, storage, ["bk"])
        rss1, fds1 = rss_kb(d.proc.pid), fd_count(d.proc.pid)
        check(fds1 <= fds0 + 2, "descriptors %d before, %d after the storm" % (fds0, fds1))
        check(SANITIZED or rss1 < rss0 + 20 * 1024, "RSS %d kB before, %d kB after the storm" % (rss0, rss1))
        stop.set()
        drainer.join()
        reloads = d.notes.count("READY=1") - 1
        check(d.stop() == 0, "exit status")
        return ("101 SIGHUPs in %.2fs: %d reloads ran (SIGHUPs during a reload coalesce), backup ok, health max "
                "gap %ds, final config in force; RSS %d->%d kB%s, fds %d->%d"
                % (storm, reloads, max(gaps), rss0, rss1, SAN_NOTE, fds0, fds1))
    finally:
        stop.set()
        d.cleanup()


CLIENT = r"""
import json, os, random, socket, sys, threading, time
path, seed, threads, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
counts = {}
lock = threading.Lock()
def count(k):
    with lock:
        counts[k] = counts.get(k, 0) + 1
def client(n):
    rng = random.Random(seed * 1000 + n)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(rng.uniform(0, 0.02))
        kind = rng.choice(["status", "jobs", "garbage", "half", "idle", "pipeline", "huge", "close"])
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(path)
            if kind in ("status", "jobs"):
                s.sendall(json.dumps({"cmd": kind}).encode() + b"\n")
            elif kind == "garbage":
                s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\n")
            elif kind == "half":
                s.sendall(b'{"cmd": "stat')
                count(kind)
                continue
            elif kind == "idle":
                time.sleep(rng.uniform(0.1, 1.0))
                count(kind)
                continue
            elif kind == "pipeline":
                s.sendall(b'{"cmd":"jobs"}\n' * 200)
                count(kind)
                continue
            elif kind == "huge":
                try:
                    s.sendall(b"x" * 200000)
                except OSError:
                    pass
                count(kind)
                continue
            else:
                count(kind)
                continue
            buf = b""
            while not buf.endswith(b"\n"):
                c = s.recv(65536)
                if not c:
                    break
                buf += c
            ans = json.loads(buf.split(b"\n")[0]) if buf else None
            if ans is None:
                count("no answer")
            elif ans.get("ok"):
                count("answered")
            elif ans.get("error", {}).get("code") == "busy":
                count("busy")
            else:
                count("error answer")
        except (OSError, ValueError) as e:
            count("client error " + type(e).__name__)
            time.sleep(0.01)
        finally:
            s.close()
ts = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
try:
    print(json.dumps(counts), flush=True)
except BrokenPipeError:
    pass
"""


@scenario
def control_client_storm(ctx):
    """200 concurrent control clients from 25 uids for 6s (valid requests, garbage, half requests,
    idle connections, pipelines never read, oversized lines, instant disconnects): status answers
    within 2s throughout, RSS stays bounded, and no descriptor leaks."""
    d = Daemon()
    procs = []
    try:
        d.write_config(R.base_config(d, ctx.cluster, HEALTH))
        d.start()
        time.sleep(1)
        fds0 = min(fd_count(d.proc.pid) for _ in range(5) if time.sleep(0.05) is None)
        rss0 = rss_kb(d.proc.pid)
        cpu0 = cpu_seconds(d.proc.pid)
        for u in range(25):
            procs.append(subprocess.Popen(["/usr/bin/python3", "-c", CLIENT, d.socket, str(ctx.rng.randrange(1 << 30)),
                                           "8", "6"], user=61000 + u, stdout=subprocess.PIPE, text=True))
        lat, refused, rss_max = [], 0, rss0
        t_end = time.monotonic() + 6.5
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            out = d.ctl("--json", "status")
            took = time.monotonic() - t0
            if out.returncode == 0:
                lat.append(took)
            else:
                refused += 1
                check("busy" in out.stderr + out.stdout or "too many" in out.stderr + out.stdout,
                      "status failed (exit %d): %s%s" % (out.returncode, out.stdout, out.stderr))
            rss_max = max(rss_max, rss_kb(d.proc.pid))
            time.sleep(0.1)
        totals = {}
        for p in procs:
            out, _ = p.communicate(timeout=60)
            for k, v in json.loads(out.strip().splitlines()[-1]).items():
                totals[k] = totals.get(k, 0) + v
        check(d.proc.poll() is None, "the daemon died:\n" + d.logtext()[-3000:])
        check(refused == 0, "root's status was refused %d times during the storm (answered %d)" % (refused, len(lat)))
        cpu = cpu_seconds(d.proc.pid) - cpu0
        check(lat and max(lat) < 2, "status latency during the storm: max %.2fs (%s); daemon cpu %.1fs; clients %r"
              % (max(lat), " ".join("%.2f" % x for x in lat), cpu, totals))
        t0 = time.monotonic()
        d.ctl("status", check_rc=0)
        after = time.monotonic() - t0
        check(after < 2, "status after the storm took %.2fs" % after)
        n = len(d.runs("health"))
        wait_for(lambda: len(d.runs("health")) >= n + 2, 5, "health runs after the storm")
        wait_for(lambda: fd_count(d.proc.pid) <= fds0, 10,
                 "descriptors back to %d (now %d)" % (fds0, fd_count(d.proc.pid)))
        rss1 = rss_kb(d.proc.pid)
        check(SANITIZED or rss_max < rss0 + 64 * 1024, "RSS grew from %d to %d kB" % (rss0, rss_max))
        check(d.stop() == 0, "exit status")
        return ("clients: %s; root status answered %d times, max %.2fs (after: %.2fs); RSS %d kB, max %d, after %d%s; "
                "fds back to %d" % (", ".join("%s %d" % kv for kv in sorted(totals.items())), len(lat), max(lat), after,
                                    rss0, rss_max, rss1, SAN_NOTE, fds0))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        d.cleanup()


# ---------------------------------------------------------------------------

def start_cluster():
    """A throwaway PostgreSQL on a port nobody else is using (other suites may run on this machine)."""
    rng = random.Random()
    for attempt in range(5):
        port = rng.randrange(40000, 50000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        try:
            return R.Cluster(port=port)
        except RuntimeError:
            if attempt == 4:
                raise
    raise RuntimeError("no free port for PostgreSQL")


def main():
    only = sys.argv[1:]
    unknown = [n for n in only if n not in {f.__name__ for f in SCENARIOS}]
    if unknown:
        print("faults: unknown scenario(s): %s" % " ".join(unknown))
        return 2
    if os.geteuid() != 0:
        print("faults: these scenarios need root (tmpfs mounts, a system user for PostgreSQL, other uids)")
    seed = int(os.environ.get("FAULT_SEED") or (time.time_ns() % 1000000007))
    iterations = int(os.environ.get("FAULT_ITERATIONS") or 20)
    print("faults: seed %d, %d iterations per kill scenario (FAULT_SEED=%d to replay)" % (seed, iterations, seed),
          flush=True)
    t_all = time.monotonic()
    cluster = start_cluster()
    passed = failed = 0
    try:
        for fn in SCENARIOS:
            if only and fn.__name__ not in only:
                continue
            t0 = time.monotonic()
            try:
                figures = fn(Ctx(cluster, seed, iterations, fn.__name__))
                passed += 1
                print("ok   %-28s %5.1fs  %s" % (fn.__name__, time.monotonic() - t0, figures), flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                failed += 1
                print("FAIL %-28s %5.1fs" % (fn.__name__, time.monotonic() - t0), flush=True)
                if isinstance(e, Failure):
                    print("     " + str(e).replace("\n", "\n     "), flush=True)
                else:
                    traceback.print_exc()
                for d in Daemon.made:
                    print("     daemon %s (exit status %s), last lines of its log:\n       %s" % (
                        d.proc.pid if d.proc else "-", d.exit_status,
                        "\n       ".join(d.final_log.splitlines()[-25:])), flush=True)
            Daemon.made.clear()
    finally:
        cluster.stop()
    print("faults: %d passed, %d failed in %.0fs (seed %d)" % (passed, failed, time.monotonic() - t_all, seed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
