"""ROS 2 front end of sfdfuse_ros: the fusion node, message conversions and bag playback."""
