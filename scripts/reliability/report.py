"""Write one section of ``docs/RELIABILITY.md`` from a script's measured results.

Each reliability script owns one section, delimited by HTML comments::

    <!-- BEGIN soak -->
    ...
    <!-- END soak -->

A script replaces only its own section (appending it when new), so the scripts can run in any
order and a re-run updates the figures in place. Sections are kept in :data:`ORDER`.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
from pathlib import Path
import platform
import os
import re
import sys
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / 'docs' / 'RELIABILITY.md'
TEST_DIR = REPO_ROOT / 'test'
#: Where the scripts keep raw results (JSON, logs); ignored by git.
OUT_DIR = REPO_ROOT / 'out' / 'reliability'
#: Section order in the document.
ORDER = ('soak', 'burst', 'load', 'fuzz', 'node_fuzz', 'time', 'bags', 'train', 'weights',
         'faults', 'signals', 'qos', 'suite')

HEADER = """# Reliability: soak, fuzz and fault tests

Generated: every section below is written by the script named in it, from what that run
measured (`bash scripts/reliability/run_all.sh` regenerates all of them; each script can also
run alone). The command is given next to each figure. The short versions of these checks run in
the test suite: `test/test_reliability_node.py`, `test/test_reliability_bag.py`,
`test/test_reliability_train.py`, `test/test_fuzz_boundary.py`.

Machine of the runs: {machine}.
The machine is shared (other engineers' tests and benchmarks run at the same time), so
latencies are upper bounds of what an idle machine gives.
"""


def ensure_test_path() -> None:
    """Make ``test/rosutil.py`` importable (the scripts reuse the test helpers)."""
    if str(TEST_DIR) not in sys.path:
        sys.path.insert(0, str(TEST_DIR))


def machine() -> str:
    """Describe the machine in one line.

    :return: CPU count, Python and platform.
    """
    return (f'{os.cpu_count()} CPU cores, Python {platform.python_version()}, '
            f'{platform.system()} {platform.release()}, no GPU')


def load_avg() -> str:
    """Return the 1/5/15-minute load averages as text (how busy the shared machine was).

    :return: e.g. ``'3.1 2.9 2.5'``.
    """
    try:
        return ' '.join(f'{v:.1f}' for v in os.getloadavg())
    except OSError:
        return '?'


def save_json(name: str, data: Any) -> Path:
    """Save raw results as ``out/reliability/<name>.json``.

    :param name: file stem.
    :param data: JSON-serialisable results.
    :return: the path written.
    """
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f'{name}.json'
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


def _split(text: str) -> dict[str, str]:
    sections = {}
    for match in re.finditer(r'<!-- BEGIN (\w+) -->\n(.*?)<!-- END \1 -->\n', text, re.S):
        sections[match.group(1)] = match.group(2)
    return sections


def write_section(key: str, title: str, body: str, command: str,
                  doc: Optional[Path] = None) -> Path:
    """Replace (or add) the section ``key`` of the reliability document.

    :param key: section key (one of :data:`ORDER`, or a new one, appended at the end).
    :param title: the section heading (without ``##``).
    :param body: Markdown with the results.
    :param command: the command that produced them (shown under the heading).
    :param doc: the document (default: ``docs/RELIABILITY.md``).
    :return: the document's path.
    """
    doc = doc or DOC
    doc.parent.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime('%Y-%m-%d %H:%M')
    block = (f'## {title}\n\nCommand: `{command}` (run {stamp}, load average '
             f'{load_avg()}).\n\n{body.strip()}\n\n')
    lock_path = doc.with_suffix('.lock')
    with open(lock_path, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # scripts may finish at the same time
        sections = _split(doc.read_text()) if doc.exists() else {}
        sections[key] = block
        keys = [k for k in ORDER if k in sections] + [k for k in sections if k not in ORDER]
        text = HEADER.format(machine=machine()) + '\n' + ''.join(
            f'<!-- BEGIN {k} -->\n{sections[k]}<!-- END {k} -->\n' for k in keys)
        tmp = doc.with_suffix('.tmp')
        tmp.write_text(text)
        tmp.replace(doc)
    lock_path.unlink(missing_ok=True)
    return doc


def table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    """Format a Markdown table.

    :param rows: the rows (values are formatted with ``str``).
    :param header: the column names.
    :return: the table text.
    """
    lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |']
    lines += ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def record(key: str, **values: Any) -> None:
    """Append measured values of a test to ``$RELIABILITY_RECORD_DIR/<key>.jsonl``.

    The tests call it; it does nothing unless the driver (:mod:`run_checks`) set the variable.

    :param key: the document section the values belong to.
    :param values: JSON-serialisable figures (``test`` names the test).
    """
    folder = os.environ.get('RELIABILITY_RECORD_DIR')
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f'{key}.jsonl', 'a') as handle:
        handle.write(json.dumps(values, default=str, sort_keys=True) + '\n')
