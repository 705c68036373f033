"""The DJI Cloud API bridge: device registry and live-stream control over MQTT."""
