"""Live events: the in-process hub, SSE and WebSocket framing."""
