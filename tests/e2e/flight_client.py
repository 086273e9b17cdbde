#!/usr/bin/env python3
"""Query kqd with a Flight SQL client that is not kq: pyarrow.flight over grpc+unix.

Usage: flight_client.py SOCKET SQL [--plan-only]
Prints the result as CSV on stdout. With --plan-only it asks for the FlightInfo and leaves
without fetching, as a client killed between GetFlightInfo and DoGet would. pyarrow has a Flight client but no Flight SQL helpers,
so the CommandStatementQuery message is encoded here by hand (it is two protobuf fields).
"""
import sys

import pyarrow.csv as pcsv
import pyarrow.flight as flight


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def statement_query(sql: str) -> bytes:
    command = field(1, sql.encode())
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return field(1, type_url) + field(2, command)


def main() -> int:
    socket, sql = sys.argv[1], sys.argv[2]
    # No options: gRPC C++ sends the socket path as the HTTP/2 :authority, and kqd takes it.
    client = flight.connect(f"grpc+unix://{socket}")
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql)))
    if "--plan-only" in sys.argv[3:]:
        client.close()
        return 0
    tables = [client.do_get(ep.ticket).read_all() for ep in info.endpoints]
    for t in tables:
        pcsv.write_csv(t, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
