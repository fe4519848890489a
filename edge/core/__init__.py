"""What every API shares, with no HTTP and no wire format: the live session, file jobs, admission, the records
in KV, resume, the pipeline's two ends and the connections of this edge. Transports drive it; it never calls them
except through the callbacks they hand it."""
