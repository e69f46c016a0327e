"""The ``dsagent`` command: a thin face over the library, one error handler for every command."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from .errors import DsagentError

__all__ = ["main"]


def _settings() -> Any:
    from .settings import Settings

    return Settings.load()


def _port(text: str) -> int:
    if text == "auto":
        return 0
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a number or 'auto', not {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port {port} is outside 1-65535")
    return port


class _Progress:
    """One status line on a terminal (rewritten in place); phase changes only otherwise."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream, self.tty, self.last = stream, stream.isatty(), ""

    def step(self, message: str) -> None:
        print(f"dsagent: {message}", file=self.stream)

    def __call__(self, p: Any) -> None:
        bar = " -> ".join(x.upper() if x == p.phase else x for x in ("starting", "loading", "profiling", "ready"))
        if self.tty:
            print(f"\r  {bar}  {p.elapsed:5.0f}s ", end="", file=self.stream, flush=True)
            if p.phase == "ready":
                print(file=self.stream)
        elif p.phase != self.last:
            print(f"  {p.phase} ({p.elapsed:.0f}s)", file=self.stream, flush=True)
        self.last = p.phase


def _serve_options(args: argparse.Namespace) -> Any:
    from .serve import ServeOptions
    from .up import detect_device

    return ServeOptions(
        host=args.host, port=args.port, tp=args.tp, pp=args.pp, dtype=args.dtype,
        max_model_len=args.max_model_len, device=args.device or detect_device(),
        kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=True if args.enforce_eager else None, dummy_weights=args.dummy_weights, tokenizer=args.tokenizer,
        extra_args=tuple(args.vllm_arg or ()),
    )


def _print_deployment(dep: Any) -> None:
    from .snippets import snippets

    snip = snippets(dep)
    secs = dep.measured.get("seconds_to_ready")
    print(f"\n{dep.name} is ready" + (f" (started in {secs:.0f} s)" if secs else "") + "\n")
    print(f"  base URL    {dep.base_url}\n  model       {dep.name}\n  API key     {dep.api_key_file}")
    print(f"  log         {dep.log_file}\n  stop with   dsagent stop {dep.name}\n")
    est, got = dep.estimate or {}, dep.measured or {}
    rows = [(label, est.get(key), got.get(key)) for label, key in
            (("KV-cache tokens", "kv_cache_tokens"), ("max concurrency", "max_concurrency"))
            if est.get(key) is not None and got.get(key) is not None]
    if rows:
        print(f"  {'':16} {'estimate':>12} {'measured':>12}")
        for label, e, m in rows:
            print(f"  {label:16} {e:>12,} {m:>12,}" + (f"  ({(e - m) / m * 100:+.1f}%)" if m else ""))
        print()
    for title, text in (("curl", snip["curl"]), ("OpenAI SDK", snip["openai"]), ("LangChain", snip["langchain"])):
        print(f"--- {title} ---\n{text}\n")


def cmd_up(args: argparse.Namespace) -> int:
    from .up import up

    progress = _Progress()
    dep = up(args.model, options=_serve_options(args), name=args.name, settings=_settings(),
             wait_ready=not args.no_wait, timeout=args.timeout, on_step=progress.step, on_progress=progress)
    if args.json:
        print(json.dumps(dep.to_json(), indent=2))
    elif dep.state == "ready":
        _print_deployment(dep)
    else:
        print(f"{dep.name} is starting (pid {dep.pid}); follow it with: dsagent status {dep.name}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .catalog import resolve
    from .fetch import fetch

    res = fetch(resolve(args.model), _settings(), force=args.force, deep_verify=args.verify, dry_run=args.dry_run,
                sources=args.source, mirror=args.mirror, revision=args.revision, progress=False if args.json else None)
    if res.plan is not None:
        print(json.dumps(res.plan.to_json(), indent=2) if args.json else res.plan.table())
    elif args.json:
        print(json.dumps({"path": str(res.path), "source": res.source, "reused": res.reused, "revision": res.revision,
                          "refetched": list(res.refetched), "skipped": [list(s) for s in res.skipped],
                          "seconds": round(res.seconds, 2), "manifest": res.manifest}, indent=2))
    else:
        verb = "verified" if args.verify else ("already in the store" if res.reused else "fetched")
        pin = f" @ {res.revision}" if res.revision else ""
        print(f"{args.model}{pin}: {verb} at {res.path} ({res.seconds:.1f} s)")
        for name in res.refetched:
            print(f"  {name} failed verification and was fetched again")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .records import list_all, load
    from .status import status

    settings = _settings()
    if args.name:
        from .errors import NoDeploymentError

        dep = load(settings, args.name)
        if dep is None:
            raise NoDeploymentError(f"no deployment named {args.name!r}", "list them with `dsagent ps`")
        deps = [dep]
    else:
        deps = list_all(settings)
    reports = [status(d) for d in deps]
    if args.json:
        print(json.dumps(reports[0] if args.name or len(reports) == 1 else reports, indent=2))
        return 0
    if not reports:
        print("no deployments; start one with: dsagent up")
    for r in reports:
        kv = f"{r['kv_cache_usage'] * 100:.1f}%" if r["kv_cache_usage"] is not None else "-"
        print(f"{r['name']}: {r['state']}  {r['base_url']}  pid {r['pid'] or '-'}  "
              f"KV used {kv}  running {r['requests_running'] if r['requests_running'] is not None else '-'}"
              + (f"\n  reason: {r['reason']}" if r["reason"] else ""))
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from .procs import MARK
    from .records import list_all
    from .status import live_state, orphans

    settings = _settings()
    deps = list_all(settings)
    rows = [(d.name, live_state(d), d.base_url, d.pid) for d in deps]
    orphan = orphans(settings)
    if args.json:
        print(json.dumps({"deployments": [dict(zip(("name", "state", "base_url", "pid"), r)) for r in rows],
                          "orphans": [o.__dict__ for o in orphan]}, indent=2))
        return 0
    print(f"{'NAME':32} {'STATE':10} {'URL':28} PID")
    for name, state, url, pid in rows:
        print(f"{name:32} {state:10} {url:28} {pid or '-'}")
    if orphan:
        print("\norphaned vLLM processes (no live deployment owns them; `dsagent stop --orphans` ends them):")
        mine = {d.env.get(MARK, d.name): d.name for d in deps}
        for o in orphan:
            left_by = mine.get(o.deployment or "")
            print(f"  {o.describe()}" + (f"\n    left by deployment {left_by}: `dsagent stop {left_by}` ends it"
                                        if left_by else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from .errors import NoDeploymentError
    from .ready import log_tail
    from .records import load

    dep = load(_settings(), args.name)
    if dep is None:
        raise NoDeploymentError(f"no deployment named {args.name!r}", "list them with `dsagent ps`")
    print(log_tail(dep.log_file, args.lines))
    if args.follow:
        with open(dep.log_file) as f:
            f.seek(0, 2)
            while True:
                line = f.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.3)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .stop import stop, stop_orphans

    settings = _settings()
    if args.orphans:
        ended = stop_orphans(settings)
        print(f"ended {len(ended)} orphaned vLLM process(es)")
        return 0
    if not args.name and not args.all:
        from .records import list_all
        from .status import live_state

        running = [d.name for d in list_all(settings) if live_state(d) not in ("stopped", "failed")]
        if len(running) != 1:
            raise DsagentError(f"{len(running)} deployments are running: {', '.join(running) or 'none'}",
                               "name one (dsagent stop NAME) or use --all")
        args.name = running[0]
    for res in stop(settings, args.name):
        print(f"{res.name}: stopped ({len(res.ended)} process(es) ended, none left)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import CATALOG

    for spec in CATALOG:
        print(f"{spec.name:32} {spec.repo_id:45} {spec.description}")
    return 0


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalog name, hub id or model folder (default: the embedded model on CPU)")
    p.add_argument("--name", help="deployment and served model name (default: the catalog name)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port number, or 'auto' for a free one (default 8000)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
    p.add_argument("--dtype", default="auto", help="weights dtype (auto: float32 on CPU)")
    p.add_argument("--max-model-len", type=int, help="context length (CPU default 2048)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="default: gpu when an NVIDIA GPU is present")
    p.add_argument("--kv-cache-gib", type=int, help="CPU KV cache size (default: from the estimate)")
    p.add_argument("--gpu-memory-utilization", type=float, help="share of each GPU vLLM may use")
    p.add_argument("--enforce-eager", action="store_true", help="skip torch.compile / CUDA graphs")
    p.add_argument("--dummy-weights", action="store_true", help="random weights of the real shapes (rehearsal)")
    p.add_argument("--tokenizer", help="tokenizer folder or id, if not the model's (e.g. with --dummy-weights)")
    p.add_argument("--vllm-arg", action="append", metavar="ARG", help="pass one more argument to vLLM (repeatable)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for ready (default 900)")
    p.add_argument("--no-wait", action="store_true", help="return once launched")
    p.add_argument("--json", action="store_true", help="print the deployment record as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsagent", description="Serve DeepSeek models locally with vLLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb, func, text in (("up", cmd_up, "estimate, fetch and serve a model; print how to call it"),
                             ("serve", cmd_up, "same as up")):
        p = sub.add_parser(verb, help=text, description=text)
        _add_serve_flags(p)
        p.set_defaults(func=func)
    p = sub.add_parser("fetch", help="put a model's weights in the store, verified")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="fetch or convert again")
    p.add_argument("--verify", action="store_true",
                   help="re-check every file's sha256 (hub models: against the source's metadata; bad files are fetched again)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the files, sizes, what is cached and the disk needed vs free; download nothing")
    p.add_argument("--source", metavar="ORDER",
                   help="sources to try in order, e.g. hub,mirror,modelscope (default: $DSAGENT_FETCH_SOURCES, "
                        "else hub,mirror,modelscope; mirror first when one is set)")
    p.add_argument("--mirror", metavar="URL", help="an HF-compatible mirror (default: $HF_ENDPOINT)")
    p.add_argument("--revision", help="branch, tag or commit of a hub model (default: main; ModelScope: master)")
    p.add_argument("--json", action="store_true", help="print the result as JSON; no progress bar")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("status", help="state, URL, KV usage and requests of deployments")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("ps", help="list deployments and orphaned vLLM processes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ps)
    p = sub.add_parser("logs", help="show a deployment's vLLM log")
    p.add_argument("name")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("stop", help="end a deployment's whole process tree")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="stop every deployment")
    p.add_argument("--orphans", action="store_true", help="end vLLM processes no deployment owns")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("models", help="list the models dsagent knows by name")
    p.set_defaults(func=cmd_models)
    for face in ("estimate_view", "mcp_view"):  # commands whose faces live beside their stage
        if importlib.util.find_spec(f"dsagent.{face}") is not None:
            importlib.import_module(f"dsagent.{face}").add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DsagentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
