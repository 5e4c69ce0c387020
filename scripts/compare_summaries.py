"""Compare two summary.json files: every number and string outside provenance and wall times; print the differences.

Usage: python scripts/compare_summaries.py A/summary.json B/summary.json"""
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
skip = {"provenance", "wall_s", "elapsed_s", "tokens_per_s", "wall", "time_s", "timings"}
diffs, n = [], 0
def walk(x, y, path):
    global n
    if isinstance(x, dict):
        for k in x:
            if k in skip or "wall" in k or "tok_s" in k or "per_s" in k or k.endswith("_s"):
                continue
            if k not in y: diffs.append((path + "/" + k, "missing")); continue
            walk(x[k], y[k], path + "/" + k)
    elif isinstance(x, list):
        if len(x) != len(y): diffs.append((path, "len")); return
        for i, (u, v) in enumerate(zip(x, y)): walk(u, v, f"{path}[{i}]")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        n += 1
        if x != y and not (x != x and y != y): diffs.append((path, x, y))
    else:
        n += 1
        if x != y: diffs.append((path, str(x)[:60], str(y)[:60]))
walk(a, b, "")
print(f"{n} values compared, {len(diffs)} differ")
for d in diffs[:30]: print(d)
