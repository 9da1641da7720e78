"""Commands that need ROS 2, found at run time so that ``sfdfuse_core`` never imports them.

``sfdfuse demo`` and ``sfdfuse bag play`` run rclpy code that lives in the ``sfdfuse_ros``
package. ``sfdfuse_ros`` registers it under the entry-point group :data:`GROUP` (``setup.py``);
the core looks it up by name, so the dependency points one way only (ROS side -> core).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable

__all__ = ['GROUP', 'PluginError', 'ros_command']

#: Entry-point group of the ROS-side command implementations.
GROUP = 'sfdfuse.ros_commands'


class PluginError(RuntimeError):
    """A ROS-side command is not installed, or cannot be imported (no rclpy)."""


def ros_command(name: str) -> Callable[[Any], int]:
    """Load the ROS-side implementation of a command.

    :param name: entry-point name (``'demo'``, ``'bag_play'``).
    :return: ``run(args) -> exit status``.
    :raises PluginError: nothing registered under ``name`` (the package is not installed, e.g.
        run from a source tree without ``pip install -e``), or importing it failed (rclpy
        missing); the message says which and how to fix it.
    """
    found = list(entry_points(group=GROUP, name=name))
    if not found:
        raise PluginError(f'the ROS 2 side of this command ({GROUP}:{name}) is not installed: '
                          "install the package (pip install -e '.[ros]', or colcon build and "
                          'source the workspace)')
    try:
        return found[0].load()
    except ImportError as exc:
        raise PluginError(f'this command needs rclpy (a ROS 2 installation, or pip install '
                          f'".[ros]"): {exc}') from exc
