"""Tests of :mod:`sfdfuse_core.sync` (approximate-time pairing of thermal and RGB streams)."""
from bisect import bisect_left, bisect_right
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfdfuse_core.sync import (ApproximateTimePairer, DROP_REASONS, header_stamp_ns,
                               LATE_RUN_RESET, POLICIES, RGB, stamp_to_ns, SyncStats, THERMAL)

MS = 1_000_000


def _run(pairer, events):
    """Feed ``(stream, stamp_ns)`` events (items are ``(stream, stamp, index)``); flush."""
    pairs = []
    for i, (stream, stamp) in enumerate(events):
        out = pairer.add(stream, stamp, (stream, stamp, i))
        assert [p[0] for p in out] == sorted(p[0] for p in out)
        pairs.extend(out)
    pairs.extend(pairer.flush())
    return pairs


def _check_invariants(pairer, events, pairs, slop_ns):
    used = set()
    for stamp, th, rgb in pairs:
        assert th[0] == THERMAL and rgb[0] == RGB
        assert stamp == rgb[1]
        assert abs(th[1] - rgb[1]) <= slop_ns
        assert th[2] not in used and rgb[2] not in used
        used.update((th[2], rgb[2]))
    stats = pairer.stats
    assert stats.paired == len(pairs)
    assert pairer.pending == (0, 0)
    for stream in (THERMAL, RGB):
        n_in = sum(1 for s, _ in events if s == stream)
        assert stats.received[stream] == n_in
        assert stats.paired + stats.dropped_total(stream) == n_in


def _regular_streams(rng, seconds, thermal_hz=9.0, rgb_hz=30.0, jitter_ms=3.0, t0=0.0):
    th = t0 + 0.013 + np.arange(int(seconds * thermal_hz)) / thermal_hz
    rgb = t0 + np.arange(int(seconds * rgb_hz)) / rgb_hz
    th = th + rng.uniform(-jitter_ms, jitter_ms, th.shape) / 1e3
    rgb = rgb + rng.uniform(-jitter_ms, jitter_ms, rgb.shape) / 1e3
    th_ns = np.round(th * 1e9).astype(np.int64)
    rgb_ns = np.round(rgb * 1e9).astype(np.int64)
    events = [(THERMAL, int(t)) for t in th_ns] + [(RGB, int(t)) for t in rgb_ns]
    events.sort(key=lambda e: (e[1], e[0]))
    return th_ns, rgb_ns, events


def _max_pairs(th_ns, rgb_ns, slop_ns):
    """Return the size of a maximum matching of thermal and RGB stamps within ``slop_ns``.

    Offline reference, independent of the pairer: each thermal stamp is an interval
    ``[t - slop, t + slop]`` and the intervals are sorted by their right ends, so taking, for
    each in turn, the earliest free RGB stamp inside it is optimal (the greedy matching of
    intervals to points, Glover 1967, "Maximum matching in a convex bipartite graph").
    """
    rgb = sorted(int(r) for r in rgb_ns)
    used = [False] * len(rgb)
    count = 0
    for t in sorted(int(t) for t in th_ns):
        for j in range(bisect_left(rgb, t - slop_ns), bisect_right(rgb, t + slop_ns)):
            if not used[j]:
                used[j] = True
                count += 1
                break
    return count


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from([THERMAL, RGB]),
                                 st.integers(0, 400).map(lambda t: t * MS)), max_size=60),
       slop_ms=st.integers(0, 60), queue_size=st.integers(1, 12),
       factor=st.sampled_from([0.0, 0.5, 1.0]), max_wait_ms=st.sampled_from([0, 50, 500]),
       policy=st.sampled_from(POLICIES))
def test_every_message_is_paired_or_dropped_exactly_once(events, slop_ms, queue_size, factor,
                                                         max_wait_ms, policy):
    """Arbitrary arrival orders, duplicates and backwards jumps keep the bookkeeping exact."""
    pairer = ApproximateTimePairer(slop=slop_ms / 1e3, queue_size=queue_size,
                                   reset_threshold=0.1, max_wait=max_wait_ms / 1e3,
                                   lower_bound_factor=factor, policy=policy)
    pairs = _run(pairer, events)
    _check_invariants(pairer, events, pairs, slop_ms * MS)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), thermal_hz=st.sampled_from([9.0, 30.0]),
       rgb_hz=st.sampled_from([15.0, 30.0, 60.0]))
def test_regular_streams_pair_each_thermal_with_its_nearest_rgb(seed, thermal_hz, rgb_hz):
    """9/30 Hz thermal next to 15-60 Hz RGB with +-3 ms jitter: nearest RGB, every time.

    At equal rates two thermal frames can share the nearest RGB frame (jitter), and a message
    is used once. There every thermal frame must still be paired (the offset of 13 ms plus
    twice the jitter is below the slop of 20 ms, so a one-to-one pairing exists), as many as
    the offline maximum matching.
    """
    if thermal_hz > rgb_hz:
        return
    rng = np.random.default_rng(seed)
    th_ns, rgb_ns, events = _regular_streams(rng, 3.0, thermal_hz, rgb_hz)
    slop = 0.6 / rgb_hz  # more than half an RGB period: the nearest is always within slop
    pairer = ApproximateTimePairer(slop=slop, queue_size=10)
    pairs = _run(pairer, events)
    _check_invariants(pairer, events, pairs, int(slop * 1e9))
    got = {th[1]: rgb[1] for _, th, rgb in pairs}
    nearest = {int(t): int(rgb_ns[np.argmin(np.abs(rgb_ns - t))]) for t in th_ns
               if np.min(np.abs(rgb_ns - t)) <= slop * 1e9}
    if thermal_hz == rgb_hz:
        assert len(got) == len(th_ns) == _max_pairs(th_ns, rgb_ns, int(slop * 1e9))
        return
    assert got == nearest
    assert pairer.stats.dropped_total(THERMAL) == len(th_ns) - len(nearest)


@pytest.mark.parametrize('slop', [0.05, 0.02])
@pytest.mark.parametrize('offset_ms', [0.0, 5.0, 10.0, 13.0, 14.0, 15.0, 16.0, 16.5])
def test_equal_rates_pair_every_frame_at_any_offset(offset_ms, slop):
    """30 Hz next to 30 Hz, +-3 ms jitter, offset up to half a period: the most pairs possible.

    Nearest-first pairing lost 9 % of the thermal frames at a 16.5 ms offset (slop 0.05): two
    neighbouring thermal frames competed for one RGB frame and the loser's other neighbour was
    taken. Here the pairer must pair as many frames as the offline maximum matching, which is
    every frame wherever the offset plus twice the jitter is within slop, and still emit each
    pair about one frame after both of its messages have arrived.
    """
    jitter_ms, hz = 3.0, 30.0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        n = int(10 * hz)
        th = offset_ms / 1e3 + np.arange(n) / hz + rng.uniform(-jitter_ms, jitter_ms, n) / 1e3
        rgb = np.arange(n) / hz + rng.uniform(-jitter_ms, jitter_ms, n) / 1e3
        th_ns = np.round(th * 1e9).astype(np.int64)
        rgb_ns = np.round(rgb * 1e9).astype(np.int64)
        events = sorted([(THERMAL, int(t)) for t in th_ns] + [(RGB, int(t)) for t in rgb_ns],
                        key=lambda e: (e[1], e[0]))
        pairer = ApproximateTimePairer(slop=slop, queue_size=10)
        pairs, waits = [], []
        for i, (stream, stamp) in enumerate(events):
            out = pairer.add(stream, stamp, (stream, stamp, i))
            pairs.extend(out)
            waits.extend(stamp - max(th[1], rgb[1]) for _, th, rgb in out if stamp > 1e9)
        pairs.extend(pairer.flush())
        _check_invariants(pairer, events, pairs, int(slop * 1e9))
        assert len(pairs) == _max_pairs(th_ns, rgb_ns, int(slop * 1e9))
        if offset_ms + 2 * jitter_ms <= slop * 1e3:
            assert len(pairs) >= 0.99 * n
        assert max(waits) <= 45 * MS  # after the first second (interval estimate settled)


def test_two_frames_competing_for_one_partner_both_pair():
    """T0 is closer to R1 than to R0, but T1 has only R1: maximum pairs first, then closest."""
    pairer = ApproximateTimePairer(slop=0.02)
    out = []
    for stream, stamp, name in [(RGB, 0, 'R0'), (THERMAL, 18, 'T0'), (RGB, 30, 'R1'),
                                (THERMAL, 48, 'T1'), (RGB, 80, 'R2')]:
        out += pairer.add(stream, stamp * MS, name)
    out += pairer.flush()
    assert [(th, rgb) for _, th, rgb in out] == [('T0', 'R0'), ('T1', 'R1')]
    assert pairer.stats.dropped[RGB]['no_match'] == 1


def test_pairs_come_out_without_waiting_for_the_next_thermal_frame(rng):
    """Latency: with the estimated inter-message bound a pair is out one RGB frame later."""
    th_ns, rgb_ns, events = _regular_streams(rng, 2.0)
    pairer = ApproximateTimePairer(slop=0.02)
    late = []
    for stream, stamp in events:
        for pair_stamp, th, _ in pairer.add(stream, stamp, stamp):
            late.append(max(stamp - th, stamp - pair_stamp))
    # after the first few frames, a pair is final at the latest when the next RGB frame arrives
    assert max(late[5:]) <= 40 * MS


def test_out_of_order_arrival_within_the_queue_still_pairs(rng):
    """Messages delivered up to a few positions late still find their partner."""
    th_ns, rgb_ns, events = _regular_streams(rng, 4.0, jitter_ms=2.0)
    shuffled = list(events)
    for i in range(0, len(shuffled) - 3, 3):  # reverse every block of three arrivals
        shuffled[i:i + 3] = shuffled[i:i + 3][::-1]
    pairer = ApproximateTimePairer(slop=0.02, queue_size=10)
    pairs = _run(pairer, shuffled)
    _check_invariants(pairer, shuffled, pairs, 20 * MS)
    assert len(pairs) == len(th_ns)
    # a late thermal frame that arrives after its partner was taken is the only loss allowed;
    # with blocks of three none is lost, and most pairs are still the nearest
    nearest = sum(rgb[1] == int(rgb_ns[np.argmin(np.abs(rgb_ns - th[1]))]) for _, th, rgb in pairs)
    assert nearest >= 0.9 * len(pairs)


def test_backwards_jump_resets_and_pairing_resumes(rng):
    """A looping bag: time jumps back by 5 s; one reset, then pairs on the new timeline."""
    _, _, first = _regular_streams(rng, 5.0)
    th2, _, second = _regular_streams(rng, 3.0)
    pairer = ApproximateTimePairer(slop=0.02, reset_threshold=1.0)
    pairs_first = [p for s, t in first for p in pairer.add(s, t, (s, t))]
    pairs_second = [p for s, t in second for p in pairer.add(s, t, (s, t))]
    pairs_second += pairer.flush()
    assert pairer.stats.resets == 1
    assert len(pairs_first) >= 5 * 9 - 2
    assert len(pairs_second) == len(th2)
    assert all(stamp < 3.1e9 for stamp, _, _ in pairs_second)


def test_stragglers_of_the_old_timeline_do_not_cause_a_second_reset():
    """After thermal jumps back, RGB frames still on the old timeline are dropped as reset."""
    pairer = ApproximateTimePairer(slop=0.02, reset_threshold=1.0)
    for k in range(50):
        pairer.add(THERMAL, 10_000 * MS + k * 100 * MS, k)
        pairer.add(RGB, 10_000 * MS + k * 100 * MS + 3 * MS, k)
    pairer.add(THERMAL, 0, 'new0')  # jump back
    assert pairer.add(RGB, 15_000 * MS, 'old') == []  # old-timeline straggler
    assert pairer.stats.dropped[RGB]['reset'] == 1
    pairs = pairer.add(RGB, 2 * MS, 'new0')
    pairs += pairer.add(THERMAL, 100 * MS, 'new1') + pairer.add(RGB, 101 * MS, 'new1')
    pairs += pairer.flush()
    assert pairer.stats.resets == 1
    assert [(th, rgb) for _, th, rgb in pairs] == [('new0', 'new0'), ('new1', 'new1')]


def test_backwards_jump_flushes_the_old_timeline_first():
    """A pair still waiting when time jumps back is emitted, not lost."""
    pairer = ApproximateTimePairer(slop=0.02, lower_bound_factor=0.0, max_wait=10.0)
    assert pairer.add(THERMAL, 5_000 * MS, 't') == []
    assert pairer.add(RGB, 5_005 * MS, 'r') == []  # a closer thermal frame could still come
    assert pairer.add(THERMAL, 0, 't0') == [(5_005 * MS, 't', 'r')]
    assert pairer.stats.resets == 1


def test_zero_slop_pairs_equal_stamps_only():
    pairer = ApproximateTimePairer(slop=0.0)
    out = pairer.add(THERMAL, 100, 'a') + pairer.add(RGB, 100, 'b')
    out += pairer.add(THERMAL, 200, 'c') + pairer.add(RGB, 201, 'd')
    out += pairer.flush()
    assert out == [(100, 'a', 'b')]
    assert pairer.stats.dropped[THERMAL]['no_match'] == 1
    assert pairer.stats.dropped[RGB]['no_match'] == 1


def test_slop_is_inclusive():
    pairer = ApproximateTimePairer(slop=0.01)
    out = pairer.add(THERMAL, 0, 'a') + pairer.add(RGB, 10 * MS, 'b') + pairer.flush()
    assert out == [(10 * MS, 'a', 'b')]


def test_duplicate_stamp_supersedes_the_queued_message():
    pairer = ApproximateTimePairer(slop=0.01)
    pairer.add(THERMAL, 0, 'old')
    pairer.add(THERMAL, 0, 'new')
    out = pairer.add(RGB, 0, 'rgb') + pairer.flush()
    assert out == [(0, 'new', 'rgb')]
    assert pairer.stats.dropped[THERMAL]['superseded'] == 1


def test_frame_re_sent_after_its_pair_was_emitted_is_dropped_as_late():
    """Regression: a re-sent frame whose first copy was already paired was paired again.

    The node then fused and published two images with one stamp. Now the copy is dropped as
    ``'late'`` (counted), each stamp is emitted once, and every message is still accounted for.
    """
    pairer = ApproximateTimePairer(slop=0.05)
    events, pairs = [], []
    for i in range(20):
        stamp = 10**9 + i * 33 * MS
        for _ in range(2):  # every frame of both cameras sent twice
            for stream in (RGB, THERMAL):
                events.append((stream, stamp))
                pairs += pairer.add(stream, stamp, (stream, stamp, len(events) - 1))
    pairs += pairer.flush()
    _check_invariants(pairer, events, pairs, 50 * MS)
    assert [p[0] for p in pairs] == [10**9 + i * 33 * MS for i in range(20)]
    late = [pairer.stats.dropped[s]['late'] for s in (THERMAL, RGB)]
    superseded = [pairer.stats.dropped[s]['superseded'] for s in (THERMAL, RGB)]
    # each copy is late (its original was emitted) or superseded its still-queued original
    assert [a + b for a, b in zip(late, superseded)] == [20, 20] and sum(late) > 0


def test_late_message_within_the_reset_threshold_is_dropped_not_a_reset():
    """Older than the newest emitted stamp by less than reset_threshold: 'late', no reset."""
    pairer = ApproximateTimePairer(slop=0.01, reset_threshold=1.0, lower_bound_factor=0.0,
                                   max_wait=0.0)
    assert pairer.add(THERMAL, 5_000 * MS, 't') + pairer.add(RGB, 5_000 * MS, 'r') == [
        (5_000 * MS, 't', 'r')]
    assert pairer.add(RGB, 4_100 * MS, 'old') == []
    assert pairer.add(THERMAL, 5_000 * MS, 'again') == []
    assert pairer.stats.dropped[RGB]['late'] == pairer.stats.dropped[THERMAL]['late'] == 1
    assert pairer.stats.resets == 0
    assert pairer.pending == (0, 0)
    # more than reset_threshold back is a time jump: a reset, and pairing starts over
    out = pairer.add(THERMAL, 0, 't0') + pairer.add(RGB, 0, 'r0') + pairer.flush()
    assert out == [(0, 't0', 'r0')] and pairer.stats.resets == 1


def test_queued_message_overtaken_by_an_emitted_one_is_dropped():
    """A forced pair (max_wait=0) overtakes an older queued frame, which may not pair later.

    Without the rule, T0 paired with R45 after (T40, R40) was out: thermal stamps 40 then 0.
    T0 can have no partner any more, so it is counted as 'no_match' at once.
    """
    pairer = ApproximateTimePairer(slop=0.05, lower_bound_factor=0.0, max_wait=0.0)
    out = pairer.add(THERMAL, 0, 'T0') + pairer.add(THERMAL, 40 * MS, 'T40')
    assert out + pairer.add(RGB, 40 * MS, 'R40') == [(40 * MS, 'T40', 'R40')]
    assert pairer.stats.dropped[THERMAL]['no_match'] == 1 and pairer.pending == (0, 0)
    assert pairer.add(RGB, 45 * MS, 'R45') + pairer.flush() == []
    assert pairer.stats.dropped[RGB]['no_match'] == 1


def test_short_looping_bag_resets_instead_of_dropping_every_loop():
    """A 0.5 s bag looping (a jump back below reset_threshold): late, then a reset per loop.

    Dropping every message at or below the emitted stamps would drop every later loop whole;
    a run of in-order late messages on a stream is taken as the time jump it is.
    """
    pairer = ApproximateTimePairer(slop=0.02, reset_threshold=1.0)
    per_loop = []
    for _ in range(4):
        pairs = []
        for k in range(15):  # 30 Hz, both cameras, 0.5 s
            pairs += pairer.add(RGB, k * 33 * MS, k) + pairer.add(THERMAL, k * 33 * MS + MS, k)
        per_loop.append(pairs)
    per_loop[-1] += pairer.flush()
    assert pairer.stats.resets == 3
    assert len(per_loop[0]) >= 14 and all(len(p) >= 15 - LATE_RUN_RESET for p in per_loop[1:])
    stats = pairer.stats
    for stream in (THERMAL, RGB):
        assert stats.dropped[stream]['late'] == 3 * (LATE_RUN_RESET - 1)
        assert stats.paired + stats.dropped_total(stream) == stats.received[stream] == 60


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from([THERMAL, RGB]),
                                 st.integers(0, 400).map(lambda t: t * MS)), max_size=60),
       slop_ms=st.integers(0, 60), queue_size=st.integers(1, 12),
       factor=st.sampled_from([0.0, 0.5, 1.0]), max_wait_ms=st.sampled_from([0, 50, 500]),
       policy=st.sampled_from(POLICIES))
def test_emitted_stamps_strictly_increase_per_stream_between_resets(events, slop_ms, queue_size,
                                                                    factor, max_wait_ms, policy):
    """Any arrival order, duplicates included: no stream's stamp is emitted twice or backwards."""
    pairer = ApproximateTimePairer(slop=slop_ms / 1e3, queue_size=queue_size,
                                   reset_threshold=0.1, max_wait=max_wait_ms / 1e3,
                                   lower_bound_factor=factor, policy=policy)
    last = [None, None]
    pairs = []
    for i, (stream, stamp) in enumerate(events):
        resets = pairer.stats.resets
        out = pairer.add(stream, stamp, (stream, stamp, i))
        _check_increasing(last, out)
        if pairer.stats.resets != resets:  # a new timeline (out: what the old one still paired)
            last = [None, None]
        pairs += out
    out = pairer.flush()
    _check_increasing(last, out)
    _check_invariants(pairer, events, pairs + out, slop_ms * MS)


def _check_increasing(last, pairs):
    for _, th, rgb in pairs:
        for k, item in ((THERMAL, th), (RGB, rgb)):
            assert last[k] is None or item[1] > last[k], (k, last[k], item[1])
            last[k] = item[1]


def test_bounded_wait_emits_when_the_other_stream_stops():
    """No inter-message bound: the pair waits for max_wait of stamp time, not forever."""
    pairer = ApproximateTimePairer(slop=0.02, lower_bound_factor=0.0, max_wait=0.1,
                                   queue_size=100)
    assert pairer.add(THERMAL, 0, 't') == []
    out = []
    for k in range(10):  # thermal camera died; RGB continues at 30 Hz
        out += pairer.add(RGB, 5 * MS + k * 33 * MS, k)
        if out:
            break
    assert out == [(5 * MS, 't', 0)]
    assert k == 4  # 5 + 4 * 33 = 137 ms >= 5 ms + 100 ms


def test_queue_overflow_is_bounded_and_counted():
    pairer = ApproximateTimePairer(slop=0.01, queue_size=3)
    for k in range(10):
        assert pairer.add(THERMAL, k * 100 * MS, k) == []
    assert pairer.pending == (3, 0)
    assert pairer.stats.dropped[THERMAL]['queue_overflow'] == 7
    pairer.add(RGB, 10_000 * MS, 'r')
    pairer.flush()
    assert pairer.stats.dropped_total() == 11


def test_overflow_of_a_waiting_message_forces_its_pair():
    """The oldest message leaving a full queue takes its partner instead of being lost."""
    pairer = ApproximateTimePairer(slop=0.05, queue_size=2, lower_bound_factor=0.0,
                                   max_wait=100.0)
    assert pairer.add(RGB, 0, 'r') == []
    assert pairer.add(THERMAL, 1 * MS, 't0') == []  # an RGB frame at 1 ms could still come
    assert pairer.add(THERMAL, 30 * MS, 't1') == []
    assert pairer.add(THERMAL, 40 * MS, 't2') == [(0, 't0', 'r')]
    assert pairer.stats.dropped_total() == 0


def test_reset_drops_pending_and_counts():
    pairer = ApproximateTimePairer()
    pairer.add(THERMAL, 0, 'a')
    pairer.reset()
    assert pairer.pending == (0, 0)
    assert pairer.stats.resets == 1
    assert pairer.stats.dropped[THERMAL]['reset'] == 1
    assert pairer.add(THERMAL, 0, 'b') == []  # same stamp again after reset: fine


def test_stats_as_dict():
    stats = SyncStats()
    stats.received[RGB] = 3
    stats.dropped[THERMAL]['no_match'] = 2
    d = stats.as_dict()
    assert d['received'] == {'thermal': 0, 'rgb': 3}
    assert d['dropped']['thermal'] == {'no_match': 2, 'queue_overflow': 0, 'superseded': 0,
                                       'reset': 0, 'late': 0}
    assert set(d['dropped']['rgb']) == set(DROP_REASONS)
    assert d['paired'] == 0 and d['resets'] == 0
    assert stats.dropped_total() == 2 and stats.dropped_total(RGB) == 0


@pytest.mark.parametrize('kwargs', [
    {'slop': -0.01}, {'slop': float('nan')}, {'slop': float('inf')}, {'slop': 'a'},
    {'queue_size': 0}, {'queue_size': 2.5}, {'queue_size': True},
    {'reset_threshold': 0.0}, {'reset_threshold': -1.0}, {'max_wait': -1.0},
    {'lower_bound_factor': 1.5}, {'lower_bound_factor': -0.1}, {'policy': 'fast'},
    {'policy': None},
])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ApproximateTimePairer(**kwargs)


@pytest.mark.parametrize('stream', [2, -1, '0', 0.0, True, None])
def test_invalid_stream_raises(stream):
    pairer = ApproximateTimePairer()
    with pytest.raises(ValueError, match='stream must be 0'):
        pairer.add(stream, 0, None)
    assert pairer.stats.received == [0, 0]


@pytest.mark.parametrize('stamp', [1.5, '10', None, True])
def test_invalid_stamp_raises(stamp):
    with pytest.raises(ValueError, match='stamp_ns'):
        ApproximateTimePairer().add(THERMAL, stamp, None)


def test_numpy_int_stamps_are_accepted():
    pairer = ApproximateTimePairer(slop=0.0)
    out = pairer.add(THERMAL, np.int64(5), 'a') + pairer.add(RGB, np.int64(5), 'b')
    assert out == [(5, 'a', 'b')] and type(out[0][0]) is int


def test_stamp_helpers():
    stamp = SimpleNamespace(sec=3, nanosec=25)
    assert stamp_to_ns(stamp) == 3_000_000_025
    assert stamp_to_ns(7) == 7
    assert stamp_to_ns(SimpleNamespace(nanoseconds=11)) == 11
    assert header_stamp_ns(SimpleNamespace(header=SimpleNamespace(stamp=stamp))) == 3_000_000_025
    with pytest.raises(TypeError, match='float'):
        stamp_to_ns(1.5)
    with pytest.raises(TypeError, match='header.stamp'):
        header_stamp_ns(object())


@pytest.mark.parametrize('lag_ms', [-150, 150])
def test_one_stream_arriving_late_still_pairs_nearest(rng, lag_ms):
    """One camera's pipeline delivers 150 ms later than the other's (arrival order != stamps)."""
    th_ns, rgb_ns, _ = _regular_streams(rng, 4.0)
    arrivals = [(THERMAL, int(t), t + lag_ms * MS) for t in th_ns]
    arrivals += [(RGB, int(t), t) for t in rgb_ns]
    arrivals.sort(key=lambda e: e[2])
    events = [(s, t) for s, t, _ in arrivals]
    pairer = ApproximateTimePairer(slop=0.02, queue_size=10)
    pairs = _run(pairer, events)
    _check_invariants(pairer, events, pairs, 20 * MS)
    assert {th[1]: rgb[1] for _, th, rgb in pairs} == {
        int(t): int(rgb_ns[np.argmin(np.abs(rgb_ns - t))]) for t in th_ns}


def test_changing_slop_keeps_the_timeline_and_the_counters():
    """A run-time slop change (the node's parameter) does not forget what was emitted."""
    pairer = ApproximateTimePairer(slop=0.01, queue_size=10)
    pairs = []
    for k in range(6):  # equal-rate streams 20 ms apart in stamp, pairs 5 ms apart
        pairs += pairer.add(THERMAL, k * 100 * MS, ('th', k))
        pairs += pairer.add(RGB, k * 100 * MS + 5 * MS, ('rgb', k))
    paired_before = pairer.stats.paired
    assert paired_before >= 4
    pairer.slop = 0.002  # 5 ms apart no longer pairs
    assert pairer.slop == pytest.approx(0.002)
    last_emitted_th = pairs[-1][1][1]
    pairs += pairer.add(THERMAL, last_emitted_th * 100 * MS, ('th', 'again'))  # re-sent frame
    assert pairer.stats.dropped[THERMAL]['late'] == 1
    assert pairer.stats.paired == paired_before and pairer.stats.received == [7, 6]
    with pytest.raises(ValueError):
        pairer.slop = -1.0


# --- the greedy policy ---------------------------------------------------------------------


def _message_filters_python(events, slop_ns, queue_size):
    """Pairs of ``message_filters.ApproximateTimeSynchronizer`` (Python), two inputs.

    A transcription of ``ApproximateTimeSynchronizer.add`` in ros2/message_filters
    (``src/message_filters/__init__.py``, rolling, 2024): one ``{stamp: msg}`` dict per input,
    trimmed to ``queue_size`` (oldest first) after each insert; the other input's stamps within
    ``slop`` of the new one are tried closest first, and the first whose spread is ``< slop``
    is emitted and both removed. Returns ``[(thermal_stamp, rgb_stamp), ...]`` in emit order.
    """
    queues = ({}, {})
    out = []
    for stream, stamp in events:
        mine, other = queues[stream], queues[1 - stream]
        mine[stamp] = stamp
        while len(mine) > queue_size:
            del mine[min(mine)]
        candidates = sorted((s for s in other if abs(s - stamp) <= slop_ns),
                            key=lambda s: abs(s - stamp))
        for partner in candidates:
            if abs(partner - stamp) < slop_ns:
                del mine[stamp], other[partner]
                out.append((stamp, partner) if stream == THERMAL else (partner, stamp))
                break
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), thermal_hz=st.sampled_from([9.0, 10.0, 30.0]),
       rgb_hz=st.sampled_from([15.0, 30.0, 60.0]))
def test_greedy_pairs_as_message_filters_python_does(seed, thermal_hz, rgb_hz):
    """Regular jittered streams in stamp order: the same pairs as message_filters' Python."""
    rng = np.random.default_rng(seed)
    _, _, events = _regular_streams(rng, 3.0, thermal_hz, rgb_hz)
    slop_ns = 16 * MS + 1  # below half the fastest RGB period: no frame is out-raced
    pairer = ApproximateTimePairer(slop=slop_ns / 1e9, queue_size=10, policy='greedy')
    pairs = _run(pairer, events)
    _check_invariants(pairer, events, pairs, slop_ns)
    assert [(th[1], rgb[1]) for _, th, rgb in pairs] == _message_filters_python(
        events, slop_ns, 10)


def test_greedy_emits_at_once_where_optimal_waits_for_the_next_rgb_frame():
    """10 Hz thermal 14 ms after an RGB frame of a 30 Hz camera (the issue's rig).

    The optimal policy must see the next RGB frame (33 ms after the first, 19 ms from the
    thermal frame) before it knows the first is the closer; greedy pairs on the thermal frame's
    arrival. Both make the same pairs here.
    """
    events = [(RGB, round(k * 1e9 / 30)) for k in range(90)]
    events += [(THERMAL, round(k * 1e9 / 10) + 14 * MS) for k in range(30)]
    events.sort(key=lambda e: e[1])
    made = {}
    for policy in POLICIES:
        pairer = ApproximateTimePairer(slop=0.05, policy=policy)
        waits, pairs = [], []
        for i, (stream, stamp) in enumerate(events):
            for pair in pairer.add(stream, stamp, (stream, stamp, i)):
                waits.append(stamp - max(pair[1][1], pair[2][1]))  # stamp time of the release
                pairs.append(pair)
        pairs += pairer.flush()
        _check_invariants(pairer, events, pairs, 50 * MS)
        made[policy] = [(th[1], rgb[1]) for _, th, rgb in pairs]
        if policy == 'greedy':
            assert waits == [0] * 30
        else:
            assert len(waits) >= 29 and min(waits[3:]) >= 19 * MS  # the next RGB frame
    assert made['greedy'] == made['optimal'] and len(made['greedy']) == 30


def test_greedy_takes_the_closest_queued_partner_and_drops_the_overtaken():
    pairer = ApproximateTimePairer(slop=0.05, policy='greedy')
    assert pairer.add(RGB, 0, 'r0') + pairer.add(RGB, 30 * MS, 'r30') == []
    assert pairer.add(RGB, 60 * MS, 'r60') == []
    assert pairer.add(THERMAL, 40 * MS, 't40') == [(30 * MS, 't40', 'r30')]
    # r0 is older than the emitted r30: it could only pair out of order
    assert pairer.stats.dropped[RGB]['no_match'] == 1 and pairer.pending == (0, 1)
    assert pairer.add(THERMAL, 50 * MS, 't50') == [(60 * MS, 't50', 'r60')]
    # equal gaps: the earlier partner
    assert pairer.add(RGB, 90 * MS, 'r90') + pairer.add(RGB, 110 * MS, 'r110') == []
    assert pairer.add(THERMAL, 100 * MS, 't100') == [(90 * MS, 't100', 'r90')]
    assert pairer.policy == 'greedy' and ApproximateTimePairer().policy == 'optimal'


def test_greedy_handles_time_jumps_late_and_duplicate_frames_as_optimal_does():
    """Same counters and the same answers to re-sent frames, loops and backwards jumps."""
    pairer = ApproximateTimePairer(slop=0.02, reset_threshold=1.0, policy='greedy')
    per_loop = []
    for loop in range(3):  # a 0.5 s bag looping: late, then a reset per loop
        pairs = []
        for k in range(15):
            pairs += pairer.add(RGB, k * 33 * MS, k) + pairer.add(THERMAL, k * 33 * MS + MS, k)
        per_loop.append(pairs)
    assert pairer.stats.resets == 2
    assert [len(p) for p in per_loop] == [15] + [15 - (LATE_RUN_RESET - 1)] * 2
    assert pairer.stats.dropped[RGB]['late'] == 2 * (LATE_RUN_RESET - 1)
    # a re-sent frame whose first copy was paired: late, never paired twice
    assert pairer.add(THERMAL, 14 * 33 * MS + MS, 'again') == []
    assert pairer.stats.dropped[THERMAL]['late'] == 2 * (LATE_RUN_RESET - 1) + 1
    # duplicate stamp of a queued frame: the newer supersedes it
    pairer.add(THERMAL, 600 * MS, 'old')
    assert pairer.add(THERMAL, 600 * MS, 'new') == []
    assert pairer.add(RGB, 605 * MS, 'r') == [(605 * MS, 'new', 'r')]
    assert pairer.stats.dropped[THERMAL]['superseded'] == 1
    # a long jump back: a reset (the queued frame counted), pairing resumes at once
    pairer.add(RGB, 700 * MS, 'waiting')
    assert pairer.add(THERMAL, -10_000 * MS, 't') == []
    assert pairer.stats.resets == 3 and pairer.stats.dropped[RGB]['reset'] == 1
    assert pairer.add(RGB, -10_000 * MS + 5 * MS, 'r') == [(-10_000 * MS + 5 * MS, 't', 'r')]
    pairer.flush()
    stats = pairer.stats
    for stream in (THERMAL, RGB):
        assert stats.paired + stats.dropped_total(stream) == stats.received[stream]
