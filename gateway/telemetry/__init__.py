"""Flight telemetry carried with the video: the hub where samples meet their streams'
subscribers, the per-receiver rate limit, and the delivery to a viewer."""
