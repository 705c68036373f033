"""WebRTC glue on aiortc shared by the WebRTC source (publishers) and sink (viewers)."""
