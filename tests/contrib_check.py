#!/usr/bin/env python3
"""Checks contrib/grafana/pgvigil.json and contrib/prometheus/pgvigil-rules.yml against the metrics
pgvigild exports: both parse, every PromQL expression names only exported metrics (or the rules'
own recorded series), label names are ones the series carry, the dashboard takes its data source
as the ${DS_PROMETHEUS} input and has a database variable, and the alert rules mirror the built-in
ones. With promtool on PATH (Debian package prometheus, not required) it also runs
`promtool check rules` and the rules' unit tests.

Used by the e2e suite with the families of a real scrape; standalone it takes the metric names
from src/metrics/metrics.c:  python3 tests/contrib_check.py
"""
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "contrib", "grafana", "pgvigil.json")
RULES = os.path.join(ROOT, "contrib", "prometheus", "pgvigil-rules.yml")
RULES_TEST = os.path.join(ROOT, "contrib", "prometheus", "pgvigil-rules.test.yml")

# Labels the series carry once scraped: pgvigil's own, plus Prometheus's target labels. The
# metrics' `job` label arrives as `exported_job` (honor_labels: false, the default).
KNOWN_LABELS = {"database", "exported_job", "severity", "notifier", "result", "version", "instance", "job"}
# Built-in alert rules (SPEC §4) that the Prometheus rules must mirror.
MIRRORED_ALERTS = {"PgvigilBackupStale", "PgvigilDatabaseDown", "PgvigilRPOBreach", "PgvigilBackupSizeChange",
                   "PgvigilBackupSlow", "PgvigilStorageUsage", "PgvigilNotificationsFailing"}
# What the dashboard must show (SPEC §6 and the issue): the families its panels must query.
DASHBOARD_NEEDS = {"pgvigil_rpo_seconds", "pgvigil_rpo_objective_seconds", "pgvigil_rto_seconds",
                   "pgvigil_rto_objective_seconds", "pgvigil_backup_size_bytes", "pgvigil_backup_duration_seconds",
                   "pgvigil_backup_last_success_timestamp_seconds", "pgvigil_restore_probe_success",
                   "pgvigil_restore_probe_last_success_timestamp_seconds", "pgvigil_restore_probe_duration_seconds",
                   "pgvigil_alerts_firing", "pgvigil_storage_used_ratio",
                   "pgvigil_storage_forecast_full_timestamp_seconds", "pgvigil_notifications_pending",
                   "pgvigil_notifications_failed_total", "pgvigil_job_runs_total", "pgvigil_database_up"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "Inf", "NaN"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)")


def names_from_source():
    """Family names as src/metrics/metrics.c writes them (string literals starting pgvigil_)."""
    with open(os.path.join(ROOT, "src", "metrics", "metrics.c")) as f:
        return set(re.findall(r'"(pgvigil_[a-z0-9_]+)"', f.read()))


def promql_names(expr):
    """(metric names, label names) an expression refers to; functions and keywords left out."""
    labels = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    for inner in re.findall(r"\{([^}]*)\}", text):
        labels.update(m.group(1) for m in MATCHER.finditer(inner))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for m in GROUPING.finditer(text):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    text = GROUPING.sub(" ", text)
    names = set()
    for m in IDENT.finditer(text):
        word = m.group(1)
        rest = text[m.end():].lstrip()
        if word in KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names, labels


def check_expr(where, expr, exported, recorded, problems):
    names, labels = promql_names(expr)
    if not names:
        problems.append("%s: no metric in %r" % (where, expr))
    for n in sorted(names - exported - recorded):
        problems.append("%s: %s is not a metric pgvigild exports (expr %r)" % (where, n, expr))
    for lab in sorted(labels - KNOWN_LABELS):
        problems.append("%s: label %s is not on pgvigil's series (expr %r)" % (where, lab, expr))
    return names


def check_rules(exported, problems):
    try:
        import yaml
    except ImportError:
        sys.path.append("/usr/lib/python3/dist-packages")
        import yaml
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list) or not doc["groups"]:
        problems.append("rules: no groups")
        return
    recorded, alerts, seen_groups = set(), set(), set()
    rules = []
    for g in doc["groups"]:
        if not isinstance(g, dict) or not g.get("name") or not isinstance(g.get("rules"), list):
            problems.append("rules: malformed group %r" % g)
            continue
        if g["name"] in seen_groups:
            problems.append("rules: group %s twice" % g["name"])
        seen_groups.add(g["name"])
        for r in g["rules"]:
            rules.append(r)
            if "record" in r:
                if not re.fullmatch(r"[a-zA-Z_:][\w:]*", r["record"]) or ":" not in r["record"]:
                    problems.append("rules: recording rule name %r should be level:metric:operations" % r["record"])
                recorded.add(r["record"])
    for r in rules:
        name = r.get("record") or r.get("alert")
        where = "rules: %s" % name
        if ("record" in r) == ("alert" in r) or not isinstance(r.get("expr"), str):
            problems.append("%s: needs exactly one of record/alert and an expr" % where)
            continue
        check_expr(where, r["expr"], exported, recorded, problems)
        if "alert" in r:
            if r["alert"] in alerts:
                problems.append("%s: alert defined twice" % where)
            alerts.add(r["alert"])
            sev = (r.get("labels") or {}).get("severity")
            if sev not in ("critical", "warning", "info"):
                problems.append("%s: severity %r" % (where, sev))
            if not (r.get("annotations") or {}).get("summary"):
                problems.append("%s: no summary annotation" % where)
            if "for" in r and not re.fullmatch(r"(\d+[smhdwy])+", str(r["for"])):
                problems.append("%s: bad for %r" % (where, r["for"]))
            for text in (r.get("annotations") or {}).values():
                for lab in re.findall(r"\$labels\.(\w+)", str(text)):
                    if lab not in KNOWN_LABELS:
                        problems.append("%s: annotation uses label %s, which the series do not carry" % (where, lab))
    for a in sorted(MIRRORED_ALERTS - alerts):
        problems.append("rules: no alert mirroring the built-in rule: %s" % a)


def overlaps(a, b):
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def check_dashboard(exported, problems):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    inputs = dash.get("__inputs") or []
    if not [i for i in inputs if i.get("name") == "DS_PROMETHEUS" and i.get("type") == "datasource"
            and i.get("pluginId") == "prometheus"]:
        problems.append("dashboard: no DS_PROMETHEUS datasource input")
    if dash.get("id") is not None or not dash.get("uid") or not dash.get("title"):
        problems.append("dashboard: an importable dashboard has id null, a uid and a title")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    if "database" not in variables:
        problems.append("dashboard: no database variable")
    for name, v in variables.items():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\(\s*([A-Za-z_:][\w:]*)", q or "")
        if v.get("datasource") != ds:
            problems.append("dashboard: variable %s does not use ${DS_PROMETHEUS}" % name)
        if not m or m.group(1) not in exported:
            problems.append("dashboard: variable %s: query %r does not read an exported metric" % (name, q))
    used, ids, boxes = set(), set(), []
    for p in dash.get("panels", []):
        where = "dashboard: panel %r" % p.get("title")
        if p.get("id") in ids:
            problems.append("%s: id %r twice" % (where, p.get("id")))
        ids.add(p.get("id"))
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24:
            problems.append("%s: bad gridPos %r" % (where, g))
            continue
        for other_title, other in boxes:
            if overlaps(g, other):
                problems.append("%s overlaps %r" % (where, other_title))
        boxes.append((p.get("title"), g))
        if p.get("type") == "row":
            continue
        if not p.get("title") or p.get("datasource") != ds:
            problems.append("%s: needs a title and the ${DS_PROMETHEUS} datasource" % where)
        if not p.get("targets"):
            problems.append("%s: no queries" % where)
        for t in p.get("targets", []):
            if t.get("datasource") != ds:
                problems.append("%s: query %s does not use ${DS_PROMETHEUS}" % (where, t.get("refId")))
            # Grafana's own variables ($__range, $instance) sit in [] and {}, which the reader skips
            used |= check_expr(where, t.get("expr", ""), exported, set(), problems)
    for n in sorted(DASHBOARD_NEEDS - used):
        problems.append("dashboard: no panel shows %s" % n)


def check_promtool(problems, notes):
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        notes.append("promtool not found: rules checked without it (Debian package prometheus has it)")
        return
    out = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        problems.append("promtool check rules: " + (out.stdout + out.stderr).strip())
    out = subprocess.run([promtool, "test", "rules", os.path.basename(RULES_TEST)], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(RULES_TEST))
    if out.returncode != 0:
        problems.append("promtool test rules: " + (out.stdout + out.stderr).strip())
    else:
        notes.append("promtool check rules and test rules passed")


def check_all(exported, use_promtool=True):
    """(problems, notes) for the contrib files against the exported family names."""
    problems, notes = [], []
    check_rules(set(exported), problems)
    check_dashboard(set(exported), problems)
    if use_promtool:
        check_promtool(problems, notes)
    return problems, notes


def main():
    problems, notes = check_all(names_from_source())
    for n in notes:
        print("contrib: " + n)
    for p in problems:
        print("contrib: " + p)
    print("contrib: %s" % ("ok" if not problems else "%d problem(s)" % len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
