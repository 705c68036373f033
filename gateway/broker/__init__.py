"""An embedded MQTT broker (MQTT 3.1.1): a sans-I/O packet codec and a small asyncio server."""
