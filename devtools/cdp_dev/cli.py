"""The ``cdp`` command line: works against the local stack or a deployed stack (boto3's usual credentials).

    cdp run [--no-sample] [--clock wall|event]       the whole pipeline on this machine
    cdp send FILE.jsonl|- [--stream NAME]            put Segment-spec messages on the stream
    cdp import FILE.jsonl|FILE.csv [--stream NAME]   load a history at the stream's limits, then count what applied
    cdp history [--quick] [--out FILE]               write a generated order history (JSON Lines)
    cdp tail [--queue-url URL]                       follow segment transitions
    cdp sources create NAME [--table NAME]           a new source of the collector; prints its write key once
    cdp sources list [--table NAME]                  every source's keys: id, state, created, expires
    cdp sources rotate NAME [--overlap 24h]          a new key; the old ones stay valid for the overlap
    cdp sources revoke NAME [--key KEY_ID]           refuse the source's keys (or one of them) from now on
    cdp customers delete ID [--api-url URL]          delete a customer everywhere (prints the request)
    cdp customers export ID [--api-url URL]          everything held about a customer (JSON)
    cdp requests show ID [--api-url URL]             a data subject request's status and counts
    cdp segments diff DIR [--api-url URL]            what applying DIR would add, change and remove (diffs)
    cdp segments apply DIR [--prune] [--yes] [--deliver MODE]   the plan, then PUT/DELETE each; prints job ids
    cdp segments history ID [--days N]               a segment's size, entries and exits per day
    cdp jobs show ID [--wait]                        a job's status; --wait shows a progress bar until it ends
    cdp jobs run NAME [--wait] [--clusters K]        start traits, rfm, clusters, predictions or percentiles
    cdp explain CUSTOMER SEGMENT                     why a customer is, or is not, in a segment

``customers``, ``requests``, ``jobs``, ``explain`` and ``segments diff|apply|history`` call the API
(``DELETE /customers/{id}``, ``PUT /segments/{id}`` and friends, so the API's one code path runs): the
running local stack's, or a deployed stack's ``--api-url`` (its ApiUrl output), signed with SigV4 and boto3's
usual credentials.

``send``, ``tail`` and ``sources`` with neither ``--stream`` / ``--queue-url`` / ``--table`` nor
``--endpoint-url`` use the running local stack (``cdp_dev.targets``), and stop with an error when there is
none: AWS only when asked for.
    cdp segments validate [DIR]                      check definitions
    cdp segments test [DIR]                          run the stories in DIR/stories
    cdp placements validate [DIR] [--segments DIR]   check placements against the segment definitions
    cdp redrive failures --queue-url URL --stream NAME
    cdp redrive quarantine --bucket NAME [--prefix quarantine/2026/10/] --stream NAME

Errors are one clear line on standard error and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdp_dev.targets import LocalStackInfo, Target


def _client(service: str, args: argparse.Namespace) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=args.endpoint_url, region_name=args.region or "us-east-1")


def _redrive(args: argparse.Namespace) -> int:
    from cdp_dev.redrive import redrive_failures, redrive_quarantine

    kinesis = _client("kinesis", args)
    if args.source == "failures":
        report = redrive_failures(_client("sqs", args), kinesis, args.queue_url, args.stream)
        print(f"redrove {report.records} records from {report.batches} failed batches"
              + (f"; {report.expired} batches were no longer retained by the stream" if report.expired else ""))
        return 1 if report.expired else 0
    report = redrive_quarantine(_client("s3", args), kinesis, args.bucket, args.prefix, args.stream)
    print(f"redrove {report.records} quarantined records from {report.batches} objects")
    return 0


def _stream_name(args: argparse.Namespace, kinesis: Any, target: Target) -> str:
    if args.stream:
        return str(args.stream)
    if target.local is not None:
        return target.local.stream
    names = kinesis.list_streams().get("StreamNames", [])
    if len(names) != 1:
        raise ValueError(f"--stream is needed: found {len(names)} streams ({', '.join(names) or 'none'})")
    return str(names[0])


def _local_stacks() -> list[LocalStackInfo]:
    from cdp_dev.targets import running_stacks, state_dir

    return running_stacks(state_dir())


def _target_client(service: str, target: Target) -> Any:
    """A client for the target: a local stack gets the emulator's dummy credentials, never real ones;
    an endpoint without a region is taken to be an emulator's (us-east-1); AWS gets boto3's usual settings."""
    import boto3

    if target.local is not None:
        return boto3.client(service, endpoint_url=target.endpoint, region_name=target.region,
                            aws_access_key_id="local", aws_secret_access_key="local")
    if target.endpoint:
        return boto3.client(service, endpoint_url=target.endpoint, region_name=target.region or "us-east-1")
    return boto3.client(service, region_name=target.region)


def _where(target: Target, what: str, client: Any) -> str:
    from cdp_dev.targets import Target, describe

    def account() -> str | None:
        try:
            return str(_target_client("sts", Target(None, client.meta.region_name, None))
                       .get_caller_identity()["Account"])
        except Exception:  # only for the message: the command itself says what is wrong
            return None

    return describe(Target(target.endpoint, target.region or client.meta.region_name, target.local), what, account)


def _send(args: argparse.Namespace) -> int:
    from cdp_dev.sender import send_lines
    from cdp_dev.targets import send_target

    target = send_target(args.endpoint_url, args.stream, args.region, _local_stacks)
    kinesis = _target_client("kinesis", target)
    stream = _stream_name(args, kinesis, target)
    print(f"sending to {_where(target, f'stream {stream}', kinesis)}", file=sys.stderr, flush=True)
    if args.file == "-":
        lines = sys.stdin.buffer.read().splitlines()
    else:
        with open(args.file, "rb") as handle:
            lines = handle.read().splitlines()
    report = send_lines(kinesis, stream, lines, progress=sys.stderr if len(lines) > 1000 else None)
    print(f"sent {report.sent} messages to {stream}"
          + (f"; {len(report.unreadable)} lines were not JSON objects with a user id and were not sent "
             f"(first: line {report.unreadable[0]})" if report.unreadable else ""))
    return 1 if report.unreadable else 0


def _import(args: argparse.Namespace) -> int:
    from cdp_dev.importer import ImportOptions, run_import, totals_for
    from cdp_dev.targets import send_target

    target = send_target(args.endpoint_url, args.stream, args.region, _local_stacks)
    kinesis = _target_client("kinesis", target)
    stream = _stream_name(args, kinesis, target)
    print(f"importing into {_where(target, f'stream {stream}', kinesis)}", file=sys.stderr, flush=True)
    local = target.local
    if local is None and target.endpoint:  # the emulator of a running local stack, named by its endpoint
        local = next((s for s in _local_stacks() if s.endpoint == target.endpoint), None)
    totals = totals_for(local.api if local else None, target.endpoint is None,
                        lambda: _target_client("cloudwatch", target))
    options = ImportOptions(args.format, args.map, args.event, args.type, args.rate, args.wait, args.no_wait,
                            args.quiet, 0.5 if local else 30.0, window_rates=local is not None)
    return run_import(args.file, kinesis, stream, totals, options)


def _history(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from cdp_dev.order_history import HistoryShape, write_history

    scale = 10 if args.quick else 1
    end = datetime.fromisoformat(args.end) if args.end else None
    if end is not None:
        end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    shape = HistoryShape(args.orders // scale, args.customers // scale, args.months, args.seed, end)
    if args.out in (None, "-"):
        written = write_history(shape, sys.stdout)
    else:
        with open(args.out, "w", encoding="utf-8") as out:
            written = write_history(shape, out)
    print(f"wrote {written:,} messages ({shape.orders:,} orders from {shape.customers:,} customers over "
          f"{shape.months} months){'' if args.out in (None, '-') else ' to ' + args.out}", file=sys.stderr)
    return 0


def _tail(args: argparse.Namespace) -> int:
    import json

    from cdp_dev.local_stack import FEED_QUEUE
    from cdp_dev.targets import tail_target

    target = tail_target(args.endpoint_url, args.queue_url, args.region, _local_stacks)
    sqs = _target_client("sqs", target)
    url = args.queue_url or (target.local.feed_queue_url if target.local is not None
                             else sqs.get_queue_url(QueueName=FEED_QUEUE)["QueueUrl"])
    print(f"following {_where(target, f'queue {url}', sqs)}", file=sys.stderr, flush=True)
    while True:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=10).get(
                "Messages", []):
            print(format_event(json.loads(message["Body"])), flush=True)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if args.once:
            return 0


def format_event(event: dict[str, Any]) -> str:
    if "integration" in event:  # a delivery seen by the local sandbox
        sign = "+" if event["action"] == "add" else "-"
        return (f"{'':20}  {'-> ' + event['integration']:<14} {sign} {event['rows']} row(s)  "
                f"{event['action']} {event['target']}")
    detail = event.get("detail", {})
    sign = "+" if detail.get("change") == "entered" else "-"
    return (f"{detail.get('at', '')}  {detail.get('customer_id', ''):<14} {sign} {detail.get('change', ''):<7} "
            f"{detail.get('segment', {}).get('id', ''):<24} {detail.get('clause', {}).get('reason', '')}")


def _local_at(target: Target) -> LocalStackInfo | None:
    """The local stack the target is, or whose emulator ``--endpoint-url`` names."""
    if target.local is not None or not target.endpoint:
        return target.local
    return next((s for s in _local_stacks() if s.endpoint == target.endpoint), None)


def _write_keys_table(args: argparse.Namespace, target: Target, dynamodb: Any) -> str:
    """``--table``; else the local stack's; else the one write keys table at ``--endpoint-url``."""
    if args.table:
        return str(args.table)
    local = _local_at(target)
    if local is not None:
        if not local.write_keys_table:
            raise ValueError("the running local stack has no write keys table; restart it with `make run`")
        return local.write_keys_table
    names = [n for n in dynamodb.list_tables().get("TableNames", []) if "WriteKeys" in n]
    if len(names) != 1:
        raise ValueError(f"--table is needed: found {len(names)} write keys tables ({', '.join(names) or 'none'})")
    return str(names[0])


def _sources(args: argparse.Namespace) -> int:
    from cdp_dev.sources import SourcesCommand, key_store
    from cdp_dev.targets import sources_target

    target = sources_target(args.endpoint_url, args.table, args.region, _local_stacks)
    dynamodb = _target_client("dynamodb", target)
    table = _write_keys_table(args, target, dynamodb)
    # An emulator of a local stack gets its dummy credentials, never real ones.
    store = key_store(table, dynamodb.meta.region_name, target.endpoint,
                      ("local", "local") if _local_at(target) is not None else None)
    command = SourcesCommand(store, _where(target, f"table {table}", dynamodb), sys.stdout, sys.stderr)
    if args.sources_command == "create":
        return command.create(args.name)
    if args.sources_command == "rotate":
        return command.rotate(args.name, args.overlap)
    if args.sources_command == "revoke":
        return command.revoke(args.name, args.key)
    return command.list()


def _seconds(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"cdp: CDP_TIMER_TICK must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"cdp: CDP_TIMER_TICK must be positive, not {raw!r}")
    return value


def _port(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"cdp: {variable} must be a port number, not {raw!r}")
    return int(raw)


_FEED_LOCK = threading.Lock()


def _print_feed(event: dict[str, Any]) -> None:
    """One line of the live feed; transitions and sandbox deliveries come from different threads."""
    line = format_event(event) + "\n"
    with _FEED_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


class StopSignals:
    """The signal handler of `cdp run`: while starting, it interrupts the start; after, the first signal asks the
    stack to stop.

    Only the first signal sets ``done``: `make run` and the stack both get a group's SIGTERM and make passes its own
    on, so a second one can arrive while the first handler holds the event's lock, and ``Event.set`` is not
    re-entrant (a nested one would wait on that lock for ever).
    """

    def __init__(self, done: threading.Event | None = None) -> None:
        self.done = done or threading.Event()
        self.starting = threading.Event()
        self.received: list[int] = []

    def __call__(self, signum: int, _: Any) -> None:
        if self.starting.is_set():  # stop at once: start() stops what it had started, then re-raises
            self.starting.clear()
            raise KeyboardInterrupt
        self.received.append(signum)
        if len(self.received) == 1:
            self.done.set()


def _run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from cdp_dev.local_stack import REGION, LocalStack
    from cdp_dev.targets import LocalStackInfo, register, state_dir, unregister

    root = Path(args.root).resolve()
    stack = LocalStack(root, aws_port=args.aws_port, api_port=args.api_port, clock=args.clock,
                       feed=None if args.no_feed else _print_feed,
                       timer_tick=args.timer_tick)
    stop = StopSignals()
    done, starting = stop.done, stop.starting

    starting.set()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    print("starting the local stack (synthesising the CDK template for its resources) ...", flush=True)
    try:
        stack.start()
        starting.clear()
    except KeyboardInterrupt:
        stack.stop()  # again, if the signal came just after start() returned
        print("stopped while starting", flush=True)
        return 130
    api = f"http://127.0.0.1:{args.api_port}"
    # So that `cdp send` and `cdp tail` with no flags find this stack, and never a real account by accident.
    state = register(LocalStackInfo(stack.endpoint, api, stack.resources.streams[0], stack.feed_queue_url, REGION,
                                    os.getpid(), stack.write_keys_table), state_dir())
    print(f"AWS emulator  {stack.endpoint}\nAPI           {api}  (GET /health, /segments, /customers/<id>)\n"
          + collector_lines(stack.collector_url, stack.write_key) + f"clock         {args.clock}\n", flush=True)
    try:
        if not args.no_sample:
            print(_send_sample(stack, root / "events" / "sample.jsonl")
                  + "; live segment transitions follow (Ctrl-C stops)\n", flush=True)
        done.wait()
    finally:
        print("stopping ...", flush=True)
        unregister(state)
        busy = stack.stop()
    if busy:  # their request pools' worker threads would hold the interpreter's exit up
        print(f"stopped; cut off: {', '.join(busy)}", flush=True)
        os._exit(0)
    return 0


TRY_EVENT = '{"userId":"u1","event":"Product Viewed","properties":{"product_id":"p1"}}'


def collector_lines(url: str, write_key: str) -> str:
    """What `cdp run` prints about its collector: the URL, the local source's write key, a line to try."""
    if not write_key:
        return ""
    return (f"collector     {url}  (Segment's Tracking API: POST /v1/batch, /v1/track, /v1/identify ...)\n"
            f"write key     {write_key}  (source local; also in GET /health)\n"
            f"try           curl -u {write_key}: {url}/track -H 'Content-Type: application/json' -d '{TRY_EVENT}'\n")


def _send_sample(stack: Any, path: Any) -> str:
    """The sample through the collector, as an SDK sends it (or onto the stream, for a stack without one)."""
    sample = path.read_bytes().splitlines()
    if stack.write_key:
        from cdp_dev.local_stack import post_to_collector

        posted = post_to_collector(stack.collector_url, stack.write_key, sample)
        return (f"sent {posted.accepted + posted.rejected} sample events through the collector "
                f"({posted.accepted} accepted, {posted.rejected} rejected)")
    from cdp_dev.sender import send_lines

    return f"sent {send_lines(stack.client('kinesis'), stack.resources.streams[0], sample).sent} sample events"


def _segments(args: argparse.Namespace) -> int:
    from cdp.core.catalogue import load_catalogue

    catalogue = load_catalogue(args.dir)
    print(f"{len(catalogue.all_segments)} segments valid ({len(catalogue.segments)} enabled) in {args.dir}")
    return 0


def _placements(args: argparse.Namespace) -> int:
    from cdp.core.catalogue import load_catalogue
    from cdp.core.placements import load_placements

    placements = load_placements(args.dir, load_catalogue(args.segments))
    rules = sum(len(p.rules) for p in placements.values())
    count = f"{len(placements)} placement{'' if len(placements) == 1 else 's'}"
    print(f"{count} valid ({rules} rules) in {args.dir}, against the segments in {args.segments}")
    return 0


def _segments_test(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cdp.core.catalogue import load_catalogue
    from cdp_dev.stories import run_stories

    folder = Path(args.dir)
    results = run_stories(folder / "stories", load_catalogue(folder))
    for result in results:
        print(f"{'pass' if result.passed else 'FAIL'}  {result.name}")
        for problem in result.problems:
            print(f"      {problem}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdp", description="Operate a cdp stack.")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="AWS endpoint (http://127.0.0.1:4566 for the local stack)")
    parser.add_argument("--region", default=None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole pipeline locally on an AWS emulator")
    run.add_argument("--aws-port", type=int, default=_port("CDP_AWS_PORT", 4566), help="also CDP_AWS_PORT")
    run.add_argument("--api-port", type=int, default=_port("CDP_API_PORT", 3000), help="also CDP_API_PORT")
    run.add_argument("--clock", choices=("wall", "event"), default=os.environ.get("CDP_CLOCK", "wall") or "wall",
                     help="event: evaluate in event time, so replayed history lands in the right windows")
    run.add_argument("--timer-tick", type=float, default=_seconds(os.environ.get("CDP_TIMER_TICK")),
                     help="seconds between timers sweeps (default: the template's schedule, every minute)")
    run.add_argument("--no-sample", action="store_true", help="do not replay events/sample.jsonl")
    run.add_argument("--no-feed", action="store_true",
                     help="leave transitions on the local queue (for cdp tail or tests) instead of printing them")
    run.add_argument("--root", default=".", help="the project folder")
    run.set_defaults(run=_run, endpoint_url=None)
    send = commands.add_parser("send", help="put Segment-spec messages (JSON Lines) on the stream")
    send.add_argument("file", help="a .jsonl file, or - for standard input")
    send.add_argument("--stream", default=None,
                      help="stream name; without it or --endpoint-url, the running local stack's")
    send.set_defaults(run=_send)
    load = commands.add_parser("import", help="load a history (JSON Lines or CSV) at the stream's limits")
    load.add_argument("file", help="a .jsonl or .csv file, or - for standard input")
    load.add_argument("--stream", default=None,
                      help="stream name; without it or --endpoint-url, the running local stack's")
    load.add_argument("--format", choices=("jsonl", "csv"), default=None, help="default: from the file name")
    load.add_argument("--map", default=None,
                      help="CSV columns onto message fields: 'userId=customer_id,properties.revenue=total,...'")
    load.add_argument("--event", default=None, help="CSV: the event name of every row, unless mapped")
    load.add_argument("--type", default="track", help="CSV: the message type of every row, unless mapped")
    load.add_argument("--rate", type=float, default=None, help="records per second, below the stream's limit")
    load.add_argument("--wait", type=float, default=15 * 60.0,
                      help="seconds to wait for the ingest to settle every record (default 900)")
    load.add_argument("--no-wait", action="store_true", help="report what the stream accepted, then stop")
    load.add_argument("--quiet", action="store_true", help="no progress bars")
    load.set_defaults(run=_import)
    history = commands.add_parser("history", help="write a generated order history as Segment-spec JSON Lines")
    history.add_argument("--orders", type=int, default=70_000)
    history.add_argument("--customers", type=int, default=23_000)
    history.add_argument("--months", type=int, default=18)
    history.add_argument("--seed", type=int, default=1)
    history.add_argument("--end", default=None, help="a date (UTC) the history ends before; default today")
    history.add_argument("--quick", action="store_true", help="a tenth of the orders and customers")
    history.add_argument("--out", default=None, help="the file to write; default standard output")
    history.set_defaults(run=_history, endpoint_url=None)
    tail = commands.add_parser("tail", help="follow segment transitions")
    tail.add_argument("--queue-url", default=None,
                      help="a queue behind a bus rule; without it or --endpoint-url, the running local stack's feed")
    tail.add_argument("--once", action="store_true", help="print what is waiting, then stop")
    tail.set_defaults(run=_tail)
    _add_sources(commands)
    _add_privacy(commands)
    segments = commands.add_parser("segments", help="segment definitions as code")
    segments_commands = segments.add_subparsers(dest="segments_command", required=True)
    validate = segments_commands.add_parser("validate", help="check every definition in a folder")
    validate.add_argument("dir", nargs="?", default="segments")
    validate.set_defaults(run=_segments)
    story = segments_commands.add_parser("test", help="run the stories in DIR/stories under a simulated clock")
    story.add_argument("dir", nargs="?", default="segments")
    story.set_defaults(run=_segments_test)
    _add_lifecycle(commands, segments_commands, api_option())
    placements = commands.add_parser("placements", help="placement definitions as code")
    placements_commands = placements.add_subparsers(dest="placements_command", required=True)
    checked = placements_commands.add_parser("validate", help="check every placement in a folder")
    checked.add_argument("dir", nargs="?", default="placements")
    checked.add_argument("--segments", default="segments", help="the segment definitions rules may read")
    checked.set_defaults(run=_placements)
    redrive = commands.add_parser("redrive", help="put failed or quarantined records back on the stream")
    sources = redrive.add_subparsers(dest="source", required=True)
    failures = sources.add_parser("failures", help="from the ingest on-failure queue")
    failures.add_argument("--queue-url", required=True)
    failures.add_argument("--stream", required=True, help="the events stream name")
    quarantine = sources.add_parser("quarantine", help="from the quarantine bucket")
    quarantine.add_argument("--bucket", required=True)
    quarantine.add_argument("--prefix", default="quarantine/")
    quarantine.add_argument("--stream", required=True, help="the events stream name")
    redrive.set_defaults(run=_redrive)
    return parser


def _add_sources(commands: Any) -> None:
    table = argparse.ArgumentParser(add_help=False)
    table.add_argument("--table", default=None,
                       help="a deployed stack's write keys table (its WriteKeysTableName output); without it or "
                            "--endpoint-url, the running local stack's")
    sources = commands.add_parser("sources", help="the collector's sources and their write keys")
    actions = sources.add_subparsers(dest="sources_command", required=True)
    create = actions.add_parser("create", parents=[table], help="a new source; prints its write key once")
    create.add_argument("name", help="lower-case letters, digits and hyphens")
    actions.add_parser("list", parents=[table], help="every source's keys: id, state, created, expires")
    rotate = actions.add_parser("rotate", parents=[table],
                                help="a new key for the source; its valid keys stay valid for the overlap")
    rotate.add_argument("name")
    rotate.add_argument("--overlap", default=None, help="how long the old keys stay valid: 90s, 30m, 24h (default), 7d")
    revoke = actions.add_parser("revoke", parents=[table], help="refuse the source's valid keys from now on")
    revoke.add_argument("name")
    revoke.add_argument("--key", default=None, metavar="KEY_ID", help="only this key (its id in `cdp sources list`)")
    sources.set_defaults(run=_sources)


def _api_call(args: argparse.Namespace, method: str, path: str, body: Any = None,
              query: dict[str, str] | None = None) -> tuple[int, Any]:
    """``method path`` on the API: the local stack's, or ``--api-url`` signed with SigV4 (execute-api)."""
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import quote, urlencode

    from cdp_dev.targets import _only

    if args.api_url:
        base, sign = args.api_url.rstrip("/"), True
    else:
        base, sign = _only(_local_stacks(), "for a deployed stack pass --api-url URL (its ApiUrl output)").api, False
    url = base + "/".join(quote(part, safe="") for part in path.split("/"))
    if query:
        url += "?" + urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    headers: dict[str, str] = {"Content-Type": "application/json"} if data is not None else {}
    if sign:
        import boto3
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        session = boto3.Session(region_name=args.region)
        signed = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(session.get_credentials(), "execute-api", session.region_name or "us-east-1").add_auth(signed)
        headers = dict(signed.headers.items())
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"message": text.decode("utf-8", "replace")[:200]}


class ApiRefused(Exception):
    """The API answered 4xx/5xx: its message, and each definition problem on a line of its own."""


def _api_answer(args: argparse.Namespace, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> Any:
    """The API's answer, or ApiRefused with what it said."""
    status, answer = _api_call(args, method, path, body, query)
    if status >= 400:
        raise ApiRefused(api_problem(status, answer))
    return answer


def api_problem(status: int, answer: Any) -> str:
    """An error answer as the CLI prints it: the message, then each definition problem as validate reports it."""
    if not isinstance(answer, dict):
        return f"the API answered {status}"
    lines = []
    for issue in answer.get("errors") or []:
        where = ": ".join(part for part in (issue.get("segment_id"), issue.get("path")) if part)
        lines.append(f"{where}: {issue.get('message')}" if where else str(issue.get("message")))
    return "\n".join(lines) or str(answer.get("message") or f"the API answered {status}")


def _privacy_command(args: argparse.Namespace) -> int:
    import json

    if args.command == "requests":
        status, body = _api_call(args, "GET", f"/requests/{args.id}")
    elif args.customers_command == "delete":
        status, body = _api_call(args, "DELETE", f"/customers/{args.id}")
    else:
        status, body = _api_call(args, "GET", f"/customers/{args.id}/export")
    if status >= 400:
        message = body.get("message") if isinstance(body, dict) else None
        print(f"cdp: error: {message or f'the API answered {status}'}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2, sort_keys=True))
    return 0


# ---- segment lifecycle: definitions through the API, jobs, explain, history ------------------------------------


def format_plan(planned: Any) -> str:
    """A plan as `cdp segments diff` prints it: one line per added, changed or removed segment, then the diffs."""
    lines = [f"{sign} {segment_id}" for sign, ids in (("+", planned.added), ("~", planned.changed),
                                                     ("-", planned.removed)) for segment_id in ids]
    if not lines:
        return f"no changes ({len(planned.unchanged)} segments unchanged)\n"
    for segment_id in [*planned.added, *planned.changed, *planned.removed]:
        lines.append("")
        lines += [line.rstrip("\n") for line in planned.diffs.get(segment_id, [])]
    lines.append("")
    lines.append(f"{len(planned.added)} to add, {len(planned.changed)} to change, {len(planned.removed)} to remove, "
                 f"{len(planned.unchanged)} unchanged")
    return "\n".join(lines) + "\n"


def _stored_definitions(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    listed = _api_answer(args, "GET", "/segments", query={"disabled": "true"})["segments"]
    if listed and not any("definition" in s for s in listed):
        raise ValueError("this stack does not store segment definitions (DEFINITIONS_TABLE); they change by redeploy")
    return {s["id"]: s["definition"] for s in listed if "definition" in s}


def _folder(directory: str) -> dict[str, dict[str, Any]]:
    """The folder's definitions by id, validated as `cdp segments validate` does (raises its errors)."""
    from cdp.core.catalogue import load_catalogue
    from cdp.pipeline.definitions import folder_definitions

    load_catalogue(directory)
    return {raw["id"]: raw for _, raw in folder_definitions(directory) if isinstance(raw, dict)}


def _segments_diff(args: argparse.Namespace) -> int:
    from cdp.pipeline.definitions import plan

    print(format_plan(plan(_stored_definitions(args), _folder(args.dir), args.prune)), end="")
    return 0


def _segments_apply(args: argparse.Namespace) -> int:
    from cdp.pipeline.definitions import plan, plan_changes

    desired = _folder(args.dir)
    current = _stored_definitions(args)
    planned = plan(current, desired, args.prune)
    print(format_plan(planned), end="")
    if planned.empty:
        return 0
    if not args.yes and input("apply these changes? [y/N] ").strip().lower() not in ("y", "yes"):
        print("nothing applied")
        return 1
    query = {"deliver": args.deliver, "backfill": "false" if args.no_backfill else "true"}
    not_started = []
    for change in plan_changes(planned, desired, current):
        if change.definition is None:
            answer = _api_answer(args, "DELETE", f"/segments/{change.segment_id}", query=query)
            what = f"deleted {change.segment_id} (version {answer['version']})"
        else:
            answer = _api_answer(args, "PUT", f"/segments/{change.segment_id}", change.definition, query)
            what = f"saved {change.segment_id} version {answer['version']}"
        job = answer.get("job")
        print(f"{what}; backfill job {job['id']}" if job else what, flush=True)
        if job and job.get("status") == "failed":
            not_started.append(change.segment_id)
            print(f"  its backfill failed: {job.get('reason')}", flush=True)
    if not_started:  # saved, but not yet evaluated over existing profiles: saving them again starts a backfill
        print(f"saved without a backfill: {', '.join(not_started)}; PUT /segments/<id> again for each (a save of an "
              "unchanged definition starts a new backfill)", file=sys.stderr)
        return 1
    return 0


def format_job(job: dict[str, Any]) -> str:
    counts = ", ".join(f"{name} {value}" for name, value in job.get("counts", {}).items() if value)
    line = f"{job['id']}  {job['kind']}  {job['status']}  {job['progress']:.0%}  phase {job.get('phase') or '-'}"
    line += f"  ({counts})" if counts else ""
    return line + (f"\nfailed: {job['reason']}" if job.get("reason") else "")


# cdp jobs run NAME: the job kind and options each name starts
JOB_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "traits": ("traits", {}), "rfm": ("traits", {"models": ["rfm"]}),
    "clusters": ("traits", {"models": ["clusters"]}), "predictions": ("traits", {"models": ["predictions"]}),
    "percentiles": ("percentiles", {}),
}


def job_request(name: str, clusters: int | None = None, sample: int | None = None) -> dict[str, Any]:
    """The body of ``POST /jobs`` that ``cdp jobs run NAME`` sends."""
    kind, options = JOB_NAMES[name]
    options = dict(options)
    if kind == "traits" and clusters is not None:
        options["clusters"] = clusters
    if kind == "traits" and sample is not None:
        options["sample"] = sample
    return {"kind": kind, "options": options}


def _jobs_run(args: argparse.Namespace) -> int:
    job = _api_answer(args, "POST", "/jobs", job_request(args.name, args.clusters, args.sample))
    print(job["id"], file=sys.stderr if args.wait else sys.stdout)
    if not args.wait:
        return 1 if job.get("status") == "failed" else 0
    return _follow_job(args, job, document=True)


def _jobs_show(args: argparse.Namespace) -> int:
    return _follow_job(args, _api_answer(args, "GET", f"/jobs/{args.id}"))


def _follow_job(args: argparse.Namespace, job: dict[str, Any], document: bool = False) -> int:
    """Until the job ends (with --wait); then its line, or its whole document."""
    import json
    import time

    if args.wait and job["status"] not in ("done", "failed"):
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"{job['kind']} {job['id']}", total=1.0)
            while job["status"] not in ("done", "failed"):
                bar.update(task, completed=job["progress"], description=f"{job['kind']} {job.get('phase') or ''}")
                time.sleep(args.interval)
                job = _api_answer(args, "GET", f"/jobs/{job['id']}")
            bar.update(task, completed=job["progress"])
    print(json.dumps(job, indent=2) if document else format_job(job))
    return 1 if job["status"] == "failed" else 0


def _mark(result: Any) -> str:
    return "✓" if result is True else "✗" if result is False else "?"


def _explain_lines(node: dict[str, Any], depth: int) -> list[str]:
    text = f"{'  ' * depth}{_mark(node.get('result'))} {node.get('description') or node.get('operator')}"
    if node.get("value") is not None or node.get("threshold") is not None:
        text += f"  [value {node.get('value')!r} {node.get('comparison') or 'vs'} {node.get('threshold')!r}]"
    if node.get("changes_at"):
        text += f"  (changes at {node['changes_at']})"
    lines = [text]
    for child in node.get("children") or []:
        lines += _explain_lines(child, depth + 1)
    return lines


def format_explanation(answer: dict[str, Any]) -> str:
    """An explanation as `cdp explain` prints it: the verdict, then the tree, one node a line."""
    member = "a member" if answer["member"] else "not a member"
    lines = [f"{answer['customer_id']} is {member} of {answer['segment']} ({answer['name']}); the condition "
             f"{'holds' if answer['holds'] else 'does not hold'} at {answer['at']}"]
    if answer.get("since"):
        lines.append(f"member since {answer['since']}" + (f", entered by {answer['entered_by']}"
                                                          if answer.get("entered_by") else ""))
    if answer.get("changes_at"):
        lines.append(f"next change: {answer['changes_at']}")
    if answer.get("outranked_by"):
        lines.append(f"outranked in its group by {answer['outranked_by']}")
    if answer.get("note"):
        lines.append(f"note: {answer['note']}")
    return "\n".join([*lines, *_explain_lines(answer["condition"], 0)]) + "\n"


def _explain(args: argparse.Namespace) -> int:
    answer = _api_answer(args, "GET", f"/customers/{args.customer}/explain", query={"segment": args.segment})
    print(format_explanation(answer), end="")
    return 0


def format_history(answer: dict[str, Any]) -> str:
    lines = [f"{'day':<12}{'size':>10}{'entered':>10}{'exited':>10}"]
    for day in answer["days"]:
        size = "-" if day["size"] is None else str(day["size"])
        lines.append(f"{day['day']:<12}{size:>10}{day['entered']:>10}{day['exited']:>10}")
    return "\n".join(lines) + "\n"


def _segments_history(args: argparse.Namespace) -> int:
    answer = _api_answer(args, "GET", f"/segments/{args.id}/history", query={"days": str(args.days)})
    print(format_history(answer), end="")
    return 0


def _add_lifecycle(commands: Any, segments_commands: Any, api: argparse.ArgumentParser) -> None:
    diff = segments_commands.add_parser("diff", parents=[api], help="what applying DIR would change in the store")
    diff.add_argument("dir", nargs="?", default="segments")
    diff.add_argument("--prune", action="store_true", help="also remove stored segments that DIR does not hold")
    diff.set_defaults(run=_segments_diff)
    apply = segments_commands.add_parser("apply", parents=[api], help="save DIR's definitions through the API")
    apply.add_argument("dir", nargs="?", default="segments")
    apply.add_argument("--prune", action="store_true", help="delete stored segments that DIR does not hold")
    apply.add_argument("--yes", action="store_true", help="do not ask before applying")
    apply.add_argument("--deliver", choices=("none", "audiences", "all"), default="audiences",
                       help="where backfill entries go (default audiences: never email)")
    apply.add_argument("--no-backfill", action="store_true", help="save without evaluating existing profiles")
    apply.set_defaults(run=_segments_apply)
    history = segments_commands.add_parser("history", parents=[api], help="a segment's size, entries, exits per day")
    history.add_argument("id")
    history.add_argument("--days", type=int, default=30)
    history.set_defaults(run=_segments_history)
    jobs = commands.add_parser("jobs", help="backfill, statistics and computed traits jobs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    show = jobs_commands.add_parser("show", parents=[api], help="a job's status and progress")
    show.add_argument("id")
    show.add_argument("--wait", action="store_true", help="a progress bar until the job ends")
    show.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    show.set_defaults(run=_jobs_show)
    run_job = jobs_commands.add_parser("run", parents=[api], help="start a job: traits (every model), rfm, "
                                                                  "clusters, predictions, or percentiles")
    run_job.add_argument("name", choices=sorted(JOB_NAMES))
    run_job.add_argument("--wait", action="store_true", help="wait for the end, then print the job's document")
    run_job.add_argument("--clusters", type=int, help="the number of clusters (default: chosen by silhouette)")
    run_job.add_argument("--sample", type=int, help="the training sample's size (default 20,000)")
    run_job.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    run_job.set_defaults(run=_jobs_run)
    explain = commands.add_parser("explain", parents=[api], help="why a customer is, or is not, in a segment")
    explain.add_argument("customer")
    explain.add_argument("segment")
    explain.set_defaults(run=_explain)


def api_option() -> argparse.ArgumentParser:
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api-url", default=None,
                     help="a deployed stack's API (its ApiUrl output; SigV4-signed); without it, the local stack's")
    return api


def _add_privacy(commands: Any) -> None:
    api = api_option()
    customers = commands.add_parser("customers", help="data subject requests: delete or export a customer")
    actions = customers.add_subparsers(dest="customers_command", required=True)
    actions.add_parser("delete", parents=[api], help="delete the customer everywhere; prints the request") \
        .add_argument("id", help="any id of the customer (merged ids resolve to it)")
    actions.add_parser("export", parents=[api], help="everything held about the customer, as JSON") \
        .add_argument("id", help="any id of the customer")
    customers.set_defaults(run=_privacy_command)
    requests = commands.add_parser("requests", help="data subject requests' status")
    shown = requests.add_subparsers(dest="requests_command", required=True)
    shown.add_parser("show", parents=[api], help="a request's status, counts or failure reason") \
        .add_argument("id", help="the request id that delete or export printed")
    requests.set_defaults(run=_privacy_command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except ApiRefused as error:  # the API's message, and each definition problem on its own line
        print(f"cdp: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # one clear line, never a traceback
        message = str(error) or type(error).__name__
        print(f"cdp: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
