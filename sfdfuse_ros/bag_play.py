"""Play a ROS 2 bag through rclpy with its original timing (``sfdfuse bag play``).

Where ``ros2 bag play`` is not installed (the PyPI ROS wheels), this publishes a bag's topics so
that ``fuse_node`` can run over recorded data. The bag is read with ``rosbags``; messages keep
their CDR bytes (rosbags' CDR is rclpy's): each message is deserialised straight into its rclpy
class with ``rclpy.serialization.deserialize_message`` (no per-field copying; 1.4 ms for a
1280x1024 colour frame), which proves the bytes fit the type, and the bytes themselves are then
published (rclpy accepts serialised messages), so nothing is serialised again. A message that
does not deserialise is skipped and counted.

Timing follows the bag (receive) times, scaled by ``rate``. With ``loop`` the bag starts again
after its end, so the header stamps (and ``/clock``) go back in time at each loop, as with
``ros2 bag play --loop``.
"""
import argparse
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.serialization import deserialize_message

from sfdfuse_core.bag import BagError, describe_topics, open_reader

PathLike = Union[str, Path]
#: Longest single sleep, seconds, so that /clock and Ctrl-C stay responsive.
_TICK = 0.05


class PlayError(BagError):
    """A bag cannot be played as asked (no playable topic, unknown topic or type)."""


def message_class(msgtype: str):
    """Import the rclpy message class of a type name: ``sensor_msgs/msg/Image`` -> ``Image``.

    :param msgtype: ``package/msg/Name``.
    :return: the class.
    :raises PlayError: when the name is malformed or the class cannot be imported.
    """
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg':
        raise PlayError(f'not a ROS 2 message type name: {msgtype!r} (expected pkg/msg/Name)')
    try:
        module = importlib.import_module(f'{parts[0]}.msg')
        return getattr(module, parts[2])
    except (ImportError, AttributeError) as exc:
        raise PlayError(f'cannot import {parts[0]}.msg.{parts[2]} for {msgtype}: {exc}') from exc


def make_qos(name: str, depth: int = 10) -> QoSProfile:
    """Return the publisher QoS named ``'reliable'`` (keep last ``depth``) or ``'sensor_data'``.

    :raises ValueError: on another name.
    """
    if name == 'reliable':
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    if name == 'sensor_data':
        return qos_profile_sensor_data
    raise ValueError(f"qos must be 'reliable' or 'sensor_data', got {name!r}")


@dataclass
class PlayReport:
    """What :meth:`BagPlayer.play` did.

    :param published: messages published per topic.
    :param loops: complete passes over the bag.
    :param skipped_topics: topics not played, with the reason.
    :param seconds: wall time of playing.
    :param max_late: the largest delay behind schedule, seconds.
    :param clock_msgs: ``/clock`` messages published.
    :param bad: messages per topic skipped because they do not deserialise.
    """

    published: Dict[str, int] = field(default_factory=dict)
    loops: int = 0
    skipped_topics: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    max_late: float = 0.0
    clock_msgs: int = 0
    bad: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """Return a human-readable multi-line summary."""
        lines = [f'played {sum(self.published.values())} messages in {self.seconds:.1f} s '
                 f'({self.loops} pass(es)), at most {self.max_late * 1000:.0f} ms late']
        lines += [f'  {t}: {n}' for t, n in self.published.items()]
        if self.clock_msgs:
            lines.append(f'  /clock: {self.clock_msgs}')
        lines += [f'  skipped {t}: {why}' for t, why in self.skipped_topics.items()]
        lines += [f'  {t}: {n} message(s) that do not deserialise, not published'
                  for t, n in self.bad.items()]
        return '\n'.join(lines)


class BagPlayer(Node):
    """A node that publishes the topics of a bag with their timing.

    :param bag: the bag: folder, ``.mcap`` or ``.db3`` file.
    :param topics: topics to play; default every topic whose type rclpy can import.
    :param qos: ``'reliable'`` or ``'sensor_data'``.
    :param clock: publish the bag time on ``/clock``.
    :param clock_hz: ``/clock`` publishing rate while waiting between messages.
    :param node_name: name of the node.
    :param context: the rclpy context (default the global one).
    :raises PlayError: when the bag has no playable topic, or a requested topic is missing or
        has a type rclpy cannot import.
    """

    def __init__(self, bag: PathLike, *, topics: Optional[Sequence[str]] = None,
                 qos: str = 'reliable', clock: bool = False, clock_hz: float = 40.0,
                 node_name: str = 'sfdfuse_bag_player', context=None) -> None:
        super().__init__(node_name, context=context)
        self.bag = Path(bag)
        self.report = PlayReport()
        self._clock_pub = None
        self._clock_period = 1.0 / clock_hz if clock_hz > 0 else 0.0
        profile = make_qos(qos)
        reader = open_reader(self.bag)
        try:
            by_topic: Dict[str, list] = {}
            for conn in reader.connections:
                by_topic.setdefault(conn.topic, []).append(conn)
            if topics:
                missing = [t for t in topics if t not in by_topic]
                if missing:
                    raise PlayError(f'topic(s) {", ".join(missing)} not in {self.bag}; its '
                                    'topics are:\n' + describe_topics(reader))
                wanted = list(topics)
            else:
                wanted = sorted(by_topic)
            self._pubs: Dict[int, object] = {}
            self._classes: Dict[int, object] = {}
            for topic in wanted:
                for conn in by_topic[topic]:
                    try:
                        cls = message_class(conn.msgtype)
                    except PlayError as exc:
                        if topics:
                            raise
                        self.report.skipped_topics[topic] = str(exc)
                        continue
                    pub = self.create_publisher(cls, topic, profile)
                    self._pubs[conn.id] = pub
                    self._classes[conn.id] = cls
                    self.report.published.setdefault(topic, 0)
            self._connections = [c for c in reader.connections if c.id in self._pubs]
        finally:
            reader.close()
        if not self._connections:
            raise PlayError(f'nothing to play in {self.bag}: no topic of a type rclpy can import '
                            f'(skipped: {self.report.skipped_topics})')
        if clock:
            from rosgraph_msgs.msg import Clock
            self._clock_cls = Clock
            self._clock_pub = self.create_publisher(Clock, '/clock', make_qos('reliable', 1))

    @property
    def topics(self) -> List[str]:
        """The topics this player publishes."""
        return sorted({c.topic for c in self._connections})

    def wait_for_subscribers(self, timeout: float) -> bool:
        """Wait until every publisher has at least one subscriber, or ``timeout`` seconds.

        :return: whether all publishers have a subscriber.
        """
        deadline = time.monotonic() + timeout
        while True:
            if all(p.get_subscription_count() > 0 for p in self._pubs.values()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _publish_clock(self, bag_ns: int) -> None:
        msg = self._clock_cls()
        msg.clock.sec = bag_ns // 1_000_000_000
        msg.clock.nanosec = bag_ns % 1_000_000_000
        self._clock_pub.publish(msg)
        self.report.clock_msgs += 1

    def _wait_until(self, wall_target: float, wall0: float, bag0: int, rate: float,
                    next_clock: List[float]) -> None:
        """Sleep until ``wall_target`` (monotonic), publishing /clock on the way."""
        while True:
            now = time.monotonic()
            if self._clock_pub is not None and self._clock_period and now >= next_clock[0]:
                self._publish_clock(bag0 + int((now - wall0) * rate * 1e9))
                next_clock[0] = now + self._clock_period
            remaining = wall_target - now
            if remaining <= 0:
                return
            step = min(remaining, _TICK)
            if self._clock_pub is not None and self._clock_period:
                step = min(step, max(0.0, next_clock[0] - now))
            time.sleep(step)

    def play(self, *, rate: float = 1.0, loop: bool = False, start_delay: float = 0.0,
             max_loops: Optional[int] = None,
             on_publish: Optional[Callable[[str, int, float], None]] = None,
             should_stop: Optional[Callable[[], bool]] = None) -> PlayReport:
        """Publish the bag with its timing.

        :param rate: speed factor (2.0 plays twice as fast); > 0.
        :param loop: play again after the end, until stopped (or ``max_loops``).
        :param start_delay: seconds to wait before the first message.
        :param max_loops: with ``loop``, stop after this many passes.
        :param on_publish: called as ``on_publish(topic, bag_time_ns, wall_time)`` after each
            message (``wall_time`` from :func:`time.monotonic`).
        :param should_stop: polled between messages; playing ends when it returns true.
        :return: the report.
        :raises ValueError: when ``rate <= 0``.
        """
        if not rate > 0:
            raise ValueError(f'rate must be > 0, got {rate}')
        started = time.monotonic()
        if start_delay > 0:
            time.sleep(start_delay)
        report = self.report
        next_clock = [0.0]
        while True:
            reader = open_reader(self.bag)
            try:
                wall0 = None
                bag0 = 0
                for conn, bag_ns, raw in reader.messages(connections=self._connections):
                    if should_stop is not None and should_stop():
                        report.seconds = time.monotonic() - started
                        return report
                    if wall0 is None:
                        wall0, bag0 = time.monotonic(), bag_ns
                    target = wall0 + (bag_ns - bag0) / 1e9 / rate
                    self._wait_until(target, wall0, bag0, rate, next_clock)
                    report.max_late = max(report.max_late, time.monotonic() - target)
                    if self._clock_pub is not None:
                        self._publish_clock(bag_ns)
                    if not self._publish(conn, bytes(raw)):
                        continue
                    report.published[conn.topic] += 1
                    if on_publish is not None:
                        on_publish(conn.topic, bag_ns, time.monotonic())
            finally:
                reader.close()
            report.loops += 1
            if not loop or (max_loops is not None and report.loops >= max_loops):
                break
            if should_stop is not None and should_stop():
                break
        self._drain()
        report.seconds = time.monotonic() - started
        return report

    def _drain(self, timeout: float = 2.0) -> None:
        """Wait until reliable subscribers acknowledged what was published (bounded).

        Without this a player that exits right after its last message can take the unsent tail
        of a reliable stream with it.
        """
        deadline = time.monotonic() + timeout
        for pub in self._pubs.values():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                pub.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))
            except Exception:  # best effort: a best-effort publisher or an old rclpy
                pass

    def _publish(self, conn, raw: bytes) -> bool:
        """Check that ``raw`` deserialises into the rclpy class, then publish the bytes.

        :return: whether it was published (a message that does not deserialise is counted in
            :attr:`PlayReport.bad` and skipped: a subscriber could not read it either).
        """
        try:
            deserialize_message(raw, self._classes[conn.id])
        except Exception as exc:  # rclpy raises its own RMWError
            self.report.bad[conn.topic] = self.report.bad.get(conn.topic, 0) + 1
            self.get_logger().warning(
                f'skipping a {conn.msgtype} message on {conn.topic} that does not deserialise '
                f'({len(raw)} bytes): {exc}', throttle_duration_sec=5.0)
            return False
        self._pubs[conn.id].publish(raw)
        return True


def run_from_args(args: argparse.Namespace) -> int:
    """Play a bag as ``sfdfuse bag play`` parsed it; initialises and shuts down rclpy.

    :return: exit status (0 played, 2 bad request, 130 interrupted).
    """
    if not args.rate > 0:
        print(f'sfdfuse bag play: --rate must be > 0, got {args.rate}', file=sys.stderr)
        return 2
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init(args=getattr(args, 'ros_args', None))
    player = None
    try:
        try:
            player = BagPlayer(args.bag, topics=args.topics, qos=args.qos, clock=args.clock,
                               clock_hz=args.clock_hz)
        except BagError as exc:
            print(f'sfdfuse bag play: {exc}', file=sys.stderr)
            return 2
        for topic, why in player.report.skipped_topics.items():
            print(f'sfdfuse bag play: skipping {topic}: {why}', file=sys.stderr)
        if args.wait_for_subscribers > 0:
            if not player.wait_for_subscribers(args.wait_for_subscribers):
                print('sfdfuse bag play: not every topic has a subscriber after '
                      f'{args.wait_for_subscribers} s; playing anyway', file=sys.stderr)
        try:
            report = player.play(rate=args.rate, loop=args.loop, start_delay=args.start_delay)
        except KeyboardInterrupt:
            report = player.report
            if not args.quiet:
                print(report.summary())
            return 130
        except PlayError as exc:
            print(f'sfdfuse bag play: {exc}', file=sys.stderr)
            return 1
        if not args.quiet:
            print(report.summary())
        return 0
    finally:
        if player is not None:
            player.destroy_node()
        if own_context and rclpy.ok():
            rclpy.shutdown()


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m sfdfuse_ros.bag_play`` (same options as ``sfdfuse bag play``)."""
    from rclpy.utilities import remove_ros_args

    from sfdfuse_core.commands.bag import add_play_arguments

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog='bag_play', description=__doc__.splitlines()[0])
    add_play_arguments(parser)
    args = parser.parse_args(remove_ros_args(['bag_play'] + argv)[1:])
    args.ros_args = ['bag_play'] + argv
    return run_from_args(args)


if __name__ == '__main__':
    sys.exit(main())
