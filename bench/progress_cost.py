"""What the progress display and --json cost on input (a), measured without noise.

Calls the CLI printers' ``progress(sent, total)`` as often as a 1 GiB upload
does (once per 1 MiB block read by the encoder), the human printer drawing
a real tqdm bar on a pseudo-terminal, and prints one JSON line:
``{"bar_ms": CPU ms, "json_ms": CPU ms, "import_ms": ms to import tqdm}``.

    python bench/progress_cost.py [TOTAL_BYTES]
"""

import io
import json
import os
import pty
import sys
import threading
import time


def main(argv):
    total = int(argv[0]) if argv else 1 << 30
    from spirodeploy.output import HumanPrinter, JsonPrinter

    started = time.perf_counter()
    import tqdm  # noqa: F401 - the import the first progress call pays

    import_ms = (time.perf_counter() - started) * 1000
    master, slave = pty.openpty()
    err = os.fdopen(slave, "w")

    def drain():
        while True:
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    result = {"import_ms": round(import_ms, 1), "calls": -(-total // (1 << 20))}
    for key, printer in (("bar_ms", HumanPrinter(out=io.StringIO(), err=err, progress=True)),
                         ("json_ms", JsonPrinter())):
        cpu = time.process_time()
        sent = 0
        while sent < total:
            sent = min(total, sent + (1 << 20))
            printer.progress(sent, total)
        result[key] = round((time.process_time() - cpu) * 1000, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
