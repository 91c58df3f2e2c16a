"""`conveyor_worker` and `conveyor_serve`."""
