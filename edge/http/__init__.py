"""HTTP building blocks with no knowledge of the edge: authentication, the error middleware, server-sent events,
the browser page and subtitle formats. A leaf: it imports nothing of the edge."""
