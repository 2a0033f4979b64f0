"""Two ferroserve builds side by side: the same archives, settings and load as bench/compare.py
(which it drives), every model at batch 1 and at batch 8, REPS runs per build alternating
which starts first; medians with ranges. The question it answers: did a change cost
throughput or server CPU per request on any case?

Usage: python3 bench/before_after.py BEFORE_BIN AFTER_BIN BENCH_BIN PYTHON
"""
import os
import shutil
import sys
import tempfile
import time

BEFORE, AFTER, BENCH, PY = sys.argv[1:5]
# compare.py reads its binaries from the command line.
sys.argv = [sys.argv[0], AFTER, BENCH, "", PY]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

NAMES = ("before", "after")
compare.BINARIES.update({"before": BEFORE, "after": AFTER})


def main():
    work = tempfile.mkdtemp(prefix="ferroserve-before-after-")
    runs = {(n, b): [] for n in NAMES for b in compare.CONNECTIONS}
    orders = []
    try:
        store, expected = compare.prepare(work)
        for batch in compare.CONNECTIONS:
            for rep in range(compare.REPS):
                order = NAMES if rep % 2 == 0 else NAMES[::-1]
                orders.append(f"batch {batch}, run {rep + 1}: {' then '.join(order)}")
                for name in order:
                    print(f"batch {batch} run {rep + 1}: {name}", file=sys.stderr)
                    runs[(name, batch)].append(compare.run_server(name, work, store, batch, expected))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med, spread = compare.med, compare.spread
    print(f"# ferroserve before / after — {time.strftime('%Y-%m-%d')}\n")
    print(f"Machine: {os.cpu_count()} cores, loopback; wrk and the server share the cores. Settings as "
          f"bench/compare.py: one worker per model, 1 intra-op thread, batch 1, then batch 8 with maxBatchDelay "
          f"{compare.BATCH_DELAY_MS} ms; wrk {compare.DURATION} s per case after a 1 s warm-up; {compare.REPS} runs per "
          f"build, alternating; median (min–max). Only 2xx answers count.\n")
    print("Run order: " + "; ".join(orders) + ".\n")
    wrong = [w for rs in runs.values() for r in rs for w in r["wrong"]]
    checked = sum(r["checked"] for rs in runs.values() for r in rs)
    print(f"Answers checked before and after every case: {checked - len(wrong)} of {checked} as expected"
          + (": " + "; ".join(wrong[:5]) if wrong else "") + ".\n")
    print("| model | batch | conns | before req/s | after req/s | after / before | before p50 ms | after p50 ms "
          "| server CPU s per 1k req before / after | CPU change | errors before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch in compare.CONNECTIONS:
        for model in compare.MODELS:
            for c in compare.CONNECTIONS[batch]:
                b = [r["results"][(model, c)] for r in runs[("before", batch)]]
                a = [r["results"][(model, c)] for r in runs[("after", batch)]]
                ratio = med([x["rps"] for x in a]) / max(med([x["rps"] for x in b]), 1e-9)
                cb, ca = med([x["cpu_per_1k"] for x in b]), med([x["cpu_per_1k"] for x in a])
                print(f"| {model} | {batch} | {c} | {spread([x['rps'] for x in b])} | {spread([x['rps'] for x in a])} "
                      f"| {ratio:.2f} | {spread([x['p50'] for x in b], '{:.2f}')} | {spread([x['p50'] for x in a], '{:.2f}')} "
                      f"| {cb:.3f} / {ca:.3f} | {100 * (ca - cb) / max(cb, 1e-9):+.1f} % "
                      f"| {sum(x['errors'] for x in b)} / {sum(x['errors'] for x in a)} |")
    if wrong:
        sys.exit(1)


if __name__ == "__main__":
    main()
