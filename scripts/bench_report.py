"""Writes the generated part of BENCHMARKS.md (between its `bench-report` markers) from the JSON files of
one `scripts/bench.sh --report` run: ingest.json, queries.json (and queries-100m.json when given),
seed.json, connect.json and scaling.json (with its charts) in the benchmarks folder.

    bench_report.py <benchmarks dir> <BENCHMARKS.md> <commit>

Every JSON file it reads was checked by the run that wrote it (counts and checksums) before a number was
written; this script only lays them out, with each goal of issue 10 beside the measure.
"""

import json
import os
import sys

BEGIN = "<!-- bench-report:begin -->"
END = "<!-- bench-report:end -->"


def load(folder, name):
    path = os.path.join(folder, name)
    return json.load(open(path)) if os.path.exists(path) else None


def machine(m):
    if isinstance(m, dict):
        return f"{m.get('cores')} cores, {m.get('cpu')}, {m.get('memory_gib')} GiB"
    return m or "unknown"


def rate(x):
    return f"{x / 1e6:.2f} M/s" if x >= 1e6 else f"{x / 1e3:,.0f} k/s"


def mib(b):
    return f"{b / 2**20:,.0f} MiB"


def mark(ok):
    return "met" if ok else "**not met**"


def goals(ingest, queries, scaling):
    rows = []
    if ingest:
        e2e = {r["bus"]: r for r in ingest["end_to_end"]}
        emb = e2e.get("embedded")
        if emb:
            rows.append(("simulated feed -> embedded log -> sink -> local Parquet, producer and sink at once",
                         rate(emb["records_per_s"]), ">= 1 M/s", mark(emb["records_per_s"] >= 1e6)))
        alone = [r for r in ingest["sink"] if r["bus"] == "embedded" and r["store"] == "local"
                 and r["table_format"] == "hive"]
        rss = [r["peak_rss_bytes"] for r in ingest["sink"]]
        if scaling:
            rss += [r["peak_rss_bytes"] for r in scaling["runs"]]
        if alone:
            a = alone[0]
            rows.append((f"sink alone, embedded log -> local Hive, {a['records']:,} records",
                         f"{rate(a['records_per_s'])}; peak RSS {mib(max(rss))} over every ingest and scaling run",
                         ">= 2 M/s, RSS <= 512 MiB", f"speed {mark(a['records_per_s'] >= 2e6)}, "
                         f"memory {mark(max(rss) <= 512 * 2**20)}"))
        c = ingest["ceiling"]
        kafka_sink = [r for r in ingest["sink"] if r["bus"] == "kafka" and r["store"] == "local"
                      and r["table_format"] == "hive"]
        if kafka_sink:
            ours = ingest["produce"]["kafka"]["seconds"] + kafka_sink[0]["seconds"]
            theirs = c["kcat_produce_s"] + c["kcat_consume_s"]
            rows.append(("Apache Kafka on loopback: produce, then consume into the lake, against kcat's produce "
                         "then consume of the same messages",
                         f"{theirs / ours:.0%} of the ceiling ({ours:.1f} s against {theirs:.1f} s)",
                         ">= 80% of the broker's ceiling", mark(theirs / ours >= 0.8)))
        for f in ingest["freshness"]:
            if f["rate"] == 10_000:
                rows.append((f"freshness at 10k records/s, {f['flush_interval']}",
                             f"p50 {f['p50_s']:.2f} s, p99 {f['p99_s']:.2f} s", "p99 <= 2 s", mark(f["p99_s"] <= 2)))
    if queries:
        qs = queries["queries"]
        at_or_under = sum(1 for q in qs if q["ratio"] <= 1.0)
        worst = max(qs, key=lambda q: q["ratio"])
        rows.append((f"{len(qs)} queries on a {queries['lake_rows']:,}-row lake against DuckDB on the same files",
                     f"{at_or_under} of {len(qs)} at or under DuckDB; slowest: {worst['query']} {worst['ratio']:.2f}x",
                     "every query <= 1.0x", mark(at_or_under == len(qs))))
    if scaling:
        wide = [r for r in scaling["runs"] if r["run"] == "symbols-10000"]
        if wide:
            w = wide[0]
            rows.append((f"10,000 symbols, {w['records']:,} records, default layout",
                         f"{w['files']:,} files of {w['mean_file_bytes'] / 1024:,.0f} KiB on average"
                         f"{' (' + w['layout'] + ' folders)' if w.get('layout') else ''}",
                         "files stay large at any symbol count", mark(w["mean_file_bytes"] >= 1 << 20)))
    out = ["| measure | this run | goal | |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.append("| `cargo build --release` from a clean clone | not timed by this command (see the dated "
               "sections below) | <= 20 min | |")
    return out


def ingest_section(ingest):
    n = ingest["records"]
    out = [f"### Ingest: every way into the lake ({n:,} records, {ingest['symbols']} symbols, "
           f"{ingest['partitions']} partitions)", "",
           "Each sink is `sink --once` of the whole topic, its own group and table; every lake was read back "
           "(count, distinct symbols, and the sum of closes DuckDB reads from the local Hive lake's files) "
           "before its line was written.", "",
           "| bus | produce | lake | table | sink records/s | files | mean file | peak RSS |",
           "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in ingest["sink"]:
        p = ingest["produce"][r["bus"]]
        out.append(f"| {r['bus']} | {rate(p['records_per_s'])} | {r['store']} | {r['table_format']} | "
                   f"{rate(r['records_per_s'])} | {r['files']:,} | {r['bytes'] / max(r['files'], 1) / 1024:,.0f} KiB | "
                   f"{mib(r['peak_rss_bytes'])} |")
    out += ["", "End to end, producer and sink at once (local Hive lake, from the producer's start until the "
            "lake holds every record):", "", "| bus | records/s |", "|---|---:|"]
    out += [f"| {r['bus']} | {rate(r['records_per_s'])} |" for r in ingest["end_to_end"]]
    c = ingest["ceiling"]
    kafka = ingest["produce"]["kafka"]
    out += ["", "Apache Kafka beside its own ceiling: kcat (librdkafka alone) produces the same messages into a "
            "topic of the same shape (lz4, idempotent, 4 partitions) and consumes them back:", "",
            "| step | ticklake | kcat | ticklake / kcat |", "|---|---:|---:|---:|",
            f"| produce (ticklake: JSON encoding, transactions) | {rate(kafka['records_per_s'])} | "
            f"{rate(n / c['kcat_produce_s'])} | {c['kcat_produce_s'] / kafka['seconds']:.0%} |",
            f"| consume (ticklake: `consume --values`) | {rate(n / c['ticklake_consume_s'])} | "
            f"{rate(n / c['kcat_consume_s'])} | {c['kcat_consume_s'] / c['ticklake_consume_s']:.0%} |"]
    seconds = ingest["freshness"][0]["seconds"] if ingest["freshness"] else 0
    out += ["", f"Freshness: a live feed (event time = now, 100 symbols) for {seconds} s into a running sink; the age "
            "of each record when its file is committed, and the Parquet files a query of the table then reads "
            "(those at its partitions' locations in the catalog):", "",
            "| records/s | sink settings | p50 | p99 | max | files read | mean file |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    out += [f"| {f['rate']:,} | {f['flush_interval']} | {f['p50_s']:.2f} s | {f['p99_s']:.2f} s | {f['max_s']:.2f} s "
            f"| {format(f['files_read'], ',') if 'files_read' in f else ''} | "
            f"{format(f['mean_file_bytes'] / 1024, ',.0f') + ' KiB' if 'mean_file_bytes' in f else ''} |"
            for f in ingest["freshness"]]
    return out


def query_section(q, title, note=""):
    out = [f"### {title}: {q['lake_rows']:,} rows, {q['symbols']} symbols, {q.get('dates', '?')} dates; "
           f"median of {q['runs']} warm runs{', interleaved' if q.get('interleaved') else ''}; "
           f"DuckDB {q.get('duckdb', '')}", ""]
    if note:
        out += [note, ""]
    out += [
           "Each answer was checked on both engines (rows, and the sum of every numeric column) first.", "",
           "| query | ticklake | DuckDB | ratio |", "|---|---:|---:|---:|"]
    for r in q["queries"]:
        out.append(f"| {r['query']} | {r['ticklake_ms']:.1f} ms | {r['duckdb_ms']:.1f} ms | {r['ratio']:.2f}x |")
    return out


def seed_section(seed):
    s = seed["seed"]
    seed_e = s["records"] / (s["produce"]["seconds"] + s["consume"]["seconds"])
    out = ["### The seed's pipeline beside ticklake (same Apache Kafka, same moto S3)", "",
           "The seed: pandas + kafka-python producer, a consumer writing one JSON object per message with boto3. "
           "S3 and the lake were checked to hold every record with the sum of closes sent.", "",
           "| pipeline | records | produce then consume, records/s | vs the seed |", "|---|---:|---:|---:|",
           f"| the seed (Python) | {s['records']:,} | {seed_e:,.0f} | 1x |"]
    for n, t in seed["ticklake"].items():
        e = int(n) / (t["produce_seconds"] + t["sink_seconds"])
        out.append(f"| ticklake | {int(n):,} | {e:,.0f} | {e / seed_e:,.0f}x |")
    return out


def connect_section(connect, ingest):
    out = ["### Kafka Connect with Apache Iceberg's sink, the peer", ""]
    stale = os.environ.get("BENCH_CONNECT_STALE")
    if stale:
        why = ("The peer was not run (`BENCH_CONNECT=0`)" if stale == "skipped" else
               "The peer did not fill its table within its time limit (`BENCH_CONNECT_TIMEOUT`) in this run")
        out += [f"**Not from this run.** {why}; its row is its last run's "
                f"({connect.get('date', 'date not recorded')}, `benchmarks/connect.json`). The ticklake rows "
                "are this run's.", ""]
    out += [
           f"Kafka Connect with Apache Iceberg's sink ({connect['settings'].get('tasks.max')} tasks, commit every "
           f"{connect['settings'].get('iceberg.control.commit.interval-ms')} ms, REST catalog) on the same broker, "
           "its table checked against the topic:", "",
           "| sink | records | records/s |", "|---|---:|---:|",
           f"| Kafka Connect + Iceberg sink | {connect['count']:,} | {connect['records_per_s']:,} |"]
    if ingest:
        for r in ingest["sink"]:
            if r["bus"] == "kafka" and r["table_format"] == "iceberg":
                out.append(f"| ticklake, Iceberg on {r['store']} (SQL catalog) | {r['records']:,} | "
                           f"{r['records_per_s']:,} |")
    return out


def scaling_section(scaling, folder):
    out = ["### Scaling: symbols and partitions (`sink --once`, local lake, default layout)", "",
           "Each lake was read back (count and distinct symbols) first.", "",
           f"![sink speed and memory by symbols]({folder}/scaling-symbols.png)",
           f"![sink speed and memory by partitions]({folder}/scaling-partitions.png)", "",
           "| bus | symbols | partitions | layout | sink records/s | files | mean file | peak RSS |",
           "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in scaling["runs"]:
        out.append(f"| {r['bus']} | {r['symbols']:,} | {r['partitions']} | {r.get('layout', '')} | "
                   f"{rate(r['records_per_s'])} | {r['files']:,} | {r['mean_file_bytes'] / 1024:,.0f} KiB | "
                   f"{mib(r['peak_rss_bytes'])} |")
    return out


def main():
    folder, target, commit = sys.argv[1], sys.argv[2], sys.argv[3]
    ingest, queries, big = load(folder, "ingest.json"), load(folder, "queries.json"), load(folder, "queries-100m.json")
    seed, connect, scaling = load(folder, "seed.json"), load(folder, "connect.json"), load(folder, "scaling.json")
    first = ingest or queries or scaling
    if not first:
        sys.exit(f"no benchmark results in {folder}: run scripts/bench.sh --report")
    out = [BEGIN, f"## One run of everything (`scripts/bench.sh --report`, {first.get('date')}, commit {commit})", "",
           f"Machine: {machine(first.get('machine'))}. Written by `scripts/bench_report.py` from "
           f"`{folder}/*.json`; each number was checked (counts and checksums) before it was written.", "",
           "### The goals of issue 10", ""]
    out += goals(ingest, queries, scaling)
    for part in (ingest and ingest_section(ingest), queries and query_section(queries, "Queries beside DuckDB"),
                 big and query_section(big, "Queries beside DuckDB, larger lake",
                                       "" if (big.get("date"), big.get("machine"), big.get("commit")) ==
                                       tuple((queries or {}).get(k) for k in ("date", "machine", "commit")) else
                                       f"From its own run ({machine(big.get('machine'))}, "
                                       f"{big.get('date', 'date not recorded')}"
                                       + (f", commit {big['commit']}" if big.get("commit") else "")
                                       + "), not this one: compare its ratios, not its times, with the "
                                       "tables above. `--report` runs it with BENCH_REPORT_100M=1 (it "
                                       "adds about 15 minutes on a 2-core Intel Xeon)."),
                 seed and seed_section(seed),
                 connect and connect_section(connect, ingest), scaling and scaling_section(scaling, folder)):
        if part:
            out += [""] + part
    out.append(END)
    text = open(target).read() if os.path.exists(target) else "# Benchmarks\n\n"
    block = "\n".join(out)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    open(target, "w").write(text)
    print(f"{target}: the report of this run is written between its {BEGIN} markers")


if __name__ == "__main__":
    main()
