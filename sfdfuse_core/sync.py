"""Approximate-time pairing of a thermal stream (0) and an RGB stream (1) by header stamp.

The fusion node and the offline bag tool both need thermal/RGB pairs whose stamps are close.
``message_filters`` cannot be installed here, and neither of its policies does quite what a
thermal + RGB rig needs (they pair set by set, this module pairs as many frames as possible),
so this module holds our own policy. It is pure Python, knows nothing of ROS and works on
integer nanosecond stamps plus opaque items (the messages themselves).

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
  ``max_interval_duration`` plays the role of ``slop``. It minimises the spread of each set in
  turn, so a message dropped as "older than the published set" may have had a partner of its
  own: it does not maximise the number of sets.

This policy keeps the C++ idea (emit only what can no longer be improved) with the Python
parameters (``slop``, ``queue_size``), specialised to two streams, but optimises the matching as
a whole instead of each set on its own: both ``message_filters`` policies (and nearest-first
pairing) let two neighbouring frames compete for one partner, and at equal rates with an offset
near half a period the loser's other neighbour is often taken already, so it is lost although a
one-to-one pairing existed (measured with the former nearest-first version of this module:
30/30 Hz, +-3 ms jitter, 16.5 ms offset: 9 % of thermal frames unpaired with ``slop=0.05``).

* A pair is two messages with ``|t_thermal - t_rgb| <= slop`` (inclusive, so ``slop=0`` pairs
  equal stamps only). The pending messages are *planned*: among the matchings of the two
  queues, one with the most pairs, and among those the smallest total stamp difference (ties:
  a thermal frame takes the earlier RGB frame). Two time-sorted queues have an optimal matching
  without crossing pairs, so a dynamic programme over queue prefixes finds it in
  ``O(len(thermal) * len(rgb))``, at most ``(queue_size + 1) ** 2`` steps (a few ten
  microseconds per message in CPython); messages no pending or future message can reach stay
  queued outside it. For two regular streams at different rates (9 Hz thermal, 30 Hz RGB)
  every thermal frame therefore gets its nearest RGB frame; at equal rates every frame is paired
  whenever a one-to-one pairing within ``slop`` exists.
* The oldest planned pairs are emitted once no future message can change them. Future stamps on
  a stream are bounded below by the newest stamp seen there plus an estimated inter-message
  lower bound (``lower_bound_factor`` times the smallest of the last intervals, like
  ``setInterMessageLowerBound`` but estimated, so a 9 Hz thermal camera does not add a frame
  period of latency); a queued message within ``slop`` of that bound is *open*. A planned pair is
  final when (1) neither message can get a strictly closer partner, and (2) committing it, with
  the older planned pairs, cannot cost a pair whatever the future: a future message can only
  take open messages, the taken ones form a suffix of each queue (no crossing pairs), and for
  every such suffix the committed pairs plus the best matching of the rest must have as many
  pairs as the best matching of the window without the suffix, allowing for the pairs the
  future loses to the commitment (bounded with how many future messages, spaced by the lower
  bound, can reach the open ones). A pair is thus emitted about one frame of the faster stream
  after its later message (measured: at most ~40 ms at 30/30 and 9/30 Hz once three intervals
  are known, the same as nearest-first pairing except for 9/30 Hz with ``slop=0.05``, where it
  now waits for the next RGB frame).
* A bounded wait: a planned pair (with the older ones) is also emitted once the newest stamp
  seen on any stream is ``max_wait`` seconds past both of its stamps (a stream that stopped
  cannot stall the other).
* Unpaired messages stay queued (so an out-of-order message that arrives late, within the
  queue, still pairs) until the queue of their stream holds more than ``queue_size`` messages.
  Then the oldest is forced: if the plan pairs it, that pair (and the older planned ones) is
  emitted, otherwise it is dropped and counted as ``'no_match'`` (no partner can come any more)
  or ``'queue_overflow'`` (one might have).
* Duplicate stamps on one stream: the newer message replaces the queued one (``'superseded'``),
  as the dict of the Python version does, but counted.
* Emitted pairs are strictly increasing in stamp per stream: the pairer remembers the newest
  stamp it emitted on each stream, and a message that arrives with a stamp at or below it is
  dropped as ``'late'`` (a frame re-sent after its first copy was paired, which would otherwise
  be fused twice, or one delivered too late to pair in order). A queued message that a newer
  message of its stream overtakes in an emitted pair (say an RGB frame between two thermal
  frames) is dropped at once as ``'no_match'``: it could only pair out of order.
* Time jumping backwards: a stamp more than ``reset_threshold`` older than the newest seen on its
  stream (a looping bag, a restarted simulation) first flushes the old timeline (pairs that can
  still be made are returned, the rest counted as ``'reset'``), clears the state and counts a
  reset; pairing continues on the new timeline. Until the other stream also jumps, its messages
  from the old timeline (stamps more than ``reset_threshold`` ahead of the new one) are dropped
  as ``'reset'`` instead of causing a second reset. A stamp older than the newest emitted one
  but not by more than ``reset_threshold`` is ``'late'``, not a reset, unless its stream goes
  on in order below the emitted stamp (:data:`LATE_RUN_RESET` late messages in a row, each
  newer than the one before: a bag shorter than ``reset_threshold`` that loops); then the
  last of them resets the pairer as above and starts the new timeline.

Policies
--------
The behaviour above is the ``'optimal'`` policy (the default): the most pairs, each with the
closest partner, at the price of waiting until a pair can no longer be improved (with 10 Hz
thermal stamped 14 ms after an RGB frame of a 30 Hz camera, every pair waits for the next RGB
frame, about 20 ms). The ``'greedy'`` policy never waits: when a message arrives, it is paired
at once with the closest queued message of the other stream within ``slop`` (ties: the earlier
one), as the Python ``message_filters.ApproximateTimeSynchronizer`` does (which pairs the new
message with its closest partner and never waits; its spread test is strict, ``< slop``, ours
stays inclusive). A message with no partner waits in its queue for one. The pair may not be the
closest one (a closer frame arriving later finds its partner taken), and two neighbours
competing for one partner can lose a pair the optimal policy would have made. Everything else
is shared: ``slop``, ``queue_size``, the counters and drop reasons, duplicate stamps, late
messages, time jumps and resets, the strictly increasing emitted stamps; ``max_wait`` and
``lower_bound_factor`` have nothing to do in it (nothing waits for a better partner).

Every message given to :meth:`ApproximateTimePairer.add` ends up exactly once either in an
emitted pair or in :attr:`SyncStats.dropped` (after :meth:`~ApproximateTimePairer.flush`).
Pairs returned by one call are in stamp order; across calls too, within one timeline (between
resets): each stream's stamps in the emitted pairs strictly increase. The class is not
thread-safe: the node calls it from one callback group.
"""
from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

#: Late messages in a row, in increasing stamp order, on one stream that mean its time jumped
#: back by less than ``reset_threshold`` (a short looping bag) rather than re-sent frames.
LATE_RUN_RESET = 3
#: Stream index of the thermal camera.
THERMAL = 0
#: Stream index of the RGB camera.
RGB = 1
#: Names of the streams, by index (used in :meth:`SyncStats.as_dict`).
STREAM_NAMES = ('thermal', 'rgb')
#: Why a message can be dropped.
DROP_REASONS = ('no_match', 'queue_overflow', 'superseded', 'reset', 'late')
#: Pairing policies: ``'optimal'`` waits until a pair cannot be improved, ``'greedy'`` pairs a
#: message at once with the closest queued partner within ``slop`` (see the module docstring).
POLICIES = ('optimal', 'greedy')

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
    :param policy: ``'optimal'`` (the most and closest pairs, waiting until a pair is final) or
        ``'greedy'`` (pair each message at once with the closest partner within ``slop``).
    """

    def __init__(self, slop: float = 0.05, queue_size: int = 10, reset_threshold: float = 1.0,
                 max_wait: float = 0.5, lower_bound_factor: float = 0.5,
                 policy: str = 'optimal') -> None:
        if policy not in POLICIES:
            raise ValueError(f'policy must be one of {", ".join(POLICIES)}; got {policy!r}')
        self._policy = policy
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
        """Largest allowed stamp difference of a pair, in seconds (settable at run time)."""
        return self._slop_ns / _NS_PER_S

    @slop.setter
    def slop(self, value: float) -> None:
        """Change the slop; queued messages are planned with it from the next ``add``.

        The timeline (emitted stamps, rates) and the counters are kept, so a message re-sent
        after its pair was emitted is still dropped as late.

        :raises ValueError: a negative or non-finite slop.
        """
        self._slop_ns = int(round(_seconds_to_ns('slop', value)))

    @property
    def policy(self) -> str:
        """The pairing policy, ``'optimal'`` or ``'greedy'`` (set when the pairer is made)."""
        return self._policy

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
        emitted = self._emitted[stream]
        if emitted is not None and stamp <= emitted:
            count, last = self._late_run[stream]
            count = count + 1 if count and stamp > last else 1
            self._late_run[stream] = (count, stamp)
            if count < LATE_RUN_RESET:
                # re-sent, or too late: pairing it would emit this stream's stamps out of order
                self.stats.dropped[stream]['late'] += 1
                return out
            out = self._match(force_all=True)  # a short backwards jump: a new timeline
            self._drop_all('reset')
            self.stats.resets += 1
            self._clear_timeline()
            self._awaiting_jump[other] = True
        else:
            self._late_run[stream] = (0, 0)
        entry = self._insert(stream, stamp, item)
        if self._policy == 'greedy':
            out.extend(self._match_greedy(stream, entry))
        else:
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
        #: Newest stamp emitted in a pair, per stream (later messages must be newer).
        self._emitted: list[Optional[int]] = [None, None]
        #: Per stream: late messages in a row (in increasing order) and the last one's stamp.
        self._late_run = [(0, 0), (0, 0)]

    def _drop_all(self, reason: str) -> None:
        for stream, queue in enumerate(self._queues):
            self.stats.dropped[stream][reason] += len(queue)
            queue.clear()

    def _insert(self, stream: int, stamp: int, item: Any) -> _Entry:
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
            return queue[i]
        entry = _Entry(stamp, self._next_seq(), item)
        queue.insert(i, entry)
        return entry

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

    def _first_open(self, stamps: list[int], other: int) -> int:
        """Return the index of the first sorted stamp a future message of ``other`` can reach."""
        bound = self._future_bound(other)
        return 0 if bound is None else bisect_left(stamps, bound - self._slop_ns)

    def _reach_count(self, stream: int, last: int) -> float:
        """Return how many future messages of ``stream`` can be within slop of ``last``."""
        bound = self._future_bound(stream)
        if bound is None:
            return float('inf')
        if bound > last + self._slop_ns:
            return 0
        intervals = self._intervals[stream]
        step = self._factor * min(intervals) if len(intervals) >= _MIN_INTERVALS else 0.0
        if step <= 0:
            return float('inf')
        return (last + self._slop_ns - bound) // step + 1

    def _may_improve(self, stamp: int, other: int, gap: int) -> bool:
        """Whether a future message of ``other`` could be strictly closer than ``gap``."""
        bound = self._future_bound(other)
        return bound is None or bound - stamp < gap

    def _newest_overall(self) -> Optional[int]:
        known = [n for n in self._newest if n is not None]
        return max(known) if known else None

    def _match_greedy(self, stream: int, entry: _Entry) -> list[Pair]:
        """Pair the new ``entry`` of ``stream`` with its closest partner within slop, at once."""
        other = 1 - stream
        queue = self._queues[other]
        slop = self._slop_ns
        first = bisect_left(queue, _Entry(entry.stamp - slop, -1, None))
        best: Optional[_Entry] = None
        for candidate in queue[first:]:
            if candidate.stamp > entry.stamp + slop:
                break
            # sorted by stamp, so among equal gaps the earlier candidate is kept
            if best is None or abs(candidate.stamp - entry.stamp) < abs(best.stamp - entry.stamp):
                best = candidate
        if best is None:
            return []
        thermal, rgb = (entry, best) if stream == THERMAL else (best, entry)
        self._emitted = [thermal.stamp, rgb.stamp]
        for s, queue in enumerate(self._queues):
            # the pair leaves; older messages could only pair out of order now
            kept = [e for e in queue if e.stamp > self._emitted[s]]
            self.stats.dropped[s]['no_match'] += len(queue) - len(kept) - 1
            queue[:] = kept
        self.stats.paired += 1
        return [(rgb.stamp, thermal.item, rgb.item)]

    def _match(self, force_all: bool) -> list[Pair]:
        """Emit the pairs of the planned matching that are final; see the module docstring."""
        queue_t, queue_r = self._queues
        if not queue_t or not queue_r:
            return []
        slop = self._slop_ns
        ts = [e.stamp for e in queue_t]
        rs = [e.stamp for e in queue_r]
        lo = [bisect_left(rs, t - slop) for t in ts]
        hi = [bisect_right(rs, t + slop) for t in ts]
        if all(first == last for first, last in zip(lo, hi)):
            return []
        # Messages with no partner in the window that no future message can reach either stay
        # queued but out of the matching (they only cost time there).
        open_t = self._first_open(ts, RGB)
        open_r = self._first_open(rs, THERMAL)
        thermal = [e for i, (e, first, last) in enumerate(zip(queue_t, lo, hi))
                   if first < last or i >= open_t]
        partnered = bytearray(len(rs))
        for first, last in zip(lo, hi):
            partnered[first:last] = b'\x01' * (last - first)
        rgb = [e for j, (e, flag) in enumerate(zip(queue_r, partnered)) if flag or j >= open_r]
        ts = [e.stamp for e in thermal]
        rs = [e.stamp for e in rgb]
        lo = [bisect_left(rs, t - slop) for t in ts]  # RGB partners of ts[i]: rs[lo[i]:hi[i]]
        hi = [bisect_right(rs, t + slop) for t in ts]
        n, m = len(ts), len(rs)
        # Forward DP over prefixes: g[i][j] is the best matching of ts[:i] with rs[:j], scored
        # pairs * k - total gap, so the number of pairs comes first and closeness second.
        k = slop * min(n, m) + 1
        g = [[0] * (m + 1)]
        for i in range(n):
            prev = g[i]
            row = [0] * (m + 1)
            t, first, last = ts[i], lo[i], hi[i]
            for j in range(m):
                best = prev[j + 1] if prev[j + 1] >= row[j] else row[j]
                if first <= j < last:
                    paired = prev[j] + k - abs(t - rs[j])
                    if paired > best:
                        best = paired
                row[j + 1] = best
            g.append(row)
        plan = self._backtrack(g, lo, hi, ts, rs, k)
        if not plan:
            return []
        n_final = len(plan) if force_all else self._final_prefix(plan, g, k, lo, hi, ts, rs)
        if not force_all:
            n_final = max(n_final, self._forced_prefix(plan, thermal, rgb))
        if not n_final:
            return []
        out = []
        used = set()
        for i, j in plan[:n_final]:
            out.append((rs[j], thermal[i].item, rgb[j].item))
            used.add(thermal[i].seq)
            used.add(rgb[j].seq)
        # The plan has no crossing pairs, so its last emitted pair holds the newest stamps.
        i_last, j_last = plan[n_final - 1]
        self._emitted = [ts[i_last], rs[j_last]]
        for stream, queue in enumerate(self._queues):
            # Queued messages at or below the emitted stamp could only pair out of order.
            kept = [e for e in queue if e.seq not in used and e.stamp > self._emitted[stream]]
            self.stats.dropped[stream]['no_match'] += len(queue) - len(kept) - len(out)
            queue[:] = kept
        self.stats.paired += len(out)
        return out

    @staticmethod
    def _backtrack(g: list[list[int]], lo: list[int], hi: list[int], ts: list[int],
                   rs: list[int], k: int) -> list[tuple[int, int]]:
        """Return the planned pairs ``(thermal_index, rgb_index)`` of ``g[-1][-1]``, oldest first.

        Among equal scores the thermal frame takes the earlier RGB frame.
        """
        i, j = len(g) - 1, len(g[0]) - 1
        plan = []
        while i and j:
            value = g[i][j]
            if g[i][j - 1] == value:
                j -= 1
            elif lo[i - 1] <= j - 1 < hi[i - 1] and \
                    g[i - 1][j - 1] + k - abs(ts[i - 1] - rs[j - 1]) == value:
                i -= 1
                j -= 1
                plan.append((i, j))
            else:
                i -= 1
        plan.reverse()
        return plan

    def _forced_prefix(self, plan: list[tuple[int, int]], thermal: list[_Entry],
                       rgb: list[_Entry]) -> int:
        """Return how many planned pairs must go now (queue overflow or ``max_wait``)."""
        forced = set()
        for queue in self._queues:  # the oldest messages beyond queue_size must go now
            forced.update(e.seq for e in queue[:max(0, len(queue) - self._queue_size)])
        newest = self._newest_overall()
        wait = self._max_wait_ns
        for p in range(len(plan) - 1, -1, -1):
            et, er = thermal[plan[p][0]], rgb[plan[p][1]]
            if et.seq in forced or er.seq in forced or (
                    newest is not None and newest - max(et.stamp, er.stamp) >= wait):
                return p + 1
        return 0

    def _final_prefix(self, plan: list[tuple[int, int]], g: list[list[int]], k: int,
                      lo: list[int], hi: list[int], ts: list[int], rs: list[int]) -> int:
        """Return how many planned pairs (oldest first) no future message can change.

        A pair is final when neither of its messages can get a strictly closer partner and
        committing it (with the older planned pairs) cannot cost a pair, whatever the future:
        future messages can only take *open* messages (those a future stamp can still reach
        within slop), and for every choice of taken open messages (a suffix of each queue, as
        an optimal matching has no crossing pairs) the committed pairs plus the best matching of
        the rest must still have as many pairs as the best matching without the commitment.
        """
        n, m = len(ts), len(rs)
        n_closed = self._first_open(ts, RGB)
        m_closed = self._first_open(rs, THERMAL)
        ends = [(a, b, (g[a][b] + k - 1) // k)
                for a in range(n_closed, n + 1) for b in range(m_closed, m + 1)]
        # how many future messages of each stream can still reach an open message of the other
        reach_t = self._reach_count(THERMAL, rs[-1])
        reach_r = self._reach_count(RGB, ts[-1])
        for p, (i, j) in enumerate(plan):
            gap = abs(ts[i] - rs[j])
            if self._may_improve(ts[i], RGB, gap) or self._may_improve(rs[j], THERMAL, gap):
                return p
            i0, j0 = i + 1, j + 1  # the committed pairs lie in ts[:i0] x rs[:j0]
            # h[a - i0][b - j0]: most pairs of ts[i0:a] with rs[j0:b]
            h = [[0] * (m - j0 + 1)]
            for a in range(i0, n):
                prev = h[-1]
                row = [0] * (m - j0 + 1)
                first, last = lo[a], hi[a]
                for b in range(j0, m):
                    c = b - j0
                    best = prev[c + 1] if prev[c + 1] >= row[c] else row[c]
                    if first <= b < last and prev[c] + 1 > best:
                        best = prev[c] + 1
                    row[c + 1] = best
                h.append(row)
            for a, b, best in ends:
                # The future takes ts[a:] and rs[b:]. A committed message among them costs it a
                # pair unless an uncommitted one (all newer) can stand in: at most reach_r
                # future RGB frames can use ts[a:], reach_t future thermal frames rs[b:]. If
                # both messages of a committed pair were taken, their two future partners are
                # within slop of each other and pair instead, so the pair costs one at most.
                taken_t = taken_r = both = 0
                for q in range(p + 1):
                    in_t, in_r = plan[q][0] >= a, plan[q][1] >= b
                    taken_t += in_t
                    taken_r += in_r
                    both += in_t and in_r
                lost = min(max(0, taken_t - max(0, n - a - reach_r))
                           + max(0, taken_r - max(0, m - b - reach_t)),
                           taken_t + taken_r - both)
                if p + 1 + h[max(a, i0) - i0][max(b, j0) - j0] < best + lost:
                    return p
        return len(plan)

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
