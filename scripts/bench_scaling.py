"""Scaling runs for `scripts/bench.sh --scaling`: the sink's speed and peak memory as the number of
symbols and of topic partitions grows, written to a JSON file and drawn as PNG charts.

    bench_scaling.py <ticklake binary> <work dir> <records> <out dir> [<kafka brokers>]

For each run: `produce --simulate` into a fresh topic (the embedded log, and Apache Kafka for the
partition sweep when brokers are given), then `sink --once` into a local lake. The sink's own summary
gives records/s, files, bytes and peak RSS. Before a run counts, the lake is read back with `ticklake
query`: it must hold every record and every symbol.
"""

import datetime
import json
import os
import re
import subprocess
import sys

UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1000, "MB": 1000**2, "GB": 1000**3}


def size(text):
    number, unit = text.split()
    return float(number) * UNITS[unit]


def run(cmd, cwd):
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def one_run(binary, work, name, records, symbols, partitions, brokers):
    d = os.path.join(work, name)
    os.makedirs(d)
    bus = ["--brokers", brokers] if brokers else []
    topic = ["--topic", name.replace("-", "_")]
    run([binary, "-q", *bus, *topic, "produce", "--simulate", "--symbols", str(symbols),
         "--count", str(records), "--partitions", str(partitions)], d)
    out = run([binary, "-q", *bus, *topic, "sink", "--once"], d)
    written = re.search(r"(\d+) records written to .* in (\d+) files \(([\d.]+ \w+)\).* \((\d+) records/s\)", out)
    rss = re.search(r"peak memory \(RSS\): ([\d.]+ \w+)", out)
    if not written or not rss:
        sys.exit(f"unexpected sink summary in {name}:\n{out}")
    table = topic[1]
    check = run([binary, "-q", "query", "--format", "csv",
                 f"SELECT count(*), count(DISTINCT symbol) FROM {table}"], d).strip().splitlines()[-1]
    count, distinct = (int(x) for x in check.split(","))
    if int(written.group(1)) != records or count != records or distinct != symbols:
        sys.exit(f"{name}: the lake holds {count} records of {distinct} symbols, expected {records} of {symbols}")
    files, data = int(written.group(2)), size(written.group(3))
    # The layout the sink chose (`--partition-by auto`): the folder names down to the first data file.
    keys, folder = [], os.path.join(d, "lake", table)
    while True:
        sub = sorted(e for e in os.listdir(folder) if "=" in e)
        if not sub:
            break
        keys.append(sub[0].split("=")[0])
        folder = os.path.join(folder, sub[0])
    result = {"run": name, "bus": "kafka" if brokers else "embedded", "records": records,
              "symbols": symbols, "partitions": partitions, "layout": ",".join(keys) or "none",
              "records_per_s": int(written.group(4)),
              "files": files, "mean_file_bytes": data / max(files, 1), "peak_rss_bytes": size(rss.group(1))}
    subprocess.run(["rm", "-rf", d])
    return result


def chart(runs, x, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, speed = plt.subplots(figsize=(7, 4))
    memory = speed.twinx()
    for bus, marker in (("embedded", "o"), ("kafka", "s")):
        points = sorted((r[x], r) for r in runs if r["bus"] == bus)
        if not points:
            continue
        xs = [p[0] for p in points]
        speed.plot(xs, [p[1]["records_per_s"] / 1e6 for p in points], marker=marker, color="tab:blue",
                   label=f"sink records/s ({bus} log)" if bus == "embedded" else f"sink records/s (Apache Kafka)")
        memory.plot(xs, [p[1]["peak_rss_bytes"] / 2**20 for p in points], marker=marker, linestyle="--",
                    color="tab:red", label=f"peak RSS ({'embedded log' if bus == 'embedded' else 'Apache Kafka'})")
    if x == "symbols":
        speed.set_xscale("log")
    speed.set_xticks(sorted({r[x] for r in runs}))
    speed.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    speed.set_xlabel(x)
    speed.set_ylabel("million records/s", color="tab:blue")
    memory.set_ylabel("peak RSS, MiB", color="tab:red")
    speed.set_ylim(bottom=0)
    memory.set_ylim(bottom=0)
    speed.set_title(title)
    lines = speed.get_legend_handles_labels()
    more = memory.get_legend_handles_labels()
    speed.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    binary, work, records, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    brokers = sys.argv[5] if len(sys.argv) > 5 else None
    runs = []
    for symbols in (10, 100, 1_000, 10_000):
        runs.append(one_run(binary, work, f"symbols-{symbols}", records, symbols, 4, None))
    for partitions in (1, 4, 16):
        runs.append(one_run(binary, work, f"partitions-{partitions}", records, 100, partitions, None))
        if brokers:
            runs.append(one_run(binary, work, f"kafka-partitions-{partitions}", records, 100, partitions, brokers))
    os.makedirs(out, exist_ok=True)
    json.dump({"machine": os.environ.get("BENCH_MACHINE"), "date": datetime.date.today().isoformat(), "runs": runs},
              open(os.path.join(out, "scaling.json"), "w"), indent=2)
    chart([r for r in runs if r["run"].startswith("symbols-")], "symbols",
          f"sink --once, {records:,} records, 4 partitions, local lake", os.path.join(out, "scaling-symbols.png"))
    chart([r for r in runs if "partitions-" in r["run"]], "partitions",
          f"sink --once, {records:,} records, 100 symbols, local lake", os.path.join(out, "scaling-partitions.png"))
    print("| bus | symbols | partitions | layout | sink records/s | files | mean file | peak RSS |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['bus']} | {r['symbols']:,} | {r['partitions']} | {r['layout']} | {r['records_per_s']:,} | {r['files']:,} | "
              f"{r['mean_file_bytes'] / 1024:,.0f} KiB | {r['peak_rss_bytes'] / 2**20:,.0f} MiB |")
    print(f"(written to {out}/scaling.json, scaling-symbols.png, scaling-partitions.png)")


if __name__ == "__main__":
    main()
