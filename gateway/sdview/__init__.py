"""The Kerberos Hub SD live view over MQTT: a low-rate JPEG of each keyframe, on request."""
