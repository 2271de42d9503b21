"""Helpers for the fault-injection suite: faulty notification sinks, process figures, and the ledger
that proves nothing was lost across kills and failures.

The daemon, cluster, configuration and control helpers come from the end-to-end suite
(tests/e2e/run.py), imported as a module; nothing here copies them.
"""
import json
import os
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
import run as R  # noqa: E402  (tests/e2e/run.py)

check = R.check
Failure = R.Failure
wait_for = R.wait_for


class Daemon(R.Daemon):
    """The e2e daemon harness, keeping its log and exit status past cleanup for failure reports."""

    made = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.final_log, self.exit_status = "", None
        Daemon.made.append(self)

    def cleanup(self):
        if self.proc is not None:
            self.exit_status = self.proc.poll()
        if os.path.exists(self.log_path):
            self.final_log = self.logtext()
        super().cleanup()


# ---- process figures ----

def _sanitized():
    out = subprocess.run(["ldd", R.PGVIGILD], capture_output=True, text=True)
    return "libasan" in out.stdout


# AddressSanitizer keeps freed memory in quarantine and maps shadow memory: RSS says nothing about
# leaks there (LeakSanitizer does, at every daemon's exit), so RSS bounds are only asserted without it.
SANITIZED = _sanitized()

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def figures_of(seconds):
    """"min/median/max" of a list of durations, in seconds."""
    if not seconds:
        return "-"
    return "%.2f/%.2f/%.2fs" % (min(seconds), statistics.median(seconds), max(seconds))


# ---- sinks that misbehave on demand ----

class HttpSink:
    """A webhook endpoint on a raw socket so it can misbehave: mode "ok" answers 200, "slow" answers
    200 after `delay` seconds, "hang" reads the request and never answers, "reset" reads the request
    and resets the connection. Every complete request is recorded with its idempotency key and what
    the sink did with it; `delivered` counts the 200 answers that were written to the socket."""

    def __init__(self, mode="ok", delay=0.0):
        self.mode, self.delay = mode, delay
        self.lock = threading.Lock()
        self.requests = []  # {at, key, body, answer}: answer is "200", "hang", "reset" or "lost"
        self.held = []
        self.closed = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path="/hook"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, f):
        line = f.readline()
        if not line:
            return None
        headers = {}
        while True:
            h = f.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode(errors="replace").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
        return line.decode(errors="replace"), headers, body

    def _serve(self, conn):
        f = conn.makefile("rb")
        try:
            while True:
                req = self._read_request(f)
                if req is None:
                    return
                _, headers, body = req
                mode, delay = self.mode, self.delay
                rec = {"at": time.time(), "key": headers.get("x-pgvigil-idempotency-key"), "body": body,
                       "answer": mode}
                with self.lock:
                    self.requests.append(rec)
                if mode == "hang":
                    with self.lock:
                        self.held.append(conn)
                    # never answer; the client gives up (or the sink closes at the end)
                    while not self.closed and self.mode == "hang":
                        time.sleep(0.1)
                    return
                if mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if mode == "slow":
                    time.sleep(delay)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                    rec["answer"] = "200"
                except OSError:
                    rec["answer"] = "lost"
                    return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def received(self):
        with self.lock:
            return list(self.requests)

    def delivered_keys(self):
        """Idempotency key -> number of 200 answers written for it."""
        out = {}
        for r in self.received():
            if r["answer"] == "200":
                out[r["key"]] = out.get(r["key"], 0) + 1
        return out

    def receipts(self):
        """Idempotency key -> number of complete requests received, whatever the answer."""
        out = {}
        for r in self.received():
            out[r["key"]] = out.get(r["key"], 0) + 1
        return out

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.held:
                try:
                    c.close()
                except OSError:
                    pass


class FaultySmtp(R.SmtpSink):
    """The e2e SMTP sink (STARTTLS, AUTH, test certificate) with modes: "ok"; "slow" waits `delay`
    seconds before the greeting; "hang" accepts the connection
    and never greets; "reset" resets the connection at once."""

    def __init__(self, certfile, keyfile, mode="ok", delay=0.0, **kw):
        self.mode, self.delay = mode, delay
        self.attempts = 0
        super().__init__(certfile, keyfile, **kw)

    def session(self, conn):
        self.attempts += 1
        mode = self.mode
        if mode == "hang":
            while not self.closed and self.mode == "hang":
                time.sleep(0.1)
            conn.close()
            return
        if mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        if mode == "slow":
            time.sleep(self.delay)
        return super().session(conn)

    def message_ids(self):
        out = {}
        for m in self.messages():
            mid = m["msg"]["Message-ID"]
            out[mid] = out.get(mid, 0) + 1
        return out


# ---- the ledger: what was recorded, so a restart cannot silently lose it ----

def outbox_full(d):
    with d.db() as c:
        rows = c.execute("SELECT id, notifier, status, attempts, idempotency_key, payload, last_error FROM outbox "
                         "ORDER BY id").fetchall()
    keys = ["id", "notifier", "status", "attempts", "key", "payload", "last_error"]
    return [dict(zip(keys, r)) for r in rows]


def catalog(d):
    with d.db() as c:
        rows = c.execute('SELECT "database", job, id, dir, status, sha256, format, in_use, verify_result FROM backups '
                         'ORDER BY "database", job, id').fetchall()
    keys = ["database", "job", "id", "dir", "status", "sha256", "format", "in_use", "verify_result"]
    return [dict(zip(keys, r)) for r in rows]


def wait_idle(d, timeout=60):
    """Until no job is running (manual runs only in these configurations)."""
    def idle():
        jobs = d.ctl_json("jobs")["jobs"]
        return all(j["running"] is None for j in jobs)
    wait_for(idle, timeout, "the running jobs to finish", interval=0.1)


class Ledger:
    """What the daemon had recorded, as last seen. After a SIGKILL and a restart every run, backup
    and notification it knew must still be there, changed only in the allowed ways."""

    def __init__(self, keys=()):
        self.runs = {}          # run id -> row as last seen
        self.handed = set()     # run ids the control socket returned
        self.outbox = {}        # outbox id -> row as last seen
        self.verified = set()   # backup dirs verified offline
        self.inflight = set()   # idempotency keys pending when the daemon was killed
        self.key_files = list(keys)
        self.kills = 0
        self.dup_at_kill = 0

    def observe(self, d):
        """Right after a SIGKILL: what is durable now."""
        for r in d.runs():
            self.runs[r["id"]] = r
        for m in outbox_full(d):
            self.outbox[m["id"]] = m
            if m["status"] == "pending":
                self.inflight.add(m["key"])

    def start_run(self, d, job):
        out = d.ctl("--json", "run", job, check_rc=0)
        rid = json.loads(out.stdout)["run"]
        self.handed.add(rid)
        return rid

    # -- the checks --

    def check_runs(self, d, killed):
        rows = d.runs()
        by = {r["id"]: r for r in rows}
        ids = [r["id"] for r in rows]
        check(ids == list(range(1, len(ids) + 1)), "run ids are not 1..N: a run is missing (%s)" %
              sorted(set(range(1, max(ids or [0]) + 1)) - set(ids)))
        for rid in self.handed:
            check(rid in by, "run %d, handed out by the control socket, is not recorded" % rid)
        for rid, old in self.runs.items():
            new = by.get(rid)
            check(new is not None, "run %d vanished: %r" % (rid, old))
            if old["result"] is None:
                if killed:
                    check(new["result"] == "interrupted" and new["finished"] is not None,
                          "run %d was running at the kill and is now %r, not interrupted" % (rid, new))
            else:
                check(new == old, "finished run %d changed: %r -> %r" % (rid, old, new))
        unfinished = [r for r in rows if r["result"] is None]
        check(not unfinished, "runs without a result while no job runs: %r" % unfinished)
        self.runs = by

    def check_storage(self, d, storage, backup_jobs=()):
        cat = catalog(d)
        dirs = {c["dir"]: c for c in cat}
        for c in cat:
            check(c["status"] == "ok", "catalogued backup not ok: %r" % c)
            check(c["in_use"] == 0, "backup still marked in use while idle: %r" % c)
            check(os.path.isdir(c["dir"]), "catalogued backup has no directory: %r" % c)
        seen = []
        if os.path.isdir(storage):
            for db in sorted(os.listdir(storage)):
                p_db = os.path.join(storage, db)
                check(not db.startswith(".") and os.path.isdir(p_db), "stray entry in storage: %s" % p_db)
                for job in sorted(os.listdir(p_db)):
                    p_job = os.path.join(p_db, job)
                    check(not job.startswith(".") and os.path.isdir(p_job), "stray entry in storage: %s" % p_job)
                    for name in sorted(os.listdir(p_job)):
                        p = os.path.join(p_job, name)
                        check(not name.startswith("."), "temporary left in storage: %s" % p)
                        check(p in dirs, "backup directory in storage but not in the catalog: %s" % p)
                        inside = sorted(os.listdir(p))
                        check("manifest.json" in inside and not [n for n in inside if n.startswith(".")],
                              "backup directory %s holds %r" % (p, inside))
                        seen.append(p)
        check(sorted(seen) == sorted(dirs), "catalog and storage differ: %r vs %r" % (sorted(dirs), sorted(seen)))
        for p in sorted(dirs):
            if p in self.verified:
                continue
            args = [R.PGVIGILCTL, "verify-file", p]
            for k in self.key_files:
                args += ["--key-file", k]
            out = subprocess.run(args, capture_output=True, text=True, timeout=120)
            check(out.returncode == 0, "stored backup %s does not verify: %s%s" % (p, out.stdout, out.stderr))
            self.verified.add(p)
        ids = {(c["database"], c["job"], c["id"]) for c in cat}
        for r in self.runs.values():
            if r["job"] in backup_jobs and r["result"] == "ok":
                bid = json.loads(r["figures"])["backup_id"]
                check(any(i[2] == bid for i in ids),
                      "backup %s of successful run %d is not catalogued" % (bid, r["id"]))
        return len(dirs)

    def check_outbox(self, d, sink=None, final=False):
        rows = outbox_full(d)
        by = {m["id"]: m for m in rows}
        for mid, old in self.outbox.items():
            new = by.get(mid)
            check(new is not None, "notification %d vanished from the outbox: %r" % (mid, old))
            check(new["key"] == old["key"] and new["payload"] == old["payload"],
                  "notification %d changed its key or payload" % mid)
            if old["status"] != "pending":
                check(new["status"] == old["status"], "notification %d went from %s to %s" %
                      (mid, old["status"], new["status"]))
        # one key per message: the same notification never queued twice under two keys
        content = {}
        for m in rows:
            p = json.loads(m["payload"])
            ident = (m["notifier"], p.get("rule"), p.get("status"), p.get("database"), p.get("job"),
                     p.get("at"), p.get("title"))
            check(ident not in content, "the same notification queued twice: %r and %r" %
                  (content.get(ident), m["key"]))
            content[ident] = m["key"]
        dups = 0
        if sink is not None:
            delivered = sink.delivered_keys()
            for m in rows:
                if m["status"] == "sent":
                    check(delivered.get(m["key"], 0) >= 1, "notification %d marked sent, never answered 200 by "
                          "the sink" % m["id"])
                if final:
                    check(m["status"] == "sent", "notification %d not delivered: %r" % (m["id"], m))
            known = {m["key"] for m in rows}
            for key, n in delivered.items():
                check(key in known, "the sink got a key the outbox does not have: %s" % key)
                if n > 1:
                    check(key in self.inflight, "notification %s accepted %d times though it was not in flight "
                          "at a kill" % (key, n))
                    dups += n - 1
        self.outbox = by
        self.dup_at_kill = dups
        return rows


def probe_dbs(cluster):
    return R.probe_dbs(cluster)


def integrity_ok(d):
    with sqlite3.connect(os.path.join(d.state_dir, "state.db"), timeout=10) as c:
        return c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
