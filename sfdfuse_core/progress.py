"""Progress display that suits where the output goes: a bar on a terminal, lines in a log.

A tqdm bar redraws itself with carriage returns many times a second. On a terminal that is what
one wants; in a file or a pipe (CI logs, ``ros2 launch`` output, ``nohup``) every redraw stays,
and a long run leaves thousands of carriage-return updates in one line of the log.
:func:`progress` returns a tqdm bar when the stream is a terminal, and otherwise a
:class:`LineProgress` that writes one plain line every ``interval`` seconds (count,
percentage, rate, time left) and a summary line when it is closed.

Both offer the part of tqdm's interface the package uses: iteration over a wrapped iterable,
``update(n)``, ``set_postfix(...)``, ``set_description(...)``, ``close()``, use as a context
manager, and the ``n`` / ``total`` attributes.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

#: Seconds between two lines of a :class:`LineProgress` (``$SFDFUSE_PROGRESS_INTERVAL``
#: overrides it, e.g. ``60`` for a long training run).
DEFAULT_INTERVAL_S = 10.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _interval_from_env() -> float:
    raw = os.environ.get('SFDFUSE_PROGRESS_INTERVAL', '')
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f'{seconds:.0f} s' if seconds >= 10 else f'{seconds:.1f} s'
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f'{minutes} min {sec:02d} s'
    hours, minutes = divmod(minutes, 60)
    return f'{hours} h {minutes:02d} min'


class LineProgress:
    """Progress written as plain lines: one every ``interval`` seconds, a summary at the end.

    :param iterable: items to wrap (iterate over the object), or ``None`` (call :meth:`update`).
    :param total: expected count; default ``len(iterable)`` when it has one.
    :param desc: label at the start of each line.
    :param unit: what is counted.
    :param initial: count already done (a resumed run).
    :param file: stream to write to (default ``sys.stderr``).
    :param interval: seconds between lines (default :data:`DEFAULT_INTERVAL_S`).
    :param clock: monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None,
                 desc: str = '', unit: str = 'it', initial: float = 0,
                 file: Optional[TextIO] = None, interval: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, '__len__'):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self._initial = initial
        self._file = file if file is not None else sys.stderr
        self._interval = _interval_from_env() if interval is None else float(interval)
        self._clock = clock
        self._start = clock()
        self._last_line = self._start
        self._postfix = ''
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError('LineProgress was made without an iterable')
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> 'LineProgress':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else 0

    def update(self, n: float = 1) -> None:
        """Count ``n`` more; write a line if ``interval`` seconds passed since the last one.

        :param n: how many were done.
        """
        self.n += n
        now = self._clock()
        if now - self._last_line >= self._interval and not self._closed:
            self._last_line = now
            self._write(self._status(now))

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        """Set ``key=value`` items shown at the end of the next line (like tqdm's).

        :param ordered_dict: items, as tqdm takes them.
        :param refresh: ignored (the next line shows them).
        :param kwargs: more items.
        """
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = ', '.join(f'{k}={v}' for k, v in items.items())

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        """Change the label.

        :param desc: the new label.
        :param refresh: ignored.
        """
        self.desc = desc or ''

    def write(self, text: str) -> None:
        """Write a message line (tqdm's ``write``).

        :param text: the message.
        """
        self._write(text)

    def close(self) -> None:
        """Write the summary line (once)."""
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        elapsed = now - self._start
        done = self.n - self._initial
        rate = f', {done / elapsed:.3g} {self.unit}/s' if elapsed > 0 and done else ''
        count = f'{self.n:g}' + (f'/{self.total:g}' if self.total is not None else '')
        finished = self.total is None or self.n >= self.total
        word = 'done' if finished else 'stopped at'
        tail = f' ({self._postfix})' if self._postfix else ''
        self._write(f'{self._label()}{word} {count} {self.unit} in {_duration(elapsed)}'
                    f'{rate}{tail}')

    def _label(self) -> str:
        return f'{self.desc}: ' if self.desc else ''

    def _status(self, now: float) -> str:
        elapsed = now - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f'{self.n:g}' + (f'/{self.total:g}' if self.total is not None else '')
                 + f' {self.unit}']
        if self.total:
            parts[0] += f' ({100.0 * self.n / self.total:.0f} %)'
        if rate > 0:
            parts.append(f'{rate:.3g} {self.unit}/s')
        parts.append(f'{_duration(elapsed)} elapsed')
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f'~{_duration((self.total - self.n) / rate)} left')
        if self._postfix:
            parts.append(self._postfix)
        return self._label() + ', '.join(parts)

    def _write(self, line: str) -> None:
        try:
            self._file.write(line + '\n')
            self._file.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the work
            pass


class _Silent(LineProgress):
    """Counts, writes nothing (``disable=True``)."""

    def _write(self, line: str) -> None:
        pass


def progress(iterable: Optional[Iterable] = None, *, total: Optional[float] = None,
             desc: str = '', unit: str = 'it', initial: float = 0,
             file: Optional[TextIO] = None, disable: bool = False, leave: bool = True,
             interval: Optional[float] = None) -> Any:
    """Return a progress display for ``file``: a tqdm bar on a terminal, lines otherwise.

    :param iterable: items to wrap, or ``None`` (call ``update``).
    :param total: expected count (default ``len(iterable)``).
    :param desc: label.
    :param unit: what is counted.
    :param initial: count already done.
    :param file: stream (default ``sys.stderr``).
    :param disable: show nothing (still iterable and countable).
    :param leave: keep the finished bar on the terminal (tqdm only).
    :param interval: seconds between lines when not on a terminal (default
        ``$SFDFUSE_PROGRESS_INTERVAL`` or :data:`DEFAULT_INTERVAL_S`).
    :return: a ``tqdm`` bar or a :class:`LineProgress`.
    """
    stream = file if file is not None else sys.stderr
    if disable:
        return _Silent(iterable, total=total, desc=desc, unit=unit, initial=initial,
                       file=stream)
    if _is_terminal(stream):
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream,
                    leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        file=stream, interval=interval)
