#!/usr/bin/env python3
"""Runs flatpipe's benchmarks and prints every figure, the ratios and the targets.

    bench/run_bench.py [--build-dir build-bench] [--json] [--chart docs/bench.png | --no-chart]
                       [--samples N] [--seconds S] [--warmup S] [--systems raw,flatpipe,grpc]

For every system and transport built (raw: tcp, unix, shm; flatpipe: tcp, unix, shm; grpc: tcp, unix
when the gRPC baseline was built) it starts the server program, then the client program with the
server's endpoint, as two processes; collects the client's lines (`name value unit`), samples
the server's thread count from /proc/<pid>/status after each line, then closes the server's
standard input, upon which the server prints its own peak RSS and threads and exits.

Output (text): one line per figure `<system>.<transport>.<kind>.<metric>.<size> value unit`,
then the ratios computed from them (`ratio.<transport>.<kind>.<metric>.<size>.<a>_over_<b>
value x`), then the targets (`target.<...> value unit goal <op><goal> met|short|n/a`). With
--json the same goes to standard output as one JSON document instead. Progress goes to standard
error. The chart (gnuplot, when installed) is written to --chart. Standard library only.
"""

import argparse
import datetime
import json
import math
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Client run time limit (a hung run is killed and reported, the others go on).
CLIENT_TIMEOUT = 240
SERVER_START_TIMEOUT = 15


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- machine -----------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields), idle


def busy_fraction(seconds=1.0):
    """Share of all CPUs in use over `seconds` (by anything: nothing of ours runs then)."""
    t0, i0 = cpu_times()
    time.sleep(seconds)
    t1, i1 = cpu_times()
    total = t1 - t0
    return 0.0 if total <= 0 else 1.0 - (i1 - i0) / total


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return -1.0


def machine_info():
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def proc_threads(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---- runs --------------------------------------------------------------------------------------

class Results:
    def __init__(self):
        self.figures = {}  # name -> (value, unit), in the order measured
        self.errors = []

    def add(self, name, value, unit):
        self.figures[name] = (value, unit)

    def get(self, name):
        f = self.figures.get(name)
        return None if f is None else f[0]


def parse_line(line, results, origin):
    line = line.strip()
    if not line:
        return None
    if line.startswith("error"):
        results.errors.append(f"{origin}: {line[5:].strip()}")
        log(f"  {origin}: {line}")
        return None
    parts = line.split()
    if len(parts) == 3 and parts[0].count(".") == 4:
        try:
            value = float(parts[1])
        except ValueError:
            value = None
        if value is not None:
            results.add(parts[0], value, parts[2])
            return parts[0]
    log(f"  {origin}: unexpected line: {line}")
    return None


def run_single(label, cmd, results):
    """One process that is client and server at once (inproc); True when it ran to the end."""
    log(f"running {label}")
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as errfile:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errfile, text=True, bufsize=1)
        timer = threading.Timer(CLIENT_TIMEOUT, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                parse_line(line, results, label)
            rc = proc.wait()
        finally:
            timer.cancel()
        if rc != 0:
            errfile.seek(0)
            results.errors.append(f"{label}: exited with status {rc}: {errfile.read().strip()[-500:]}")
            log(f"  {label}: exited with status {rc}")
    log(f"  {label}: {time.monotonic() - started:.1f} s")
    return rc == 0


def run_pair(label, server_cmd, client_cmd, results):
    """One server process and one client process; returns True when both ran to the end."""
    if server_cmd is None:
        return run_single(label, client_cmd, results)
    log(f"running {label}")
    started = time.monotonic()
    errfile = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(server_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=errfile, text=True, bufsize=1)
    try:
        ready, _, _ = select.select([server.stdout], [], [], SERVER_START_TIMEOUT)
        first = server.stdout.readline() if ready else ""
        if not first.startswith("listening "):
            errfile.seek(0)
            results.errors.append(f"{label}: server did not start: {first.strip()} {errfile.read().strip()[-500:]}")
            log(f"  {label}: server did not start")
            return False
        endpoint = first.split()[1]
        threads_max = proc_threads(server.pid)

        client = subprocess.Popen(client_cmd + ["--connect", endpoint], stdout=subprocess.PIPE,
                                  stderr=errfile, text=True, bufsize=1)
        timer = threading.Timer(CLIENT_TIMEOUT, client.kill)
        timer.start()
        try:
            for line in client.stdout:
                parse_line(line, results, label)
                threads_max = max(threads_max, proc_threads(server.pid))
            rc = client.wait()
        finally:
            timer.cancel()
        if rc != 0:
            results.errors.append(f"{label}: client exited with status {rc}")
            log(f"  {label}: client exited with status {rc}")

        # Standard input closed: the server prints its own figures and exits.
        server.stdin.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([server.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = server.stdout.readline()
            if not line:
                break
            name = parse_line(line, results, label)
            if name and name.endswith(".server.threads.all"):
                results.add(name, max(results.get(name), threads_max), "threads")
        log(f"  {label}: {time.monotonic() - started:.1f} s")
        return rc == 0
    finally:
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        errfile.close()


def plan(build_dir, systems, tmpdir):
    bench = os.path.join(build_dir, "bench")
    runs = []

    def have(prog):
        return os.access(os.path.join(bench, prog), os.X_OK)

    uds = lambda name: f"unix://{os.path.join(tmpdir, name)}.sock"
    if "raw" in systems and have("raw_bench"):
        prog = os.path.join(bench, "raw_bench")
        for tr, uri in (("tcp", "tcp://127.0.0.1:0"), ("unix", uds("raw")),
                        ("shm", f"shm://flatpipe-bench-raw-{os.getpid()}")):
            runs.append((f"raw {tr}", [prog, "server", "--listen", uri], [prog, "client"]))
    if "flatpipe" in systems and have("fp_bench_server") and have("fp_bench_client"):
        for tr, uri in (("tcp", "tcp://127.0.0.1:0"), ("unix", uds("flatpipe")),
                        ("shm", f"shm://flatpipe-bench-{os.getpid()}")):
            runs.append((f"flatpipe {tr}", [os.path.join(bench, "fp_bench_server"), "--listen", uri],
                         [os.path.join(bench, "fp_bench_client")]))
        # The same round trips with a Runtime that sleeps as soon as it is idle (--no-idle-spin,
        # figures named flatpipe_nospin): what the default's polling before sleeping buys.
        for tr, uri in (("tcp", "tcp://127.0.0.1:0"), ("unix", uds("flatpipe-nospin"))):
            runs.append((f"flatpipe_nospin {tr}",
                         [os.path.join(bench, "fp_bench_server"), "--listen", uri, "--no-idle-spin"],
                         [os.path.join(bench, "fp_bench_client"), "--no-idle-spin", "--only", "unary", "--size", "64"]))
        # inproc: one process, the client serves itself (no server process).
        runs.append(("flatpipe inproc", None,
                     [os.path.join(bench, "fp_bench_client"), "--connect", f"inproc://flatpipe-bench-{os.getpid()}"]))
    if "grpc" in systems and have("grpc_bench_server") and have("grpc_bench_client"):
        for tr, uri in (("tcp", "tcp://127.0.0.1:0"), ("unix", uds("grpc"))):
            runs.append((f"grpc {tr}", [os.path.join(bench, "grpc_bench_server"), "--listen", uri],
                         [os.path.join(bench, "grpc_bench_client")]))
    return runs


# ---- ratios and targets ------------------------------------------------------------------------

def compute_ratios(r):
    ratios = []  # (name, value)

    def ratio(name, a, b):
        va, vb = r.get(a), r.get(b)
        if va is not None and vb:
            ratios.append((name, va / vb))

    for tr in ("tcp", "unix", "shm", "inproc"):
        for size in ("64B", "4KiB"):
            ratio(f"ratio.{tr}.unary.p50.{size}.flatpipe_over_raw",
                  f"flatpipe.{tr}.unary.p50.{size}", f"raw.{tr}.pingpong.p50.{size}")
            ratio(f"ratio.{tr}.unary.p50.{size}.flatpipe_over_grpc",
                  f"flatpipe.{tr}.unary.p50.{size}", f"grpc.{tr}.unary.p50.{size}")
        ratio(f"ratio.{tr}.unary.p50.64B.flatpipe_nospin_over_raw",
              f"flatpipe_nospin.{tr}.unary.p50.64B", f"raw.{tr}.pingpong.p50.64B")
        ratio(f"ratio.{tr}.unary_blocking.p50.64B.flatpipe_over_raw",
              f"flatpipe.{tr}.unary_blocking.p50.64B", f"raw.{tr}.pingpong.p50.64B")
        ratio(f"ratio.{tr}.unary_blocking.p50.64B.flatpipe_over_grpc",
              f"flatpipe.{tr}.unary_blocking.p50.64B", f"grpc.{tr}.unary.p50.64B")
        for k in ("1", "64"):
            ratio(f"ratio.{tr}.unary_inflight{k}.calls.64B.flatpipe_over_grpc",
                  f"flatpipe.{tr}.unary_inflight{k}.calls.64B", f"grpc.{tr}.unary_inflight{k}.calls.64B")
        ratio(f"ratio.{tr}.stream.msgs.1KiB.flatpipe_over_raw",
              f"flatpipe.{tr}.stream.msgs.1KiB", f"raw.{tr}.stream.msgs.1KiB")
        ratio(f"ratio.{tr}.stream.msgs.1KiB.flatpipe_over_grpc",
              f"flatpipe.{tr}.stream.msgs.1KiB", f"grpc.{tr}.stream.msgs.1KiB")
        ratio(f"ratio.{tr}.stream.bytes.1MiB.flatpipe_over_raw",
              f"flatpipe.{tr}.stream.bytes.1MiB", f"raw.{tr}.stream.bytes.1MiB")
        ratio(f"ratio.{tr}.stream.bytes.1MiB.flatpipe_over_grpc",
              f"flatpipe.{tr}.stream.bytes.1MiB", f"grpc.{tr}.stream.bytes.1MiB")
        for kind in ("client_stream", "bidi"):
            ratio(f"ratio.{tr}.{kind}.msgs.1KiB.flatpipe_over_grpc",
                  f"flatpipe.{tr}.{kind}.msgs.1KiB", f"grpc.{tr}.{kind}.msgs.1KiB")
        for role in ("server", "client"):
            ratio(f"ratio.{tr}.{role}.peak_rss.all.flatpipe_over_grpc",
                  f"flatpipe.{tr}.{role}.peak_rss.all", f"grpc.{tr}.{role}.peak_rss.all")
    return ratios


def compute_targets(r, ratios, grpc_built):
    rt = dict(ratios)
    targets = []  # dicts: name, value, unit, op, goal, status, note

    def target(name, value, unit, op, goal, missing_note, note=""):
        if value is None:
            status, note = "n/a", missing_note
        else:
            ok = value <= goal if op == "<=" else value >= goal
            status = "met" if ok else "short"
        targets.append({"name": name, "value": value, "unit": unit, "op": op, "goal": goal,
                        "status": status, "note": note})

    no_grpc = "gRPC baseline not built (scripts/install-deps.sh --bench)" if not grpc_built else "figure missing"
    target("target.tcp.unary.p50.64B.flatpipe_over_raw", rt.get("ratio.tcp.unary.p50.64B.flatpipe_over_raw"),
           "x", "<=", 1.15, "figure missing")
    target("target.tcp.unary_inflight64.calls.64B.flatpipe_over_grpc",
           rt.get("ratio.tcp.unary_inflight64.calls.64B.flatpipe_over_grpc"), "x", ">=", 8, no_grpc)
    for tr in ("tcp", "unix"):
        target(f"target.{tr}.stream.msgs.1KiB.flatpipe_over_grpc",
               rt.get(f"ratio.{tr}.stream.msgs.1KiB.flatpipe_over_grpc"), "x", ">=", 10, no_grpc)
    target("target.tcp.stream.bytes.1MiB.flatpipe_over_raw", rt.get("ratio.tcp.stream.bytes.1MiB.flatpipe_over_raw"),
           "x", ">=", 0.95, "figure missing")
    not_built = "transport not built"
    target("target.shm.unary.p50.64B", r.get("flatpipe.shm.unary.p50.64B"), "us", "<=", 2, not_built)
    target("target.inproc.unary.p50.64B", r.get("flatpipe.inproc.unary.p50.64B"), "us", "<=", 1, not_built)
    shm_bytes = r.get("flatpipe.shm.stream.bytes.1MiB")
    raw_shm = r.get("raw.shm.stream.bytes.1MiB")
    target("target.shm.stream.bytes.1MiB", None if shm_bytes is None else shm_bytes / 1000, "GB/s", ">=", 15,
           not_built + (f"; raw shm limit measured: {raw_shm / 1000:.1f} GB/s" if raw_shm else ""))
    for tr in ("tcp", "unix", "shm", "inproc"):
        per_role = {role: r.get(f"flatpipe.{tr}.{role}.threads.all") for role in ("server", "client")}
        seen = {k: v for k, v in per_role.items() if v is not None}
        if not seen and tr in ("shm", "inproc"):
            target(f"target.{tr}.threads.max.flatpipe", None, "threads", "<=", 2, not_built)
            continue
        target(f"target.{tr}.threads.max.flatpipe", max(seen.values()) if seen else None, "threads", "<=", 2,
               "figure missing", ", ".join(f"{k} {v:g}" for k, v in seen.items()))
    for tr in ("tcp", "unix"):
        for role in ("server", "client"):
            target(f"target.{tr}.{role}.peak_rss.flatpipe_over_grpc",
                   rt.get(f"ratio.{tr}.{role}.peak_rss.all.flatpipe_over_grpc"), "x", "<=", round(1 / 3, 3),
                   no_grpc)
    return targets


# ---- output ------------------------------------------------------------------------------------

def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000 or v == int(v):
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def text_report(info, r, ratios, targets, notes):
    out = [f"# flatpipe benchmarks: {info['nproc']} cores, {info['cpu']}, Linux {info['kernel']}, {info['date']}"]
    out += [f"# {n}" for n in notes]
    for name, (value, unit) in r.figures.items():
        out.append(f"{name} {fmt(value)} {unit}")
    out.append("")
    for name, value in ratios:
        out.append(f"{name} {fmt(value)} x")
    out.append("")
    for t in targets:
        extra = f" ({t['note']})" if t["note"] else ""
        out.append(f"{t['name']} {fmt(t['value'])} {t['unit']} goal {t['op']}{fmt(t['goal'])} {t['status']}{extra}")
    if r.errors:
        out.append("")
        out += [f"error {e}" for e in r.errors]
    return "\n".join(out)


def json_report(info, r, ratios, targets, notes):
    return json.dumps({
        "machine": info,
        "notes": notes,
        "figures": [{"name": n, "value": v, "unit": u} for n, (v, u) in r.figures.items()],
        "ratios": [{"name": n, "value": v, "unit": "x"} for n, v in ratios],
        "targets": targets,
        "errors": r.errors,
    }, indent=2)


# ---- chart -------------------------------------------------------------------------------------

def write_chart(path, info, r):
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        return "gnuplot not installed (scripts/install-deps.sh --bench): no chart"
    # Each panel: clusters (rows) x systems (columns); missing figures are left out.
    panels = [
        ("unary round trip p50, 64 B (us, lower is better)", False,
         ["flatpipe", "flatpipe blocking", "raw", "grpc"],
         [(tr, [f"flatpipe.{tr}.unary.p50.64B", f"flatpipe.{tr}.unary_blocking.p50.64B",
                f"raw.{tr}.pingpong.p50.64B", f"grpc.{tr}.unary.p50.64B"]) for tr in ("tcp", "unix", "shm", "inproc")]),
        ("unary calls/s, 64 B, 1 and 64 in flight (log)", True, ["flatpipe", "grpc"],
         [(f"{tr} x{k}", [f"flatpipe.{tr}.unary_inflight{k}.calls.64B", f"grpc.{tr}.unary_inflight{k}.calls.64B"])
          for tr in ("tcp", "unix", "shm", "inproc") for k in ("1", "64")]),
        ("server stream, 1 KiB, msg/s (log)", True, ["flatpipe", "raw", "grpc"],
         [(tr, [f"flatpipe.{tr}.stream.msgs.1KiB", f"raw.{tr}.stream.msgs.1KiB", f"grpc.{tr}.stream.msgs.1KiB"])
          for tr in ("tcp", "unix", "shm", "inproc")]),
        ("server stream, 1 MiB, MB/s (log)", True, ["flatpipe", "raw", "grpc"],
         [(tr, [f"flatpipe.{tr}.stream.bytes.1MiB", f"raw.{tr}.stream.bytes.1MiB", f"grpc.{tr}.stream.bytes.1MiB"])
          for tr in ("tcp", "unix", "shm", "inproc")]),
        ("client stream and bidi, 1 KiB, msg/s (log)", True, ["flatpipe", "grpc"],
         [(f"{tr} {kind.replace('client_stream', 'client')}",
           [f"flatpipe.{tr}.{kind}.msgs.1KiB", f"grpc.{tr}.{kind}.msgs.1KiB"])
          for tr in ("tcp", "unix", "shm", "inproc") for kind in ("client_stream", "bidi")]),
        ("peak RSS, MiB (lower is better)", False, ["flatpipe", "raw", "grpc"],
         [(f"{tr} {role}", [f"flatpipe.{tr}.{role}.peak_rss.all", f"raw.{tr}.{role}.peak_rss.all",
                            f"grpc.{tr}.{role}.peak_rss.all"]) for tr in ("tcp", "unix") for role in ("server", "client")]),
    ]
    colors = {"flatpipe": "#1f77b4", "flatpipe blocking": "#9ecae1", "raw": "#7f7f7f", "grpc": "#d62728"}
    tmp = tempfile.mkdtemp(prefix="flatpipe-bench-chart-")
    try:
        script = [
            f"set terminal pngcairo size 1500,900 font 'sans,10'" if "pngcairo" in terminals(gnuplot)
            else "set terminal png size 1500,900",
            f"set output '{path}'",
            f"set multiplot layout 2,3 title \"flatpipe benchmarks: {info['nproc']} cores, {info['cpu']}, {info['date']}"
            + (f" (other work used {info['cpu_busy_before'] * 100:.0f}% of the CPUs before the run: noisy)"
               if info.get("cpu_busy_before", 0) > 0.15 else "") + "\"",
            "set style data histograms",
            "set style histogram clustered gap 1",
            "set style fill solid 0.85 border -1",
            "set boxwidth 0.9",
            "set key top left font ',8'",
            "set grid ytics",
            "set datafile missing '?'",
            "set xtics nomirror font ',9'",
        ]
        for i, (title, logscale, systems, rows) in enumerate(panels):
            rows = [(label, names) for label, names in rows if any(r.get(n) is not None for n in names)]
            if not rows:
                continue
            data = os.path.join(tmp, f"panel{i}.dat")
            with open(data, "w") as f:
                for label, names in rows:
                    vals = [r.get(n) for n in names]
                    f.write(f"\"{label}\" " + " ".join("?" if v is None else repr(v) for v in vals) + " " +
                            " ".join(f"\"{short(v)}\"" for v in vals) + "\n")
            n = len(systems)
            gap = 1
            values = [r.get(name) for _, names in rows for name in names if r.get(name) is not None]
            script.append(f"set title \"{title}\"")
            # Many clusters: slanted labels, so that neighbours do not overlap.
            script.append("set xtics rotate by -30 font ',8'" if len(rows) > 4 else "set xtics norotate font ',9'")
            if logscale:
                low = 10 ** math.floor(math.log10(max(min(values), 1e-9) / 3))
                script += ["set logscale y", "set format y '%.0s%c'", f"set yrange [{low}:{max(values) * 8}]"]
            else:
                script += ["unset logscale y", "set format y '%g'", f"set yrange [0:{max(values) * 1.3}]"]
            plots = []
            for j, system in enumerate(systems):
                plots.append(f"'{data}' using {j + 2}:xtic(1) title '{system}' lc rgb '{colors[system]}'")
            for j in range(n):
                x = f"($0 + ({j} - {(n - 1) / 2.0}) / {n + gap}.0)"
                plots.append(f"'{data}' using {x}:{j + 2}:{j + 2 + n} "
                             f"with labels offset 0,0.6 font ',7' notitle")
            script.append("plot " + ", ".join(plots))
        script.append("unset multiplot")
        gp = os.path.join(tmp, "chart.gp")
        with open(gp, "w") as f:
            f.write("\n".join(script) + "\n")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        proc = subprocess.run([gnuplot, gp], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"gnuplot failed: {proc.stderr.strip()[-400:]}"
        return f"chart written to {path}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def short(v):
    """A bar label: 3 significant digits, k / M for thousands and millions."""
    if v is None:
        return ""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def terminals(gnuplot):
    try:
        out = subprocess.run([gnuplot, "-e", "set terminal"], capture_output=True, text=True, timeout=10)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ---- main --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build-bench"))
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    ap.add_argument("--chart", default=os.path.join(REPO, "docs", "bench.png"))
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--samples", type=int, default=20000, help="timed round trips per latency figure")
    ap.add_argument("--seconds", type=float, default=1.0, help="duration of each throughput figure")
    ap.add_argument("--warmup", type=float, default=0.2, help="warm-up before each throughput figure")
    ap.add_argument("--systems", default="raw,flatpipe,grpc")
    args = ap.parse_args()

    build_dir = os.path.abspath(args.build_dir)
    systems = set(s.strip() for s in args.systems.split(","))
    info = machine_info()
    notes = []
    busy = busy_fraction()
    info["cpu_busy_before"] = round(busy, 3)
    info["loadavg_before"] = loadavg()
    if busy > 0.15:
        notes.append(f"warning: {busy * 100:.0f}% of the CPUs were busy with other work before the run "
                     f"(load average {info['loadavg_before']:.2f}); figures will be noisy")

    params = ["--samples", str(args.samples), "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    results = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flatpipe-bench-") as tmpdir:
        runs = plan(build_dir, systems, tmpdir)
        if not runs:
            log(f"no benchmark programs in {build_dir}/bench: build with -DFLATPIPE_BUILD_BENCH=ON")
            return 1
        for label, server_cmd, client_cmd in runs:
            run_pair(label, server_cmd, client_cmd + params, results)
    grpc_built = any(label.startswith("grpc") for label, _, _ in runs)
    if not grpc_built:
        notes.append("gRPC baseline not built: scripts/install-deps.sh --bench installs Debian's gRPC")
    info["seconds"] = round(time.monotonic() - started, 1)
    info["loadavg_after"] = loadavg()
    notes.append(f"measured in {info['seconds']:.0f} s; load average {info['loadavg_before']:.2f} before, "
                 f"{info['loadavg_after']:.2f} after; MB = 10^6 bytes of Blob data")

    ratios = compute_ratios(results)
    targets = compute_targets(results, ratios, grpc_built)
    if not args.no_chart:
        notes.append(write_chart(args.chart, info, results))
    if args.json:
        print(json_report(info, results, ratios, targets, notes))
    else:
        print(text_report(info, results, ratios, targets, notes))
    return 0 if not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
