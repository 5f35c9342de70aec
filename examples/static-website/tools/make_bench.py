#!/usr/bin/env python3
"""Writes the fixed-size pages the Skiff demo site carries for load tests.

    python3 examples/static-website/tools/make_bench.py [SITE_DIR]

bench/1k.html is exactly 1024 bytes and bench/100k.html exactly 102400
bytes: valid HTML, padded to size with an HTML comment. Deterministic, so
running it again reproduces the committed files.
"""

import os
import sys
import zlib

WORDS = ("skiff tender ring supervisor guest frame socket stack image boot heap timer "
         "executor hypercall manifest page packet relay publish gateway").split()


def head(title):
    return ("<!DOCTYPE html>\n"
            "<html lang=\"en\">\n"
            "<head>\n"
            "<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n"
            "</head>\n"
            "<body>\n")


TAIL = "</body>\n</html>\n"


def pad(body, size):
    """Appends a comment that brings body + TAIL to exactly size bytes."""
    fixed = len(body.encode()) + len("<!--  -->\n") + len(TAIL)
    room = size - fixed
    if room < 0:
        raise SystemExit(f"content is {-room} bytes over {size}")
    filler = ("padding to a fixed size " * (room // 24 + 1))[:room]
    out = body + "<!-- " + filler + " -->\n" + TAIL
    assert len(out.encode()) == size, len(out.encode())
    assert "--" not in filler
    return out


def one_k():
    body = head("Skiff benchmark page: 1 KiB")
    body += ("<h1>1 KiB</h1>\n"
             "<p>A fixed-size page for load tests of the HTTP server of the Skiff demo site: "
             "exactly 1024 bytes, served by a Skiff unikernel.</p>\n")
    return pad(body, 1024)


def hundred_k():
    size = 102400
    body = head("Skiff benchmark page: 100 KiB")
    body += ("<h1>100 KiB</h1>\n"
             "<p>A fixed-size page for load tests of the HTTP server of the Skiff demo site: "
             "exactly 102400 bytes of table rows, served by a Skiff unikernel.</p>\n"
             "<table>\n"
             "<thead><tr><th>#</th><th>time (ms)</th><th>peer</th><th>bytes</th>"
             "<th>words</th><th>crc32</th></tr></thead>\n"
             "<tbody>\n")
    end = "</tbody>\n</table>\n"
    seed = 2026
    n = 0
    while True:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        words = " ".join(WORDS[(seed >> k) % len(WORDS)] for k in (0, 5, 10, 15))
        row = (f"<tr><td>{n}</td><td>{n * 0.125:.3f}</td><td>10.0.2.15:{49152 + seed % 16384}</td>"
               f"<td>{64 + seed % 1437}</td><td>{words}</td>"
               f"<td>{zlib.crc32(words.encode()) ^ n:08x}</td></tr>\n")
        # Stop while there is room for the end of the table and some padding.
        if len((body + row + end).encode()) + len("<!--  -->\n") + len(TAIL) + 16 > size:
            break
        body += row
        n += 1
    return pad(body + end, size)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    site = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "site")
    bench = os.path.join(site, "bench")
    os.makedirs(bench, exist_ok=True)
    for name, make in [("1k.html", one_k), ("100k.html", hundred_k)]:
        data = make().encode()
        with open(os.path.join(bench, name), "wb") as f:
            f.write(data)
        print(f"bench/{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
