"""The results page: our fusion next to the published CDDFuse and SFDFuse numbers.

:func:`make_results` fuses every pair of the published evaluation sets (TNO, RoadScene) with each
method, scores the fused images with :func:`sfdfuse_core.metrics.evaluate_pair` and writes

- ``OUT/RESULTS.md``: per set, the mean of every metric next to the published tables, and on how
  many of the 8 published metrics each of our methods beats CDDFuse;
- ``OUT/results/results.json``: every number (per set, per method: the means and every image);
- ``OUT/results/grid_<set>.png``: a few pairs per set, columns infrared | visible | each method.

Protocol (the one of the published tables, Zhao et al., CVPR 2023, and SFDFuse): a colour
visible image is converted to YCbCr, its luminance is fused with the infrared image and its
chroma put back (:class:`sfdfuse_core.fusion.Fuser`); a gray(-looking) visible image gives a gray
output. The fused, infrared and visible images are then read as 8-bit gray (OpenCV BGR->GRAY) and
scored with the published evaluator's definitions, SSIM with ``data_range=2`` as published
(:mod:`sfdfuse_core.metrics`). Fused images stay in memory: PNG is lossless, so this equals
writing them and reading them back as published code does.

Rows: the baselines ``mean`` and ``max`` and one row per network of the family
(``sfdfuse-lite``, the compact network; ``sfdfuse``, the published one), each with its shipped
weights or the file given with ``weights``. Nothing is ever made up: a network without a weights
file says so (:data:`NOT_TRAINED`) instead of showing numbers.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from sfdfuse_core.imageio import ImageReadError, list_pairs, read_image, to_gray
from sfdfuse_core.metrics import METRIC_NAMES, PUBLISHED_SSIM_DATA_RANGE, MetricError, \
    evaluate_pair

__all__ = ['BASELINES', 'GRID_CELL', 'NETWORK_ROWS', 'NOT_TRAINED', 'PUBLISHED',
           'PUBLISHED_METRICS', 'SETS', 'ResultsError', 'count_beats', 'grid_size', 'make_grid',
           'make_results', 'quality_checks', 'render_markdown', 'select_grid_pairs']

PathLike = Union[str, os.PathLike]

#: The evaluation sets of the published tables, as folder names under ``--data``.
SETS = ('TNO', 'RoadScene')

#: Methods that need no weights and are always evaluated.
BASELINES = ('mean', 'max')

#: Network rows, in table order (``sfdfuse_core.model.NETWORKS`` names).
NETWORK_ROWS = ('sfdfuse-lite', 'sfdfuse')

#: What a network row says when there is no weights file.
NOT_TRAINED = 'no weights file installed for this network'

#: The metrics published tables report (no AG), the ones "beats CDDFuse" counts.
PUBLISHED_METRICS = ('EN', 'SD', 'SF', 'MI', 'SCD', 'VIF', 'Qabf', 'SSIM')


def _row(en: float, sd: float, sf: float, mi: float, scd: float, vif: float, qabf: float,
         ssim: float) -> Dict[str, Optional[float]]:
    return {'EN': en, 'SD': sd, 'SF': sf, 'AG': None, 'MI': mi, 'SCD': scd, 'VIF': vif,
            'Qabf': qabf, 'SSIM': ssim}


#: Published means (two decimals, no AG): CDDFuse (Zhao et al., CVPR 2023, Table 1) and the
#: SFDFuse paper's table, per set.
PUBLISHED: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {
    'TNO': {
        'CDDFuse': _row(7.12, 46.00, 13.15, 2.19, 1.76, 0.77, 0.54, 1.03),
        'SFDFuse': _row(7.16, 46.17, 13.24, 2.29, 1.74, 0.81, 0.56, 1.02),
    },
    'RoadScene': {
        'CDDFuse': _row(7.44, 54.67, 16.36, 2.30, 1.81, 0.69, 0.52, 0.98),
        'SFDFuse': _row(7.43, 52.80, 15.63, 2.37, 1.80, 0.70, 0.55, 0.96),
    },
}

#: Digits of the published tables; our means are rounded to these before comparing.
PUBLISHED_DECIMALS = 2

#: Size ``(height, width)`` of one picture in the grid (pictures are letterboxed into it).
GRID_CELL = (180, 240)
#: Space between cells and around the grid, in pixels.
GRID_GAP = 4
#: Height of the column-label strip at the top.
GRID_HEADER = 26
#: Height of the pair-name strip above each row.
GRID_ROW_LABEL = 18
_GRID_BACKGROUND = 255
_GRID_TEXT = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class ResultsError(ValueError):
    """The results cannot be made: a data folder is missing, a method is unknown, ..."""


# --------------------------------------------------------------------------------------------
# Comparison with the published numbers
# --------------------------------------------------------------------------------------------

def count_beats(ours: Dict[str, float], reference: Dict[str, Optional[float]],
                decimals: int = PUBLISHED_DECIMALS) -> Dict[str, Any]:
    """Count the published metrics on which our means beat a published row.

    All eight published metrics are better when higher. Our value is rounded to the published
    precision first, so a tie at that precision does not count as a win.

    :param ours: metric name -> our mean.
    :param reference: metric name -> published value (``None`` where not published).
    :param decimals: digits of the published table.
    :return: ``{'count': wins, 'of': metrics compared, 'metrics': {name: True/False}}``.
    """
    won = {}
    for name in PUBLISHED_METRICS:
        if reference.get(name) is None or name not in ours:
            continue
        won[name] = bool(round(float(ours[name]), decimals) > reference[name])
    return {'count': sum(won.values()), 'of': len(won), 'metrics': won}


# --------------------------------------------------------------------------------------------
# The picture
# --------------------------------------------------------------------------------------------

def grid_size(rows: int, columns: int) -> Tuple[int, int]:
    """Return the ``(height, width)`` in pixels of a grid of ``rows`` pairs and ``columns``.

    :param rows: pairs shown (one row each), >= 1.
    :param columns: pictures per row (infrared, visible, one per method), >= 1.
    :return: the size :func:`make_grid` produces.
    """
    if rows < 1 or columns < 1:
        raise ValueError(f'a grid needs at least one row and one column, got {rows}x{columns}')
    cell_h, cell_w = GRID_CELL
    width = columns * cell_w + (columns + 1) * GRID_GAP
    height = GRID_HEADER + rows * (GRID_ROW_LABEL + cell_h + GRID_GAP)
    return height, width


def _bgr(img: np.ndarray) -> np.ndarray:
    """Gray ``(H, W)`` or BGR ``(H, W, 3)`` uint8 -> BGR ``(H, W, 3)``."""
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def _letterbox(img: np.ndarray) -> np.ndarray:
    """Scale a picture to fit :data:`GRID_CELL`, keeping its aspect, centred on the background."""
    cell_h, cell_w = GRID_CELL
    height, width = img.shape[:2]
    scale = min(cell_h / height, cell_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(_bgr(img), (new_w, new_h), interpolation=interp)
    cell = np.full((cell_h, cell_w, 3), _GRID_BACKGROUND, np.uint8)
    top, left = (cell_h - new_h) // 2, (cell_w - new_w) // 2
    cell[top:top + new_h, left:left + new_w] = small
    return cell


def _text(canvas: np.ndarray, text: str, x: int, baseline: int, scale: float,
          max_width: int) -> None:
    """Draw ``text`` at ``(x, baseline)``, shortened with ``...`` to fit ``max_width`` pixels."""
    def width(s: str) -> int:
        return cv2.getTextSize(s, _FONT, scale, 1)[0][0]
    while text and width(text) > max_width:
        text = text[:-4] + '...' if len(text) > 4 else text[:-1]
    cv2.putText(canvas, text, (x, baseline), _FONT, scale, _GRID_TEXT, 1, cv2.LINE_AA)


def make_grid(rows: Sequence[Tuple[str, Sequence[np.ndarray]]],
              labels: Sequence[str]) -> np.ndarray:
    """Lay out pictures in a labelled grid: one row per pair, one column per picture kind.

    :param rows: ``(row label, pictures)``; every picture uint8 gray ``(H, W)`` or BGR
        ``(H, W, 3)``, any size (letterboxed into :data:`GRID_CELL`), ``len(labels)`` per row.
    :param labels: column labels (e.g. ``infrared``, ``visible``, ``mean``).
    :return: BGR uint8 image of size :func:`grid_size` ``(len(rows), len(labels))``.
    :raises ValueError: no rows, or a row with another number of pictures than labels.
    """
    if not rows:
        raise ValueError('make_grid needs at least one row')
    for name, pictures in rows:
        if len(pictures) != len(labels):
            raise ValueError(f'row {name!r} has {len(pictures)} pictures for {len(labels)} '
                             'column labels')
    height, width = grid_size(len(rows), len(labels))
    cell_h, cell_w = GRID_CELL
    canvas = np.full((height, width, 3), _GRID_BACKGROUND, np.uint8)
    for col, label in enumerate(labels):
        x = GRID_GAP + col * (cell_w + GRID_GAP)
        _text(canvas, label, x + 2, GRID_HEADER - 8, 0.6, cell_w - 4)
    for row, (name, pictures) in enumerate(rows):
        top = GRID_HEADER + row * (GRID_ROW_LABEL + cell_h + GRID_GAP)
        _text(canvas, name, GRID_GAP + 2, top + GRID_ROW_LABEL - 5, 0.45, width - 2 * GRID_GAP)
        y = top + GRID_ROW_LABEL
        for col, picture in enumerate(pictures):
            x = GRID_GAP + col * (cell_w + GRID_GAP)
            canvas[y:y + cell_h, x:x + cell_w] = _letterbox(picture)
    return canvas


def select_grid_pairs(names: Sequence[str], count: int) -> List[str]:
    """Pick ``count`` names spread evenly over a sorted list (first and last included).

    :param names: the pair names, in order.
    :param count: how many to show; 0 shows none.
    :return: the chosen names, in order.
    """
    if count <= 0 or not names:
        return []
    if count >= len(names):
        return list(names)
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in sorted(set(picks.tolist()))]


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG (single channel when the picture has no colour), maximum compression."""
    if image.ndim == 3 and np.array_equal(image[:, :, 0], image[:, :, 1]) \
            and np.array_equal(image[:, :, 1], image[:, :, 2]):
        image = image[:, :, 0]
    ok, data = cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f'cannot encode {path} as PNG')
    _write_bytes(path, data.tobytes())


def _write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary name, so that a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Where and with what the numbers were made
# --------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: Any) -> Dict[str, Any]:
    """Describe the machine the numbers were made on.

    :param device: the ``torch.device`` the network ran on.
    :return: ``{'cpu', 'cpu_count', 'os', 'python', 'torch', 'device', 'gpu'}``.
    """
    import torch

    gpu = None
    if getattr(device, 'type', None) == 'cuda':
        gpu = torch.cuda.get_device_name(device)
    return {
        'cpu': _cpu_model(),
        'cpu_count': os.cpu_count(),
        'os': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'opencv': cv2.__version__,
        'device': str(device),
        'gpu': gpu,
    }


def _code_commit() -> Optional[str]:
    """Return the git commit of this checkout (read only), or ``None`` outside git."""
    try:
        proc = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _weights_record(path: Path) -> Dict[str, Any]:
    """Describe a weights file: its info (training metadata included) and its sha256."""
    from sfdfuse_core.weights import read_weights_info

    info = read_weights_info(path)
    info['sha256'] = _sha256(path)
    try:  # a path relative to where the command ran reads better than an absolute one
        info['path'] = os.path.relpath(path.resolve()) if path.resolve().is_relative_to(
            Path.cwd().resolve()) else str(path)
    except ValueError:
        pass
    return info


# --------------------------------------------------------------------------------------------
# Fusing and scoring
# --------------------------------------------------------------------------------------------

def _evaluate_method(fuser: Any, pairs: Sequence[Tuple[str, Path, Path]],
                     grid_names: Sequence[str], progress: bool, desc: str
                     ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, str],
                                Dict[str, np.ndarray], float]:
    """Fuse and score every pair with one method.

    :return: per-image metrics, skipped names with the reason, the fused pictures of
        ``grid_names``, and the seconds it took.
    """
    from sfdfuse_core.fusion import FusionInputError
    from sfdfuse_core.progress import progress as show_progress

    per_image: Dict[str, Dict[str, float]] = {}
    skipped: Dict[str, str] = {}
    shown: Dict[str, np.ndarray] = {}
    start = time.perf_counter()
    for name, ir_path, vi_path in show_progress(pairs, desc=desc, unit='pair', file=sys.stderr,
                                                disable=not progress):
        try:
            ir, vi = read_image(ir_path), read_image(vi_path)
            fused = fuser(vi, ir)
            per_image[name] = evaluate_pair(to_gray(fused), to_gray(ir), to_gray(vi),
                                            ssim_data_range=PUBLISHED_SSIM_DATA_RANGE)
        except (ImageReadError, FusionInputError, MetricError, RuntimeError) as exc:
            # RuntimeError: the network gave non-finite values or ran out of memory.
            skipped[name] = f'{type(exc).__name__}: {exc}'
            continue
        if name in grid_names:
            shown[name] = fused
    return per_image, skipped, shown, time.perf_counter() - start


def _means(per_image: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    return {m: float(np.mean([row[m] for row in per_image.values()], dtype=np.float64))
            for m in METRIC_NAMES}


def _parse_methods(methods: Sequence[str]) -> List[str]:
    known = list(BASELINES) + list(NETWORK_ROWS)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ResultsError(f'unknown method(s) {unknown}; expected some of {known}')
    return list(BASELINES) + [m for m in NETWORK_ROWS if m in methods]


def make_results(data: PathLike, out: PathLike,
                 methods: Sequence[str] = ('mean', 'max') + NETWORK_ROWS,
                 weights: Optional[PathLike] = None, device: str = 'auto', grid_pairs: int = 4,
                 sets: Sequence[str] = SETS, command: str = '', progress: bool = True,
                 log: Any = None) -> Dict[str, Any]:
    """Fuse and score the published evaluation sets and write the results page.

    :param data: folder holding one folder per set (``TNO/``, ``RoadScene/``), each with ``ir/``
        and ``vi/``.
    :param out: where ``RESULTS.md`` and ``results/`` (JSON, grids) are written.
    :param methods: rows: baselines (``mean`` and ``max``, always included) and networks
        (:data:`NETWORK_ROWS`).
    :param weights: a weights file for the row of the network it holds (that row is added when
        missing); the other network rows use their shipped weights, and a network without
        them says :data:`NOT_TRAINED`.
    :param device: where the network runs (``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``).
    :param grid_pairs: pairs per set shown in the grid picture (0: no picture).
    :param sets: which of :data:`SETS` to evaluate.
    :param command: the command line that made the results, written into them.
    :param progress: show progress bars (stderr).
    :param log: ``print``-like function for progress lines (``None``: silent).
    :return: the report that was written as ``results.json``.
    :raises ResultsError: unknown method or set, missing data folder, a set without pairs.
    :raises sfdfuse_core.weights.WeightsError: ``weights`` is given but missing, or a weights
        file is corrupt or does not fit its config.
    :raises ValueError: the device is unknown or unavailable.
    """
    from sfdfuse_core.fusion import Fuser, resolve_device
    from sfdfuse_core.model import shipped_weights_path
    from sfdfuse_core.weights import WeightsNotFoundError, read_weights_info

    say = log or (lambda *a, **k: None)
    methods = _parse_methods(methods)
    unknown_sets = [s for s in sets if s not in SETS]
    if unknown_sets or not sets:
        raise ResultsError(f'unknown set(s) {unknown_sets}; expected some of {list(SETS)}')
    if grid_pairs < 0:
        raise ResultsError(f'grid_pairs must be >= 0, got {grid_pairs}')
    data, out = Path(data), Path(out)
    listings = {}
    for name in sets:
        ir_dir, vi_dir = data / name / 'ir', data / name / 'vi'
        for folder in (ir_dir, vi_dir):
            if not folder.is_dir():
                raise ResultsError(f'data folder not found: {folder} (expected {data}/<set>/ir '
                                   'and vi for each set)')
        listing = list_pairs(ir_dir, vi_dir)
        if not listing.pairs:
            raise ResultsError(f'no image pairs in {ir_dir} and {vi_dir}')
        listings[name] = listing
    torch_device = resolve_device(device)
    given: Dict[str, Path] = {}
    if weights is not None:
        given[read_weights_info(weights)['network']] = Path(weights)
        methods = _parse_methods(list(methods) + list(given))

    fusers: Dict[str, Any] = {}
    weights_info: Dict[str, Any] = {}
    not_trained: Dict[str, str] = {}
    for method in methods:
        if method in BASELINES:
            fusers[method] = Fuser(method=method, device=torch_device)
            continue
        path = given.get(method, shipped_weights_path(method))
        try:
            fusers[method] = Fuser(method='sfdfuse', weights=path, device=torch_device)
        except WeightsNotFoundError:
            if method in given:
                raise
            not_trained[method] = NOT_TRAINED
            say(f'{method}: no weights at {path}: the row says "{NOT_TRAINED}"')
            continue
        weights_info[method] = _weights_record(path)

    report: Dict[str, Any] = {
        'generated': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'command': command,
        'code_commit': _code_commit(),
        'machine': machine_info(torch_device),
        'protocol': {
            'fusion': 'colour visible -> YCbCr, fuse Y with the gray infrared, chroma back; '
                      'gray visible -> gray output; no min-max stretch',
            'evaluation': 'fused, infrared and visible as 8-bit gray (OpenCV BGR->GRAY); '
                          'metrics of CDDFuse utils/Evaluator.py (scikit-image 0.19.2)',
            'ssim_data_range': PUBLISHED_SSIM_DATA_RANGE,
            'beats_rule': f'our mean rounded to {PUBLISHED_DECIMALS} decimals > CDDFuse\'s '
                          'published value (all 8 published metrics are higher-is-better)',
        },
        'weights': weights_info,
        'published': {name: PUBLISHED[name] for name in sets},
        'sets': {},
    }
    results_dir = out / 'results'
    for set_name in sets:
        pairs = listings[set_name].pairs
        names = [name for name, _, _ in pairs]
        shown_names = select_grid_pairs(names, grid_pairs)
        entry: Dict[str, Any] = {'path': str(data / set_name), 'pairs': len(pairs),
                                 'unpaired': listings[set_name].ir_only
                                 + listings[set_name].vi_only,
                                 'methods': {}}
        shown: Dict[str, Dict[str, np.ndarray]] = {}
        for method in methods:
            if method in not_trained:
                entry['methods'][method] = {'status': 'not_trained', 'message': NOT_TRAINED}
                continue
            per_image, skipped, pictures, seconds = _evaluate_method(
                fusers[method], pairs, shown_names, progress, f'{set_name} {method}')
            shown[method] = pictures
            result: Dict[str, Any] = {'status': 'ok' if per_image else 'failed',
                                      'evaluated': len(per_image), 'seconds': round(seconds, 2),
                                      'skipped': skipped}
            if per_image:
                result['mean'] = _means(per_image)
                result['beats_cddfuse'] = count_beats(result['mean'],
                                                      PUBLISHED[set_name]['CDDFuse'])
            result['per_image'] = per_image
            entry['methods'][method] = result
            say(f'{set_name} {method}: {len(per_image)}/{len(pairs)} pairs scored in '
                f'{seconds:.1f} s')
        grid_methods = [m for m in methods if m in shown]
        grid_names = [n for n in shown_names if all(n in shown[m] for m in grid_methods)]
        if grid_names:
            rows = []
            lookup = {name: (ir_path, vi_path) for name, ir_path, vi_path in pairs}
            for name in grid_names:
                ir_path, vi_path = lookup[name]
                rows.append((f'{set_name} {name}', [read_image(ir_path), read_image(vi_path)]
                             + [shown[m][name] for m in grid_methods]))
            grid_file = results_dir / f'grid_{set_name.lower()}.png'
            _write_png(grid_file, make_grid(rows, ['infrared', 'visible'] + grid_methods))
            entry['grid'] = {'file': grid_file.relative_to(out).as_posix(), 'pairs': grid_names,
                             'columns': ['infrared', 'visible'] + grid_methods}
        report['sets'][set_name] = entry

    _write_bytes(results_dir / 'results.json',
                 (json.dumps(report, indent=1) + '\n').encode())
    _write_bytes(out / 'RESULTS.md', render_markdown(report).encode())
    return report


# --------------------------------------------------------------------------------------------
# The Markdown page
# --------------------------------------------------------------------------------------------

def _cell(value: Optional[float], bold: bool = False) -> str:
    if value is None:
        return '-'
    text = f'{value:.{PUBLISHED_DECIMALS}f}'
    return f'**{text}**' if bold else text


def _set_table(set_name: str, entry: Dict[str, Any]) -> List[str]:
    header = ['method', 'images'] + list(METRIC_NAMES) + ['beats CDDFuse']
    lines = ['| ' + ' | '.join(header) + ' |',
             '| --- | ---: | ' + ' | '.join('---:' for _ in METRIC_NAMES) + ' | ---: |']
    cddfuse = PUBLISHED[set_name]['CDDFuse']
    for paper, row in PUBLISHED[set_name].items():
        beats = '(reference)' if paper == 'CDDFuse' else _beats_text(count_beats(
            {k: v for k, v in row.items() if v is not None}, cddfuse))
        lines.append('| ' + ' | '.join([f'{paper} (published)', '-']
                                       + [_cell(row[m]) for m in METRIC_NAMES] + [beats]) + ' |')
    for method, result in entry['methods'].items():
        label = f'{method} (ours)'
        if result['status'] == 'not_trained':
            cells = [result['message']] + [''] * (len(METRIC_NAMES) - 1)
            lines.append('| ' + ' | '.join([label, '-'] + cells + ['-']) + ' |')
            continue
        if result['status'] != 'ok':
            cells = ['no image could be scored'] + [''] * (len(METRIC_NAMES) - 1)
            lines.append('| ' + ' | '.join([label, f'0/{entry["pairs"]}'] + cells + ['-'])
                         + ' |')
            continue
        won = result['beats_cddfuse']['metrics']
        cells = [_cell(result['mean'][m], bold=won.get(m, False)) for m in METRIC_NAMES]
        lines.append('| ' + ' | '.join([label, f'{result["evaluated"]}/{entry["pairs"]}'] + cells
                                       + [_beats_text(result['beats_cddfuse'])]) + ' |')
    return lines


def _beats_text(beats: Dict[str, Any]) -> str:
    return f'{beats["count"]}/{beats["of"]}'


def quality_checks(mean: Dict[str, float], cddfuse: Dict[str, Optional[float]],
                   baseline: Optional[Dict[str, float]]) -> Dict[str, Any]:
    """Check one row against the targets: CDDFuse beaten, within 90 % of it, ``mean`` beaten.

    :param mean: the row's metric means.
    :param cddfuse: CDDFuse's published row.
    :param baseline: the ``mean`` baseline's means on the same set (``None``: not scored).
    :return: ``{'beats_cddfuse': count, 'below_90pct': [metrics under 90 % of CDDFuse],
        'loses_to_mean': [published metrics where the row is not above mean]}``.
    """
    below = [m for m in PUBLISHED_METRICS
             if cddfuse.get(m) is not None and mean[m] < 0.9 * cddfuse[m]]
    loses = [] if baseline is None else [
        m for m in PUBLISHED_METRICS if not mean[m] > baseline[m]]
    return {'beats_cddfuse': count_beats(mean, cddfuse)['count'], 'below_90pct': below,
            'loses_to_mean': loses}


def _goal_lines(report: Dict[str, Any]) -> List[str]:
    """Say, per network row, how it does against the targets on every set."""
    lines = []
    for network in NETWORK_ROWS:
        rows = {name: entry['methods'].get(network) for name, entry in report['sets'].items()}
        if not any(rows.values()):
            continue
        if any(row and row['status'] == 'not_trained' for row in rows.values()):
            from sfdfuse_core.model import shipped_weights_path
            lines.append(f'- `{network}`: **no trained weights installed** '
                         f'(`{shipped_weights_path(network).name}` does not exist): its rows say '
                         f'"{NOT_TRAINED}" and show no number.')
            continue
        parts = []
        for name, row in rows.items():
            if row is None or row['status'] != 'ok':
                parts.append(f'{name}: not scored')
                continue
            mean_row = report['sets'][name]['methods'].get('mean', {}).get('mean')
            check = quality_checks(row['mean'], PUBLISHED[name]['CDDFuse'], mean_row)
            text = f'{name}: beats CDDFuse on {check["beats_cddfuse"]}/8'
            text += (', at least 90 % of CDDFuse on every metric' if not check['below_90pct']
                     else f', under 90 % of CDDFuse on {", ".join(check["below_90pct"])}')
            text += (', above `mean` on all 8' if not check['loses_to_mean']
                     else f', not above `mean` on {", ".join(check["loses_to_mean"])}')
            parts.append(text)
        lines.append(f'- `{network}`: ' + '; '.join(parts) + '.')
    if not lines:
        return ['No network row was asked for in this run.']
    return ['How each network does against the published CDDFuse numbers (the rule below):',
            ''] + lines


def render_markdown(report: Dict[str, Any]) -> str:
    """Write the results page from a report of :func:`make_results`.

    :param report: the report (as stored in ``results.json``).
    :return: the Markdown text.
    """
    machine = report['machine']
    lines = ['# Results on the published benchmarks', '',
             '<!-- Written by `sfdfuse results`; edit the code, not this file. -->', '',
             'Image fusion quality of this implementation on the two infrared-visible sets the '
             'CDDFuse and SFDFuse papers report on, next to their published numbers.', '']
    lines += _goal_lines(report) + ['']
    lines += ['## How these numbers were made', '',
              f'- command: `{report["command"]}`' if report['command'] else '- command: -',
              f'- date: {report["generated"]}',
              f'- code: a checkout of commit `{report["code_commit"]}`' if report['code_commit']
              else '- code: not a git checkout',
              f'- machine: {machine["cpu"]} ({machine["cpu_count"]} CPUs), {machine["os"]}, '
              f'Python {machine["python"]}, torch {machine["torch"]}, OpenCV {machine["opencv"]}; '
              f'network device `{machine["device"]}`'
              + (f' ({machine["gpu"]})' if machine['gpu'] else '')]
    if not report['weights']:
        lines.append('- weights: none (no network row has a weights file)')
    for network, weights in report['weights'].items():
        lines += [f'- `{network}` weights: `{weights["path"]}` ({weights["kind"]}, '
                  f'{weights["parameters"]:,} parameters, {weights["size_bytes"]:,} bytes, '
                  f'sha256 `{weights["sha256"]}`); training info stored in the file:', '',
                  '  ```json']
        info = {'metadata': weights['metadata'], 'config': weights['config'],
                'core_version': weights['core_version']}
        lines += ['  ' + line for line in json.dumps(info, indent=2, sort_keys=True).splitlines()]
        lines += ['  ```']
    lines += ['',
              'Protocol, the one of the published tables: a colour visible image is converted '
              'to YCbCr, its luminance Y is fused with the infrared image and its chroma is put '
              'back; a gray visible image (TNO) gives a gray output; no min-max stretch. The '
              'fused, infrared and visible images are scored as 8-bit gray (OpenCV BGR->GRAY) '
              'with `sfdfuse_core.metrics`, which reproduces the evaluator behind the published '
              "tables (CDDFuse's `utils/Evaluator.py` with scikit-image 0.19.2, hence SSIM with "
              f'data range {report["protocol"]["ssim_data_range"]:g}; see the '
              "[README](../README.md#offline-bags-and-folders)). Every number below is a mean "
              'over the images of the set; the published tables give no AG.', '',
              '"beats CDDFuse" counts the 8 published metrics (all higher-is-better) on which '
              'the row, rounded to the published two decimals, is above CDDFuse; a tie does not '
              'count. Bold: our values that beat CDDFuse. Every number, per image too, is in '
              '[results/results.json](results/results.json).', '']
    for set_name, entry in report['sets'].items():
        lines += [f'## {set_name} ({entry["pairs"]} pairs)', '']
        lines += _set_table(set_name, entry) + ['']
        for method, result in entry['methods'].items():
            for name, reason in result.get('skipped', {}).items():
                lines.append(f'- `{method}` skipped `{name}`: {reason}')
            if result.get('seconds') is not None:
                lines.append(f'- `{method}`: {result["evaluated"]} pair(s) fused and scored in '
                             f'{result["seconds"]:.1f} s')
        if entry['unpaired']:
            lines.append(f'- files without a partner (not scored): {", ".join(entry["unpaired"])}')
        lines.append('')
        grid = entry.get('grid')
        if grid:
            lines += [f'![{set_name}: {", ".join(grid["columns"])}]({grid["file"]})', '',
                      f'{set_name}, pairs {", ".join(grid["pairs"])}; columns: '
                      f'{" | ".join(grid["columns"])}.', '']
    return '\n'.join(lines).rstrip('\n') + '\n'
