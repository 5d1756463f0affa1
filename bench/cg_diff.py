#!/usr/bin/python3
"""Per-message cost from two callgrind runs of the same server.

    cg_diff.py N1 FILE1.out N2 FILE2.out [--top 25]

Runs callgrind_annotate (self cost, every function) on both outputs and
prints, per shared object and per function, (Ir(N2) - Ir(N1)) / (N2 - N1):
the instructions each echoed message costs there, with start-up, connection
set-up and shutdown cancelled out.
"""
import re
import subprocess
import sys


def functions(path, inclusive=False):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          "--inclusive=" + ("yes" if inclusive else "no"), path],
                         capture_output=True, text=True, check=True).stdout
    fns = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*\S)\s*$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(2)
        name = re.sub(r"'\d+", "", name)  # recursion levels: ...'2
        o = re.search(r"\[([^\]]+)\]$", name)
        obj = o.group(1) if o else "?"
        fn = name[:o.start()].strip() if o else name
        fn = re.sub(r"^.*?:(?=[^:]+$)", "", fn) if not fn.startswith("???") else fn[4:]
        key = (obj, fn)
        v = int(m.group(1).replace(",", ""))
        if inclusive:  # recursion levels would count twice: keep the largest
            fns[key] = max(fns.get(key, 0), v)
        else:
            fns[key] = fns.get(key, 0) + v
    return fns


def main():
    args = sys.argv[1:]
    top = 25
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    n1, f1, n2, f2 = int(args[0]), args[1], int(args[2]), args[3]
    a, b = functions(f1), functions(f2)
    d = (n2 - n1)
    per = {k: (b.get(k, 0) - a.get(k, 0)) / d for k in set(a) | set(b)}
    total = sum(per.values())
    objs = {}
    for (obj, _), v in per.items():
        objs[obj] = objs.get(obj, 0) + v
    print(f"{total:,.0f} instructions per message in total")
    print()
    print("by object:")
    for obj, v in sorted(objs.items(), key=lambda kv: -kv[1]):
        if abs(v) >= 1:
            print(f"  {v:8,.0f}  {100 * v / total:5.1f}%  {obj}")
    print()
    print(f"top {top} functions (self cost):")
    for (obj, fn), v in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        short = obj.rsplit("/", 1)[-1]
        print(f"  {v:8,.0f}  {100 * v / total:5.1f}%  {fn}  [{short}]")
    a, b = functions(f1, True), functions(f2, True)
    inc = {k: (b.get(k, 0) - a.get(k, 0)) / d for k in set(a) | set(b)}
    print()
    print(f"top {top} functions (inclusive cost: the function and what it calls; "
          "recursive interpreter frames and the program's outer frames left out):")
    known = {fn for (obj, fn) in inc if obj != "?"}
    rows = [(k, v) for k, v in inc.items()
            if v < 0.995 * total and not (k[0] == "?" and k[1] in known)]
    for (obj, fn), v in sorted(rows, key=lambda kv: -kv[1])[:top]:
        short = obj.rsplit("/", 1)[-1]
        print(f"  {v:8,.0f}  {100 * v / total:5.1f}%  {fn}  [{short}]")


if __name__ == "__main__":
    main()
