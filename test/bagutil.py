"""Helpers for tests that write ROS 2 bags with ``rosbags``: the typestore and image messages."""
import numpy as np
from rosbags.typesys import Stores, get_typestore

#: The message types of the ROS distribution the package targets.
TS = get_typestore(Stores.ROS2_KILTED)
IMAGE = 'sensor_msgs/msg/Image'


def header_message(stamp_ns: int, frame_id: str):
    """Build a ``std_msgs/Header`` with a stamp in nanoseconds."""
    return TS.types['std_msgs/msg/Header'](
        stamp=TS.types['builtin_interfaces/msg/Time'](sec=stamp_ns // 10 ** 9,
                                                      nanosec=stamp_ns % 10 ** 9),
        frame_id=frame_id)


def image_message(stamp_ns: int, frame_id: str, arr: np.ndarray, encoding: str):
    """Build a ``sensor_msgs/Image`` holding ``arr`` (its row stride as ``step``)."""
    return TS.types[IMAGE](header=header_message(stamp_ns, frame_id), height=arr.shape[0],
                           width=arr.shape[1], encoding=encoding, is_bigendian=0,
                           step=arr.strides[0], data=np.frombuffer(arr.tobytes(), np.uint8))
