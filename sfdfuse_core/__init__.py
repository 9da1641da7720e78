"""ROS-free core of sfdfuse_ros: the SFDFuse model, fusion API, metrics, training and inference."""

__version__ = '0.1.0'
