"""Fan-out actor: puts each session's results in order and routes them to whoever serves it."""
