"""chat-server: a WebSocket chat server for conversational AI that never loses a message."""

__version__ = "0.1.0"
PROTOCOL = "chat.v1"
