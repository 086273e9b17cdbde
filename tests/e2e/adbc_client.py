#!/usr/bin/env python3
"""Query kqd with Python's ADBC Flight SQL driver as it comes, with no option beyond the URI.

Usage: adbc_client.py SOCKET
Prints one JSON object of what the driver saw, for the Rust test to check against kqd's own
answers: server info, table types, the tables get_objects lists down to columns, the pods
table's schema with its column remarks, a parameterised count, a 100k-row fetch into pandas,
and the refusal of a write.
"""
import json
import sys
import warnings

import adbc_driver_flightsql.dbapi as flightsql


def main() -> int:
    socket = sys.argv[1]
    # kqd has no transactions; the DB-API wrapper warns that it cannot turn autocommit off.
    warnings.simplefilter("ignore")
    conn = flightsql.connect(f"grpc+unix://{socket}")
    out = {}
    info = conn.adbc_get_info()
    out["vendor_name"] = info["vendor_name"]
    out["table_types"] = conn.adbc_get_table_types()
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    tables = {}
    for catalog in objects:
        for schema in catalog["catalog_db_schemas"]:
            for table in schema["db_schema_tables"]:
                key = f'{catalog["catalog_name"]}.{schema["db_schema_name"]}.{table["table_name"]}'
                tables[key] = [c["column_name"] for c in table["table_columns"]]
    out["objects"] = tables
    schema = conn.adbc_get_table_schema("pods")
    out["pods_remarks"] = {
        f.name: (f.metadata or {}).get(b"ARROW:FLIGHT:SQL:REMARKS", b"").decode() for f in schema
    }
    cur = conn.cursor()
    cur.execute("select count(*) as n from pods where context = ? and restarts >= ?", ("sim-1", 0))
    out["param_count"] = cur.fetchone()[0]
    cur.execute("select range as i, 'row ' || range as label from range(100000)")
    frame = cur.fetch_df()
    out["fetched_rows"] = len(frame)
    out["fetched_sum"] = int(frame["i"].sum())
    try:
        cur.execute("delete from pods")
        out["write_error"] = None
    except Exception as e:  # the driver's ProgrammingError
        out["write_error"] = str(e)
    conn.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
