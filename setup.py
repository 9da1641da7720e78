"""Build script of the ``sfdfuse_ros`` ament_python package.

The same file serves ``colcon build`` on a ROS 2 machine and ``pip install`` into a virtual
environment without ROS. torch is deliberately not pinned here: users bring the build that fits
their hardware (the set-up scripts pin the CPU build used on CI).
"""
from glob import glob

from setuptools import find_packages, setup

package_name = 'sfdfuse_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['sfdfuse_core', 'sfdfuse_core.*',
                                    'sfdfuse_ros', 'sfdfuse_ros.*']),
    package_data={'sfdfuse_core': ['weights/*.safetensors', 'weights/*.json']},
    include_package_data=True,
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*')),
        ('share/' + package_name + '/training', glob('training/*.yaml')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'numpy',
        'opencv-python-headless',
        'pyyaml',
        'tqdm',
        'scipy',
        'safetensors',
        'h5py',
        'rosbags',
    ],
    extras_require={
        # ROS 2 from PyPI wheels (x86-64 Linux only); a real ROS install provides these instead.
        'ros': ['ros-rclpy[fastrtps]', 'ros-sensor-msgs', 'ros-diagnostic-msgs', 'ros-std-srvs'],
        'train': ['tensorboard', 'matplotlib'],
        'export': ['onnx', 'onnxruntime', 'onnxscript'],
        'dev': ['pytest', 'pytest-timeout', 'hypothesis', 'scikit-image', 'flake8',
                'pydocstyle', 'tensorboard', 'matplotlib', 'onnx', 'onnxruntime', 'onnxscript',
                'colcon-common-extensions'],
    },
    zip_safe=True,
    maintainer='sfdfuse_ros developers',
    maintainer_email='sfdfuse-ros@users.noreply.github.com',
    description='Thermal + RGB image fusion for ROS 2 with the SFDFuse network.',
    license='MIT',
    entry_points={
        'console_scripts': [
            'sfdfuse = sfdfuse_core.cli:main',
            'fuse_node = sfdfuse_ros.fuse_node:main',
        ],
        # The ROS 2 side of `sfdfuse demo` and `sfdfuse bag play` (sfdfuse_core.plugins): the
        # core finds them by name and never imports sfdfuse_ros.
        'sfdfuse.ros_commands': [
            'demo = sfdfuse_ros.demo:run_from_args',
            'bag_play = sfdfuse_ros.bag_play:run_from_args',
        ],
    },
)
