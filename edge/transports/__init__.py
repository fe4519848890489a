"""Each API the edge speaks: a codec (wire -> commands, results -> wire) plus its routes. They never import each
other; socket.py (the one WebSocket loop) and upload.py are theirs to share."""
