"""Peak anonymous memory of a study, and where it is reached.

    python bench/memprobe.py studies.universality OUT.json [study arguments ...]

Runs the study's ``main(argv)`` in this process while a thread reads ``/proc/self/status`` every
0.1 s: ``RssAnon`` (anonymous pages, what the process itself allocated; file-backed pages of memory
maps are left out) and the innermost splitkit or studies frame of the main thread, so the peak is
placed in the code. Writes the peak, its stack, ``VmHWM``, the wall time and the samples (every
fifth) to OUT.json and prints the summary. Linux only.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's splitkit and studies


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon", "RssFile", "VmHWM", "VmRSS")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def _where(frame) -> tuple[str, list[str]]:
    stack = traceback.extract_stack(frame) if frame is not None else []
    ours = [f"{Path(fs.filename).name}:{fs.lineno} {fs.name}" for fs in stack
            if "splitkit" in fs.filename or "studies" in fs.filename]
    return (ours[-1].split(" ")[0] if ours else ""), [f"{Path(fs.filename).name}:{fs.lineno} {fs.name}"
                                                      for fs in stack][-8:]


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    module, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    main_id = threading.main_thread().ident
    samples, peak, stop = [], {"bytes": 0, "t": 0.0, "stack": []}, threading.Event()
    t0 = time.time()

    def sample():
        while not stop.is_set():
            r = _status()
            where, stack = _where(sys._current_frames().get(main_id))
            samples.append((round(time.time() - t0, 2), r["RssAnon"], where))
            if r["RssAnon"] > peak["bytes"]:
                peak.update(bytes=r["RssAnon"], t=time.time() - t0, stack=stack)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rc = importlib.import_module(module).main(argv)
    finally:
        stop.set()
        th.join()
        by_line: dict[str, int] = {}
        for _, b, w in samples:
            by_line[w] = max(by_line.get(w, 0), b)
        res = {"module": module, "argv": argv, "peak_rss_anon_gib": peak["bytes"] / 2**30, "peak_t_s": peak["t"],
               "peak_stack": peak["stack"], "vm_hwm_gib": _status()["VmHWM"] / 2**30, "wall_s": time.time() - t0,
               "top_lines_gib": {w: b / 2**30 for w, b in sorted(by_line.items(), key=lambda x: -x[1])[:10]}}
        Path(out).write_text(json.dumps({**res, "samples": samples[::5]}))
        print(json.dumps(res, indent=1), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
