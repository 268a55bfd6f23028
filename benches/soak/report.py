#!/usr/bin/env python3
"""Summarises one soak run directory (written by run.sh) as Markdown on stdout and draws
the queue-depth plot as a hand-written SVG. Standard library only.

Usage: report.py RUN_DIR PLOT.svg
"""
import json
import os
import re
import sys
from collections import defaultdict

run, plot = sys.argv[1], sys.argv[2]
t0 = float(open(os.path.join(run, "t0")).read())
LINE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')
BAD = ("short_expires_at", "short_at_provider", "dead_at_provider", "wrong_user")


def jsonl(name):
    path = os.path.join(run, name)
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def parse_prom(path):
    out = {}
    for line in open(path):
        m = LINE.match(line.strip())
        if m:
            out[(m.group(1), tuple(sorted(LABEL.findall(m.group(2) or ""))))] = float(m.group(3))
    return out


# Metric samples in time order, per role: reset-aware totals (a killed worker's counters
# restart at 0; what it counted before stays counted).
samples = sorted(d for d in os.listdir(os.path.join(run, "metrics")))
totals = defaultdict(lambda: defaultdict(float))  # role -> series -> total
last = defaultdict(dict)
statuses = []
for d in samples:
    t = float(d)
    for role in ("serve", "scheduler", "worker1", "worker2"):
        path = os.path.join(run, "metrics", d, role + ".prom")
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            continue
        for key, value in parse_prom(path).items():
            prev = last[role].get(key)
            if prev is not None and value < prev:
                totals[role][key] += prev  # reset: bank what was counted before
            last[role][key] = value
    sp = os.path.join(run, "metrics", d, "status.json")
    try:
        statuses.append((t, json.load(open(sp))))
    except (OSError, ValueError):
        pass
for role, series in last.items():
    for key, value in series.items():
        totals[role][key] += value


def total(name, **labels):
    """Sum over roles of series `name` whose labels include `labels`, grouped by the rest."""
    acc = defaultdict(float)
    for role, series in totals.items():
        for (n, lab), v in series.items():
            d = dict(lab)
            if n == name and all(d.get(k) == v2 for k, v2 in labels.items()):
                acc[lab] += v
    return acc


def by(name, label):
    out = defaultdict(float)
    for lab, v in total(name).items():
        out[dict(lab).get(label, "")] += v
    return dict(out)


def quantile(q):
    buckets = defaultdict(float)
    for lab, v in total("pipes_refresh_lag_seconds_bucket").items():
        buckets[float(dict(lab)["le"].replace("+Inf", "inf"))] += v
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] == 0:
        return None
    target, prev_edge, prev_count = q * buckets[edges[-1]], 0.0, 0.0
    for e in edges:
        if buckets[e] >= target:
            if e == float("inf"):
                return prev_edge
            return prev_edge + (e - prev_edge) * (target - prev_count) / max(buckets[e] - prev_count, 1e-9)
        prev_edge, prev_count = e, buckets[e]
    return None


reads = jsonl("reads.jsonl")
summary = json.load(open(os.path.join(run, "reads_summary.json")))
final = json.load(open(os.path.join(run, "final.json")))
provider = jsonl("provider.jsonl")
faults = jsonl("faults.jsonl")
stale_metric = sum(total("pipes_stale_tokens_served_total").values())
bad_total = sum(summary["totals"].get(k, 0) for k in BAD)

# Refresh lag: histogram quantiles; max from the oldest overdue account seen by any sample.
max_overdue = max([s["due"]["oldest_overdue"]["overdue_seconds"] for _, s in statuses
                   if s.get("due", {}).get("oldest_overdue")] + [p.get("oldest_due_s") or 0 for p in provider] + [0])
lag_sum = sum(total("pipes_refresh_lag_seconds_sum").values())
lag_n = sum(total("pipes_refresh_lag_seconds_count").values())

print(f"# Soak run {os.path.basename(run)}\n")
print(f"accounts {final['accounts']}, reads sent {summary['sent']} in {summary['seconds']:.0f} s "
      f"({summary['sent'] / summary['seconds']:.0f}/s), read latency p50 {summary['p50_ms']:.1f} ms, "
      f"p99 {summary['p99_ms']:.1f} ms, p99.9 {summary['p999_ms']:.1f} ms, max {summary['max_ms']:.0f} ms\n")
print(f"* `pipes_stale_tokens_served_total`: **{stale_metric:.0f}**")
print(f"* answers whose token was not valid for >= 60 s (load generator: {', '.join(BAD)}): **{bad_total}**")
print(f"* refresh lag: p50 {quantile(0.5):.2f} s, p99 {quantile(0.99):.2f} s, mean {lag_sum / max(lag_n, 1):.2f} s, "
      f"max (oldest overdue account seen, 10 s samples) {max_overdue:.0f} s; {lag_n:.0f} refreshes measured")
print(f"* refresh outcomes: {json.dumps({k: int(v) for k, v in sorted(by('pipes_refresh_attempts_total', 'outcome').items())})}")
print(f"* jobs enqueued: {sum(total('pipes_refresh_jobs_enqueued_total').values()):.0f}")
print(f"* reads by result (server): {json.dumps({k: int(v) for k, v in sorted(by('pipes_token_reads_total', 'result').items())})}")
print(f"* reads by answer (load generator): {json.dumps(summary['totals'], sort_keys=True)}")
print(f"* cache degraded reads: {sum(total('pipes_cache_degraded_total').values()):.0f}")
print(f"* end audit: {json.dumps(final['audit'])}; provider: {json.dumps(final['provider'])}")
expired_max = max([p.get("expired", 0) for p in provider] + [0])
print(f"* accounts seen expired while connected (max over 10 s samples): {expired_max}")

# CPU and RSS per role.
proc = defaultdict(list)
for line in open(os.path.join(run, "proc.txt")):
    t, role, pid, ticks, rss = line.split()
    proc[role].append((float(t), pid, int(ticks), int(rss)))
hz = os.sysconf("SC_CLK_TCK")
print("\n| process | CPU mean (cores) | CPU max 10 s (cores) | RSS mean | RSS max |")
print("| --- | --- | --- | --- | --- |")
for role in ("serve", "scheduler", "worker1", "worker2", "helper"):
    rows = proc.get(role, [])
    cpu = [(b[2] - a[2]) / hz / (b[0] - a[0]) for a, b in zip(rows, rows[1:]) if a[1] == b[1] and b[0] > a[0]]
    rss = [r[3] / 1024 for r in rows]
    if cpu:
        print(f"| {role} | {sum(cpu) / len(cpu):.2f} | {max(cpu):.2f} | {sum(rss) / len(rss):.0f} MiB | {max(rss):.0f} MiB |")
loads = [float(l.split()[1]) for l in open(os.path.join(run, "load.txt"))]
print(f"\nmachine load average (1 min) during the run: mean {sum(loads) / len(loads):.2f}, max {max(loads):.2f}")


# Per fault.
def window(lo, hi):
    # A record counts the second that starts at r["t"]; one that straddles a fault's start
    # belongs to that fault (its failures can only come after the start).
    out = defaultdict(int)
    for r in reads:
        if lo < r["t"] + 1 <= hi:
            for k, v in r["counts"].items():
                out[k] += v
    return out


def provider_at(t):
    before = [p for p in provider if p["t"] <= t and "refreshes" in p]
    return before[-1] if before else (provider[0] if provider else {})


print("\n| fault | window | reads failed (why) | stale / wrong | reuse detected | expired while connected | reads recovered | refresh backlog back to pre-fault |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for i, f in enumerate(faults):
    nxt = faults[i + 1]["start"] if i + 1 < len(faults) else float("inf")
    counts = window(f["start"], nxt)
    # `inactive_needs_reauthorization` is a correct answer (for a grant lost earlier), not a failure.
    failed = {k: v for k, v in counts.items() if k not in ("ok", "inactive_needs_reauthorization") and k not in BAD}
    bad = sum(counts.get(k, 0) for k in BAD)
    # Reads recovered: first second after the fault ended from which 10 s in a row are all ok.
    ok_secs = [(r["t"], set(r["counts"]) <= {"ok", "inactive_needs_reauthorization"}) for r in reads if r["t"] >= f["end"] - 1]
    rec_reads = None
    for j in range(len(ok_secs)):
        if all(ok for _, ok in ok_secs[j:j + 10]) and len(ok_secs[j:j + 10]) == 10:
            rec_reads = max(0.0, ok_secs[j][0] - f["end"])
            break
    # Backlog recovered: first provider sample after the fault with nothing overdue by > 30 s.
    # Backlog recovered: first sample after the fault with no more accounts overdue by > 30 s
    # than just before it.
    base = provider_at(f["start"]).get("overdue_30s", 0)
    rec_backlog = next((p["t"] - f["end"] for p in provider if p["t"] >= f["end"] and p.get("overdue_30s", 1e9) <= base), None)
    a, b = provider_at(f["start"]), provider_at(nxt if nxt != float("inf") else 1e18)
    reuse = b.get("reuse_detected", 0) - a.get("reuse_detected", 0)
    expired = max([p.get("expired", 0) for p in provider if f["start"] <= p["t"] < nxt] + [0])
    fmt = lambda x: "never" if x is None else f"{x:.0f} s"
    print(f"| {f['name']} | {f['start'] - t0:.0f}–{f['end'] - t0:.0f} s | {sum(failed.values())} {json.dumps(failed)} | {bad} | {reuse} | {expired} | {fmt(rec_reads)} | ≤ {fmt(rec_backlog)} |")

# The plot: refresh queue depth and due accounts over time, fault windows shaded.
series = []
for t, s in statuses:
    depth = None
    for q in (s.get("queues", {}).get("depths") or []):
        if q["name"].endswith(".refresh"):
            depth = q["messages"]
    series.append((t - t0, depth, s.get("due", {}).get("now")))
W, H, L, R, T, B = 900, 360, 70, 20, 30, 50
xs = [x for x, _, _ in series] or [0, 1]
x0, x1 = min(xs + [0]), max(xs) or 1
ymax = max([v for _, d, n in series for v in (d, n) if v is not None] + [1])
mag = 10 ** (len(str(int(ymax))) - 1)
ymax = next(m * mag for m in (1, 2, 5, 10) if m * mag >= ymax)
px = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
py = lambda y: T + (1 - y / ymax) * (H - T - B)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{L}" y="18" font-size="14">Refresh queue depth and due accounts during the soak (fault windows shaded)</text>']
for f in faults:
    a, b = px(f["start"] - t0), px(f["end"] - t0)
    svg.append(f'<rect x="{a:.1f}" y="{T}" width="{max(b - a, 1):.1f}" height="{H - T - B}" fill="#f4c7c3" opacity="0.6"/>')
    svg.append(f'<text x="{a:.1f}" y="{T + 12}" font-size="10">{f["name"]}</text>')
for k in range(6):
    y = ymax * k / 5
    svg.append(f'<line x1="{L}" x2="{W - R}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.0f}</text>')
step = 60 if x1 - x0 <= 1200 else 120
for k in range(int(x0 // step), int(x1 // step) + 1):
    x = k * step
    svg.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x:.0f}</text>')
svg.append(f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">seconds since the load started</text>')
for idx, color, name in ((1, "#1f77b4", "messages in the refresh queue"), (2, "#d62728", "accounts due (refresh_at passed)")):
    pts = " ".join(f"{px(x):.1f},{py(v[idx]):.1f}" for v in series for x in [v[0]] if v[idx] is not None)
    svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    ly = T + 20 + 16 * idx
    svg.append(f'<line x1="{W - 260}" x2="{W - 240}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
    svg.append(f'<text x="{W - 235}" y="{ly + 4}">{name}</text>')
svg.append("</svg>")
with open(plot, "w") as fh:
    fh.write("\n".join(svg) + "\n")
print(f"\nplot: {plot}")
