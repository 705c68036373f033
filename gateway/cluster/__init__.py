"""Several worker processes on one machine (``--workers N``): a control process that owns the
listening sockets, the stream-name directory and the supervision of workers, and media
workers that each run a gateway; a stream a worker does not hold comes to it once, over a
local link from the worker that does. See docs/architecture.md, "Workers"."""
