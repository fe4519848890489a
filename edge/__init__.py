"""Edge: the WebSocket/HTTP front door. Speaks JSON to clients and msgpack over NATS to actors."""
