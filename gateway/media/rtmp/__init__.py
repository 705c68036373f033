"""RTMP, sans I/O: AMF0, the server side of a publishing connection, FLV video tags."""
