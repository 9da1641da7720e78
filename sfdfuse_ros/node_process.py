"""``fuse_node`` as a child process: how the demo and the benchmarks start, watch and stop it."""
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Dict, Optional, Sequence


def tail_log(path: Path, n: int = 25) -> str:
    """Return the last ``n`` lines of a log file (or why it cannot be read).

    :param path: the log file.
    :param n: number of lines.
    :return: the lines, joined.
    """
    try:
        with open(path, 'r', errors='replace') as f:
            return ''.join(deque(f, maxlen=n))
    except OSError as exc:
        return f'(cannot read {path}: {exc})'


class NodeProcess:
    """``fuse_node`` run by this interpreter (the ROS wheels need the same venv's Python).

    :param log_path: where its stdout and stderr go.
    :param params_file: a ROS params file, e.g. the package's ``config/fuse.yaml``.
    :param overrides: parameter name -> value (``-p name:=value``).
    :param env: its environment.
    :param extra_ros_args: more ``--ros-args`` arguments (e.g. ``--log-level``).
    """

    def __init__(self, log_path: Path, params_file: Path, overrides: Dict[str, str],
                 env: Dict[str, str], extra_ros_args: Sequence[str] = ()) -> None:
        self.log_path = Path(log_path)
        cmd = [sys.executable, '-m', 'sfdfuse_ros.fuse_node', '--ros-args',
               '--params-file', str(params_file), *extra_ros_args]
        for key, value in overrides.items():
            cmd += ['-p', f'{key}:={value}']
        self.command = cmd
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        """Tell whether the process still runs."""
        return self.proc.poll() is None

    def describe(self, doing: str, lines: int = 25) -> str:
        """Say what happened to a node that died or hung, with its last log lines.

        :param doing: what the caller was doing, e.g. ``'while the bag played'``.
        :param lines: how many log lines to quote.
        :return: the message.
        """
        state = 'still running' if self.alive() else f'exited with status {self.proc.returncode}'
        return (f'fuse_node {state} {doing}; its last log lines ({self.log_path}):\n'
                f'{tail_log(self.log_path, lines)}')

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Stop with SIGINT (clean shutdown), then SIGKILL after ``timeout`` seconds.

        :param timeout: seconds to wait after SIGINT.
        :return: the exit status.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10.0)
        self._log.close()
        return self.proc.returncode
