"""Approximate-time pairing of a thermal stream (0) and an RGB stream (1) by header stamp.

The fusion node and the offline bag tool both need thermal/RGB pairs whose stamps are close.
``message_filters`` cannot be installed here, and neither of its policies does quite what a
thermal + RGB rig needs, so this module holds our own policy. It is pure Python, knows nothing
of ROS and works on integer nanosecond stamps plus opaque items (the messages themselves).

Relation to ``message_filters``
-------------------------------
* The Python ``ApproximateTimeSynchronizer(fs, queue_size, slop)`` keeps a ``{stamp: msg}``
  dict per input trimmed to ``queue_size`` (oldest first) and, on every message, emits the first
  set it finds whose spread is ``< slop`` with the *newest* message in it. It never waits: when
  the thermal frame arrives before the closest RGB frame it is paired with whatever RGB frame is
  already within ``slop``, even if a closer one arrives 5 ms later. Nothing is counted when a
  message is dropped, duplicate stamps silently overwrite each other, and a bag that loops (time
  jumps backwards) leaves old stamps in the queues.
* The C++ ``sync_policies::ApproximateTime`` ("pivot" algorithm) waits until a candidate set
  can provably no longer be improved: the pivot is the latest of the queue heads, and the set is
  published once every topic has a message at or after the pivot (or an inter-message lower
  bound proves no better message can come); messages older than the published set are dropped.
  ``max_interval_duration`` plays the role of ``slop``. It minimises the spread of each set.

This policy keeps the C++ idea (emit a pair only when it can no longer be improved) with the
Python parameters (``slop``, ``queue_size``), specialised to two streams:

* Every candidate pair (thermal, RGB) with ``|t_thermal - t_rgb| <= slop`` (inclusive, so
  ``slop=0`` pairs equal stamps only) is considered in order of increasing gap (ties: earlier
  RGB stamp first). A pair is emitted when neither message can still get a strictly closer
  partner: future stamps on a stream are bounded below by the newest stamp seen there plus an
  estimated inter-message lower bound (``lower_bound_factor`` times the smallest of the last
  intervals, like ``setInterMessageLowerBound`` but estimated, so a 9 Hz thermal camera does not
  add a frame period of latency). A pair that must wait blocks every larger-gap pair that shares
  a message with it, transitively, so the result equals the greedy closest-first matching that
  would be made with all messages known. For two regular streams (9 Hz thermal, 30 Hz RGB) every
  thermal frame therefore gets its nearest RGB frame, and each message is used at most once.
  Known limit of "nearest first": at *equal* rates with an offset near half a period, jitter
  makes neighbouring frames compete for one partner and the loser may find its other neighbour
  taken (measured: 30/30 Hz, +-3 ms jitter, 16.5 ms offset: ~8 % of thermal frames unpaired
  with ``slop=0.05``; 0 % for offsets below ~10 ms). A matching that maximises the number of
  pairs first would keep them; hardware-triggered or offset-free rigs do not hit this.
* A bounded wait: a pair is also emitted once the newest stamp seen on any stream is
  ``max_wait`` seconds past both of its stamps (a stream that stopped cannot stall the other).
* Unpaired messages stay queued (so an out-of-order message that arrives late, within the
  queue, still pairs) until the queue of their stream holds more than ``queue_size`` messages.
  Then the oldest is forced: paired if a partner is free, otherwise dropped and counted as
  ``'no_match'`` (no partner can come any more) or ``'queue_overflow'`` (one might have).
* Duplicate stamps on one stream: the newer message replaces the queued one (``'superseded'``),
  as the dict of the Python version does, but counted.
* Time jumping backwards: a stamp more than ``reset_threshold`` older than the newest seen on its
  stream (a looping bag, a restarted simulation) first flushes the old timeline (pairs that can
  still be made are returned, the rest counted as ``'reset'``), clears the state and counts a
  reset; pairing continues on the new timeline. Until the other stream also jumps, its messages
  from the old timeline (stamps more than ``reset_threshold`` ahead of the new one) are dropped
  as ``'reset'`` instead of causing a second reset.

Every message given to :meth:`ApproximateTimePairer.add` ends up exactly once either in an
emitted pair or in :attr:`SyncStats.dropped` (after :meth:`~ApproximateTimePairer.flush`).
Pairs returned by one call are in stamp order; across calls they are in stamp order as long as
the input is in order. The class is not thread-safe: the node calls it from one callback group.
"""
from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right, insort
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

#: Stream index of the thermal camera.
THERMAL = 0
#: Stream index of the RGB camera.
RGB = 1
#: Names of the streams, by index (used in :meth:`SyncStats.as_dict`).
STREAM_NAMES = ('thermal', 'rgb')
#: Why a message can be dropped.
DROP_REASONS = ('no_match', 'queue_overflow', 'superseded', 'reset')

#: A pair as returned by the pairer: ``(pair_stamp_ns, thermal_item, rgb_item)``.
Pair = tuple[int, Any, Any]

_NS_PER_S = 1_000_000_000
#: How many in-order intervals the inter-message lower bound is estimated from.
_INTERVAL_HISTORY = 8
#: Intervals needed before the estimate is used (before that, no lower bound).
_MIN_INTERVALS = 3


def _zero_reasons() -> dict[str, int]:
    return dict.fromkeys(DROP_REASONS, 0)


@dataclass
class SyncStats:
    """Counters of an :class:`ApproximateTimePairer`, cumulative since it was created.

    ``received[s] == paired + sum(dropped[s].values()) + pending[s]`` holds for each stream.
    """

    #: Messages given to ``add``, per stream ``[thermal, rgb]``.
    received: list[int] = field(default_factory=lambda: [0, 0])
    #: Pairs emitted.
    paired: int = 0
    #: Dropped messages per stream, by reason (:data:`DROP_REASONS`).
    dropped: list[dict[str, int]] = field(
        default_factory=lambda: [_zero_reasons(), _zero_reasons()])
    #: Timeline resets (backwards time jumps detected, plus :meth:`ApproximateTimePairer.reset`).
    resets: int = 0

    def dropped_total(self, stream: Optional[int] = None) -> int:
        """Return the number of dropped messages of one stream, or of both.

        :param stream: ``0`` (thermal), ``1`` (RGB) or ``None`` for both.
        :return: the count over all reasons.
        """
        streams = (0, 1) if stream is None else (_check_stream(stream),)
        return sum(sum(self.dropped[s].values()) for s in streams)

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as plain nested dicts keyed by stream name (for logs, YAML).

        :return: ``{'received': {'thermal': n, 'rgb': n}, 'paired': n, 'dropped': {'thermal':
            {reason: n}, 'rgb': {...}}, 'resets': n}``.
        """
        return {
            'received': dict(zip(STREAM_NAMES, self.received)),
            'paired': self.paired,
            'dropped': {name: dict(d) for name, d in zip(STREAM_NAMES, self.dropped)},
            'resets': self.resets,
        }


class _Entry:
    """One queued message."""

    __slots__ = ('stamp', 'seq', 'item')

    def __init__(self, stamp: int, seq: int, item: Any) -> None:
        self.stamp = stamp
        self.seq = seq
        self.item = item

    def __lt__(self, other: '_Entry') -> bool:
        return (self.stamp, self.seq) < (other.stamp, other.seq)


def _check_stream(stream: Any) -> int:
    if isinstance(stream, bool) or not isinstance(stream, int) or stream not in (THERMAL, RGB):
        raise ValueError(f'stream must be 0 (thermal) or 1 (rgb), got {stream!r}')
    return stream


def _seconds_to_ns(name: str, value: Any, allow_zero: bool = True,
                   allow_inf: bool = False) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a number of seconds, got {value!r}') from None
    if seconds != seconds or (seconds == float('inf') and not allow_inf) or seconds < 0 or (
            seconds == 0 and not allow_zero):
        bound = '>= 0' if allow_zero else '> 0'
        raise ValueError(f'{name} must be finite and {bound} seconds, got {value!r}')
    return seconds * _NS_PER_S if seconds != float('inf') else float('inf')


def stamp_to_ns(stamp: Any) -> int:
    """Convert a ROS time to integer nanoseconds.

    :param stamp: a ``builtin_interfaces/Time`` (rclpy or rosbags: ``sec`` and ``nanosec``),
        an object with a ``nanoseconds`` attribute (``rclpy.time.Time``) or an int.
    :return: nanoseconds since the epoch of the stamp's clock.
    """
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        return stamp
    if hasattr(stamp, 'sec') and hasattr(stamp, 'nanosec'):
        return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)
    if hasattr(stamp, 'nanoseconds'):
        return int(stamp.nanoseconds)
    raise TypeError(f'expected a builtin_interfaces/Time (sec, nanosec) or int nanoseconds, '
                    f'got {type(stamp).__name__}')


def header_stamp_ns(msg: Any) -> int:
    """Return ``msg.header.stamp`` in integer nanoseconds (any message with a header).

    :param msg: a stamped message (rclpy or rosbags class).
    :return: nanoseconds.
    """
    header = getattr(msg, 'header', None)
    if header is None or not hasattr(header, 'stamp'):
        raise TypeError(f'expected a message with header.stamp, got {type(msg).__name__}')
    return stamp_to_ns(header.stamp)


class ApproximateTimePairer:
    """Pairs thermal (stream 0) and RGB (stream 1) items by stamp; see the module docstring.

    :param slop: largest allowed stamp difference of a pair, in seconds (``>= 0``).
    :param queue_size: most messages kept per stream while waiting (``>= 1``).
    :param reset_threshold: a stamp this many seconds older than the newest one seen on its
        stream is a backwards time jump and resets the pairer (``> 0``; ``inf`` disables).
    :param max_wait: a waiting pair is emitted once the newest stamp seen is this many seconds
        past it (``>= 0``; ``0`` emits at once, like the Python ``message_filters``).
    :param lower_bound_factor: fraction (``0..1``) of the smallest recent interval of a stream
        taken as the lower bound on its next interval; ``0`` assumes the next message may come
        at any time after the newest (never emits a pair that could still improve).
    """

    def __init__(self, slop: float = 0.05, queue_size: int = 10, reset_threshold: float = 1.0,
                 max_wait: float = 0.5, lower_bound_factor: float = 0.5) -> None:
        self._slop_ns = int(round(_seconds_to_ns('slop', slop)))
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f'queue_size must be an int >= 1, got {queue_size!r}')
        self._queue_size = queue_size
        self._reset_ns = _seconds_to_ns('reset_threshold', reset_threshold, allow_zero=False,
                                        allow_inf=True)
        self._max_wait_ns = _seconds_to_ns('max_wait', max_wait, allow_inf=True)
        try:
            factor = float(lower_bound_factor)
        except (TypeError, ValueError):
            raise ValueError(
                f'lower_bound_factor must be a number, got {lower_bound_factor!r}') from None
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f'lower_bound_factor must be in [0, 1], got {lower_bound_factor!r}')
        self._factor = factor
        self.stats = SyncStats()
        self._seq = 0
        self._queues: tuple[list[_Entry], list[_Entry]] = ([], [])
        self._clear_timeline()

    # -- public API ------------------------------------------------------------------------

    @property
    def slop(self) -> float:
        """Largest allowed stamp difference of a pair, in seconds."""
        return self._slop_ns / _NS_PER_S

    @property
    def queue_size(self) -> int:
        """Most messages kept per stream."""
        return self._queue_size

    @property
    def pending(self) -> tuple[int, int]:
        """Messages queued now, ``(thermal, rgb)``."""
        return len(self._queues[0]), len(self._queues[1])

    def add(self, stream: int, stamp_ns: int, item: Any) -> list[Pair]:
        """Add one message and return the pairs that became final.

        :param stream: ``0`` thermal, ``1`` RGB.
        :param stamp_ns: header stamp in integer nanoseconds (:func:`stamp_to_ns`).
        :param item: anything (the message); returned untouched in a pair.
        :return: ``[(pair_stamp_ns, thermal_item, rgb_item), ...]`` in stamp order; the pair
            stamp is the RGB stamp (the fused image lives in the RGB frame).
        """
        stream = _check_stream(stream)
        try:
            stamp = operator.index(stamp_ns)
        except TypeError:
            raise ValueError(
                f'stamp_ns must be an int (nanoseconds), got {type(stamp_ns).__name__}') from None
        if isinstance(stamp_ns, bool):
            raise ValueError(f'stamp_ns must be an int (nanoseconds), got {stamp_ns!r}')
        self.stats.received[stream] += 1
        out: list[Pair] = []
        other = 1 - stream
        newest = self._newest[stream]
        if newest is not None and stamp < newest - self._reset_ns:
            out = self._match(force_all=True)
            self._drop_all('reset')
            self.stats.resets += 1
            self._clear_timeline()
            self._awaiting_jump[other] = True
        elif self._awaiting_jump[stream]:
            anchor = self._newest[other]
            if anchor is not None and stamp > anchor + self._reset_ns:
                self.stats.dropped[stream]['reset'] += 1  # straggler of the old timeline
                return out
            self._awaiting_jump[stream] = False
        self._insert(stream, stamp, item)
        out.extend(self._match(force_all=False))
        self._evict_overflow()
        out.sort(key=lambda pair: pair[0])
        return out

    def flush(self) -> list[Pair]:
        """End of input: emit every pair that can still be made, drop (count) the rest.

        :return: the pairs, in stamp order.
        """
        out = self._match(force_all=True)
        self._drop_all('no_match')
        out.sort(key=lambda pair: pair[0])
        return out

    def reset(self) -> None:
        """Forget the timeline and drop queued messages (counted as ``'reset'``); counts a reset.

        Call :meth:`flush` first to emit what can still pair. Counters are kept.
        """
        self._drop_all('reset')
        self.stats.resets += 1
        self._clear_timeline()

    # -- internals -------------------------------------------------------------------------

    def _clear_timeline(self) -> None:
        self._newest: list[Optional[int]] = [None, None]
        self._intervals: tuple[deque, deque] = (deque(maxlen=_INTERVAL_HISTORY),
                                                deque(maxlen=_INTERVAL_HISTORY))
        self._awaiting_jump = [False, False]

    def _drop_all(self, reason: str) -> None:
        for stream, queue in enumerate(self._queues):
            self.stats.dropped[stream][reason] += len(queue)
            queue.clear()

    def _insert(self, stream: int, stamp: int, item: Any) -> None:
        queue = self._queues[stream]
        newest = self._newest[stream]
        if newest is None or stamp > newest:
            if newest is not None:
                self._intervals[stream].append(stamp - newest)
            self._newest[stream] = stamp
        i = bisect_left(queue, _Entry(stamp, -1, None))
        if i < len(queue) and queue[i].stamp == stamp:
            queue[i].item = item  # duplicate stamp: the newer message replaces the queued one
            queue[i].seq = self._next_seq()
            self.stats.dropped[stream]['superseded'] += 1
            return
        insort(queue, _Entry(stamp, self._next_seq(), item))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _future_bound(self, stream: int) -> Optional[float]:
        """Lowest stamp a future in-order message of ``stream`` can have (None: unknown)."""
        newest = self._newest[stream]
        if newest is None:
            return None
        intervals = self._intervals[stream]
        if self._factor > 0 and len(intervals) >= _MIN_INTERVALS:
            return newest + self._factor * min(intervals)
        return newest

    def _may_improve(self, stamp: int, other: int, gap: int) -> bool:
        """Whether a future message of ``other`` could be strictly closer than ``gap``."""
        bound = self._future_bound(other)
        return bound is None or bound - stamp < gap

    def _newest_overall(self) -> Optional[int]:
        known = [n for n in self._newest if n is not None]
        return max(known) if known else None

    def _match(self, force_all: bool) -> list[Pair]:
        """Emit the pairs that are final (all of them when ``force_all``); see module doc."""
        thermal, rgb = self._queues
        if not thermal or not rgb:
            return []
        rgb_stamps = [e.stamp for e in rgb]
        candidates = []
        for et in thermal:
            lo = bisect_left(rgb_stamps, et.stamp - self._slop_ns)
            hi = bisect_right(rgb_stamps, et.stamp + self._slop_ns)
            for er in rgb[lo:hi]:
                candidates.append((abs(et.stamp - er.stamp), er.stamp, et.seq, er.seq, et, er))
        if not candidates:
            return []
        candidates.sort(key=lambda c: c[:4])
        forced = set()
        for queue in self._queues:  # the oldest messages beyond queue_size must go now
            forced.update(e.seq for e in queue[:max(0, len(queue) - self._queue_size)])
        newest = self._newest_overall()
        used: set[int] = set()
        blocked: set[int] = set()
        out: list[Pair] = []
        for gap, _, ts, rs, et, er in candidates:
            if ts in used or rs in used:
                continue
            if ts in blocked or rs in blocked:
                blocked.update((ts, rs))
                continue
            final = (force_all or ts in forced or rs in forced
                     or (newest is not None
                         and newest - max(et.stamp, er.stamp) >= self._max_wait_ns)
                     or (not self._may_improve(et.stamp, RGB, gap)
                         and not self._may_improve(er.stamp, THERMAL, gap)))
            if final:
                used.update((ts, rs))
                out.append((er.stamp, et.item, er.item))
            else:
                blocked.update((ts, rs))
        if used:
            self._queues[0][:] = [e for e in thermal if e.seq not in used]
            self._queues[1][:] = [e for e in rgb if e.seq not in used]
            self.stats.paired += len(out)
        return out

    def _evict_overflow(self) -> None:
        for stream, queue in enumerate(self._queues):
            excess = len(queue) - self._queue_size
            if excess <= 0:
                continue
            other = 1 - stream
            bound = self._future_bound(other)
            for entry in queue[:excess]:
                hopeless = bound is not None and bound - entry.stamp > self._slop_ns
                self.stats.dropped[stream]['no_match' if hopeless else 'queue_overflow'] += 1
            del queue[:excess]
