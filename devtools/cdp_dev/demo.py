"""Replay a JSONL file of Segment-spec messages through the core in event time and print transitions.

    python -m cdp_dev.demo events/sample.jsonl --segments segments
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from cdp.core.catalogue import CatalogueError, load_catalogue, membership_score, primary_segment
from cdp.core.engine import ENTERED, Engine, Transition
from cdp.core.events import Event, InvalidEvent, parse_record
from cdp_dev.replay import Replay


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_transition(transition: Transition) -> str:
    arrow = "+ entered" if transition.kind == ENTERED else "- exited "
    return (f"{_when(transition.at)}  {transition.customer_id:<12} {arrow} {transition.segment_id:<24}"
            f" {transition.reason}  [{transition.clause}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cdp-demo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("events", type=Path, help="a JSONL file of Segment-spec messages")
    parser.add_argument("--segments", type=Path, default=Path("segments"), help="folder of segment definitions")
    args = parser.parse_args(argv)
    try:
        catalogue = load_catalogue(args.segments)
    except CatalogueError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        lines = args.events.read_bytes().splitlines()
    except OSError as error:
        print(f"{args.events}: {error.strerror}", file=sys.stderr)
        return 2
    events, rejected = read_events(lines)
    replay = Replay(Engine(catalogue))
    print(f"Replaying {len(events)} events against {len(catalogue.segments)} segments, in event time\n")
    counts, duplicates, refused = run(replay, events)
    print(f"\n{len(events)} events, {duplicates} duplicates ignored, {rejected + refused} rejected; "
          f"{counts['entered']} entries, {counts['exited']} exits")
    print_profiles(replay)
    return 0


def read_events(lines: list[bytes]) -> tuple[list[Event], int]:
    """The lines' events in event time, and how many lines were rejected (each is printed)."""
    events = []
    rejected = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(parse_record(line))
        except InvalidEvent as error:
            rejected += 1
            print(f"line {number}: rejected: {error}")
    events.sort(key=lambda event: event.timestamp)
    return events, rejected


def run(replay: Replay, events: list[Event]) -> tuple[dict[str, int], int, int]:
    """Apply the events one by one, then refresh the population statistics, printing every transition.
    Returns the transitions by kind, the duplicates ignored and the events the core rejected."""
    counts = {"entered": 0, "exited": 0}
    duplicates = rejected = 0

    def show(transitions: list[Transition]) -> None:
        for transition in transitions:
            counts[transition.kind] += 1
            print(format_transition(transition))

    for event in events:
        transitions, outcome = replay.apply([event])
        duplicates += outcome.duplicates
        for _, reason in outcome.rejected:
            rejected += 1
            print(f"{_when(event.timestamp)}  {event.customer_id:<12} rejected: {reason}")
        show(transitions)
    print(f"\n{_when(replay.now)}  population statistics computed over {len(replay.profiles)} profiles")
    show(replay.refresh_population())
    return counts, duplicates, rejected


def print_profiles(replay: Replay) -> None:
    engine = replay.engine
    print(f"\n  {'customer':<12} {'primary segment':<24} {'score':>5}  segments")
    for customer_id, profile in sorted(replay.profiles.items()):
        primary = primary_segment(engine.catalogue, profile.memberships)
        score = membership_score(engine.catalogue, profile.memberships)
        members = ", ".join(sorted(profile.memberships)) or "-"
        print(f"  {customer_id:<12} {primary.id if primary else '-':<24} {score:>5g}  {members}")


if __name__ == "__main__":
    raise SystemExit(main())
