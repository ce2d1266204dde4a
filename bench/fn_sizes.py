#!/usr/bin/env python3
"""Function sizes of a Rust source tree: count, median, p90, max, and the
largest file, for the closing notes of refactors.

    python3 bench/fn_sizes.py runtime/src [--rev REV]

With --rev the tree is read from that git revision instead of the working
tree. A function's size is its lines from `fn` to its closing brace
(doc comments and attributes excluded); macro bodies count as code.
"""
import re
import statistics
import subprocess
import sys


def files(root, rev):
    if rev:
        out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, root], capture_output=True, text=True, check=True)
        for path in out.stdout.split():
            if path.endswith(".rs"):
                text = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
                yield path, text
    else:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", root], capture_output=True, text=True, check=True)
        for path in out.stdout.split():
            if path.endswith(".rs"):
                yield path, open(path).read()


FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(unsafe\s+)?fn\s+\w+")


def sizes(text):
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not FN.match(line):
            continue
        depth, seen = 0, False
        for j in range(i, len(lines)):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j]).split("//")[0]
            depth += code.count("{") - code.count("}")
            seen = seen or "{" in code
            if not seen and code.rstrip().endswith(";"):
                break
            if seen and depth <= 0:
                yield j - i + 1
                break


def main():
    args = sys.argv[1:]
    rev = None
    if "--rev" in args:
        k = args.index("--rev")
        rev = args[k + 1]
        del args[k : k + 2]
    root = args[0] if args else "."
    all_sizes, largest = [], (0, "")
    for path, text in files(root, rev):
        n = text.count("\n")
        largest = max(largest, (n, path))
        all_sizes.extend(sizes(text))
    all_sizes.sort()
    p90 = all_sizes[int(0.9 * (len(all_sizes) - 1))]
    print(f"{root}{' @ ' + rev if rev else ''}: {len(all_sizes)} functions, median {statistics.median(all_sizes):g} lines, "
          f"p90 {p90}, max {all_sizes[-1]}; largest file {largest[1]} ({largest[0]} lines)")


if __name__ == "__main__":
    main()
