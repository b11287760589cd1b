"""``python -m crucible.tinker_server [--port 8700] [--root DIR] [--api-key tml-...]
[--model NAME=PATH] [--hf-cache DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from crucible.tinker_server._config import HTTP_FAULT_KINDS, ServerConfig
from crucible.tinker_server._run import serve


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m crucible.tinker_server",
        description="A Tinker-compatible server over Crucible's local CPU backend. Point the "
        "tinker SDK at it with TINKER_BASE_URL=http://HOST:PORT and a tml- API key.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--root", default="runs/tinker_server", help="checkpoint folder")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accept this key (repeatable); without any, every key is accepted",
    )
    parser.add_argument("--long-poll", type=float, default=25.0, help="seconds (under 45)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="0..1 of requests fail")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument(
        "--fault-kinds",
        default=",".join(HTTP_FAULT_KINDS),
        help=f"subset of {','.join(HTTP_FAULT_KINDS)}",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=120.0,
        help="seconds without a heartbeat (the SDK beats every 10 s) before a session expires "
        "and its models are freed",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the Hugging Face model directory PATH as NAME (repeatable; a bare NAME "
        "serves a shipped model, a directory or an HF-cache id under that name); default: "
        "the models shipped with Crucible. A directory model is also served under its "
        "absolute path, which AutoTokenizer.from_pretrained reads directly",
    )
    parser.add_argument(
        "--hf-cache",
        default=None,
        metavar="DIR",
        help="lay the served models out in DIR as a Hugging Face hub cache, so a client with "
        "HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1 loads their tokenizers by name (tinker-cookbook, "
        "the SDK's get_tokenizer)",
    )
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument(
        "--client-config",
        default="{}",
        help="JSON merged into /client/config, e.g. '{\"fwdbwd_max_chunk_len\": 64}'",
    )
    args = parser.parse_args(argv)
    try:
        return ServerConfig(
            host=args.host,
            port=args.port,
            root=args.root,
            api_keys=frozenset(args.api_key),
            long_poll_s=args.long_poll,
            fault_rate=args.fault_rate,
            fault_seed=args.fault_seed,
            fault_kinds=tuple(kind for kind in args.fault_kinds.split(",") if kind),
            torch_threads=args.torch_threads,
            client_config=json.loads(args.client_config),
            session_timeout_s=args.session_timeout,
            models=args.model,
            hf_cache=args.hf_cache,
        )
    except ValueError as error:
        parser.error(str(error))


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    print(
        f"Tinker-compatible server on http://{config.host}:{config.port} (root {config.root})",
        file=sys.stderr,
    )
    for model in config.served.models.values():
        where = f" (also as {model.directory.resolve()})" if model.directory is not None else ""
        print(f"  serving {model.name}{where}", file=sys.stderr)
    if config.hf_cache is not None:
        print(
            f"  clients' tokenizers: HF_HUB_CACHE={config.hf_cache.resolve()} HF_HUB_OFFLINE=1",
            file=sys.stderr,
        )
    serve(config)


if __name__ == "__main__":
    main()
