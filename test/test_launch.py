"""Tests of ``launch/fuse.launch.py`` without ``launch``/``launch_ros`` installed.

The launch file is loaded with small fake ``launch``, ``launch_ros`` and ``ament_index_python``
modules injected in ``sys.modules``; they record what the file constructs. The tests check the
declared arguments, the DDS profile variable, the node's parameters and remappings, then turn
the recorded ``Node`` into the command line ``launch_ros`` would run
(``fuse_node --ros-args -r __node:=... -r __ns:=... -r from:=to --params-file ... -p k:=v``) and
check that it starts the real node, which fuses a published pair on the remapped topics.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import sys
import time
import types
from typing import Any

import numpy as np
import pytest
from rosutil import (FixtureNode, PairPublisher, read_log, REPO_ROOT, ros_test_env, start_node,
                     stop_process)
from sensor_msgs.msg import Image
import yaml

LAUNCH_FILE = REPO_ROOT / 'launch' / 'fuse.launch.py'
EXPECTED_ARGUMENTS = {'thermal_topic', 'rgb_topic', 'rgb_info_topic', 'fused_topic',
                      'fused_info_topic', 'params_file', 'namespace', 'use_sim_time', 'method',
                      'device'}


class Recorded:
    """Base of the fakes: keeps the positional and keyword arguments it was built with."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class FakeContext:
    """Stands in for ``launch.LaunchContext``: the launch arguments' values."""

    def __init__(self, launch_configurations: dict[str, str]) -> None:
        self.launch_configurations = launch_configurations


class LaunchConfiguration(Recorded):
    def perform(self, context: FakeContext) -> str:
        return context.launch_configurations[self.args[0]]


class EnvironmentVariable(Recorded):
    def perform(self, context: FakeContext) -> str:
        return os.environ.get(self.args[0], self.kwargs.get('default_value', ''))


def perform(value: Any, context: FakeContext) -> Any:
    """Evaluate a (fake) substitution, a list of them (concatenated, as launch does) or a value."""
    if isinstance(value, list):
        return ''.join(str(perform(part, context)) for part in value)
    return value.perform(context) if hasattr(value, 'perform') else value


def fake_modules(share: Path) -> dict[str, types.ModuleType]:
    """Fake ``launch``, ``launch_ros`` and ``ament_index_python`` modules."""
    mods = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.substitutions', 'launch_ros', 'launch_ros.actions',
        'launch_ros.parameter_descriptions', 'ament_index_python',
        'ament_index_python.packages')}

    def new(name: str) -> type:
        return type(name, (Recorded,), {})

    mods['launch'].LaunchDescription = new('LaunchDescription')
    for name in ('DeclareLaunchArgument', 'SetEnvironmentVariable', 'OpaqueFunction',
                 'GroupAction', 'IncludeLaunchDescription'):
        setattr(mods['launch.actions'], name, new(name))
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch.substitutions'].EnvironmentVariable = EnvironmentVariable
    mods['launch_ros.actions'].Node = new('Node')
    mods['launch_ros.parameter_descriptions'].ParameterValue = new('ParameterValue')

    def get_package_share_directory(package: str) -> str:
        assert package == 'sfdfuse_ros'
        return str(share)

    mods['ament_index_python.packages'].get_package_share_directory = \
        get_package_share_directory
    for parent, child in (('launch', 'actions'), ('launch', 'substitutions'),
                          ('launch_ros', 'actions'), ('launch_ros', 'parameter_descriptions'),
                          ('ament_index_python', 'packages')):
        setattr(mods[parent], child, mods[f'{parent}.{child}'])
    return mods


@pytest.fixture
def description(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, list]:
    """Load the launch file with the fakes; return its module and the description's entities."""
    for name, module in fake_modules(REPO_ROOT).items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('fuse_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    assert type(ld).__name__ == 'LaunchDescription'
    return module, list(ld.args[0])


def arguments(entities: list) -> dict[str, Recorded]:
    return {e.args[0]: e for e in entities if type(e).__name__ == 'DeclareLaunchArgument'}


def launch_context(entities: list, **values: str) -> FakeContext:
    """A context holding the arguments' defaults, overridden by ``values``."""
    configs = {name: arg.kwargs['default_value'] for name, arg in arguments(entities).items()}
    unknown = set(values) - set(configs)
    assert not unknown, f'not declared: {unknown}'
    configs.update(values)
    return FakeContext(configs)


def the_node(entities: list, context: FakeContext) -> Recorded:
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
    assert len(opaque) == 1
    nodes = opaque[0].kwargs['function'](context)
    assert len(nodes) == 1 and type(nodes[0]).__name__ == 'Node'
    return nodes[0]


def node_parameters(node: Recorded, context: FakeContext) -> tuple[list[str], dict[str, Any]]:
    """Split the node's ``parameters`` into params files and evaluated overrides."""
    files, overrides = [], {}
    for entry in node.kwargs['parameters']:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if type(value).__name__ == 'ParameterValue':
                    raw = perform(value.args[0], context)
                    value_type = value.kwargs.get('value_type')
                    value = yaml.safe_load(raw) if value_type is bool else value_type(raw)
                overrides[key] = value
        else:
            files.append(perform(entry, context))
    return files, overrides


def command_line(node: Recorded, context: FakeContext) -> list[str]:
    """The ``--ros-args`` part of the command ``launch_ros`` runs for the node."""
    args = ['-r', f'__node:={node.kwargs["name"]}']
    namespace = perform(node.kwargs.get('namespace', ''), context)
    if namespace:
        args += ['-r', f'__ns:={namespace if namespace.startswith("/") else "/" + namespace}']
    for src, dst in node.kwargs['remappings']:
        args += ['-r', f'{perform(src, context)}:={perform(dst, context)}']
    files, overrides = node_parameters(node, context)
    for path in files:
        args += ['--params-file', path]
    for key, value in overrides.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ['-p', f'{key}:={text}']
    return args


def test_declares_every_argument_with_a_description(description: tuple) -> None:
    _, entities = description
    args = arguments(entities)
    assert set(args) == EXPECTED_ARGUMENTS
    for name, arg in args.items():
        assert len(arg.kwargs.get('description', '')) > 15, name
        assert 'default_value' in arg.kwargs, name
    params_file = Path(args['params_file'].kwargs['default_value'])
    assert params_file == REPO_ROOT / 'config' / 'fuse.yaml' and params_file.is_file()
    assert args['use_sim_time'].kwargs['default_value'] == 'false'


def test_sets_the_fastdds_profile_unless_the_user_set_one(
        description: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    _, entities = description
    env_actions = [e for e in entities if type(e).__name__ == 'SetEnvironmentVariable']
    assert len(env_actions) == 1 and env_actions[0].args[0] == 'FASTDDS_DEFAULT_PROFILES_FILE'
    value = env_actions[0].args[1]
    context = launch_context(entities)
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
    profile = Path(perform(value, context))
    assert profile == REPO_ROOT / 'config' / 'fastdds_profile.xml' and profile.is_file()
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/etc/my_profile.xml')
    assert perform(value, context) == '/etc/my_profile.xml'


def test_node_parameters_and_remappings(description: tuple) -> None:
    _, entities = description
    context = launch_context(entities, namespace='rig', thermal_topic='/boson/image_raw',
                             method='mean', use_sim_time='true')
    node = the_node(entities, context)
    assert (node.kwargs['package'], node.kwargs['executable']) == ('sfdfuse_ros', 'fuse_node')
    remaps = {perform(s, context): perform(d, context) for s, d in node.kwargs['remappings']}
    assert remaps['thermal/image'] == '/boson/image_raw'
    assert remaps['rgb/image'] == 'rgb/image' and remaps['fused/image'] == 'fused/image'
    assert remaps['rgb/image/compressed'] == 'rgb/image/compressed'  # image_transport's name
    assert set(remaps) == {'thermal/image', 'rgb/image', 'rgb/image/compressed',
                           'rgb/camera_info', 'fused/image', 'fused/camera_info'}
    # a node finishing a slow CPU frame on Ctrl-C is not SIGKILLed after launch's default 10 s
    assert float(node.kwargs['sigterm_timeout']) >= 20
    assert float(node.kwargs['sigkill_timeout']) >= 10
    files, overrides = node_parameters(node, context)
    assert files == [str(REPO_ROOT / 'config' / 'fuse.yaml')]
    # method given, device left empty: only the given one overrides the params file.
    assert overrides == {'use_sim_time': True, 'method': 'mean'}
    assert perform(node.kwargs['namespace'], context) == 'rig'


def test_the_launched_command_starts_a_working_node(description: tuple, tmp_path: Path) -> None:
    _, entities = description
    env = ros_test_env()
    context = launch_context(entities, namespace='/rig', thermal_topic='/rig/ir',
                             rgb_topic='/rig/color', fused_topic='/rig/fused', method='mean',
                             device='cpu')
    node = the_node(entities, context)
    ros_args = command_line(node, context)
    assert ros_args[:2] == ['-r', '__node:=fuse_node'] and '__ns:=/rig' in ros_args
    assert '-p' in ros_args and 'use_sim_time:=false' in ros_args
    for action in entities:  # what SetEnvironmentVariable does, on the child's environment
        if type(action).__name__ == 'SetEnvironmentVariable':
            env[action.args[0]] = perform(action.args[1], context)
    log = tmp_path / 'node.log'
    # The console script ``ros2 run``/launch would start (installed by setup.py).
    script = Path(sys.executable).parent / node.kwargs['executable']
    assert script.is_file(), f'{script} missing: pip install -e . installs it'
    proc = start_node(ros_args, env, log, executable=script)
    fx = FixtureNode('launch_test')
    try:
        fused = fx.collect(Image, '/rig/fused')
        pub = PairPublisher(fx, thermal_topic='/rig/ir', rgb_topic='/rig/color', info_topic=None,
                            thermal_hw=(48, 64), rgb_hw=(48, 64))
        assert pub.wait_matched(60.0), read_log(log)
        pub.run(20.0, until=lambda: len(fused) >= 2)
        assert len(fused) >= 2, read_log(log)
        assert fused[0].header.frame_id == 'rgb_optical'
        assert (fused[0].height, fused[0].width, fused[0].encoding) == (48, 64, 'bgr8')
        assert np.frombuffer(fused[0].data, np.uint8).std() > 1.0
        time.sleep(0.1)
        assert proc.poll() is None
    finally:
        code = stop_process(proc)
        fx.close()
    assert code == 0, read_log(log)
