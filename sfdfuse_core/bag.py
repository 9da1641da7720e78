"""Offline fusion of a ROS 2 bag with ``rosbags`` (no ROS installation needed).

:func:`fuse_bag` reads the thermal and RGB image topics of a bag (a bag folder, or a single
``.mcap`` / ``.db3`` file), pairs them by header stamp with the same
:class:`~sfdfuse_core.sync.ApproximateTimePairer` the node uses, fuses every pair and writes a
new bag with the fused topic (header = the RGB header) and, on request, the input topics copied
byte for byte. Every message the bag declares is accounted for: it ends up in a fused pair, is
dropped by the pairer (no partner within the slop, superseded, ...), or is bad (undecodable,
unsupported encoding, fusion failed, or unreadable: the bag's index counts it but the reader
never yielded it, as happens with a damaged ``.mcap`` chunk), and the report counts each by
reason.

A recording cut short (a recorder killed mid-write: an ``.mcap`` without its summary and
footer, a ``.db3`` without its last pages), which ``rosbags`` refuses as a whole, is read up to
the cut with :class:`~sfdfuse_core.bagsalvage.SalvageReader`: every message of the intact
prefix is fused, and the report says that the input was truncated and where reading stopped
(messages ``metadata.yaml`` declares beyond the cut are counted as unreadable).

The output is written to a hidden sibling folder (``.NAME.partial-PID-N``, with a marker file
naming the run) and renamed into place only when everything succeeded, so an interrupted run
never leaves a bag that looks complete; the next run over the same output removes the folders
that runs no longer alive left behind, and no reader here takes such a folder for a bag. An
existing output is replaced only when the caller says so.
"""
import json
import os
from contextlib import closing
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np

from sfdfuse_core.bagsalvage import SalvageError, SalvageReader
from sfdfuse_core.imgmsg import array_to_image_fields, decode_frame
from sfdfuse_core.sync import ApproximateTimePairer

PathLike = Union[str, Path]

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
#: Message types accepted on the two input topics.
INPUT_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
#: Stream indices of the pairer.
THERMAL, RGB = 0, 1
_ROLE = {THERMAL: 'thermal', RGB: 'rgb'}
#: Storage formats of the output bag.
FORMATS = ('mcap', 'sqlite3')
#: Name of the unfinished output of a run: ``.NAME.partial-PID-N`` beside the output ``NAME``.
PARTIAL_RE = re.compile(r'^\.(?P<name>.+)\.partial-(?P<pid>\d+)-\d+$')
#: Marker file inside a partial folder: who writes it (pid, process start, input, output).
PARTIAL_MARKER = 'SFDFUSE_UNFINISHED_RUN.json'


class BagError(ValueError):
    """A bag cannot be read or written as asked (missing topic, wrong type, bad path)."""


class BagTopicError(BagError):
    """A requested topic is missing from the bag or has a type that cannot be fused."""


class BagOutputExistsError(BagError, FileExistsError):
    """The output bag exists and overwriting was not allowed."""


@dataclass
class BagFuseReport:
    """What :func:`fuse_bag` did, with every input message accounted for.

    ``sum(read.values()) + sum(unreadable.values()) == 2 * fused + sum(dropped.values())
    + sum(bad.values())`` holds, and per topic ``read + unreadable == declared`` (unless the
    reader yielded more than the index declares: then ``unreadable`` is 0). Unreadable
    messages are also counted in ``bad`` (``'<role>: unreadable'``).

    :param in_path: the bag read.
    :param out_path: the bag written.
    :param thermal_topic: thermal input topic.
    :param rgb_topic: RGB input topic.
    :param fused_topic: output topic.
    :param read: messages read per input topic.
    :param declared: messages per input topic that the bag's index (``metadata.yaml``, or the
        storage file's summary) declares.
    :param unreadable: messages per input topic that the index declares but the reader did not
        yield (a damaged chunk the reader skips): ``declared - read``.
    :param pairs: pairs the pairer formed.
    :param fused: pairs fused and written.
    :param dropped: messages the pairer did not use, by reason (``'thermal: unpaired'`` ...).
    :param bad: messages that could not be used, by reason; a pair whose fusion failed counts
        both of its messages here.
    :param bad_examples: the first few bad-message errors, for the log.
    :param copied: messages copied per input topic (``include_inputs``).
    :param sync_stats: the pairer's own statistics.
    :param seconds: wall time of the run.
    :param truncated: one line per storage file that was cut short (a recording that ended
        abruptly) or is damaged inside, saying where reading stopped; empty for an intact bag.
    :param cut_short: whether one of them ends early (a recording cut short) rather than only
        holding damaged bytes.
    :param removed_partials: unfinished outputs of earlier, interrupted runs that were removed.
    """

    in_path: Path
    out_path: Path
    thermal_topic: str
    rgb_topic: str
    fused_topic: str
    read: Dict[str, int] = field(default_factory=dict)
    declared: Dict[str, int] = field(default_factory=dict)
    unreadable: Dict[str, int] = field(default_factory=dict)
    pairs: int = 0
    fused: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    bad: Dict[str, int] = field(default_factory=dict)
    bad_examples: List[str] = field(default_factory=list)
    copied: Dict[str, int] = field(default_factory=dict)
    sync_stats: dict = field(default_factory=dict)
    seconds: float = 0.0
    truncated: List[str] = field(default_factory=list)
    cut_short: bool = False
    removed_partials: List[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        """Whether every message read or unreadable is accounted for (fused, dropped or bad)."""
        return sum(self.read.values()) + sum(self.unreadable.values()) == (
            2 * self.fused + sum(self.dropped.values()) + sum(self.bad.values()))

    @property
    def complete(self) -> bool:
        """Whether every message the bag's index declares could be read."""
        return not any(self.unreadable.values())

    @property
    def was_truncated(self) -> bool:
        """Whether only a prefix of the input could be read (cut short, or damaged inside)."""
        return bool(self.truncated)

    def input_problem(self) -> str:
        """Say in one sentence what was wrong with the input ('' for an intact bag)."""
        if not self.truncated:
            return ''
        what = ('the input was truncated (a recording cut short)' if self.cut_short else
                'the input is damaged')
        return (f'{what}; only the messages before the '
                f'{"cut" if self.cut_short else "damage"} were fused. ' + ' '.join(self.truncated))

    def summary(self) -> str:
        """Return a human-readable multi-line summary."""
        read = sum(self.read.values())
        lost = sum(self.unreadable.values())
        total = read + lost
        if lost:
            why = 'cut off with the end of the file' if self.truncated else 'damaged bag'
            lines = [f'read {read} of {sum(self.declared.values())} messages the index of '
                     f'{self.in_path} declares; {lost} UNREADABLE ({why}):']
            for topic, n in self.read.items():
                lines.append(f'  {topic}: {n} read of {self.declared.get(topic, n)}, '
                             f'{self.unreadable.get(topic, 0)} unreadable')
        else:
            lines = [f'read {read} messages from {self.in_path}:']
            for topic, n in self.read.items():
                lines.append(f'  {topic}: {n}')
        if self.truncated:
            head = ('INPUT TRUNCATED (a recording cut short)' if self.cut_short else
                    'INPUT DAMAGED')
            lines.insert(0, f'{head}: {self.in_path} was read up to where reading stopped; '
                         'every message before it is in the counts below')
            lines[1:1] = [f'  {line}' for line in self.truncated]
        for name in self.removed_partials:
            lines.append(f'removed the unfinished output of an interrupted run: {name}')
        lines.append(f'pairs found: {self.pairs}; fused: {self.fused} -> {self.fused_topic} '
                     f'in {self.out_path}')
        if self.copied:
            lines.append('copied: ' + ', '.join(f'{t} {n}' for t, n in self.copied.items()))
        used = 2 * self.fused
        lines.append(f'accounted: {used} in fused pairs + {sum(self.dropped.values())} dropped '
                     f'+ {sum(self.bad.values())} bad'
                     + (f' ({lost} of them unreadable)' if lost else '') + ' = '
                     f'{used + sum(self.dropped.values()) + sum(self.bad.values())} of {total}'
                     + (' declared' if lost else ''))
        for reason, n in sorted(self.dropped.items()):
            lines.append(f'  dropped, {reason}: {n}')
        for reason, n in sorted(self.bad.items()):
            lines.append(f'  bad, {reason}: {n}')
        for example in self.bad_examples:
            lines.append(f'    e.g. {example}')
        lines.append(f'time: {self.seconds:.1f} s')
        return '\n'.join(lines)


def describe_topics(reader) -> str:
    """List a bag's topics as ``name (type, N msgs)``, one per line, for error messages."""
    rows = []
    for name, info in sorted(reader.topics.items()):
        rows.append(f'  {name} ({info.msgtype}, {info.msgcount} msgs)')
    return '\n'.join(rows) if rows else '  (no topics)'


def partial_run_of(path: PathLike) -> Optional[Path]:
    """Return the unfinished-output folder ``path`` lies in (itself or a parent), if any.

    :param path: any path.
    :return: the ``.NAME.partial-PID-N`` folder, or ``None``.
    """
    path = Path(path).absolute()
    for part in (path, *path.parents):
        if PARTIAL_RE.match(part.name) and part.is_dir():
            return part
    return None


def open_reader(in_path: PathLike, allow_truncated: bool = False):
    """Open a bag for reading: a bag folder, or a single ``.mcap`` or ``.db3`` file.

    :param in_path: the bag.
    :param allow_truncated: when ``rosbags`` refuses the bag, read the intact prefix of a
        recording cut short instead (:class:`~sfdfuse_core.bagsalvage.SalvageReader`; its
        ``truncations`` say where it stops); only a bag that is not even that is refused.
    :return: an open :class:`rosbags.rosbag2.Reader` (or a ``SalvageReader``); close it, e.g.
        ``with closing(...)``.
    :raises BagError: when the path does not exist, is not a bag, or is the unfinished output
        of an interrupted ``bag fuse`` run.
    """
    from rosbags.rosbag2 import Reader

    path = Path(in_path)
    if not path.exists():
        raise BagError(f'bag not found: {path}')
    partial = partial_run_of(path)
    if partial is not None:
        raise BagError(f'{path} is inside {partial.name}, the unfinished output of an '
                       'interrupted sfdfuse bag fuse run, not a finished bag (the next run '
                       'over that output removes it)')
    given = path
    if path.is_dir() and not (path / 'metadata.yaml').is_file():
        storage = sorted(path.glob('*.mcap')) + sorted(path.glob('*.db3'))
        if len(storage) == 1:
            path = storage[0]
        else:
            raise BagError(f'{path} is a folder without metadata.yaml and without exactly one '
                           f'.mcap or .db3 file (found {len(storage)}); not a ROS 2 bag')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises its own errors and OS errors
        error = BagError(f'cannot open bag {path}: {type(exc).__name__}: {exc}')
        if not allow_truncated:
            raise error from exc
        try:
            salvage = SalvageReader(given)
        except (SalvageError, OSError) as salvage_exc:
            raise error from salvage_exc
        if not salvage.truncations:  # complete files rosbags still refused: not our case
            salvage.close()
            raise error from exc
        return salvage
    return reader


def check_topic(reader, topic: str, role: str) -> list:
    """Return the connections of ``topic``; :class:`BagTopicError` if missing or not an image."""
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        raise BagTopicError(f'{role} topic {topic!r} not in the bag; its topics are:\n'
                            + describe_topics(reader))
    wrong = sorted({c.msgtype for c in conns if c.msgtype not in INPUT_TYPES})
    if wrong:
        raise BagTopicError(f'{role} topic {topic!r} has type {", ".join(wrong)}; expected one '
                            f'of {", ".join(INPUT_TYPES)}. The bag\'s topics are:\n'
                            + describe_topics(reader))
    return conns


def stamp_ns(header) -> int:
    """Return a ``std_msgs/Header`` stamp in nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _temp_sibling(out_path: Path) -> Path:
    """Return a hidden folder beside ``out_path`` (the bag is written inside, final name)."""
    return out_path.parent / f'.{out_path.name}.partial-{os.getpid()}-{time.monotonic_ns()}'


def _process_start(pid: int) -> Optional[str]:
    """Return the start time of a process (Linux ``/proc``), to tell a reused PID apart."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    return stat.rsplit(')', 1)[-1].split()[19]  # field 22, after the parenthesised name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def _write_marker(tmp: Path, in_path: Path, out_path: Path) -> None:
    marker = {'pid': os.getpid(), 'process_start': _process_start(os.getpid()),
              'input': str(in_path), 'output': str(out_path), 'started': time.time(),
              'note': 'unfinished output of sfdfuse bag fuse; not a bag'}
    (tmp / PARTIAL_MARKER).write_text(json.dumps(marker, indent=1) + '\n')


def _stale(folder: Path, pid: int) -> bool:
    """Whether the run that wrote a partial folder is gone (dead, or its PID reused)."""
    if not _pid_alive(pid):
        return True
    try:
        marker = json.loads((folder / PARTIAL_MARKER).read_text())
    except (OSError, ValueError):
        return False  # alive, and no marker (yet) to compare with: leave it alone
    started = marker.get('process_start')
    return started is not None and _process_start(pid) not in (None, started)


def remove_stale_partials(out_path: PathLike) -> List[str]:
    """Remove the unfinished outputs that interrupted runs left beside ``out_path``.

    Only ``.NAME.partial-PID-N`` folders of this output whose run is no longer alive are
    removed; those of a run still going (another ``bag fuse`` writing the same output) stay.

    :param out_path: the output bag path.
    :return: the names of the removed folders.
    """
    out_path = Path(out_path)
    removed = []
    if not out_path.parent.is_dir():
        return removed
    for entry in sorted(out_path.parent.iterdir()):
        match = PARTIAL_RE.match(entry.name)
        if not match or match.group('name') != out_path.name or not entry.is_dir() \
                or entry.is_symlink():
            continue
        if _stale(entry, int(match.group('pid'))):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry.name)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_messages(reader, connections: list, in_path: Path):
    """Yield ``reader.messages(...)``; a damaged file becomes a :class:`BagError`.

    rosbags raises its own errors, and the SQLite driver raises ``apsw.CorruptError`` for a
    damaged ``.db3`` page, in the middle of the iteration.
    """
    messages = iter(reader.messages(connections=connections))
    count = 0
    while True:
        try:
            item = next(messages)
        except StopIteration:
            return
        except Exception as exc:  # any reader or storage error: a damaged bag
            raise BagError(f'cannot read bag {in_path} past message {count}: '
                           f'{type(exc).__name__}: {exc}') from exc
        count += 1
        yield item


@dataclass
class _Input:
    """A decoded input message waiting in the pairer."""

    header: object
    image: np.ndarray
    bag_time: int


def fuse_bag(in_path: PathLike, out_path: PathLike, *, thermal_topic: str, rgb_topic: str,
             fuser: Callable[[np.ndarray, np.ndarray], np.ndarray],
             fused_topic: str = '/fused/image', slop: float = 0.05, queue_size: int = 10,
             sync_policy: str = 'optimal',
             thermal_normalizer: Optional[Callable[[np.ndarray], np.ndarray]] = None,
             homography: Optional[np.ndarray] = None, include_inputs: bool = False,
             output_encoding: str = 'bgr8', storage: str = 'mcap', overwrite: bool = False,
             progress: bool = False, max_examples: int = 5) -> BagFuseReport:
    """Fuse the thermal and RGB images of a bag into a new bag.

    Pairing uses the header stamps and :class:`~sfdfuse_core.sync.ApproximateTimePairer`
    (``slop``, ``queue_size``, ``sync_policy``), as the node does. The thermal image is mapped
    to 8 bit by ``thermal_normalizer`` (default :class:`~sfdfuse_core.thermal.ThermalNormalizer`
    in ``auto`` mode), aligned to the RGB geometry by
    :func:`~sfdfuse_core.thermal.align_thermal`, and fused with the RGB image by
    ``fuser(vi, ir)``, as the node does. The fused ``sensor_msgs/Image``
    carries the RGB header; its bag time is the later of the two inputs' bag times.

    :param in_path: input bag: folder, ``.mcap`` or ``.db3`` file.
    :param out_path: output bag folder; must not exist unless ``overwrite``.
    :param thermal_topic: thermal ``Image`` or ``CompressedImage`` topic.
    :param rgb_topic: RGB ``Image`` or ``CompressedImage`` topic.
    :param fuser: ``fuser(vi, ir) -> uint8``, e.g. a :class:`~sfdfuse_core.fusion.Fuser`.
    :param fused_topic: output topic.
    :param slop: largest stamp difference of a pair, seconds.
    :param queue_size: messages the pairer keeps per stream.
    :param sync_policy: the pairer's policy, ``'optimal'`` or ``'greedy'`` (the node's
        ``sync_policy``).
    :param thermal_normalizer: 16-bit (or 8-bit) thermal -> ``uint8`` mapping.
    :param homography: 3x3 thermal -> RGB homography for the alignment, or ``None`` (resize).
    :param output_encoding: ``'bgr8'`` (fused luminance with the RGB chroma; gray output is
        expanded) or ``'mono8'`` (the RGB image is fused as gray).
    :param include_inputs: copy the two input topics (raw bytes) into the output too.
    :param storage: output storage, ``'mcap'`` or ``'sqlite3'``.
    :param overwrite: replace an existing output.
    :param progress: show progress on stderr (a bar on a terminal, a line every few seconds
        otherwise: :func:`sfdfuse_core.progress.progress`).
    :param max_examples: number of bad-message errors kept in the report.
    :return: the report; ``report.balanced`` is always true. A truncated input (a recording
        cut short) is fused up to the cut, and ``report.truncated`` says where it stopped.
    :raises BagError: on a missing or wrongly typed topic, a missing input, an output equal to
        the input, an unknown storage, or an input that is not a bag even up to a cut.
    :raises BagOutputExistsError: when the output exists and ``overwrite`` is false.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from sfdfuse_core.thermal import ThermalNormalizer, align_thermal

    plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise BagError(f'storage must be one of {FORMATS}, got {storage!r}')
    if output_encoding not in ('bgr8', 'mono8'):
        raise BagError(f"output_encoding must be 'bgr8' or 'mono8', got {output_encoding!r}")
    if thermal_topic == rgb_topic:
        raise BagError(f'thermal and rgb topic are the same: {thermal_topic!r}')
    try:  # slop, queue_size and sync_policy checked before anything is written
        ApproximateTimePairer(slop=slop, queue_size=queue_size, policy=sync_policy)
    except ValueError as exc:
        raise BagError(str(exc)) from exc
    if fused_topic in (thermal_topic, rgb_topic) and include_inputs:
        raise BagError(f'fused topic {fused_topic!r} equals an input topic copied to the output')
    in_path, out_path = Path(in_path), Path(out_path)
    in_abs, out_abs = in_path.resolve(), out_path.resolve()
    if out_abs == in_abs or out_abs in in_abs.parents:
        raise BagError(f'output {out_path} would overwrite the input bag {in_path}')
    if out_path.exists() or out_path.is_symlink():
        if not overwrite:
            raise BagOutputExistsError(f'output exists: {out_path} (refusing to overwrite; '
                                       'pass --force / overwrite=True to replace it)')
    normalizer = thermal_normalizer if thermal_normalizer is not None else ThermalNormalizer()
    typestore = get_typestore(Stores.ROS2_KILTED)
    report = BagFuseReport(in_path=in_path, out_path=out_path, thermal_topic=thermal_topic,
                           rgb_topic=rgb_topic, fused_topic=fused_topic)
    started = time.monotonic()

    with closing(open_reader(in_path, allow_truncated=True)) as reader:
        report.removed_partials = remove_stale_partials(out_path)
        if isinstance(reader, SalvageReader):
            report.truncated = [t.describe() for t in reader.truncations]
            report.cut_short = any(t.cut for t in reader.truncations)
        conns = {THERMAL: check_topic(reader, thermal_topic, 'thermal'),
                 RGB: check_topic(reader, rgb_topic, 'rgb')}
        stream_of = {c.id: s for s, cs in conns.items() for c in cs}
        report.read = {thermal_topic: 0, rgb_topic: 0}
        report.declared = {topic: sum(c.msgcount for c in conns[stream]) for stream, topic in
                           ((THERMAL, thermal_topic), (RGB, rgb_topic))}
        total = sum(report.declared.values())

        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(out_path)
        tmp.mkdir()
        writer = Writer(tmp / out_path.name, version=9, storage_plugin=plugins[storage])
        bar = None
        try:
            _write_marker(tmp, in_path, out_path)
            writer.open()
            fused_conn = writer.add_connection(fused_topic, IMAGE_TYPE, typestore=typestore)
            copy_conns = {}
            if include_inputs:
                for c in conns[THERMAL] + conns[RGB]:
                    copy_conns[c.id] = _copy_connection(writer, c, typestore)
                report.copied = {thermal_topic: 0, rgb_topic: 0}
            pairer = ApproximateTimePairer(slop=slop, queue_size=queue_size, policy=sync_policy)
            members = {THERMAL: 0, RGB: 0}  # messages that went into a pair
            image_t = typestore.types[IMAGE_TYPE]

            def bad(role: str, reason: str, detail: str, n: int = 1) -> None:
                key = f'{role}: {reason}'
                report.bad[key] = report.bad.get(key, 0) + n
                if len(report.bad_examples) < max_examples:
                    report.bad_examples.append(f'{role}: {detail}')

            def emit(pairs: list) -> None:
                for _stamp, th, rgb in pairs:
                    report.pairs += 1
                    members[THERMAL] += 1
                    members[RGB] += 1
                    try:
                        ir8 = normalizer(th.image)
                        ir8 = align_thermal(ir8, rgb.image.shape[:2], homography)
                        vi = rgb.image
                        if output_encoding == 'mono8' and vi.ndim == 3:
                            vi = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)
                        out = fuser(vi, ir8)
                        if output_encoding == 'bgr8' and out.ndim == 2:
                            out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
                        fields = array_to_image_fields(out, output_encoding)
                    except (ValueError, TypeError, RuntimeError) as exc:
                        bad('pair', 'fusion failed', f'{type(exc).__name__}: {exc}', n=2)
                        continue
                    fields['data'] = np.frombuffer(fields['data'], np.uint8)
                    msg = image_t(header=rgb.header, **fields)
                    writer.write(fused_conn, max(th.bag_time, rgb.bag_time),
                                 typestore.serialize_cdr(msg, IMAGE_TYPE))
                    report.fused += 1

            if progress:
                from sfdfuse_core.progress import progress as progress_bar
                bar = progress_bar(total=total, unit='msg', desc='fusing')
            wanted = conns[THERMAL] + conns[RGB]
            for conn, bag_time, raw in read_messages(reader, wanted, in_path):
                stream = stream_of[conn.id]
                role = _ROLE[stream]
                report.read[conn.topic] += 1
                if bar is not None:
                    bar.update(1)
                if include_inputs:
                    writer.write(copy_conns[conn.id], bag_time, raw)
                    report.copied[conn.topic] += 1
                try:
                    msg = typestore.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:  # truncated or corrupt CDR: any error of the decoder
                    bad(role, 'cannot deserialise', f'{type(exc).__name__}: {exc} '
                        f'({len(raw)} bytes at bag time {bag_time})')
                    continue
                try:
                    image = decode_frame(msg, color=stream == RGB)
                except (ValueError, TypeError) as exc:  # ImageConversionError is a ValueError
                    bad(role, 'bad image', f'{type(exc).__name__}: {exc}')
                    continue
                item = _Input(header=msg.header, image=image, bag_time=bag_time)
                emit(pairer.add(stream, stamp_ns(msg.header), item))
            emit(pairer.flush() or [])
            if bar is not None:
                bar.close()
                bar = None
            report.sync_stats = pairer.stats.as_dict()
            for stream, topic in ((THERMAL, thermal_topic), (RGB, rgb_topic)):
                role = _ROLE[stream]
                for reason, n in pairer.stats.dropped[stream].items():
                    if n:
                        report.dropped[f'{role}: {reason}'] = n
                bad_n = sum(n for k, n in report.bad.items() if k.startswith(role + ':'))
                rest = (report.read[topic] - members[stream] - bad_n
                        - pairer.stats.dropped_total(stream))
                if rest:  # cannot happen with the pairer's guarantee; never hide it anyway
                    report.dropped[f'{role}: unaccounted'] = rest
                # A damaged .mcap chunk is skipped by the reader without an error: compare with
                # the index so that the lost messages are counted, not silently missing.
                lost = max(0, report.declared[topic] - report.read[topic])
                report.unreadable[topic] = lost
                if lost:
                    report.bad[f'{role}: unreadable'] = lost
                    if len(report.bad_examples) < max_examples:
                        report.bad_examples.append(
                            f'{role}: {lost} of the {report.declared[topic]} messages the bag '
                            f'index declares on {topic} could not be read (damaged bag)')
        except BaseException:
            if bar is not None:
                bar.close()
            writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            writer.close()
            if out_path.exists() or out_path.is_symlink():
                _remove(out_path)
            (tmp / out_path.name).rename(out_path)
            (tmp / PARTIAL_MARKER).unlink()
            tmp.rmdir()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    report.seconds = time.monotonic() - started
    return report


def _copy_connection(writer, conn, typestore):
    """Add a connection to ``writer`` that is a copy of a reader's ``conn`` (type, QoS)."""
    ext = conn.ext
    qos = list(getattr(ext, 'offered_qos_profiles', []) or [])
    fmt = getattr(ext, 'serialization_format', 'cdr')
    msgdef = conn.msgdef.data if conn.msgdef is not None else None
    if msgdef and conn.digest and conn.digest.startswith('RIHS01_'):
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=msgdef, rihs01=conn.digest,
                                     serialization_format=fmt, offered_qos_profiles=qos)
    return writer.add_connection(conn.topic, conn.msgtype, typestore=typestore,
                                 serialization_format=fmt, offered_qos_profiles=qos)


def pair_stamps(thermal_stamps: List[int], rgb_stamps: List[int], slop: float = 0.05,
                queue_size: int = 10, policy: str = 'optimal') -> List[Tuple[int, int, int]]:
    """Pair two stamp lists as the node would (for planning and checking, no images).

    The stamps are fed in time order; ties go thermal first.

    :param thermal_stamps: thermal header stamps, ns.
    :param rgb_stamps: RGB header stamps, ns.
    :param slop: largest stamp difference of a pair, seconds.
    :param queue_size: messages kept per stream.
    :param policy: the pairer's policy, ``'optimal'`` or ``'greedy'`` (the node's
        ``sync_policy``).
    :return: ``(pair_stamp_ns, thermal_stamp_ns, rgb_stamp_ns)`` per pair.
    """
    events = sorted([(s, THERMAL) for s in thermal_stamps] + [(s, RGB) for s in rgb_stamps])
    pairer = ApproximateTimePairer(slop=slop, queue_size=queue_size, policy=policy)
    out = []
    for stamp, stream in events:
        out.extend(pairer.add(stream, stamp, stamp))
    out.extend(pairer.flush() or [])
    return [(int(p), int(a), int(b)) for p, a, b in out]
