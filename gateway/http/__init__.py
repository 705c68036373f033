"""The HTTP side: static demo page, health and (later) REST, WHIP/WHEP, HLS, metrics."""
