"""Sum up valgrind logs of a server run (make valgrind).

Each error of memcheck is one block of lines that starts with a message
("Invalid read of size 4", "Conditional jump or move depends on
uninitialised value(s)", ...) and lists its stack.  An error counts as
mpqr's when a frame of its stack is in mpqr.so; the others are
PostgreSQL's, libcurl's or libmicrohttpd's own (PostgreSQL is not built
with USE_VALGRIND here, so it reports padding it writes to disk).  Prints
the count of each, the mpqr errors in full, and exits 1 if there is one.
"""
import glob
import os
import re
import sys

LINE = re.compile(r"^==(\d+)== ?(.*)$")


def errors(path):
    """The blocks of one log (lines between two empty ones), stripped."""
    block = []
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            text = m.group(2).strip() if m else ""
            if text:
                block.append(text)
                continue
            if block:
                yield block
            block = []
    if block:
        yield block


def is_error(block):
    """A block that lists a stack is an error (the summaries do not)."""
    return any(line.startswith(("at 0x", "by 0x")) for line in block)


def main(logdir):
    logs = glob.glob(os.path.join(logdir, "vg.*.log"))
    ours, theirs = [], 0
    for path in logs:
        for block in errors(path):
            if not is_error(block):
                continue
            if any("mpqr.so" in line for line in block):
                ours.append((path, block))
            else:
                theirs += 1
    print("valgrind: %d logs (server processes), %d errors in mpqr.so, %d elsewhere"
          % (len(logs), len(ours), theirs))
    for path, block in ours:
        print("--- %s" % path)
        print("\n".join(block))
    return 1 if ours or not logs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
