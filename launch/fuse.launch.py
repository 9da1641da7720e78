"""Launch ``fuse_node``: thermal + RGB fusion with SFDFuse.

    ros2 launch sfdfuse_ros fuse.launch.py thermal_topic:=/boson/image_raw
        rgb_topic:=/camera/color/image_raw rgb_info_topic:=/camera/color/camera_info

Topics are wired with remappings; every other setting comes from the params file (default: the
package's ``config/fuse.yaml``). ``method`` and ``device`` override the params file only when
given. FASTDDS_DEFAULT_PROFILES_FILE is set to the package's ``config/fastdds_profile.xml``
(large shared-memory segment, so best-effort images get through between processes) unless it is
already set in the environment; camera drivers in other launch files need it too.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'sfdfuse_ros'


def _fuse_node(context, *args, **kwargs):
    """Build the node once the launch arguments are known (method/device only when given)."""
    overrides = {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                value_type=bool)}
    for name in ('method', 'device'):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = ParameterValue(value, value_type=str)
    return [Node(
        package=PACKAGE,
        executable='fuse_node',
        name='fuse_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=[
            ('thermal/image', LaunchConfiguration('thermal_topic')),
            ('rgb/image', LaunchConfiguration('rgb_topic')),
            # rgb_transport: compressed subscribes image_transport's name for the same camera
            ('rgb/image/compressed', [LaunchConfiguration('rgb_topic'), '/compressed']),
            ('rgb/camera_info', LaunchConfiguration('rgb_info_topic')),
            ('fused/image', LaunchConfiguration('fused_topic')),
            ('fused/camera_info', LaunchConfiguration('fused_info_topic')),
        ],
        output='screen',
        emulate_tty=True,
        # On Ctrl-C the node finishes the frame it is fusing (seconds on a CPU) before it exits;
        # launch's defaults (5 s + 5 s) would SIGKILL it mid-frame.
        sigterm_timeout='30',
        sigkill_timeout='10',
    )]


def generate_launch_description():
    """Declare the arguments, set the DDS profile and start ``fuse_node``."""
    share = get_package_share_directory(PACKAGE)
    profile = os.path.join(share, 'config', 'fastdds_profile.xml')
    arguments = [
        DeclareLaunchArgument(
            'thermal_topic', default_value='thermal/image',
            description='Thermal image topic (sensor_msgs/Image; mono16, mono8 or 32FC1).'),
        DeclareLaunchArgument(
            'rgb_topic', default_value='rgb/image',
            description='RGB image topic (sensor_msgs/Image). With rgb_transport: compressed '
                        'in the params file, <rgb_topic>/compressed is subscribed.'),
        DeclareLaunchArgument(
            'rgb_info_topic', default_value='rgb/camera_info',
            description='RGB camera_info topic, republished as fused_info_topic.'),
        DeclareLaunchArgument(
            'fused_topic', default_value='fused/image',
            description='Output topic of the fused image (header of the RGB frame).'),
        DeclareLaunchArgument(
            'fused_info_topic', default_value='fused/camera_info',
            description='Output camera_info topic (RGB camera_info with the fused header).'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'fuse.yaml'),
            description='ROS params file of fuse_node (all parameters and their defaults).'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node; relative topics are resolved in it.'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Use /clock (e.g. when playing a bag with --clock).'),
        DeclareLaunchArgument(
            'method', default_value='',
            description="Fusion method: sfdfuse, mean or max; empty = the params file's value."),
        DeclareLaunchArgument(
            'device', default_value='',
            description="Inference device: auto, cpu or cuda; empty = the params file's value."),
    ]
    return LaunchDescription(arguments + [
        # Keeps a profile the user exported; otherwise uses the package's.
        SetEnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE',
            EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', default_value=profile)),
        OpaqueFunction(function=_fuse_node),
    ])
