"""Reading what a recording cut short still holds: the intact prefix of a truncated bag.

A recorder killed mid-write (power cut, ``kill -9``, a full disk) leaves an ``.mcap`` without
its summary and footer, or a ``.db3`` without its last pages. ``rosbags`` refuses both as a
whole (``File end magic is invalid``, ``database disk image is malformed``), although every
message before the cut is intact. :class:`SalvageReader` reads them anyway, front to back, and
stops at the first record it cannot read whole; :attr:`SalvageReader.truncations` says where.

* ``.mcap``: records are read in file order from the header on (schemas and channels outside or
  inside chunks, as ``ros2 bag record`` and ``rosbags`` write them). A complete chunk is
  decompressed (zstd, lz4 or none) and its CRC checked; in the chunk the cut goes through, the
  decompressible start of the chunk is parsed and its complete message records are kept. The
  first record that is cut short, fails its CRC or has an unknown opcode ends the reading.
* ``.db3``: SQLite is opened read-only with ``writable_schema`` on, which makes it take the pages
  the file holds instead of refusing a file shorter than its header says; messages are read in
  row order (the order they were recorded) until the first row SQLite cannot read.

Message counts: ``metadata.yaml`` (when the bag folder has one) declares how many messages each
topic had; the messages it declares beyond what was read are what the cut lost. Without it the
declared count is the count read (nothing known to be lost). Messages within a chunk are
yielded in log-time order, chunks and rows in file order, like ``rosbags`` for a sequential
recording. Pure Python on ``apsw``, ``lz4`` and ``zstd`` (all ``rosbags`` dependencies).
"""
from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from zlib import crc32

import yaml

_MCAP_MAGIC = b'\x89MCAP0\r\n'
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 1, 2, 3, 4, 5, 6
_OP_DATA_END = 0x0F
#: Opcodes the MCAP specification defines (others mean the bytes are not a record).
_KNOWN_OPS = frozenset(range(0x01, 0x10))
_U16, _U32, _U64 = struct.Struct('<H'), struct.Struct('<I'), struct.Struct('<Q')
_MSG_HEAD = struct.Struct('<HIQQ')  # channel id, sequence, log time, publish time
_CHUNK_HEAD = struct.Struct('<QQQI')  # start time, end time, uncompressed size, CRC-32


class SalvageError(ValueError):
    """The file is not a bag this module can read (not just a truncated one)."""


@dataclass
class Truncation:
    """Where reading of one storage file stopped, and why.

    :param path: the storage file.
    :param size: its size in bytes.
    :param stopped_at: byte offset of the first record that could not be read (``.mcap``), or
        the file size (``.db3``, whose pages are not in message order).
    :param reason: what was wrong there.
    :param messages: messages read from this file.
    :param last_bag_time: bag time (ns) of the last message read, ``None`` when none was.
    :param expected_size: the size the file's own header declares (``.db3``), when known.
    :param cut: ``True`` when the file ends early (a recording cut short); ``False`` when it
        holds bytes that are not what they should be (damage inside the file).
    """

    path: Path
    size: int
    stopped_at: int
    reason: str
    messages: int
    last_bag_time: Optional[int] = None
    expected_size: Optional[int] = None
    cut: bool = True

    def describe(self) -> str:
        """Return one line saying where the file stopped, for reports and logs."""
        where = f'{self.path.name} ({self.size} bytes'
        if self.expected_size is not None and self.expected_size > self.size:
            where += f' of the {self.expected_size} its header declares'
        where += ')'
        if self.path.suffix == '.mcap':
            pct = 100.0 * self.stopped_at / self.size if self.size else 0.0
            where += f': reading stopped at byte {self.stopped_at} ({pct:.0f} %)'
        else:
            where += ': reading stopped'
        when = (f', after {self.messages} messages (last bag time {self.last_bag_time} ns)'
                if self.last_bag_time is not None else ', before any message')
        return f'{where}{when}: {self.reason}'


@dataclass
class _Channel:
    topic: str
    msgtype: str
    encoding: str
    msgdef_format: str
    msgdef: str
    qos: str
    digest: str = ''


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise ValueError('string runs past its record')
    return buf[pos + 4:end].decode('utf-8', 'replace'), end


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', path.name)]


class _McapFile:
    """One ``.mcap`` read front to back (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        with path.open('rb') as f:
            head = f.read(len(_MCAP_MAGIC))
        if head != _MCAP_MAGIC:
            raise SalvageError(f'{path}: not an MCAP file (its first bytes are {head!r})')

    def scan(self, on_channel: Callable[[int, _Channel], None]
             ) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(channel_id, log_time, data)``; sets :attr:`truncation` (None: complete)."""
        self.truncation: Optional[Truncation] = None
        self.count = 0
        self.last_time: Optional[int] = None
        schemas: dict[int, tuple[str, str, str]] = {}
        with self.path.open('rb') as f:
            pos = len(_MCAP_MAGIC)
            data_end = False
            while True:
                f.seek(pos)
                head = f.read(9)
                if not head and data_end:
                    self._stop(pos, 'the summary section ends without the footer (all data '
                               'records were read)')
                    return
                if len(head) < 9:
                    self._stop(pos, 'the file ends inside a record header' if head else
                               'the file ends here, without the summary and footer')
                    return
                op = head[0]
                (length,) = _U64.unpack_from(head, 1)
                if op == _OP_FOOTER:
                    return  # complete file
                if data_end and (op not in _KNOWN_OPS or pos + 9 + length > self.size):
                    self._stop(pos, 'the summary section is damaged or cut short (all data '
                               'records were read)')
                    return
                if op not in _KNOWN_OPS:
                    self._stop(pos, f'no MCAP record here (opcode 0x{op:02x}): damaged data',
                               cut=False)
                    return
                if data_end:
                    pos += 9 + length
                    continue
                body = f.read(min(length, self.size))
                if len(body) < length:
                    reason = (f'record 0x{op:02x} at byte {pos}, {length} bytes long, is cut '
                              f'short after {len(body)} bytes')
                    stop = pos
                    if op == _OP_CHUNK:
                        before = self.count
                        yield from self._partial_chunk(body, schemas, on_channel)
                        reason = (f'the chunk at byte {pos} ({length} bytes) is cut short after '
                                  f'{len(body)} bytes; its {self.count - before} complete '
                                  'messages before the cut were read')
                        if self._inner_end is not None:  # uncompressed: the exact offset
                            stop = pos + 9 + self._inner_end
                    self._stop(stop, reason)
                    return
                try:
                    if op == _OP_CHUNK:
                        records = self._chunk_records(body)
                        yield from self._records(records, schemas, on_channel, whole=True)
                    else:
                        yield from self._records(head + body, schemas, on_channel, whole=True)
                except ValueError as exc:
                    self._stop(pos, f'record 0x{op:02x}: {exc}', cut=False)
                    return
                if op == _OP_DATA_END:
                    data_end = True
                pos += 9 + length

    def _stop(self, pos: int, reason: str, cut: bool = True) -> None:
        self.truncation = Truncation(self.path, self.size, pos, reason, self.count,
                                     self.last_time, cut=cut)

    @staticmethod
    def _chunk_header(body: bytes) -> tuple[int, int, str, int]:
        """Return ``(uncompressed_size, crc, compression, offset of the records)``."""
        _start, _end, usize, crc = _CHUNK_HEAD.unpack_from(body, 0)
        compression, pos = _string(body, _CHUNK_HEAD.size)
        return usize, crc, compression, pos + 8

    def _chunk_records(self, body: bytes) -> bytes:
        try:
            usize, crc, compression, start = self._chunk_header(body)
            (clen,) = _U64.unpack_from(body, start - 8)
        except struct.error:
            raise ValueError('chunk header cut short') from None
        compressed = body[start:start + clen]
        if len(compressed) != clen:
            raise ValueError('chunk data runs past its record')
        raw = _decompress(compression, compressed, partial=False)
        if len(raw) != usize:
            raise ValueError(f'chunk decompresses to {len(raw)} bytes, its header says {usize}')
        if crc and crc32(raw) != crc:
            raise ValueError('chunk CRC-32 mismatch')
        return raw

    def _partial_chunk(self, body: bytes, schemas: dict,
                       on_channel: Callable[[int, _Channel], None]
                       ) -> Iterator[tuple[int, int, bytes]]:
        """Yield the complete messages in the start of a chunk the cut goes through."""
        self._inner_end = None
        try:
            _usize, _crc, compression, start = self._chunk_header(body)
            raw = _decompress(compression, body[start:], partial=True)
        except (struct.error, ValueError):
            return
        yield from self._records(raw, schemas, on_channel, whole=False)
        if compression == '':
            self._inner_end = start + self._records_end

    def _records(self, buf: bytes, schemas: dict, on_channel: Callable[[int, _Channel], None],
                 whole: bool) -> Iterator[tuple[int, int, bytes]]:
        """Parse records (schema, channel, message; others skipped) in log-time order.

        :param whole: the buffer must end on a record boundary (else it was cut: stop quietly).
        """
        messages: list[tuple[int, int, int, bytes]] = []
        pos, n = 0, len(buf)
        while pos < n:
            if pos + 9 > n:
                if whole:
                    raise ValueError('a record inside runs past the end')
                break
            op = buf[pos]
            (length,) = _U64.unpack_from(buf, pos + 1)
            if op not in _KNOWN_OPS:
                if whole:
                    raise ValueError(f'no record at byte {pos} inside (opcode 0x{op:02x})')
                break
            end = pos + 9 + length
            if end > n:
                if whole:
                    raise ValueError('a record inside runs past the end')
                break
            body = buf[pos + 9:end]
            try:
                if op == _OP_SCHEMA:
                    (sid,) = _U16.unpack_from(body, 0)
                    name, p = _string(body, 2)
                    encoding, p = _string(body, p)
                    text, _ = _string(body, p)
                    schemas[sid] = (name, encoding, text)
                elif op == _OP_CHANNEL:
                    cid, sid = struct.unpack_from('<HH', body, 0)
                    topic, p = _string(body, 4)
                    encoding, p = _string(body, p)
                    qos = _channel_qos(body, p)
                    name, fmt, text = schemas.get(sid, ('', '', ''))
                    on_channel(cid, _Channel(topic, name, encoding, fmt, text, qos))
                elif op == _OP_MESSAGE:
                    cid, _seq, log_time, _pub = _MSG_HEAD.unpack_from(body, 0)
                    insort(messages, (log_time, len(messages), cid, body[_MSG_HEAD.size:]))
            except (struct.error, ValueError) as exc:
                raise ValueError(f'malformed record 0x{op:02x} inside: {exc}') from None
            pos = end
        self._records_end = pos
        for log_time, _, cid, data in messages:
            self.count += 1
            self.last_time = log_time
            yield cid, log_time, data


def _channel_qos(body: bytes, pos: int) -> str:
    """Return the ``offered_qos_profiles`` entry of a channel's metadata map ('' if none)."""
    (size,) = _U32.unpack_from(body, pos)
    pos, end = pos + 4, pos + 4 + size
    while pos < end:
        key, pos = _string(body, pos)
        value, pos = _string(body, pos)
        if key == 'offered_qos_profiles':
            return value
    return ''


def _decompress(compression: str, data: bytes, partial: bool) -> bytes:
    """Decompress chunk records; with ``partial``, whatever the start of the data gives."""
    if compression == '':
        return data
    try:
        if compression == 'zstd':
            try:
                from compression import zstd  # Python 3.14
            except ImportError:
                from backports import zstd
            if partial:
                return zstd.ZstdDecompressor().decompress(data)
            return zstd.decompress(data)
        if compression == 'lz4':
            import lz4.frame
            if partial:
                return lz4.frame.LZ4FrameDecompressor().decompress(data)
            return lz4.frame.decompress(data)
    except Exception as exc:  # noqa: B902 - each codec raises its own error types
        if partial:
            return b''
        raise ValueError(f'{compression} data does not decompress: {exc}') from None
    raise ValueError(f'unsupported chunk compression {compression!r}')


class _Db3File:
    """One ``.db3`` read row by row until SQLite cannot go on (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        import apsw

        self.path = path
        self.size = path.stat().st_size
        with path.open('rb') as f:
            head = f.read(100)
        if not head.startswith(b'SQLite format 3\x00') or len(head) < 100:
            raise SalvageError(f'{path}: not an SQLite database')
        page_size = int.from_bytes(head[16:18], 'big')
        page_size = 65536 if page_size == 1 else page_size
        self.expected_size = int.from_bytes(head[28:32], 'big') * page_size or None
        self._apsw = apsw
        try:
            self.db = apsw.Connection(f'file:{path}?immutable=1',
                                      flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
            # Take the pages the file holds instead of refusing a file shorter than its header.
            self.db.execute('PRAGMA writable_schema=ON')
            self.channels = self._channels()
        except apsw.Error as exc:
            raise SalvageError(f'{path}: the tables of the bag cannot be read: '
                               f'{type(exc).__name__}: {exc}') from exc

    def _channels(self) -> dict[int, _Channel]:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
        if not {'topics', 'messages'} <= tables:
            raise SalvageError(f'{self.path}: no topics/messages tables; not a ROS 2 bag')
        columns = {row[1] for row in self.db.execute('PRAGMA table_info(topics)')}
        wanted = ['id', 'name', 'type', 'serialization_format']
        wanted += [c for c in ('offered_qos_profiles', 'type_description_hash') if c in columns]
        msgdefs: dict[str, tuple[str, str]] = {}
        if 'message_definitions' in tables:
            for name, fmt, text in self.db.execute(
                    'SELECT topic_type, encoding, encoded_message_definition '
                    'FROM message_definitions'):
                msgdefs[name] = (fmt, text)
        out = {}
        for row in self.db.execute(f'SELECT {", ".join(wanted)} FROM topics'):
            values = dict(zip(wanted, row))
            fmt, text = msgdefs.get(values['type'], ('', ''))
            out[values['id']] = _Channel(values['name'], values['type'],
                                         values['serialization_format'], fmt, text,
                                         values.get('offered_qos_profiles') or '',
                                         values.get('type_description_hash') or '')
        return out

    def scan(self, on_channel: Callable[[int, _Channel], None]
             ) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(topic_id, bag_time, data)`` in row order; sets :attr:`truncation`."""
        for cid, channel in self.channels.items():
            on_channel(cid, channel)
        self.truncation: Optional[Truncation] = None
        count, last, last_id = 0, None, None
        try:
            for row_id, cid, stamp, data in self.db.execute(
                    'SELECT id, topic_id, timestamp, data FROM messages ORDER BY id'):
                count, last, last_id = count + 1, stamp, row_id
                yield cid, stamp, data
        except self._apsw.Error as exc:
            after = f'row {last_id}' if last_id is not None else 'the first row'
            cut = self.expected_size is not None and self.expected_size > self.size
            self.truncation = Truncation(
                self.path, self.size, self.size, f'SQLite cannot read past {after}: '
                f'{type(exc).__name__}: {exc}', count, last, self.expected_size, cut=cut)
            return
        if self.expected_size is not None and self.expected_size > self.size:
            self.truncation = Truncation(
                self.path, self.size, self.size, 'the file is shorter than its header says '
                '(every message row was still readable)', count, last, self.expected_size)

    def close(self) -> None:
        """Close the database."""
        self.db.close()


class SalvageReader:
    """A ``rosbags.rosbag2.Reader`` look-alike over the readable prefix of a damaged bag.

    It offers what :func:`sfdfuse_core.bag.fuse_bag` uses: :attr:`connections` (rosbags
    ``Connection`` objects; ``msgcount`` is the count ``metadata.yaml`` declares, or the count
    readable), :attr:`topics`, :meth:`messages` and :meth:`close`. Opening reads every file once
    (to learn the connections and counts); :meth:`messages` reads it again.

    :param path: a bag folder (with or without ``metadata.yaml``) or one ``.mcap``/``.db3``.
    :raises SalvageError: when there is no storage file or a file is not MCAP/SQLite at all.
    """

    def __init__(self, path: Path) -> None:
        from rosbags.interfaces import (Connection, ConnectionExtRosbag2, MessageDefinition,
                                        MessageDefinitionFormat, TopicInfo)
        from rosbags.rosbag2.metadata import parse_qos

        self.path = Path(path)
        self.files, declared = _storage_files(self.path)
        self._readers = [self._open_file(p) for p in self.files]
        self._conn_of: list[dict[int, Any]] = []
        by_key: dict[tuple[str, str], Any] = {}
        counts: dict[tuple[str, str], int] = {}
        fmts = {'ros2msg': MessageDefinitionFormat.MSG, 'ros2idl': MessageDefinitionFormat.IDL}
        for reader in self._readers:
            local: dict[int, Any] = {}

            def on_channel(cid: int, ch: _Channel, local: dict = local) -> None:
                key = (ch.topic, ch.msgtype)
                if key not in by_key:
                    try:
                        qos = parse_qos(ch.qos) if ch.qos else []
                    except Exception:  # noqa: B902 - unparsable QoS text: copy without it
                        qos = []
                    msgdef = MessageDefinition(
                        fmts.get(ch.msgdef_format, MessageDefinitionFormat.NONE), ch.msgdef)
                    by_key[key] = Connection(len(by_key) + 1, ch.topic, ch.msgtype, msgdef,
                                             ch.digest, 0, ConnectionExtRosbag2(ch.encoding, qos),
                                             self)
                    counts[key] = 0
                local[cid] = by_key[key]

            for cid, _time, _data in reader.scan(on_channel):
                if cid in local:
                    counts[(local[cid].topic, local[cid].msgtype)] += 1
            self._conn_of.append(local)
        self.read_counts = {conn.topic: counts[key] for key, conn in by_key.items()}
        self.connections = []
        for key, conn in by_key.items():
            n = max(counts[key], declared.get(conn.topic, 0))
            self.connections.append(conn._replace(msgcount=n))
        for local in self._conn_of:
            for cid, conn in local.items():
                local[cid] = next(c for c in self.connections if c.id == conn.id)
        self.topics = {c.topic: TopicInfo(c.msgtype, c.msgdef, c.msgcount, [c])
                       for c in self.connections}
        #: Where each damaged file stopped (empty: every file was complete).
        self.truncations = [r.truncation for r in self._readers if r.truncation is not None]

    @staticmethod
    def _open_file(path: Path) -> Any:
        if path.suffix == '.mcap':
            return _McapFile(path)
        if path.suffix == '.db3':
            return _Db3File(path)
        raise SalvageError(f'{path}: unsupported storage file (expected .mcap or .db3)')

    def messages(self, connections: Any = ()) -> Iterator[tuple[Any, int, bytes]]:
        """Yield ``(connection, bag_time, raw)`` of the readable prefix, file by file.

        :param connections: the connections wanted (empty: all).
        """
        wanted = {c.id for c in connections}
        for reader, local in zip(self._readers, self._conn_of):
            for cid, bag_time, data in reader.scan(lambda cid, ch: None):
                conn = local.get(cid)
                if conn is not None and (not wanted or conn.id in wanted):
                    yield conn, bag_time, data

    def describe(self) -> str:
        """Return what was truncated and where reading stopped, one line per damaged file."""
        return '\n'.join(t.describe() for t in self.truncations)

    def close(self) -> None:
        """Release the storage files."""
        for reader in self._readers:
            if isinstance(reader, _Db3File):
                reader.close()


def _storage_files(path: Path) -> tuple[list[Path], dict[str, int]]:
    """Return the storage files of a bag and the per-topic counts ``metadata.yaml`` declares."""
    if path.is_file():
        return [path], {}
    declared: dict[str, int] = {}
    files: list[Path] = []
    meta = path / 'metadata.yaml'
    if meta.is_file():
        try:
            info = yaml.safe_load(meta.read_text())['rosbag2_bagfile_information']
            files = [path / name for name in info.get('relative_file_paths') or []]
            for entry in info.get('topics_with_message_count') or []:
                name = entry['topic_metadata']['name']
                declared[name] = declared.get(name, 0) + int(entry['message_count'])
        except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
            files, declared = [], {}  # a half-written metadata.yaml: go by the files alone
        files = [f for f in files if f.is_file()]
    if not files:
        files = sorted((p for p in path.iterdir() if p.suffix in ('.mcap', '.db3')),
                       key=_natural_key)
    if not files:
        raise SalvageError(f'{path}: no .mcap or .db3 storage file')
    return files, declared
