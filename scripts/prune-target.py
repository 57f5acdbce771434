#!/usr/bin/env python3
"""Keep a shared cargo target dir from filling the disk: in each profile's
deps/, keep only the six most recent builds (hash groups) of every crate;
older ones belong to feature sets and sources no longer built. A removed
build that is still wanted is simply rebuilt."""
import collections
import os
import re
import sys

target = sys.argv[1] if len(sys.argv) > 1 else "target"
freed = 0
for profile in ("debug", "release"):
    deps = os.path.join(target, profile, "deps")
    if not os.path.isdir(deps):
        continue
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    for f in os.listdir(deps):
        m = re.match(r"^(lib)?([A-Za-z0-9_]+)-([0-9a-f]{16})(\..*)?$", f)
        if m:
            groups[m.group(2)][m.group(3)].append(os.path.join(deps, f))
    for builds in groups.values():
        newest = sorted(
            builds.values(),
            key=lambda files: max(os.path.getmtime(x) for x in files),
            reverse=True,
        )
        for files in newest[6:]:
            for x in files:
                try:
                    freed += os.path.getsize(x)
                    os.remove(x)
                except OSError:
                    pass
print(f"pruned {freed / 2**30:.1f} GiB of stale builds from {target}")
