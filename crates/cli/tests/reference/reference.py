"""Independent reference answers for the query tests (run with the venv of scripts/test.sh).

  reference.py duckdb GLOB        stdin: a JSON list of SQL texts over the view `t`, which DuckDB builds
                                  from the Parquet files GLOB with Hive partitioning;
                                  stdout: a JSON list with each query's rows (lists of values).
  reference.py pyiceberg LAKE TABLE
                                  stdin: a JSON list of SQL texts over the view `t`: the Iceberg table
                                  TABLE of the lake's embedded catalog (LAKE/_ticklake/iceberg.sqlite)
                                  as pyiceberg reads it (its current snapshot), queried with DuckDB;
                                  stdout: {"answers": [rows of each query], "snapshots": [summaries]}.
  reference.py pyiceberg-glue DATABASE TABLE
                                  the same, for the Iceberg table DATABASE.TABLE in Glue, its files on S3
                                  (Glue and S3 endpoints and credentials from the AWS_* variables).
  reference.py pyiceberg-rest URI NAMESPACE TABLE
                                  the same, for NAMESPACE.TABLE in the Iceberg REST catalog at URI.
  reference.py spark LAKE ICEBERG_TABLE HIVE_TABLE JARS
                                  stdin: a JSON list of SQL texts over `{t}`; Spark (PySpark, local)
                                  runs each over the Iceberg table (read through Iceberg's JDBC catalog on
                                  the lake's embedded catalog file, with the jars in JARS) and over the Hive
                                  table's Parquet files; stdout: {"iceberg": [rows...], "hive": [rows...]}.
  reference.py glue DATABASE      the tables and partitions of a Glue database as the Glue API returns
                                  them (endpoint and credentials from the AWS_* variables), as JSON.
"""
import json
import os
import sys


def cell(v):
    if v is None:
        return None
    if isinstance(v, (int, float, str, bool)):
        return v
    return str(v)


def duckdb_answers(files):
    """`files` is a glob, or a file holding one path per line (a list of ticklake's `files(…)`)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if os.path.isfile(files):
        with open(files) as f:
            paths = [line.strip() for line in f if line.strip()]
        con.execute("SET VARIABLE files = ?", [paths])
        source = "getvariable('files')"
    else:
        source = "'" + files.replace("'", "''") + "'"
    con.execute(
        f"CREATE VIEW t AS SELECT * FROM read_parquet({source}, hive_partitioning = true, "
        "hive_types = {'date': VARCHAR, 'symbol': VARCHAR})"
    )
    out = []
    for sql in json.load(sys.stdin):
        rows = con.execute(sql).fetchall()
        out.append([[cell(v) for v in row] for row in rows])
    json.dump(out, sys.stdout)


def run_queries(con):
    out = []
    for sql in json.load(sys.stdin):
        rows = con.execute(sql).fetchall()
        out.append([[cell(v) for v in row] for row in rows])
    return out


def pyiceberg_answers(lake, table):
    from pyiceberg.catalog.sql import SqlCatalog

    lake = os.path.abspath(lake)
    catalog = SqlCatalog(
        "ticklake",
        uri=f"sqlite:///{lake}/_ticklake/iceberg.sqlite",
        warehouse=f"file://{lake}",
    )
    answer_from(catalog.load_table(("ticklake", table)))


def pyiceberg_glue_answers(database, table):
    from pyiceberg.catalog.glue import GlueCatalog

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    catalog = GlueCatalog(
        "glue",
        **{
            "glue.endpoint": endpoint,
            "glue.region": region,
            "glue.access-key-id": key,
            "glue.secret-access-key": secret,
            "s3.endpoint": endpoint,
            "s3.region": region,
            "s3.access-key-id": key,
            "s3.secret-access-key": secret,
        },
    )
    answer_from(catalog.load_table((database, table)))


def pyiceberg_rest_answers(uri, namespace, table):
    from pyiceberg.catalog.rest import RestCatalog

    catalog = RestCatalog("rest", uri=uri)
    answer_from(catalog.load_table((namespace, table)))


def answer_from(t):
    """The queries (stdin) over the table's current snapshot as pyiceberg reads it, run by DuckDB, and
    the table's snapshots."""
    import duckdb

    rows = t.scan().to_arrow()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("t", rows)
    snapshots = [
        {"snapshot_id": s.snapshot_id, "summary": dict(s.summary.additional_properties)
         | {"operation": s.summary.operation.value}}
        for s in t.snapshots()
    ]
    json.dump({"answers": run_queries(con), "snapshots": snapshots,
               "files": len(t.inspect.files())}, sys.stdout)


def spark_answers(lake, iceberg_table, hive_table, jars):
    import glob

    from pyspark.sql import SparkSession

    lake = os.path.abspath(lake)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.jars", ",".join(sorted(glob.glob(os.path.join(jars, "*.jar")))))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.catalog.ticklake", "org.apache.iceberg.spark.SparkCatalog")
        .config("spark.sql.catalog.ticklake.type", "jdbc")
        .config("spark.sql.catalog.ticklake.uri", f"jdbc:sqlite:{lake}/_ticklake/iceberg.sqlite")
        .config("spark.sql.catalog.ticklake.warehouse", f"file://{lake}")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.table(f"ticklake.ticklake.{iceberg_table}").createOrReplaceTempView("iceberg_view")
    # The Hive table's files as they are (their own symbol column; no partition discovery).
    spark.read.option("recursiveFileLookup", "true").parquet(
        os.path.join(lake, hive_table)
    ).createOrReplaceTempView("hive_view")
    out = {"iceberg": [], "hive": []}
    for sql in json.load(sys.stdin):
        for kind in out:
            rows = spark.sql(sql.replace("{t}", f"{kind}_view")).collect()
            out[kind].append([[cell(v) for v in row] for row in rows])
    spark.stop()
    json.dump(out, sys.stdout)


def glue_dump(database):
    import boto3

    glue = boto3.client(
        "glue",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    )
    tables = {}
    for page in glue.get_paginator("get_tables").paginate(DatabaseName=database):
        for t in page["TableList"]:
            parts = []
            for pp in glue.get_paginator("get_partitions").paginate(
                DatabaseName=database, TableName=t["Name"]
            ):
                for p in pp["Partitions"]:
                    parts.append(
                        {"values": p["Values"], "location": p["StorageDescriptor"]["Location"]}
                    )
            sd = t["StorageDescriptor"]
            tables[t["Name"]] = {
                "columns": [[c["Name"], c["Type"]] for c in sd.get("Columns", [])],
                "partition_keys": [[c["Name"], c["Type"]] for c in t.get("PartitionKeys", [])],
                "location": sd.get("Location"),
                "serde": sd.get("SerdeInfo", {}).get("SerializationLibrary"),
                "input_format": sd.get("InputFormat"),
                "output_format": sd.get("OutputFormat"),
                "table_type": t.get("TableType"),
                "parameters": t.get("Parameters", {}),
                "partitions": sorted(parts, key=lambda p: p["values"]),
            }
    json.dump(tables, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "duckdb":
        duckdb_answers(sys.argv[2])
    elif sys.argv[1] == "pyiceberg":
        pyiceberg_answers(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "pyiceberg-glue":
        pyiceberg_glue_answers(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "pyiceberg-rest":
        pyiceberg_rest_answers(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "spark":
        spark_answers(*sys.argv[2:6])
    elif sys.argv[1] == "glue":
        glue_dump(sys.argv[2])
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
