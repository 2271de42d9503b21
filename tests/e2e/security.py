"""Security checks of the end-to-end suite: secrets never shown, loose secret files refused, private
storage modes, and the control socket's admin rule and connection caps.

Imported by run.py (which registers these tests after its own); uses run.py's helpers.
"""
import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.request

import run as R
from run import check, test, wait_for


def _secret(prefix):
    return "%s-%s" % (prefix, os.urandom(12).hex())


def _write_private(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state_dump(d):
    """Every row of every table of the state database, as text."""
    with sqlite3.connect(os.path.join(d.state_dir, "state.db"), timeout=10) as c:
        return "\n".join(c.iterdump())


def _metrics(port):
    """The Prometheus endpoint's text, or None when this build has none."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            return r.read().decode(errors="replace")
    except OSError:
        return None


@test
def security_secrets_never_shown(cluster):
    """Passwords (database, restore target, the restore command's --to, SMTP), webhook, Slack and
    heartbeat URLs, the webhook signing secret and the encryption key appear in none of: the daemon's
    log at debug level, pgvigilctl status/jobs/backups/report/alerts in text and JSON, the metrics
    endpoint when there is one, the state database (outbox payloads included), the manifests."""
    R.probe_prepare(cluster)
    s = {k: _secret(k) for k in ("dbpass", "restorepass", "smtppass", "hooktok", "slacktok", "hbtok",
                                 "deadtok", "hooksecret")}
    key_hex = os.urandom(32).hex()
    role = "pgvigil_sec_" + os.urandom(4).hex()
    restorer = role + "_r"
    R.psql(cluster, "CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE vigil; CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'"
           % (role, s["dbpass"], restorer, s["restorepass"]), db="postgres", user="postgres")
    d = R.Daemon()
    sink = R.ScriptedSink()
    cert, key = R.test_certificate(d.dir)
    smtp = R.SmtpSink(cert, key, password=s["smtppass"])
    metrics_port = _free_port()
    target_db = "pgvigil_sec_restored"
    try:
        f = {}
        f["db"] = _write_private(os.path.join(d.dir, "db.pass"), s["dbpass"])
        f["target"] = _write_private(os.path.join(d.dir, "target.pass"), s["restorepass"])
        f["key"] = _write_private(os.path.join(d.dir, "backup.key"), key_hex)
        f["hook"] = _write_private(os.path.join(d.dir, "hook.url"),
                                   "http://127.0.0.1:%d/hook/%s" % (sink.port, s["hooktok"]))
        f["hooksecret"] = _write_private(os.path.join(d.dir, "hook.secret"), s["hooksecret"])
        f["slack"] = _write_private(os.path.join(d.dir, "slack.url"),
                                    "http://127.0.0.1:%d/services/T0/B0/%s" % (sink.port, s["slacktok"]))
        f["smtp"] = _write_private(os.path.join(d.dir, "smtp.pass"), s["smtppass"])
        f["hb"] = _write_private(os.path.join(d.dir, "hb.url"), "http://127.0.0.1:%d/ping/%s" % (sink.port, s["hbtok"]))
        f["dead"] = _write_private(os.path.join(d.dir, "dead.url"), "http://127.0.0.1:1/dead/%s" % s["deadtok"])
        jobs = (R.BACKUP_JOB % 3 + R.PROBE_JOB % ("demo", "60s")
                + "  verify: { type: verify, schedule: \"0 0 1 1 *\" }\n"
                + "  storage: { type: storage, schedule: \"0 0 1 1 *\" }\n"
                + "  hc: { type: health, database: demo, every: 1s }\n"
                + "  hc-gone: { type: health, database: gone, every: 1s, timeout: 5s }\n")
        text = R.base_config(d, cluster, jobs, daemon_extra="  metrics_listen: 127.0.0.1:%d\n" % metrics_port,
                             extra_db="""    restore_target: scratch
  gone:
    conninfo: "host=127.0.0.1 port=1 dbname=demo user=%s connect_timeout=1"
    password_file: %s
""" % (role, f["db"]))
        text = text.replace("user=vigil\"\n    password: env:DEMO_PASS",
                            "user=%s\"\n    password_file: %s" % (role, f["db"]))
        text = text.replace("storage:\n", "storage:\n  encryption_key_file: %s\n" % f["key"])
        text += """restore_targets:
  scratch:
    conninfo: "host=127.0.0.1 port=%d dbname=postgres user=%s"
    password_file: %s
alerts:
  group_wait: 0s
  rules:
    connectivity_lost: { after: 1s }
    backup_stale: { enabled: false }
    rpo_breach: { enabled: false }
notifiers:
  hook: { type: webhook, url_file: %s, secret_file: %s }
  slack: { type: slack, webhook_url_file: %s }
  dead: { type: webhook, url_file: %s }
  mail: { type: email, smtp_url: "smtp://127.0.0.1:%d", starttls: required, ca_file: %s, username: alerts,
          password_file: %s, from: pgvigil@example.org, to: [oncall@example.org] }
  hb: { type: heartbeat, url_file: %s, every: 1s }
""" % (cluster.port, restorer, f["target"], f["hook"], f["hooksecret"], f["slack"], f["dead"], smtp.port, cert,
       f["smtp"], f["hb"])
        check(s["dbpass"] not in text and key_hex not in text, "the test config holds a secret inline")
        d.write_config(text)
        d.start()
        R.good_backup(d, "bk")
        check(R.run_job(d, "verify")["result"] == "ok", "verify")
        r = R.run_job(d, "probe")
        check(r["result"] == "ok", "probe: %r\n%s" % (r, d.logtext()[-2000:]))
        R.run_job(d, "storage")
        to = "host=127.0.0.1 port=%d dbname=%s user=%s password=%s" % (cluster.port, target_db, restorer,
                                                                      s["restorepass"])
        out = d.ctl("restore", "latest", "--database", "demo", "--to", to)
        check(out.returncode == 0, "restore: %s %s" % (out.stdout, out.stderr))
        # a wrong password in --to: the failure is reported without it
        bad = to.replace(s["restorepass"], s["restorepass"] + "-wrong")
        out = d.ctl("restore", "latest", "--database", "demo", "--force", "--to", bad)
        check(out.returncode == 1, "restore with a wrong password: %s %s" % (out.stdout, out.stderr))
        ctl_texts = [("restore failure", out.stdout + out.stderr)]
        # the secrets were really used: every notifier delivered to the secret address
        wait_for(lambda: [m for m in sink.received if ("/hook/" + s["hooktok"]) in m["path"]], 30, "the webhook")
        wait_for(lambda: [m for m in sink.received if ("/services/T0/B0/" + s["slacktok"]) in m["path"]], 30,
                 "the slack message")
        wait_for(lambda: [m for m in sink.received if ("/ping/" + s["hbtok"]) in m["path"]], 30, "the heartbeat")
        wait_for(lambda: smtp.messages(), 30, "the mail")
        wait_for(lambda: [r for r in R.outbox_rows(d) if r[1] == "dead" and r[3] >= 1], 30,
                 "a failed attempt at the dead webhook")
        for args in (["status"], ["jobs"], ["backups"], ["report"], ["alerts"], ["alerts", "history"],
                     ["silence", "list", "--all"]):
            for js in ([], ["--json"]):
                o = d.ctl(*(js + args))
                check(o.returncode == 0, "pgvigilctl %s: %s" % (" ".join(js + args), o.stderr))
                ctl_texts.append(("pgvigilctl " + " ".join(js + args), o.stdout + o.stderr))
        metrics = _metrics(metrics_port)
        if metrics is None:
            print("     note: no metrics endpoint in this build; metrics not checked", flush=True)
        else:
            ctl_texts.append(("metrics", metrics))
        check_out = subprocess.run([R.PGVIGILD, "--check-config", "-c", d.config], capture_output=True, text=True,
                                   env=dict(os.environ, DEMO_PASS=R.PASSWORD))
        ctl_texts.append(("--check-config", check_out.stdout + check_out.stderr))
        storage = R.storage_dir(d)
        manifests = [(p, open(os.path.join(p, "manifest.json")).read()) for p, _, fs in os.walk(storage)
                     if "manifest.json" in fs]
        check(manifests, "no manifests")
        check(d.stop() == 0, "exit status")
        places = [("daemon log", d.logtext()), ("state database", _state_dump(d))] + ctl_texts + \
            [("manifest " + p, t) for p, t in manifests]
        secrets = dict(s, key=key_hex, KEY=key_hex.upper())
        for where, body in places:
            for name, value in secrets.items():
                if value in body:
                    i = body.index(value)
                    raise R.Failure("%s (%s) found in %s: ...%s..." % (name, value, where,
                                                                      body[max(0, i - 200):i + 80]))
        print("     %d places checked for %d secrets: %s" % (len(places), len(secrets),
                                                           ", ".join(p for p, _ in places[:12])), flush=True)
    finally:
        d.cleanup()
        sink.close()
        smtp.close()
        R.psql(cluster, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % target_db, db="postgres", user="postgres",
               check_rc=False)
        R.psql(cluster, "DROP ROLE IF EXISTS %s; DROP ROLE IF EXISTS %s" % (role, restorer), db="postgres",
               user="postgres", check_rc=False)


@test
def security_loose_secret_files_refused(cluster):
    """Every kind of secret file that is group- or world-readable is refused with an error naming
    the file, by --check-config, at start and at a reload (which keeps the running configuration)."""
    d = R.Daemon()
    try:
        key_hex = os.urandom(32).hex()
        kinds = {
            "databases.demo.password_file": ("db.pass", R.PASSWORD),
            "restore_targets.scratch.password_file": ("target.pass", R.PASSWORD),
            "storage.encryption_key_file": ("backup.key", key_hex),
            "storage.old_key_files": ("old.key", os.urandom(32).hex()),
            "notifiers.hook.url_file": ("hook.url", "http://127.0.0.1:9/hook"),
            "notifiers.hook.secret_file": ("hook.secret", "s3cret"),
            "notifiers.slack.webhook_url_file": ("slack.url", "http://127.0.0.1:9/services/x"),
            "notifiers.mail.password_file": ("smtp.pass", "smtp-secret"),
            "notifiers.hb.url_file": ("hb.url", "http://127.0.0.1:9/ping"),
        }
        paths = {k: _write_private(os.path.join(d.dir, fn), v) for k, (fn, v) in kinds.items()}
        text = R.base_config(d, cluster, "  hc: { type: health, database: demo, every: 1s }\n")
        text = text.replace("    password: env:DEMO_PASS", "    password_file: %s\n    restore_target: scratch"
                            % paths["databases.demo.password_file"])
        text = text.replace("storage:\n", "storage:\n  encryption_key_file: %s\n  old_key_files: [%s]\n"
                            % (paths["storage.encryption_key_file"], paths["storage.old_key_files"]))
        text += """restore_targets:
  scratch:
    conninfo: "host=127.0.0.1 port=%d dbname=postgres user=vigil"
    password_file: %s
notifiers:
  hook: { type: webhook, url_file: %s, secret_file: %s }
  slack: { type: slack, webhook_url_file: %s }
  mail: { type: email, smtp_url: "smtp://127.0.0.1:9", starttls: required, username: alerts, password_file: %s,
          from: pgvigil@example.org, to: [oncall@example.org] }
  hb: { type: heartbeat, url_file: %s, every: 1m }
""" % (cluster.port, paths["restore_targets.scratch.password_file"], paths["notifiers.hook.url_file"],
       paths["notifiers.hook.secret_file"], paths["notifiers.slack.webhook_url_file"],
       paths["notifiers.mail.password_file"], paths["notifiers.hb.url_file"])
        d.write_config(text)

        def check_config():
            return subprocess.run([R.PGVIGILD, "--check-config", "-c", d.config], capture_output=True, text=True)
        out = check_config()
        check(out.returncode == 0, "the private configuration is refused: %s" % out.stderr)
        tried = 0
        for kind, path in paths.items():
            for mode in (0o644, 0o640, 0o604):
                os.chmod(path, mode)
                out = check_config()
                check(out.returncode == 1, "%s with mode %04o accepted" % (kind, mode))
                check(path in out.stderr and "group or others" in out.stderr,
                      "%s with mode %04o: the error does not name the file: %s" % (kind, mode, out.stderr))
                check(open(path).read().strip() not in out.stderr, "%s: the secret is in the error" % kind)
                tried += 1
            os.chmod(path, 0o600)
        # at start
        os.chmod(paths["notifiers.mail.password_file"], 0o644)
        out = subprocess.run([R.PGVIGILD, "--foreground", "-c", d.config], capture_output=True, text=True, timeout=10)
        check(out.returncode == 1 and paths["notifiers.mail.password_file"] in out.stderr,
              "start with a loose secret file: %d %s" % (out.returncode, out.stderr))
        # at a reload: refused, the running configuration stays
        os.chmod(paths["notifiers.mail.password_file"], 0o600)
        d.start()
        os.chmod(paths["storage.encryption_key_file"], 0o640)
        out = d.ctl("reload", check_rc=1)
        check(paths["storage.encryption_key_file"] in out.stderr, "reload error: %s" % out.stderr)
        st = d.ctl_json("status")["reload"]
        check(not st["ok"] and paths["storage.encryption_key_file"] in st["error"], "status: %r" % st)
        check(d.proc.poll() is None, "the daemon died on the refused reload")
        check(d.stop() == 0, "exit status")
        print("     %d loose modes refused across %d kinds of secret file" % (tried, len(paths)), flush=True)
    finally:
        d.cleanup()


@test
def security_private_file_modes(cluster):
    """Started with umask 000, the daemon still writes storage directories 0700 and files 0600
    (encrypted dump, schema copy, manifest), and its state directory and files privately."""
    d = R.Daemon()
    old = os.umask(0)
    try:
        key = R.write_key(os.path.join(d.dir, "backup.key"), R.KEY_A)
        jobs = "  bk: { type: backup, database: demo, schedule: \"0 0 1 1 *\", keep: 2, schema_copy: true }\n"
        d.write_config(R.backup_config(d, cluster, jobs, storage_extra="  encryption_key_file: %s\n" % key))
        d.start()
        os.umask(old)
        R.good_backup(d, "bk")
        R.good_backup(d, "bk")
        storage = R.storage_dir(d)
        seen = {"dir": 0, "file": 0}
        bad = []
        for p, dirs, files in os.walk(storage):
            mode = os.stat(p).st_mode & 0o7777
            seen["dir"] += 1
            if mode != 0o700:
                bad.append("%s %04o" % (p, mode))
            for n in files:
                fp = os.path.join(p, n)
                mode = os.stat(fp).st_mode & 0o7777
                seen["file"] += 1
                if mode != 0o600:
                    bad.append("%s %04o" % (fp, mode))
        check(not bad, "storage modes: %r" % bad)
        names = {n for _, _, fs in os.walk(storage) for n in fs}
        check({"dump.zst.enc", "schema.zst.enc", "manifest.json"} <= names, "files: %r" % names)
        st = [(d.state_dir, os.stat(d.state_dir).st_mode & 0o7777)]
        for n in os.listdir(d.state_dir):
            st.append((n, os.stat(os.path.join(d.state_dir, n)).st_mode & 0o7777))
        check(st[0][1] == 0o700 and all(m == 0o600 for n, m in st[1:]), "state modes: %r" % st)
        check(d.stop() == 0, "exit status")
        print("     %d directories 0700, %d files 0600 in storage; state: %s" % (
            seen["dir"], seen["file"], ", ".join("%s %04o" % (os.path.basename(n), m) for n, m in st)), flush=True)
    finally:
        os.umask(old)
        d.cleanup()


@test
def security_non_admin_cannot_mutate(cluster):
    """A peer not in daemon.admins may read (status, jobs, backups, report, alerts, silences) but every
    mutating command is refused, through pgvigilctl and through the raw protocol, logged with its uid,
    and has no effect."""
    R.probe_prepare(cluster)
    d = R.Daemon()
    try:
        d.write_config(R.probe_config(d, cluster, R.BACKUP_JOB % 2))
        d.start()
        R.good_backup(d, "bk")
        runs0 = len(d.runs())
        to = R.restore_to(cluster, "pgvigil_sec_denied")
        cli = [["run", "bk"], ["reload"], ["prune"], ["prune", "--dry-run"],
               ["restore", "latest", "--database", "demo", "--to", to],
               ["silence", "add", "connectivity_lost", "--for", "1h", "--comment", "x"], ["silence", "remove", "1"],
               ["maintenance", "on", "--for", "1h"], ["maintenance", "off"]]
        for args in cli:
            out = d.ctl(*args, user="nobody")
            check(out.returncode == 1 and "permission denied" in out.stderr,
                  "pgvigilctl %s as nobody: %d %s" % (" ".join(args), out.returncode, out.stderr))
        raw = [("run", {"job": "bk"}), ("reload", {}), ("prune", {}), ("prune", {"dry_run": True}),
               ("restore", {"backup": "latest", "database": "demo", "to": to}),
               ("silence-add", {"rule": "connectivity_lost", "for": "1h", "comment": "x"}),
               ("silence-remove", {"id": 1}), ("maintenance", {"on": True, "for": "1h"}),
               ("maintenance", {"on": False})]
        for cmd, args in raw:
            a = R.ctl_request(d, cmd, args, user="nobody")
            check(a["ok"] is False and a["error"]["code"] == "denied", "raw %s as nobody: %r" % (cmd, a))
        for args in (["status"], ["jobs"], ["backups"], ["report"], ["alerts"], ["silence", "list"]):
            d.ctl(*args, user="nobody", check_rc=0)
        log = d.logtext()
        for cmd in ("run", "reload", "prune", "restore", "silence-add", "silence-remove", "maintenance"):
            check("control command refused cmd=%s uid=65534" % cmd in log, "refusal of %s not logged" % cmd)
        check(len(d.runs()) == runs0, "a refused run started something")
        st = d.ctl_json("status")
        check(st["reload"]["count"] == 0 and st["maintenance"] is None, "refused commands had effects: %r" % st)
        check(d.ctl_json("silence", "list", "--all")["silences"] == [], "a refused silence exists")
        check(len(R.backups_json(d)) == 1, "a refused prune or run changed the backups")
        check(R.psql(cluster, "SELECT count(*) FROM pg_database WHERE datname = 'pgvigil_sec_denied'", db="postgres",
                     user="postgres") == "0", "a refused restore created its database")
        check(d.stop() == 0, "exit status")
    finally:
        d.cleanup()


HOLD = r"""
import json, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b'{"cmd":"status"}\n')
    f = s.makefile("rb")
    assert json.loads(f.readline())["ok"]
    held.append((s, f))
print("held", flush=True)
for line in sys.stdin:
    if line.strip() == "extra":
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        try:
            s.sendall(b'{"cmd":"status"}\n')
        except OSError:
            pass
        s.settimeout(5)
        try:
            print(s.makefile("rb").readline().decode().strip() or "closed", flush=True)
        except OSError as e:
            print("error " + type(e).__name__, flush=True)
    elif line.strip() == "drop":
        s, f = held.pop()
        f.close()  # the socket stays open while its file object does
        s.close()
        print("dropped", flush=True)
"""


@test
def security_control_connection_caps(cluster):
    """One uid may hold 8 control connections: the 9th is answered "busy" and closed, and a slot freed is
    usable again. 64 connections in all from non-admins fill the socket for non-admins, but an admin
    still gets in (admins have connections of their own)."""
    d = R.Daemon()
    holders = []
    try:
        d.write_config(R.base_config(d, cluster, R.HEALTH_FAST))
        d.start()

        def hold(uid, n):
            p = subprocess.Popen(["/usr/bin/python3", "-c", HOLD, d.socket, str(n)], user=uid, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            holders.append(p)
            check(p.stdout.readline().strip() == "held", "uid %d could not open %d connections" % (uid, n))
            return p

        def ask(p, what):
            p.stdin.write(what + "\n")
            p.stdin.flush()
            return p.stdout.readline().strip()
        p = hold(65534, 8)
        ans = ask(p, "extra")
        check('"busy"' in ans, "9th connection of one uid: %r" % ans)
        check("control connection refused uid=65534 reason=too-many-connections" in d.logtext(), "refusal not logged")
        out = d.ctl("status", user="nobody", check_rc=1)
        check("too many" in out.stderr, "pgvigilctl refused as busy says: %r" % out.stderr)
        d.ctl("status", check_rc=0)
        check(ask(p, "drop") == "dropped", "drop")
        # the daemon notices the close on its next loop turn
        ans = wait_for(lambda: (lambda a: a if '"ok":true' in a.replace(" ", "") else None)(ask(p, "extra")), 5,
                       "a freed slot to be usable again")
        check(json.loads(ans)["ok"] is True, "a freed slot is not usable again: %r" % ans)
        # fill the shared connections: 8 uids x 8 (nobody already holds 7)
        p.stdin.close()
        p.wait(10)
        holders.remove(p)
        for uid in range(62000, 62008):
            hold(uid, 8)
        other = hold(62008, 0)
        ans = ask(other, "extra")
        check('"busy"' in ans, "a 65th non-admin connection: %r" % ans)
        t0 = time.monotonic()
        st = d.ctl("--json", "status", check_rc=0)
        check(json.loads(st.stdout)["pid"] == d.proc.pid and time.monotonic() - t0 < 2, "admin status when full")
        d.ctl("reload", check_rc=0)
        check(d.stop() == 0, "exit status")
        print("     9th connection of a uid refused; 65th non-admin refused; admin served", flush=True)
    finally:
        for p in holders:
            if p.poll() is None:
                p.kill()
                p.wait()
        d.cleanup()
