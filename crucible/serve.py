"""`python -m crucible.serve`: run the metric service, or manage its tokens.

python -m crucible.serve [--store sqlite://crucible.db] [--host 127.0.0.1] [--port 8600]
                         [--tokens crucible-tokens.db] [--no-auth]
python -m crucible.serve token create --name NAME [--read-only]
python -m crucible.serve token list | token revoke --name NAME
python -m crucible.serve [--store URL] import RUN_DIR...
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from crucible.service import ServiceConfig, TokenStore, create_app, server_config

DEFAULT_TOKENS = "crucible-tokens.db"


def _tokens_path(args: argparse.Namespace) -> str:
    return str(args.tokens or os.environ.get("CRUCIBLE_TOKENS") or DEFAULT_TOKENS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crucible.serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--tokens", help=f"token database (default $CRUCIBLE_TOKENS or {DEFAULT_TOKENS})"
    )
    parser.add_argument(
        "--store",
        default="sqlite://crucible.db",
        help="metrics store URL (default: crucible.db here)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--no-auth", action="store_true", help="no tokens (local use only)")
    parser.add_argument(
        "--rate-limit", type=float, default=200.0, help="requests/s per token (0: off)"
    )
    parser.add_argument("--rate-burst", type=int, default=400)
    parser.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument(
        "--ws-queue",
        type=int,
        default=256,
        help="messages a WebSocket may lag before it is dropped",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send its request headers (then it is closed)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a request has to send its body after the headers",
    )
    parser.add_argument("--log-level", default="warning")
    commands = parser.add_subparsers(dest="command")
    token = commands.add_parser("token", help="create, list or revoke bearer tokens")
    token.add_argument("action", choices=["create", "list", "revoke"])
    token.add_argument("--name")
    token.add_argument("--read-only", action="store_true")
    token.add_argument("--tokens", dest="token_db", help="token database")
    importer = commands.add_parser(
        "import",
        help="import finished runs from their run directories into the store (again: no change)",
    )
    importer.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    importer.add_argument(
        "--store", dest="import_store", help="the store to import into (default: --store)"
    )
    return parser


def _import_command(args: argparse.Namespace) -> int:
    """Import each run directory; one line per run, exit 1 if any could not be imported."""
    import anyio

    from crucible.metrics import MetricsError, open_store
    from crucible.recipes import NotARunDir, import_run

    url = args.import_store or args.store

    async def run() -> int:
        failed = 0
        store = await open_store(url, **({} if url == "memory://" else {"durable": True}))
        try:
            for run_dir in args.run_dirs:
                try:
                    result = await import_run(store, Path(run_dir))
                except (NotARunDir, MetricsError, TypeError, OSError) as error:
                    print(f"{run_dir}: not imported: {error}", file=sys.stderr)
                    failed += 1
                    continue
                written = f", {result.points} points" if result.points else ""
                print(f"{result.run_id}: {result.action}{written}")
        finally:
            await store.close()
        return 1 if failed else 0

    return anyio.run(run)


def _token_command(args: argparse.Namespace) -> int:
    store = TokenStore(args.token_db or _tokens_path(args))
    try:
        if args.action == "list":
            for info in store.list():
                mode = "read-only" if info.read_only else "read-write"
                print(f"{info.name}\t{mode}\t{info.created}")
            return 0
        if not args.name:
            print(f"token {args.action} needs --name NAME", file=sys.stderr)
            return 2
        if args.action == "revoke":
            if not store.revoke(args.name):
                print(f"no token named {args.name!r}", file=sys.stderr)
                return 1
            return 0
        try:
            token = store.create(args.name, read_only=args.read_only)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 1
        print(token)
        print(f"(token {args.name!r} shown once; store it safely)", file=sys.stderr)
        return 0
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        return _token_command(args)
    if args.command == "import":
        return _import_command(args)
    import uvicorn

    tokens = None
    if args.no_auth:
        print(
            "WARNING: --no-auth: anyone who can reach "
            f"{args.host}:{args.port} may read, write and delete metrics",
            file=sys.stderr,
        )
    else:
        tokens = TokenStore(_tokens_path(args))
        if not tokens.list():
            print(
                f"no tokens in {tokens.path}: create one with "
                "`python -m crucible.serve token create --name NAME`",
                file=sys.stderr,
            )
    config = ServiceConfig(
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        max_body_bytes=args.max_body_bytes,
        ws_queue=args.ws_queue,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
    )
    app = create_app(args.store, tokens=tokens, config=config)
    print(
        f"crucible metric service on http://{args.host}:{args.port}/", file=sys.stderr, flush=True
    )
    uvicorn.Server(
        server_config(app, host=args.host, port=args.port, log_level=args.log_level)
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
